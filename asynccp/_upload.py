"""Uploading one staged checkpoint: payload objects first, then the manifest that commits.

The payload goes to a folder private to this writer (``data/<step>-<writer>/``), its
files in parallel, large ones as multipart uploads. Only when every object is durable
is the manifest created, with create-if-absent: that single conditional put is the
commit. If another writer committed the step first, this writer's payload is deleted
and the step reports :class:`StepAlreadyCommittedError`; data never mixes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import crc32c

from ._groups import first_leaf
from ._handle import SaveHandle
from ._location import Location, ObjectExists
from ._manifest import FileInfo, Manifest, data_dir, manifest_key
from ._payload import StagedFile
from ._restore import Checkpoint
from .errors import (
    CheckpointError,
    CorruptCheckpointError,
    StepAlreadyCommittedError,
    UploadError,
)

__all__ = ["Pending", "upload"]

log = logging.getLogger("asynccp")
CLEANUP_SECONDS = 10.0


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
) -> Checkpoint:
    """Upload ``item``'s payload, then commit its manifest; return the checkpoint.

    ``turn``, when given, is awaited between the two: the previous checkpoint's commit
    (checkpoints commit in save order, while their payloads may upload side by side).
    """
    folder = data_dir(item.step, writer)
    keys = [f"{folder}/{f.name}" for f in item.files]
    commit_sent = False
    try:
        async with anyio.create_task_group() as tg:
            for f, key in zip(item.files, keys, strict=True):
                tg.start_soon(_put_file, location, f, key, limiter)
        await anyio.to_thread.run_sync(location.sync_folders, keys)
        manifest = Manifest(
            step=item.step,
            writer=writer,
            attempt=attempt,
            created_at=item.created_at,
            metadata=item.metadata,
            files={f.name: FileInfo(f.size, _crc(f)) for f in item.files},
        )
        if turn is not None:
            await turn()
        commit_sent = True
        await _commit(location, manifest)
    except BaseException as e:
        # Once the manifest may have reached the store, the payload must stay: a commit
        # whose answer was lost (a timeout, an abandoned request) would otherwise point
        # at deleted objects. If it did not commit, the orphan collector removes it.
        # A cancelled upload (the exit flush ran out of time) does not clean up at all:
        # the store may be the reason, and the exit must not wait for it.
        leaf = first_leaf(e)
        cancelled = isinstance(leaf, anyio.get_cancelled_exc_class())
        if not cancelled and (not commit_sent or isinstance(e, StepAlreadyCommittedError)):
            await _cleanup(location, keys)
        if isinstance(leaf, CheckpointError):
            raise leaf from leaf.__cause__
        if isinstance(leaf, Exception):
            raise UploadError(
                f"checkpoint step {item.step} was not committed to {location.description}: {leaf}"
            ) from leaf
        raise
    return Checkpoint._from_manifest(manifest, location)


async def _put_file(
    location: Location, f: StagedFile, key: str, limiter: anyio.CapacityLimiter
) -> None:
    """Upload one file; a buffer's checksum is computed while its bytes are written."""
    # Abandonable: only a flush timeout cancels the uploader, and then it must not wait
    # for a request that may hang until obstore's retry_timeout.
    if f.data is None:
        assert f.path is not None
        await anyio.to_thread.run_sync(
            partial(location.put, key, f.path, move=True), limiter=limiter, abandon_on_cancel=True
        )
        return
    async with anyio.create_task_group() as tg:
        if f.crc32c is None:
            tg.start_soon(_checksum, f)
        await anyio.to_thread.run_sync(
            location.put, key, f.data, limiter=limiter, abandon_on_cancel=True
        )


def _crc(f: StagedFile) -> int:
    if f.crc32c is None:  # every path through _put_file sets it
        raise AssertionError(f"no checksum was computed for {f.name!r}")
    return f.crc32c


async def _checksum(f: StagedFile) -> None:
    data = f.data
    assert data is not None
    f.crc32c = await anyio.to_thread.run_sync(crc32c.crc32c, data, abandon_on_cancel=True)


async def _commit(location: Location, manifest: Manifest) -> None:
    key = manifest_key(manifest.step)
    try:
        await anyio.to_thread.run_sync(
            location.create, key, manifest.encode(), abandon_on_cancel=True
        )
    except ObjectExists:
        # A retried PUT whose first try landed looks like a conflict: check whose it is.
        try:
            raw = await anyio.to_thread.run_sync(location.get, key)
            winner = Manifest.decode(raw, key=key).writer
        except (CorruptCheckpointError, FileNotFoundError):
            winner = "unknown"
        if winner == manifest.writer:
            return
        raise StepAlreadyCommittedError(
            f"step {manifest.step} is already committed in {location.description} "
            f"(by writer {winner}; this writer is {manifest.writer}). Another process may be "
            "writing the same location; resume from `await cp.latest()` and save a later step."
        ) from None


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
