"""Committing one staged checkpoint: payload objects first, then the record that commits.

The payload goes to a folder private to this writer (``data/<step>-<writer>/``), its
files in parallel, large ones as multipart uploads. Only when every object is durable
is the record (the manifest) created, with create-if-absent: that single conditional put
is the commit. Data never mixes:

- The step's record already exists: if it is this writer's (a retried request whose
  first try landed), the commit succeeded. If it is another writer's valid checkpoint
  that verifies, this writer's payload is deleted and the step reports
  :class:`StepAlreadyCommittedError`. If it is invalid, or known not to verify, it never
  blocks the step: the new record is created at the next revision (still
  create-if-absent, so two writers still get one winner) and the old one is moved to
  quarantine.
- The commit request failed with no retry left: its answer may be what was lost, so
  the store is asked. This writer's record there means committed; none means not; a
  store that cannot be asked gives :class:`CommitUnknownError`.
- A commit that took long is checked afterwards: had a collector taken the payload
  meanwhile, the commit fails instead of resolving to a checkpoint with no data.

The result is a :class:`Committed` (the manifest and the record's key): building the
read-side :class:`~asynccp.Checkpoint` from it is the checkpointer's business.

A sharded writer commits differently once its payload is durable: it passes a
:data:`RecordHook` (:func:`asynccp._write._shards.commit_part`) that records its part
instead, and commits the step's manifest only when its part is the last.

On a store with the :class:`~asynccp._store.DurableCommits` capability (a durable local
directory) the payload is put unsynced and made durable with the record's bytes in one
journal commit while the previous checkpoint commits; the commit is then a link of the
prepared record. Small checkpoints saved back to back there commit as a group
(:mod:`asynccp._write._group`). Any other store gets plain puts and creates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import crc32c

from .. import _catalog as catalog
from .._catalog import Bad, Record
from .._groups import first_leaf
from .._layout import QUARANTINE, data_dir, manifest_key, payload_key
from .._manifest import FileInfo, Manifest, newer_format
from .._retention import quarantine
from .._shard_records import AnyManifest, Part, ShardedManifest, decode_record
from .._store import DurableCommits, Source, Store, call
from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CommitUnknownError,
    CorruptCheckpointError,
    ObjectExists,
    StepAlreadyCommittedError,
    StoreError,
    UploadError,
)
from ._stager import StagedFile

__all__ = [
    "PAYLOAD_CHECK_AFTER",
    "Committed",
    "RecordHook",
    "commit",
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
#: Revisions tried for one step before giving up (each is another writer's replacement).
_MAX_REVISIONS = 8
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


#: How a sharded checkpointer commits instead (:func:`asynccp._write._shards.commit_part`):
#: given the store, the part's manifest and the checkpoints known not to verify, it
#: records the part (and commits the step if it is the last) and returns it.
RecordHook = Callable[[Store, Manifest, Collection[Bad]], Awaitable[Committed]]


async def commit(
    store: Store,
    *,
    step: int,
    files: list[StagedFile],
    metadata: Mapping[str, Any],
    created_at: datetime,
    writer: str,
    attempt: int,
    limiter: anyio.CapacityLimiter,
    turn: Callable[[], Awaitable[Any]] | None = None,
    turn_taken: Callable[[], bool] | None = None,
    bad: Collection[Bad] = (),
    record: RecordHook | None = None,
) -> Committed:
    """Upload ``files`` as checkpoint ``step``, then commit its record.

    ``turn_taken``, when given, says whether ``turn`` is over already: a small
    checkpoint whose turn has come is then written, prepared and committed in one
    worker-thread trip (when its first revision is free, the usual case).

    ``turn``, when given, is awaited between the two: the previous checkpoint's commit
    (checkpoints commit in save order, while their payloads may upload side by side).
    ``bad`` lists checkpoints known not to verify: one found at this step is replaced.
    ``record``, when given, commits instead of the record's create (a sharded writer's
    part record), and its result is returned.

    Raises a :class:`CheckpointError` (:class:`UploadError` for a store failure) when
    the checkpoint did not commit; cancellation leaves its payload for the collector.
    """
    started = time.monotonic()
    await complete(files)
    folder = data_dir(step, writer)
    keys = [payload_key(folder, f.name) for f in files]
    commit_sent = False
    durable = store if isinstance(store, DurableCommits) else None

    def make_manifest() -> Manifest:
        return manifest_of(step, files, metadata, created_at, writer=writer, attempt=attempt)

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
            # One small buffer: written and prepared in one worker-thread trip (each
            # trip costs a wake-up on both sides: ~0.5-1.5 ms on a busy 2-core machine,
            # against ~3 ms for a whole durable 1 MiB put) — and committed in it too
            # when its turn has come already and its first revision is free. Anything
            # else (a record there, a failed create) goes the usual way below.
            may_link = (
                record is None
                and durable is not None
                and (turn is None or (turn_taken is not None and turn_taken()))
            )
            first = manifest_key(step)

            def put_and_prepare() -> tuple[Manifest, bytes, Any, bool]:
                _checksum_and_put(store, files[0], keys[0])
                made = make_manifest()
                body, prepared = prepare(made)
                if not may_link:
                    return made, body, prepared, False
                linking.set()  # from here on the record may exist: the payload stays
                try:
                    _create(store, first, body, prepared)
                except Exception:
                    return made, body, prepared, False  # judged below, as usual
                return made, body, None, True

            linking = threading.Event()
            try:
                manifest, body, prepared, created = await call(
                    store, put_and_prepare, key=keys[0], action="writing", limiter=limiter
                )
            finally:
                commit_sent = linking.is_set()
            if created:
                linked = first
        else:
            async with anyio.create_task_group() as tg:
                for f, key in zip(files, keys, strict=True):
                    tg.start_soon(_put_file, store, f, key, limiter)
            manifest = make_manifest()
            body, prepared = await call(store, prepare, manifest, key=folder, action="syncing")
        try:
            if turn is not None:
                await turn()
            commit_sent = True
            if record is not None:
                return await record(store, manifest, bad)
            if linked is not None:
                key = linked
            else:
                key = await _create_record(store, manifest, bad, body, prepared)
        except BaseException:
            if durable is not None and prepared is not None:  # a link removed it already
                with anyio.CancelScope(shield=True):
                    await call(store, durable.discard_prepared, prepared, key=folder)
            raise
        if time.monotonic() - started > PAYLOAD_CHECK_AFTER:
            await _check_payload(store, manifest)
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
            await _cleanup(store, keys)
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
        raise
    return Committed(manifest, key)


async def complete(files: Sequence[StagedFile]) -> None:
    """Finish the files whose bytes are completed after the snapshot (a training
    state's JSON: its chunk checksums, from the staged tensors), before anything reads
    them; in a worker thread, off the caller's path."""
    for f in files:
        if f.complete is not None:
            await anyio.to_thread.run_sync(f.complete, abandon_on_cancel=True)
            f.complete = None


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
            _checksum_and_put,
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


def _checksum_and_put(store: Store, f: StagedFile, key: str) -> None:
    data = f.data
    assert data is not None
    if f.crc32c is None:
        f.crc32c = crc32c.crc32c(data)
    _put_payload(store, key, data)


def _put_payload(store: Store, key: str, source: Source, *, move: bool = False) -> None:
    """Put a payload object: unsynced where the store makes it durable later (its
    ``prepare_create``: nothing trusts the object before a manifest names it)."""
    if isinstance(store, DurableCommits):
        store.put_unsynced(key, source, move=move)
    else:
        store.put(key, source, move=move)


def _create(store: Store, key: str, data: bytes, prepared: Any) -> None:
    """Create the record ``key`` if absent: a prepared one linked into place, else
    ``data`` written (ObjectExists either way when the key is taken)."""
    if prepared is None:
        store.create(key, data)
        return
    assert isinstance(store, DurableCommits)  # only such a store prepares
    store.link_prepared(prepared, key)


def one_small_buffer(files: Sequence[StagedFile]) -> bool:
    """Whether ``files`` is one buffer below :data:`_CHECKSUM_APART`: written (and
    checksummed, and prepared, and, its turn come, committed) in one worker-thread trip."""
    return len(files) == 1 and files[0].data is not None and files[0].size < _CHECKSUM_APART


def manifest_of(
    step: int,
    files: Sequence[StagedFile],
    metadata: Mapping[str, Any],
    created_at: datetime,
    *,
    writer: str,
    attempt: int,
) -> Manifest:
    """The manifest of ``files`` (their checksums computed already) as checkpoint ``step``."""
    return Manifest(
        step=step,
        writer=writer,
        attempt=attempt,
        created_at=created_at,
        metadata=metadata,
        files={f.name: FileInfo(f.size, _crc(f)) for f in files},
    )


def _crc(f: StagedFile) -> int:
    if f.crc32c is None:  # every path through _put_file sets it
        raise AssertionError(f"no checksum was computed for {f.name!r}")
    return f.crc32c


async def _checksum(f: StagedFile) -> None:
    data = f.data
    assert data is not None
    f.crc32c = await anyio.to_thread.run_sync(crc32c.crc32c, data, abandon_on_cancel=True)


async def _create_record(
    store: Store,
    manifest: AnyManifest,
    bad: Collection[Bad],
    body: bytes | None = None,
    prepared: Any = None,
) -> str:
    """Create the step's record (or its next revision); return the key that commits.

    ``body`` is the encoded manifest (encoded here when None); ``prepared``, what a
    :class:`~asynccp._store.DurableCommits` store's ``prepare_create`` made of it.

    Revisions of a step are never deleted one by one: a record that is replaced stays
    where it was as a *tombstone* (its content moved to ``quarantine/``), and only
    retention (or ``gc --invalid``) deletes a step's revisions, all together. So a
    create that succeeds at revision ``k`` found ``k`` free, and no revision above ``k``
    can exist: the record created is the step's record, with no listing to check it.
    """
    data = manifest.encode() if body is None else body
    rev = 0
    for _ in range(_MAX_REVISIONS):
        key = manifest_key(manifest.step, rev)
        try:
            await call(
                store,
                partial(_create, store, key, data, prepared),
                key=key,
                action="committing",
            )
            break
        except ObjectExists:
            pass
        except StoreError as e:
            await _look_after_failure(store, manifest, key, e)  # raises unless it was ours
            break
        rev = await _judge_existing(store, manifest, bad)
        if rev < 0:  # the record there is ours: a retried request whose first try landed
            key = (await catalog.records(store, manifest.step))[-1].key
            break
    else:
        raise UploadError(
            f"step {manifest.step} in {store.description}: {_MAX_REVISIONS} replacements "
            "of its record were lost to other writers in a row; giving up"
        )
    if key != manifest_key(manifest.step):  # a replacement: what it replaced becomes a tombstone
        await _quarantine_older(store, manifest.step, key)
    return key


async def _judge_existing(store: Store, manifest: AnyManifest, bad: Collection[Bad]) -> int:
    """The step's record exists: -1 if it is ours, else the revision to replace it at.

    Raises :class:`StepAlreadyCommittedError` when it is another writer's checkpoint
    that verifies (or one asynccp cannot judge: a newer format).
    """
    step = manifest.step
    found = await catalog.records(store, step)
    if not found:
        raise StepAlreadyCommittedError(
            f"step {step} was committed in {store.description} by another writer and "
            "deleted since (retention has moved past it); save a later step"
        )
    record = found[-1]
    ours = manifest.encode() if isinstance(manifest, ShardedManifest) else None
    why = await _why_replaceable(store, record, manifest.writer, bad, ours)
    if why == "ours":
        return -1
    if why is None:
        raise StepAlreadyCommittedError(
            f"step {step} is already committed in {store.description} by another "
            f"writer (this writer is {manifest.writer}). Another process may be writing "
            "the same location; resume with `await cp.load_latest(...)` and save a later step."
        )
    log.warning(
        "asynccp: step %d in %s: %s; replacing it (the old record goes to %s)",
        step,
        store.description,
        why,
        QUARANTINE,
    )
    return record.rev + 1


async def _why_replaceable(
    store: Store,
    record: Record,
    writer: str,
    bad: Collection[Bad],
    ours: bytes | None = None,
) -> str | None:
    """Why the checkpoint ``record`` commits may be replaced; None if it must stay.

    ``ours``, for a sharded step, is the manifest this shard would write: the same
    part records give the same bytes, so a record of the same commit must be identical.
    """
    gone = StepAlreadyCommittedError(
        f"step {record.step} in {store.description} was committed by another "
        "writer and deleted since; save a later step"
    )
    try:
        raw = await call(store, store.get, record.key, key=record.key, action="reading")
    except FileNotFoundError:
        raise gone from None
    try:
        existing = decode_record(raw, key=record.key)
    except CorruptCheckpointError as e:
        if newer_format(raw):
            return None  # written by a newer asynccp: not ours to judge
        return f"its record is invalid ({e})"
    if existing.writer == writer:
        # Ours: a retried request whose first try landed, or (a sharded step, whose
        # manifest is a function of its part records) the same commit by another shard.
        if ours is None or raw == ours:
            return "ours"
        return "its record names this step's part records but differs from them"
    if not await catalog.is_complete(store, existing):
        return "its payload objects are missing or truncated"
    if (existing.step, existing.writer) in bad:
        return "it failed verification when it was read"
    try:
        await catalog.verify(store, existing)
    except CorruptCheckpointError as e:
        if not await catalog.still_committed(store, record.key):
            raise gone from None
        return f"it fails verification ({e})"
    return None


async def _look_after_failure(
    store: Store, manifest: AnyManifest, key: str, error: StoreError
) -> None:
    """The request creating ``key`` failed: was it created all the same (a lost answer)?

    Returns if ``key`` holds this writer's record; raises :class:`UploadError` when it
    does not, and :class:`CommitUnknownError` when the store cannot be asked. Either way
    the payload stays (a request still in flight may yet land; if not, the orphan
    collector takes it).
    """
    step = manifest.step
    cause = error.__cause__ or error
    try:
        try:
            existing = await catalog.read_manifest(store, Record(step, key, 0))
        except (CorruptCheckpointError, CheckpointNotFoundError):
            existing = None
        if existing is not None and existing.writer == manifest.writer:
            log.warning(
                "asynccp: step %d: the answer to its commit was lost (%s), but the "
                "store holds its record: committed",
                step,
                cause,
            )
            return
    except StoreError as e:
        raise CommitUnknownError(
            f"checkpoint step {step} in {store.description}: the commit request failed "
            f"({cause}) and the store could not be asked whether it landed ({e}); it may or "
            "may not be committed. Its payload is kept; the next reader decides."
        ) from cause
    raise UploadError(
        f"checkpoint step {step} was not committed to {store.description}: {cause}"
    ) from cause


async def _check_payload(store: Store, manifest: AnyManifest) -> None:
    if not await catalog.is_complete(store, manifest):
        raise UploadError(
            f"checkpoint step {manifest.step} in {store.description}: its payload "
            f"({manifest.data}) was deleted while it committed (another process collected "
            "it as abandoned), so its record is invalid and readers skip it. Saving the "
            "step again replaces it."
        )


async def _quarantine_older(store: Store, step: int, key: str) -> None:
    """Turn the records below ``key`` (invalid ones it replaced) into tombstones, their
    content copied to quarantine.

    Best effort: a record left as it was is harmless (the highest revision commits).
    """
    try:
        found = await catalog.records(store, step)
        if not found or found[-1].key != key:
            return  # replaced again since (ours was found bad): the replacer tidies up
        for old in found[-1].superseded:
            await quarantine(store, old, tombstone_for=key)
    except Exception as e:
        log.warning("asynccp: could not move old records of step %d aside: %s", step, e)


async def _cleanup(store: Store, keys: list[str]) -> None:
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
