"""Uploading one staged checkpoint: payload objects first, then the manifest that commits.

The payload goes to a folder private to this writer (``data/<step>-<writer>/``), its
files in parallel, large ones as multipart uploads. Only when every object is durable
is the manifest created, with create-if-absent: that single conditional put is the
commit. Data never mixes:

- The step's record already exists: if it is this writer's (a retried request whose
  first try landed), the commit succeeded. If it is another writer's valid checkpoint
  that verifies, this writer's payload is deleted and the step reports
  :class:`StepAlreadyCommittedError`. If it is invalid, or known not to verify, it never
  blocks the step: the new manifest is created at the next revision (still
  create-if-absent, so two writers still get one winner) and the old record is moved to
  ``quarantine/``.
- The commit request failed with no retry left: its answer may be what was lost, so
  the store is asked. This writer's record there means committed; none means not; a
  store that cannot be asked gives :class:`CommitUnknownError`.
- A commit that took long is checked afterwards: had a collector taken the payload
  meanwhile, the handle fails instead of resolving to a checkpoint with no data.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import crc32c

from . import _catalog as catalog
from ._catalog import Bad, Record
from ._groups import first_leaf
from ._handle import SaveHandle
from ._location import Location, ObjectExists
from ._manifest import FORMAT, QUARANTINE, FileInfo, Manifest, data_dir, manifest_key
from ._payload import StagedFile
from ._restore import Checkpoint
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CommitUnknownError,
    CorruptCheckpointError,
    StepAlreadyCommittedError,
    StoreError,
    UploadError,
)

__all__ = ["Pending", "upload"]

log = logging.getLogger("asynccp")
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


@dataclass(eq=False)
class Pending:
    """A checkpoint staged by ``save()`` and waiting for (or in) upload."""

    step: int
    files: list[StagedFile]
    metadata: dict[str, Any]
    created_at: datetime
    handle: SaveHandle
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(f.size for f in self.files)


async def upload(
    location: Location,
    item: Pending,
    *,
    writer: str,
    attempt: int,
    limiter: anyio.CapacityLimiter,
    turn: Callable[[], Awaitable[Any]] | None = None,
    bad: Collection[Bad] = (),
) -> Checkpoint:
    """Upload ``item``'s payload, then commit its manifest; return the checkpoint.

    ``turn``, when given, is awaited between the two: the previous checkpoint's commit
    (checkpoints commit in save order, while their payloads may upload side by side).
    ``bad`` lists checkpoints known not to verify: one found at this step is replaced.
    """
    started = time.monotonic()
    folder = data_dir(item.step, writer)
    keys = [f"{folder}/{f.name}" for f in item.files]
    commit_sent = False
    try:
        async with anyio.create_task_group() as tg:
            for f, key in zip(item.files, keys, strict=True):
                tg.start_soon(_put_file, location, f, key, limiter)
        manifest = Manifest(
            step=item.step,
            writer=writer,
            attempt=attempt,
            created_at=item.created_at,
            metadata=item.metadata,
            files={f.name: FileInfo(f.size, _crc(f)) for f in item.files},
        )
        body = manifest.encode()
        # On a local durable store the payload and the record's bytes become durable
        # now, in one journal commit, while the previous checkpoint commits: the commit
        # itself is then one link and one folder fsync. Elsewhere this does nothing.
        prepared = await anyio.to_thread.run_sync(
            partial(location.prepare_create, folder, body, sync=keys)
        )
        try:
            if turn is not None:
                await turn()
            commit_sent = True
            key = await _commit(location, manifest, bad, body, prepared)
        except BaseException:
            if prepared is not None:  # linked by a commit, it is gone already
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(location.discard_prepared, prepared)
            raise
        if time.monotonic() - started > PAYLOAD_CHECK_AFTER:
            await _check_payload(location, manifest, key)
    except BaseException as e:
        # Once the manifest may have reached the store, the payload must stay: a commit
        # whose answer was lost (a timeout, an abandoned request) would otherwise point
        # at deleted objects. If it did not commit, the orphan collector removes it.
        # A cancelled upload (the exit flush ran out of time) does not clean up at all:
        # the store may be the reason, and the exit must not wait for it.
        leaf = first_leaf(e)
        cancelled = isinstance(leaf, anyio.get_cancelled_exc_class())
        lost = isinstance(leaf, StepAlreadyCommittedError)
        if not cancelled and (not commit_sent or lost):
            await _cleanup(location, keys)
        if isinstance(leaf, CheckpointError):
            raise leaf from leaf.__cause__
        if isinstance(leaf, Exception):
            raise UploadError(
                f"checkpoint step {item.step} was not committed to {location.description}: {leaf}"
            ) from leaf
        raise
    return Checkpoint._from_manifest(manifest, location, key=key)


async def _put_file(
    location: Location, f: StagedFile, key: str, limiter: anyio.CapacityLimiter
) -> None:
    """Upload one file; a buffer's checksum is computed while its bytes are written."""
    # Abandonable: only a flush timeout cancels the uploader, and then it must not wait
    # for a request that may hang until obstore's retry_timeout.
    if f.data is None:
        assert f.path is not None
        await anyio.to_thread.run_sync(
            partial(location.put, key, f.path, move=True, checked=True),
            limiter=limiter,
            abandon_on_cancel=True,
        )
        return
    if f.size < _CHECKSUM_APART:  # one thread trip: checksum, then write
        await anyio.to_thread.run_sync(
            _checksum_and_put, location, f, key, limiter=limiter, abandon_on_cancel=True
        )
        return
    async with anyio.create_task_group() as tg:
        if f.crc32c is None:
            tg.start_soon(_checksum, f)
        await anyio.to_thread.run_sync(
            partial(location.put, key, f.data, checked=True),
            limiter=limiter,
            abandon_on_cancel=True,
        )


def _checksum_and_put(location: Location, f: StagedFile, key: str) -> None:
    data = f.data
    assert data is not None
    if f.crc32c is None:
        f.crc32c = crc32c.crc32c(data)
    location.put(key, data, checked=True)


def _crc(f: StagedFile) -> int:
    if f.crc32c is None:  # every path through _put_file sets it
        raise AssertionError(f"no checksum was computed for {f.name!r}")
    return f.crc32c


async def _checksum(f: StagedFile) -> None:
    data = f.data
    assert data is not None
    f.crc32c = await anyio.to_thread.run_sync(crc32c.crc32c, data, abandon_on_cancel=True)


async def _commit(
    location: Location,
    manifest: Manifest,
    bad: Collection[Bad],
    body: bytes,
    prepared: Path | None = None,
) -> str:
    """Create the step's record (or its next revision); return the key that commits.

    ``body`` is the encoded manifest; ``prepared``, its durable temporary copy (see
    :meth:`Location.prepare_create`).
    """
    rev = 0
    for _ in range(_MAX_REVISIONS):
        key = manifest_key(manifest.step, rev)
        try:
            await anyio.to_thread.run_sync(
                partial(location.create, key, body, prepared=prepared), abandon_on_cancel=True
            )
            break
        except ObjectExists:
            pass
        except Exception as e:
            await _look_after_failure(location, manifest, e)  # raises unless it was ours
            break
        rev = await _judge_existing(location, manifest, bad)
        if rev < 0:  # the record there is ours: a retried request whose first try landed
            key = (await catalog.records(location, manifest.step))[-1].key
            break
    else:
        raise UploadError(
            f"step {manifest.step} in {location.description}: {_MAX_REVISIONS} replacements "
            "of its record were lost to other writers in a row; giving up"
        )
    if key != manifest_key(manifest.step):  # a first revision replaces nothing
        await _quarantine_older(location, manifest.step, key)
    return key


async def _judge_existing(location: Location, manifest: Manifest, bad: Collection[Bad]) -> int:
    """The step's record exists: -1 if it is ours, else the revision to replace it at.

    Raises :class:`StepAlreadyCommittedError` when it is another writer's checkpoint
    that verifies (or one asynccp cannot judge: a newer format).
    """
    step = manifest.step
    found = await catalog.records(location, step)
    if not found:
        raise StepAlreadyCommittedError(
            f"step {step} was committed in {location.description} by another writer and "
            "deleted since (retention has moved past it); save a later step"
        )
    record = found[-1]
    why = await _why_replaceable(location, record, manifest.writer, bad)
    if why == "ours":
        return -1
    if why is None:
        raise StepAlreadyCommittedError(
            f"step {step} is already committed in {location.description} by another "
            f"writer (this writer is {manifest.writer}). Another process may be writing "
            "the same location; resume with `await cp.load_latest(...)` and save a later step."
        )
    log.warning(
        "asynccp: step %d in %s: %s; replacing it (the old record goes to %s)",
        step,
        location.description,
        why,
        QUARANTINE,
    )
    return record.rev + 1


async def _why_replaceable(
    location: Location, record: Record, writer: str, bad: Collection[Bad]
) -> str | None:
    """Why the checkpoint ``record`` commits may be replaced; None if it must stay."""
    try:
        raw = await catalog.store_call(location, location.get, record.key)
    except FileNotFoundError:
        raise StepAlreadyCommittedError(
            f"step {record.step} in {location.description} was committed by another "
            "writer and deleted since; save a later step"
        ) from None
    try:
        existing = Manifest.decode(raw, key=record.key)
    except CorruptCheckpointError as e:
        if _newer_format(raw):
            return None  # written by a newer asynccp: not ours to judge
        return f"its record is invalid ({e})"
    if existing.writer == writer:
        return "ours"
    ckpt = Checkpoint._from_manifest(existing, location, key=record.key)
    if not await catalog.is_complete(ckpt):
        return "its payload objects are missing or truncated"
    if (existing.step, existing.writer) in bad:
        return "it failed verification when it was read"
    try:
        await ckpt.verify()
    except CorruptCheckpointError as e:
        if not await catalog.still_committed(location, record.key):
            raise StepAlreadyCommittedError(
                f"step {record.step} in {location.description} was committed by another "
                "writer and deleted since; save a later step"
            ) from None
        return f"it fails verification ({e})"
    return None


def _newer_format(raw: bytes) -> bool:
    try:
        fmt = json.loads(raw).get("format")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT


async def _look_after_failure(location: Location, manifest: Manifest, error: Exception) -> None:
    """The commit request failed: was it committed all the same (a lost answer)?

    Returns if this writer's record is there; raises :class:`UploadError` when the
    store shows none, and :class:`CommitUnknownError` when it cannot be asked. Either
    way the payload stays (a request still in flight may yet land; if not, the orphan
    collector takes it).
    """
    step = manifest.step
    try:
        for record in reversed(await catalog.records(location, step)):
            try:
                existing = await catalog.load_record(location, record)
            except (CorruptCheckpointError, CheckpointNotFoundError):
                continue
            if existing.writer == manifest.writer:
                log.warning(
                    "asynccp: step %d: the answer to its commit was lost (%s), but the "
                    "store holds its record: committed",
                    step,
                    error,
                )
                return
    except StoreError as e:
        raise CommitUnknownError(
            f"checkpoint step {step} in {location.description}: the commit request failed "
            f"({error}) and the store could not be asked whether it landed ({e}); it may or "
            "may not be committed. Its payload is kept; the next reader decides."
        ) from error
    raise UploadError(
        f"checkpoint step {step} was not committed to {location.description}: {error}"
    ) from error


async def _check_payload(location: Location, manifest: Manifest, key: str) -> None:
    ckpt = Checkpoint._from_manifest(manifest, location, key=key)
    if not await catalog.is_complete(ckpt):
        raise UploadError(
            f"checkpoint step {manifest.step} in {location.description}: its payload "
            f"({manifest.data}) was deleted while it committed (another process collected "
            "it as abandoned), so its record is invalid and readers skip it. Saving the "
            "step again replaces it."
        )


async def _quarantine_older(location: Location, step: int, key: str) -> None:
    """Move the records below ``key`` (invalid ones it replaced) to ``quarantine/``.

    Best effort: a record left in place is harmless (the highest revision commits).
    """
    try:
        found = await catalog.records(location, step)
        if not found or found[-1].key != key:
            return  # replaced again since (ours was found bad): the replacer tidies up
        for old in found[-1].superseded:
            await quarantine(location, old)
    except Exception as e:
        log.warning("asynccp: could not move old records of step %d aside: %s", step, e)


async def quarantine(location: Location, key: str) -> str | None:
    """Copy the manifest ``key`` into ``quarantine/`` and delete it; return the new key."""
    try:
        raw = await catalog.store_call(location, location.get, key)
    except FileNotFoundError:
        return None
    name = key.rsplit("/", 1)[-1].removesuffix(".json")
    target = f"{QUARANTINE}{name}-{secrets.token_hex(4)}.json"
    await catalog.store_call(location, location.create, target, raw)
    await catalog.store_call(location, location.delete, [key])
    log.warning("asynccp: moved %s in %s to %s", key, location.description, target)
    return target


async def _cleanup(location: Location, keys: list[str]) -> None:
    """Delete a failed checkpoint's payload, best effort and briefly.

    A store that just failed an upload may not answer deletes either: after
    ``CLEANUP_SECONDS`` the failure is reported anyway, and the orphan collector gets
    what is left.
    """
    with anyio.move_on_after(CLEANUP_SECONDS):
        try:
            await anyio.to_thread.run_sync(location.delete, keys, abandon_on_cancel=True)
            return
        except Exception as e:
            log.warning("could not delete the payload of a failed checkpoint: %s", e)
            return
    log.warning("gave up deleting the payload of a failed checkpoint after %s s", CLEANUP_SECONDS)
