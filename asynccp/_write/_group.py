"""Committing several small checkpoints saved back to back as one group.

Each checkpoint committed alone pays a store's fixed costs: a worker-thread trip (a
wake-up on both sides), and on a durable local directory two ordered flushes of the
file system's journal (its payload and record bytes, then its record's link). Those
cost about the same whether they carry one checkpoint or several, so the pipeline
hands the small checkpoints that wait together (:func:`groupable`: one small buffer,
or tiny enough to live inside its record) to :func:`commit_group`, which pays them
once for the lot:

- on a durable local directory (:class:`~asynccp._store.DurableCommits`): every payload
  and record written, all of it made durable in one journal commit, the records
  linked in save order, the links made durable with one fsync;
- on any other store: every payload put, then every record created, in save order,
  in one worker-thread trip. A store's conditional create per record stays.

The trip starts at once: its payloads are written while the previous commit runs, and
it waits for that commit's end inside the thread (:class:`~asynccp._write._turns.Turn`),
woken by the thread that finished it.

The rules are those of :func:`asynccp._write._commit.commit`, which it falls back to
(and shares its helpers with): a record is created only once its payload is durable,
records are created in save order, and each handle resolves only once its record is
durable. A record in the way, or a create that failed, sends that checkpoint and the
ones after it through :func:`~asynccp._write._commit.commit` one by one, which judges
existing records and lost answers as usual.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import crc32c

from .._groups import first_leaf
from .._layout import MANIFESTS, data_dir, manifest_key, payload_key
from .._manifest import Manifest
from .._store import DurableCommits, Store, abandoned, call, durable_commits, store_errors
from ..errors import CheckpointError, CommitUnknownError, StoreError
from . import _commit  # PAYLOAD_CHECK_AFTER read at call time: one setting for both
from ._commit import (
    Committed,
    Item,
    checksum_and_put,
    commit,
    complete_now,
    inlinable,
    manifest_of,
    one_small_buffer,
)
from ._record import check_payload, look_after_failure
from ._stager import StagedFile
from ._turns import CommitContext

__all__ = ["commit_group", "groupable"]

Outcome = Committed | CheckpointError
#: Where an inline checkpoint's record is prepared on a local directory: beside the
#: records (it has no payload folder). A file left there by a killed writer is taken
#: by the orphan collector once it is stale.
_RECORDS = MANIFESTS.rstrip("/")


def groupable(files: Sequence[StagedFile]) -> bool:
    """Whether a checkpoint of ``files`` may be committed in a group: tiny enough to
    live inside its record (:func:`~asynccp._write._commit.inlinable`), or one small
    buffer (:func:`~asynccp._write._commit.one_small_buffer`)."""
    return inlinable(files) or one_small_buffer(files)


@dataclass
class _Member:
    """One checkpoint of a group, as the group writes it."""

    item: Item
    writer: str
    inline: bool = field(init=False)
    folder: str = field(init=False)
    keys: list[str] = field(init=False)  # its payload objects (none when inline)
    record: str = field(init=False)  # its record's key (first revision)
    manifest: Manifest | None = None
    body: bytes = b""

    def __post_init__(self) -> None:
        self.inline = inlinable(self.item.files)
        self.folder = data_dir(self.item.step, self.writer)
        self.keys = [] if self.inline else [payload_key(self.folder, self.item.files[0].name)]
        self.record = manifest_key(self.item.step)

    def write(self, store: Store, attempt: int) -> None:
        """Put the payload (checksummed on the way) and encode the record (worker thread)."""
        complete_now(self.item.files)
        if self.inline:
            for f in self.item.files:
                if f.crc32c is None:
                    assert f.data is not None
                    f.crc32c = crc32c.crc32c(f.data)
        else:
            checksum_and_put(store, self.item.files[0], self.keys[0])
        self.manifest = manifest_of(
            self.item, writer=self.writer, attempt=attempt, inline=self.inline
        )
        self.body = self.manifest.encode()

    def committed(self) -> Committed:
        assert self.manifest is not None
        return Committed(self.manifest, self.record)


async def commit_group(store: Store, items: Sequence[Item], ctx: CommitContext) -> list[Outcome]:
    """Commit several small checkpoints saved back to back, in order, as one group
    (after ``ctx``'s previous commit); each one's outcome, in order.

    A checkpoint the group could not commit at its first revision (another writer's
    record there, a failed call) and every one after it are committed one by one with
    :func:`~asynccp._write._commit.commit`, which judges existing records and reports
    failures as usual.
    """
    started = time.monotonic()
    members = [_Member(i, ctx.writer) for i in items]
    durable = durable_commits(store)
    if durable is not None and durable.durable:
        out = await _durable(store, durable, members, ctx)
    else:
        out = await _plain(store, members, ctx)
    if time.monotonic() - started > _commit.PAYLOAD_CHECK_AFTER:
        for n, outcome in enumerate(out):
            if isinstance(outcome, Committed) and not members[n].inline:
                try:
                    await check_payload(store, outcome.manifest)
                except CheckpointError as e:
                    out[n] = e
    await ctx.turn()  # (over already, unless the group failed before its records)
    if len(out) < len(members):
        alone = ctx.after(None)
        for m in members[len(out) :]:
            try:
                out.append(await commit(store, m.item, alone))
            except CheckpointError as e:
                out.append(e)
    return out


async def _plain(store: Store, members: list[_Member], ctx: CommitContext) -> list[Outcome]:
    """Any store: payloads put, then — once the previous commit is over, waited for in
    the thread — records created in order, in one worker-thread trip. Returns the
    outcomes decided: the records created, and a create that failed with the store
    asked about it."""
    created = 0
    failure: Exception | None = None

    def write_and_create() -> None:
        nonlocal created, failure
        for m in members:
            m.write(store, ctx.attempt)
        ctx.turn_in_thread()
        for m in members:
            if abandoned():  # the caller gave up: create nothing more
                return
            try:
                with store_errors(store, m.record, "committing"):
                    store.create(m.record, m.body)
            except Exception as e:  # judged below, in the event loop
                failure = e
                return
            created += 1
        ctx.done_in_thread()

    try:
        # (The default thread limiter: a trip that waits for its turn must not hold a
        # token of the writer's upload limiter, which the previous commit may need.)
        await call(store, write_and_create, key=_keys(members), action="committing")
    except anyio.get_cancelled_exc_class():
        raise
    except Exception:
        pass  # a payload not written: those not created go one by one, and report it
    out: list[Outcome] = [m.committed() for m in members[:created]]
    if isinstance(failure, StoreError):
        # The request failed: its answer may be what was lost (the record is there).
        m = members[created]
        assert m.manifest is not None
        try:
            await look_after_failure(store, m.manifest, m.record, failure)
            out.append(m.committed())
        except CheckpointError as e:
            out.append(e)
    return out  # (a record in the way, or another error: one by one from there)


def _keys(members: list[_Member]) -> list[str]:
    return [k for m in members for k in m.keys] or [m.record for m in members]


async def _durable(
    store: Store, durable: DurableCommits, members: list[_Member], ctx: CommitContext
) -> list[Outcome]:
    """A durable local directory: every payload and record written, one journal commit
    for all of it, then — once the previous commit is over, waited for in the thread —
    the records linked in save order and one fsync for the links, in one worker-thread
    trip. Returns the outcomes decided: the records linked (committed, or unknown when
    the fsync of their links failed)."""
    prepared: list[Any] = []
    records = [m.record for m in members]
    linked = 0

    def commit_all() -> None:
        nonlocal linked
        for m in members:
            m.write(store, ctx.attempt)
        # An inline checkpoint's record is prepared beside the records (it has no
        # payload folder); the others' in their payload folders, as commit() does.
        made = durable.prepare_group(
            [(_RECORDS if m.inline else m.folder, m.body, m.keys) for m in members]
        )
        prepared.extend(made)
        ctx.turn_in_thread()  # the previous commit's links are durable
        linked = durable.link_group(list(zip(prepared, records, strict=True)))
        durable.make_durable(records[:linked])
        if linked == len(members):
            ctx.done_in_thread()

    out: list[Outcome] = []
    try:
        # (The default thread limiter, as for _plain.)
        await call(store, commit_all, key=_keys(members), action="committing")
        out += [m.committed() for m in members[:linked]]
    except anyio.get_cancelled_exc_class():
        raise  # (the prepared files go with their folders: orphans, or retention)
    except Exception as e:
        # Linked, then the fsync that makes the links durable failed: those may be
        # committed or not. Anything else (a payload write, the prepare, a record at
        # the first revision already) goes one by one, from the first not linked.
        leaf = first_leaf(e)
        out += [
            CommitUnknownError(
                f"checkpoint step {m.item.step} in {store.description}: its record was "
                f"created but could not be made durable ({leaf}); it may not survive a "
                "power cut. Its payload is kept; the next reader decides."
            )
            for m in members[:linked]
        ]
    if prepared[linked:]:
        await call(store, durable.discard_group, prepared[linked:], key=members[linked].folder)
    return out
