"""Committing several small checkpoints saved back to back as one group.

On a store that batches a commit's fsyncs (:class:`~asynccp._store.DurableCommits`: a
durable local directory) each checkpoint committed alone costs two ordered flushes of
the file system's journal: its payload and record bytes, then its record's link. A
flush costs about the same whether it carries one checkpoint or several, so the
pipeline hands checkpoints of one small buffer that wait together to
:func:`commit_group`, which pays the two flushes once for all of them. The rules are
those of :func:`asynccp._write._commit.commit`, which it falls back to (and shares its
helpers with): a record is linked only once its payload is durable, records are
created in save order, and each handle resolves only once its record is durable.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio

from .._catalog import Bad
from .._groups import first_leaf
from .._layout import data_dir, manifest_key, payload_key
from .._manifest import Manifest
from .._store import DurableCommits, Store, call
from ..errors import CheckpointError, CommitUnknownError
from . import _commit  # PAYLOAD_CHECK_AFTER read at call time: one setting for both
from ._commit import (
    Committed,
    _check_payload,
    _checksum_and_put,
    commit,
    manifest_of,
    one_small_buffer,
)
from ._stager import StagedFile

__all__ = ["GroupItem", "commit_group", "groupable"]


@dataclass(frozen=True)
class GroupItem:
    """One checkpoint of a group: a single small buffer (see :func:`commit_group`)."""

    step: int
    file: StagedFile
    metadata: Mapping[str, Any]
    created_at: datetime


def groupable(store: Store, files: list[StagedFile]) -> bool:
    """Whether a checkpoint of ``files`` may be committed in a group on ``store``: one
    small buffer (:func:`~asynccp._write._commit.one_small_buffer`), on a store that
    batches a commit's fsyncs (:class:`~asynccp._store.DurableCommits`, durable)."""
    return isinstance(store, DurableCommits) and store.durable and one_small_buffer(files)


async def commit_group(
    store: Store,
    items: Sequence[GroupItem],
    *,
    writer: str,
    attempt: int,
    limiter: anyio.CapacityLimiter,
    turn: Callable[[], Awaitable[Any]] | None = None,
    turn_taken: Callable[[], bool] | None = None,
    bad: Collection[Bad] = (),
) -> list[Committed | CheckpointError]:
    """Commit several small checkpoints saved back to back, in order, as one group.

    On a durable local directory each checkpoint costs two ordered flushes of the
    file system's journal (its payload and record bytes, then its record's link): a
    flush costs about the same whether it carries one checkpoint or four. A group
    writes every payload and record, makes all of it durable in one journal commit,
    links the records in save order, and makes the links durable with one fsync: two
    flushes for the group. The rules stay those of :func:`commit`: a record is linked
    only once its payload is durable, records are created in save order, and each
    handle resolves only once its record is durable.

    Returns each checkpoint's outcome, in order. A checkpoint the group could not
    link at its first revision (another writer's record there, a failed call) and
    every one after it are committed one by one with :func:`commit`, which judges
    existing records and reports failures as usual.
    """
    assert isinstance(store, DurableCommits)
    started = time.monotonic()
    folders = [data_dir(i.step, writer) for i in items]
    keys = [payload_key(folder, i.file.name) for folder, i in zip(folders, items, strict=True)]
    records = [manifest_key(i.step) for i in items]
    manifests: list[Manifest] = []  # made once every checksum is known
    prepared: list[Any] = []
    linked = 0
    synced = False
    may_link = turn is None or (turn_taken is not None and turn_taken())

    def link_and_sync() -> None:
        nonlocal linked, synced
        linked = store.link_group(list(zip(prepared, records, strict=True)))
        store.make_durable(records[:linked])
        synced = True

    def write_and_prepare() -> None:
        for item, key in zip(items, keys, strict=True):
            _checksum_and_put(store, item.file, key)
        manifests.extend(
            manifest_of(i.step, [i.file], i.metadata, i.created_at, writer=writer, attempt=attempt)
            for i in items
        )
        bodies = [m.encode() for m in manifests]
        made = store.prepare_group(
            [(f, b, [k]) for f, b, k in zip(folders, bodies, keys, strict=True)]
        )
        prepared.extend(made)
        if may_link:  # our turn already: committed in this same worker-thread trip
            link_and_sync()

    out: list[Committed | CheckpointError] = []
    try:
        await call(store, write_and_prepare, key=keys, action="writing", limiter=limiter)
        if not synced:
            if turn is not None:
                await turn()
            await call(store, link_and_sync, key=records[0], action="committing")
    except anyio.get_cancelled_exc_class():
        raise  # (the prepared files go with their folders: orphans, or retention)
    except Exception as e:
        # Linked, then the fsync that makes the links durable failed: those may be
        # committed or not. Anything else (a payload write, the prepare, a record at
        # the first revision already) goes one by one below, from the first not linked.
        leaf = first_leaf(e)
        out += [
            CommitUnknownError(
                f"checkpoint step {item.step} in {store.description}: its record was "
                f"created but could not be made durable ({leaf}); it may not survive a "
                "power cut. Its payload is kept; the next reader decides."
            )
            for item in items[:linked]
        ]
    if prepared[linked:]:
        await call(store, store.discard_group, prepared[linked:], key=folders[linked])
    if not out:
        out += [Committed(m, k) for m, k in zip(manifests[:linked], records, strict=False)]
        if linked and time.monotonic() - started > _commit.PAYLOAD_CHECK_AFTER:
            for n in range(linked):
                try:
                    await _check_payload(store, manifests[n])
                except CheckpointError as e:
                    out[n] = e
    if turn is not None:
        await turn()  # (over already, unless the group failed before its links)
    for item in items[len(out) :]:
        try:
            committed = await commit(
                store,
                step=item.step,
                files=[item.file],
                metadata=item.metadata,
                created_at=item.created_at,
                writer=writer,
                attempt=attempt,
                limiter=limiter,
                bad=bad,
            )
        except CheckpointError as e:
            out.append(e)
        else:
            out.append(committed)
    return out
