"""Deleting what is no longer needed: old checkpoints, and payload nobody committed.

Retention keeps the newest ``keep`` checkpoints plus every step divisible by
``keep_every`` (the milestones). A checkpoint is deleted manifest first, so it stops
being committed before any of its payload goes, and a reader never sees a manifest
whose objects vanished under it by design.

Orphans are payload folders no manifest points to: a crashed writer's upload, the
loser of a two-writer race, temporary files of an interrupted local write. They are
collected once they are older than a grace period, so an upload still in flight in
another process is never touched.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio.to_thread

from ._location import Location, ObjectInfo
from ._manifest import DATA, Manifest, manifest_key, parse_data_dir
from ._restore import list_steps
from .errors import CorruptCheckpointError

__all__ = ["apply_retention", "collect_orphans", "steps_to_delete"]

log = logging.getLogger("asynccp")
TMP_SUFFIX = ".asynccp-tmp"
MANIFEST_TMP_AGE = timedelta(minutes=10)


def _stale_tmp(o: ObjectInfo, cutoff: datetime) -> bool:
    """A temporary file of an interrupted local write, older than ``cutoff``."""
    return o.key.endswith(TMP_SUFFIX) and o.last_modified < cutoff


async def _call(fn: Any, *args: Any) -> Any:
    """A store call in a worker thread, abandoned (not awaited) if housekeeping is cancelled.

    Housekeeping is cut short when the exit flush runs out of time; it must not hold
    the exit for as long as a hung request takes to give up.
    """
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def steps_to_delete(steps: list[int], keep: int | None, keep_every: int | None) -> list[int]:
    """Which committed ``steps`` retention removes (ascending ``steps`` in, ascending out)."""
    if keep is None:
        return []
    kept = set(steps[-keep:]) if keep else set()
    if keep_every:
        kept |= {s for s in steps if s % keep_every == 0}
    return [s for s in steps if s not in kept]


async def delete_step(location: Location, step: int) -> None:
    """Delete one checkpoint: its manifest, then the payload folder it names.

    A manifest too broken to name its folder is deleted all the same; its payload is
    then an orphan, and the orphan collector takes it.
    """
    folder = None
    key = manifest_key(step)
    try:
        raw = await _call(location.get, key)
        folder = Manifest.decode(raw, key=key).data
    except (FileNotFoundError, CorruptCheckpointError):
        pass
    await _call(location.delete, [key])
    if folder is not None:
        objs = await _call(location.list, folder + "/")
        await _call(location.delete, [o.key for o in objs])


async def apply_retention(
    location: Location, keep: int | None, keep_every: int | None
) -> list[int]:
    """Delete the checkpoints retention does not keep; return their steps."""
    doomed = steps_to_delete(await list_steps(location), keep, keep_every)
    for step in doomed:
        await delete_step(location, step)
    return doomed


async def collect_orphans(
    location: Location, grace: timedelta, *, writer: str | None = None
) -> list[str]:
    """Delete payload folders no manifest points to, older than ``grace``; return them.

    ``writer`` is the collecting checkpointer's own id: its folders are never touched
    (the next checkpoint's payload may be uploading right now; its failures clean up
    after themselves). A manifest's temporary file is a few milliseconds' work, so one
    is only taken once it is older than ``grace`` *and* ten minutes.
    """
    now = datetime.now(timezone.utc)
    cutoff = now - grace
    objs = await _call(location.list, DATA)
    folders: dict[str, list[ObjectInfo]] = defaultdict(list)
    for o in objs:
        folders["/".join(o.key.split("/")[:2])].append(o)
    committed = set(await list_steps(location))
    doomed: list[str] = []
    stale_tmp: list[str] = []
    for folder, contents in sorted(folders.items()):
        parsed = parse_data_dir(folder)
        if parsed is None or parsed[1] == writer:
            continue
        step, owner = parsed
        stale_tmp += [o.key for o in contents if _stale_tmp(o, cutoff)]
        if max(o.last_modified for o in contents) >= cutoff:
            continue
        if step in committed and await _writer_of(location, step) in (owner, None):
            continue
        doomed.append(folder)
        await _call(location.delete, [o.key for o in contents])
    manifests = await _call(location.list, "manifests/")
    stale_tmp += [o.key for o in manifests if _stale_tmp(o, min(cutoff, now - MANIFEST_TMP_AGE))]
    if stale_tmp:
        await _call(location.delete, stale_tmp)
    if doomed:
        log.info("collected %d orphaned payload folder(s) in %s", len(doomed), location.description)
    return doomed


async def _writer_of(location: Location, step: int) -> str | None:
    """The writer a committed manifest names; None when it cannot be read (keep the data)."""
    key = manifest_key(step)
    try:
        return Manifest.decode(await _call(location.get, key), key=key).writer
    except (FileNotFoundError, CorruptCheckpointError):
        return None
