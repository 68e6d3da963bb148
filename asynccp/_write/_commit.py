"""Committing one staged checkpoint: payload objects first, then the record that commits.

The payload goes to a folder private to this writer (``data/<step>-<writer>/``), its
files in parallel, large ones as multipart uploads. Only when every object is durable
is the record (the manifest) created, with create-if-absent: that single conditional put
is the commit (:mod:`asynccp._write._record`: a record in the way, a lost answer). Data
never mixes: a failed checkpoint's payload is deleted unless its record may have
reached the store, and a commit that took long is checked afterwards (had a collector
taken the payload meanwhile, the commit fails instead of resolving to a checkpoint with
no data).

A tiny checkpoint (:func:`inlinable`: at most :data:`~asynccp._manifest.INLINE_MAX`
bytes of buffers) has no payload objects: its bytes are written inside its record,
so its commit is the one create.

The result is a :class:`Committed` (the manifest and the record's key): building the
read-side :class:`~asynccp.Checkpoint` from it is the checkpointer's business. What
every commit of a writer shares — who writes, its upload threads, the checkpoints known
not to verify, and the previous commit it must follow — is one :class:`CommitContext`.

A sharded writer commits differently once its payload is durable: it passes a
:data:`RecordHook` (:func:`asynccp._write._shards.commit_part`) that records its part
instead, and commits the step's manifest only when its part is the last.

On a store with the :class:`~asynccp._store.DurableCommits` capability (a durable local
directory) the payload is put unsynced and made durable with the record's bytes in one
journal commit while the previous checkpoint commits; the commit is then a link of the
prepared record. Small checkpoints saved back to back commit as a group, on every
store (:mod:`asynccp._write._group`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, NoReturn

import anyio
import anyio.to_thread
import crc32c

from .._catalog import Bad
from .._groups import first_leaf
from .._layout import data_dir, manifest_key, payload_key
from .._manifest import INLINE_FILES, INLINE_MAX, FileInfo, Manifest
from .._shard_records import Part
from .._store import Source, Store, call, durable_commits
from ..errors import CheckpointError, StepAlreadyCommittedError, StoreError, UploadError
from ._record import check_payload, create, create_record
from ._stager import StagedFile
from ._turns import CommitContext

__all__ = [
    "PAYLOAD_CHECK_AFTER",
    "checksum_and_put",
    "Committed",
    "Item",
    "RecordHook",
    "cleanup",
    "commit",
    "complete",
    "complete_now",
    "inlinable",
    "manifest_of",
    "one_small_buffer",
]

log = logging.getLogger("asynccp")
#: Seconds a failed checkpoint's cleanup may take before the failure is reported anyway.
CLEANUP_SECONDS = 10.0
#: A commit that finishes this long after its payload started uploading is checked
#: afterwards: a collector may only take the payload of a writer whose lease lapsed
#: (see :mod:`asynccp._leases`), which takes far longer than this.
PAYLOAD_CHECK_AFTER = 10.0
#: Buffers at least this large are checksummed in a thread of their own while they are
#: written; smaller ones in the writing thread first (a thread trip costs more than
#: their checksum: 1 MiB takes ~0.1 ms).
_CHECKSUM_APART = 4 << 20


@dataclass(frozen=True)
class Committed:
    """A checkpoint this writer committed: its manifest, and the record that commits it.

    For a sharded writer, ``part`` is the part it recorded (``key`` is the part
    record's): the step itself commits when its last part is recorded.
    """

    manifest: Manifest
    key: str
    part: Part | None = None


@dataclass(eq=False)
class Item:
    """A checkpoint to commit: its step, staged files, metadata and time (the pipeline's
    pending checkpoints are items with a handle)."""

    step: int
    files: list[StagedFile]
    metadata: Mapping[str, Any]
    created_at: datetime


#: How a sharded checkpointer commits instead (:func:`asynccp._write._shards.commit_part`):
#: given the store, the part's manifest and the checkpoints known not to verify, it
#: records the part (and commits the step if it is the last) and returns it.
RecordHook = Callable[[Store, Manifest, Collection[Bad]], Awaitable[Committed]]


async def commit(
    store: Store, item: Item, ctx: CommitContext, *, record: RecordHook | None = None
) -> Committed:
    """Upload ``item``'s files as its checkpoint, then commit its record after
    ``ctx``'s previous commit.

    A small checkpoint is written, prepared and committed in one worker-thread trip
    (when its first revision is free, the usual case), which waits for its turn in the
    thread; a tiny one (:func:`inlinable`) is only its record. ``record``, when given,
    commits instead of the record's create (a sharded writer's part record), and its
    result is returned.

    Raises a :class:`CheckpointError` (:class:`UploadError` for a store failure) when
    the checkpoint did not commit; cancellation leaves its payload for the collector.
    """
    step, files = item.step, item.files
    if record is None and inlinable(files):
        try:
            return await _commit_inline(store, item, ctx)
        except BaseException as e:
            _raise(store, step, e)
    started = time.monotonic()
    await complete(files)
    folder = data_dir(step, ctx.writer)
    keys = [payload_key(folder, f.name) for f in files]
    commit_sent = False
    durable = durable_commits(store)

    def make_manifest() -> Manifest:
        return manifest_of(item, writer=ctx.writer, attempt=ctx.attempt)

    def prepare(manifest: Manifest) -> tuple[bytes, Any]:
        # On a local durable store the payload and the record's bytes become durable
        # now, in one journal commit, while the previous checkpoint commits: the commit
        # itself is then one link and one folder fsync. Elsewhere this does nothing.
        # (A sharded writer's part record is created by ``record``: only the payload.)
        body = manifest.encode()
        if durable is None:
            return body, None
        return body, durable.prepare_create(folder, None if record else body, sync=keys)

    linked: str | None = None  # the record's key, when the fast path created it
    try:
        if one_small_buffer(files):
            # One small buffer: written, prepared and committed in one worker-thread
            # trip (each trip costs a wake-up on both sides: ~0.5-1.5 ms on a busy
            # 2-core machine, against ~3 ms for a whole durable 1 MiB put). The trip
            # starts at once and waits for the previous commit inside the thread, once
            # its payload is written (the default thread limiter: a trip that waits
            # must not hold one of the tokens the previous commit may need). Anything
            # else (a record there, a failed create) goes the usual way below.
            first = manifest_key(step)

            def put_and_commit() -> tuple[Manifest, bytes, Any, bool]:
                checksum_and_put(store, files[0], keys[0])
                made = make_manifest()
                body, prepared = prepare(made)
                if record is not None:
                    return made, body, prepared, False
                ctx.turn_in_thread()
                linking.set()  # from here on the record may exist: the payload stays
                try:
                    create(store, first, body, prepared)
                except Exception:
                    return made, body, prepared, False  # judged below, as usual
                ctx.done_in_thread()
                return made, body, None, True

            linking = threading.Event()
            try:
                manifest, body, prepared, created = await call(
                    store, put_and_commit, key=keys[0], action="writing"
                )
            finally:
                commit_sent = linking.is_set()
            if created:
                linked = first
        else:
            async with anyio.create_task_group() as tg:
                for f, key in zip(files, keys, strict=True):
                    tg.start_soon(_put_file, store, f, key, ctx.limiter)
            manifest = make_manifest()
            body, prepared = await call(store, prepare, manifest, key=folder, action="syncing")
        try:
            await ctx.turn()
            commit_sent = True
            if record is not None:
                return await record(store, manifest, ctx.bad)
            if linked is not None:
                key = linked
            else:
                key = await create_record(store, manifest, ctx.bad, body, prepared)
        except BaseException:
            if durable is not None and prepared is not None:  # a link removed it already
                with anyio.CancelScope(shield=True):
                    await call(store, durable.discard_prepared, prepared, key=folder)
            raise
        if time.monotonic() - started > PAYLOAD_CHECK_AFTER:
            await check_payload(store, manifest)
    except BaseException as e:
        # Once the record may have reached the store, the payload must stay: a commit
        # whose answer was lost (a timeout, an abandoned request) would otherwise point
        # at deleted objects. If it did not commit, the orphan collector removes it.
        # A cancelled upload (the exit flush ran out of time) does not clean up at all:
        # the store may be the reason, and the exit must not wait for it.
        leaf = first_leaf(e)
        cancelled = isinstance(leaf, anyio.get_cancelled_exc_class())
        lost = isinstance(leaf, StepAlreadyCommittedError)
        if not cancelled and (not commit_sent or lost):
            await cleanup(store, keys)
        _raise(store, step, e)
    return Committed(manifest, key)


async def complete(files: Sequence[StagedFile]) -> None:
    """Finish the files whose bytes are completed after the snapshot (a training
    state's JSON: its chunk checksums, from the staged tensors), before anything reads
    them; in a worker thread, off the caller's path."""
    if any(f.complete is not None for f in files):
        await anyio.to_thread.run_sync(complete_now, files, abandon_on_cancel=True)


def complete_now(files: Sequence[StagedFile]) -> None:
    """:func:`complete`, in the worker thread that is about to read the files (an
    inline or grouped commit's)."""
    for f in files:
        if f.complete is not None:
            f.complete()
            f.complete = None


async def _commit_inline(store: Store, item: Item, ctx: CommitContext) -> Committed:
    """A tiny checkpoint: its bytes inside its record, which is all there is to create
    (after the previous commit): made, and created once its turn has come, in one
    worker-thread trip. Nothing to clean up if it fails."""
    first = manifest_key(item.step)

    def make_and_create() -> tuple[Manifest, bytes, bool]:
        complete_now(item.files)
        for f in item.files:
            if f.crc32c is None:
                assert f.data is not None
                f.crc32c = crc32c.crc32c(f.data)
        manifest = manifest_of(item, writer=ctx.writer, attempt=ctx.attempt, inline=True)
        body = manifest.encode()
        ctx.turn_in_thread()
        try:
            create(store, first, body, None)
        except Exception:
            return manifest, body, False  # judged below, as usual
        ctx.done_in_thread()
        return manifest, body, True

    manifest, body, created = await call(store, make_and_create, key=first, action="committing")
    if created:
        return Committed(manifest, first)
    await ctx.turn()
    return Committed(manifest, await create_record(store, manifest, ctx.bad, body))


def _raise(store: Store, step: int, e: BaseException) -> NoReturn:
    """Raise what a commit of ``step`` that failed with ``e`` reports: a store failure
    as :class:`UploadError`, asynccp's own errors as they are (unwrapped from task
    groups), cancellation unchanged."""
    leaf = first_leaf(e)
    if isinstance(leaf, StoreError) and not isinstance(leaf, UploadError):
        # A store call failed: the checkpoint did not upload. Chained to the store
        # client's own error, as every UploadError is.
        raise UploadError(
            f"checkpoint step {step} was not committed to {store.description}: {leaf}"
        ) from (leaf.__cause__ or leaf)
    if isinstance(leaf, CheckpointError):
        raise leaf from leaf.__cause__
    if isinstance(leaf, Exception):
        raise UploadError(
            f"checkpoint step {step} was not committed to {store.description}: {leaf}"
        ) from leaf
    raise e


async def _put_file(store: Store, f: StagedFile, key: str, limiter: anyio.CapacityLimiter) -> None:
    """Upload one file; a buffer's checksum is computed while its bytes are written."""
    # Abandoned if cancelled: only a flush timeout cancels the uploader, and then it
    # must not wait for a request that may hang until obstore's retry_timeout.
    if f.data is None:
        assert f.path is not None
        await call(
            store,
            partial(_put_payload, store, key, f.path, move=True),
            key=key,
            action="writing",
            limiter=limiter,
        )
        return
    if f.size < _CHECKSUM_APART:  # one thread trip: checksum, then write
        await call(
            store,
            checksum_and_put,
            store,
            f,
            key,
            key=key,
            action="writing",
            limiter=limiter,
        )
        return
    data = f.data
    async with anyio.create_task_group() as tg:
        if f.crc32c is None:
            tg.start_soon(_checksum, f)
        await call(
            store,
            partial(_put_payload, store, key, data),
            key=key,
            action="writing",
            limiter=limiter,
        )


def checksum_and_put(store: Store, f: StagedFile, key: str) -> None:
    """Checksum a buffer (if not done yet) and put it as a payload object (worker thread)."""
    data = f.data
    assert data is not None
    if f.crc32c is None:
        f.crc32c = crc32c.crc32c(data)
    _put_payload(store, key, data)


def _put_payload(store: Store, key: str, source: Source, *, move: bool = False) -> None:
    """Put a payload object: unsynced where the store makes it durable later (its
    ``prepare_create``: nothing trusts the object before a manifest names it)."""
    durable = durable_commits(store)
    if durable is not None:
        durable.put_unsynced(key, source, move=move)
    else:
        store.put(key, source, move=move)


def one_small_buffer(files: Sequence[StagedFile]) -> bool:
    """Whether ``files`` is one buffer below :data:`_CHECKSUM_APART`: written (and
    checksummed, and prepared, and, its turn come, committed) in one worker-thread trip."""
    return len(files) == 1 and files[0].data is not None and files[0].size < _CHECKSUM_APART


def inlinable(files: Sequence[StagedFile]) -> bool:
    """Whether ``files`` are few buffers small enough together to be written inside
    their record (:data:`~asynccp._manifest.INLINE_MAX`): no payload object at all."""
    return (
        len(files) <= INLINE_FILES
        and all(f.data is not None for f in files)
        and sum(f.size for f in files) <= INLINE_MAX
    )


def manifest_of(item: Item, *, writer: str, attempt: int, inline: bool = False) -> Manifest:
    """The manifest of ``item`` (its checksums computed already); with ``inline``, the
    files' bytes inside it."""
    return Manifest(
        step=item.step,
        writer=writer,
        attempt=attempt,
        created_at=item.created_at,
        metadata=item.metadata,
        files={
            f.name: FileInfo(f.size, _crc(f), bytes(f.data) if inline and f.data else None)
            for f in item.files
        },
    )


def _crc(f: StagedFile) -> int:
    if f.crc32c is None:  # every path through _put_file sets it
        raise AssertionError(f"no checksum was computed for {f.name!r}")
    return f.crc32c


async def _checksum(f: StagedFile) -> None:
    data = f.data
    assert data is not None
    f.crc32c = await anyio.to_thread.run_sync(crc32c.crc32c, data, abandon_on_cancel=True)


async def cleanup(store: Store, keys: list[str]) -> None:
    """Delete a failed checkpoint's payload, best effort and briefly.

    A store that just failed an upload may not answer deletes either: after
    :data:`CLEANUP_SECONDS` the failure is reported anyway, and the orphan collector
    gets what is left.
    """
    with anyio.move_on_after(CLEANUP_SECONDS):
        try:
            await call(store, store.delete, keys, key=keys, action="deleting")
            return
        except Exception as e:
            log.warning("asynccp: could not delete the payload of a failed checkpoint: %s", e)
            return
    log.warning(
        "asynccp: gave up deleting the payload of a failed checkpoint after %s s",
        CLEANUP_SECONDS,
    )
