"""Deleting what is no longer needed: old checkpoints, and payload nobody committed.

Retention keeps the newest ``keep`` *valid* checkpoints plus every valid step divisible
by ``keep_every`` (the milestones), and deletes only valid checkpoints older than those:
an invalid checkpoint never counts towards ``keep`` (so a broken newest record can never
push the last good checkpoint out) and is never deleted by retention — ``asynccp ls`` and
``verify`` show it, and only an explicit ``asynccp gc --invalid ...`` removes it or moves
it to quarantine. A checkpoint is deleted manifest first, so it stops being committed
before any of its payload goes.

Orphans are payload folders no manifest points to: a crashed writer's upload, the
loser of a two-writer race, temporary files of an interrupted local write. They are
collected once they are older than a grace period *by the store's clock*, and never
while their writer holds a live lease (:mod:`asynccp._leases`): an upload still in
flight in another process is never touched, however slow its commit.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import MutableMapping
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread

from . import _catalog as catalog
from ._catalog import Record
from ._leases import drop, read_leases
from ._location import Location, ObjectInfo
from ._manifest import DATA, QUARANTINE, parse_data_dir
from ._shard_records import decode_record, folders_of, owned_prefixes
from ._shards import sweep_parts
from ._upload import is_tombstone, quarantine
from .errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = [
    "apply_retention",
    "collect_orphans",
    "delete_record",
    "invalid_records",
    "steps_to_delete",
]

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


async def delete_record(location: Location, record: Record, folder: str | list[str] | None) -> None:
    """Delete one checkpoint: its manifest (every revision), then its payload ``folder``
    (a sharded step: every part's folder, then its part records).

    With ``folder`` None (a record too broken to name one) the payload is left to the
    orphan collector.
    """
    await _call(location.delete, [record.key, *record.superseded])
    for prefix in [folder] if isinstance(folder, str) else folder or []:
        objs = await _call(location.list, prefix + "/")
        await _call(location.delete, [o.key for o in objs])


async def apply_retention(
    location: Location,
    keep: int | None,
    keep_every: int | None,
    *,
    known_valid: MutableMapping[str, list[str]] | None = None,
) -> list[int]:
    """Delete the valid checkpoints retention does not keep; return their steps.

    ``known_valid`` caches the records found valid (key → payload folders; a
    checkpointer's own commits go straight in): each record is checked once, not at
    every commit.
    """
    if keep is None:
        return []
    cache: MutableMapping[str, list[str]] = {} if known_valid is None else known_valid
    valid: list[tuple[Record, list[str]]] = []  # oldest first, with what deleting removes
    for record in await catalog.records(location):
        folders = cache.get(record.key)
        if folders is None:
            try:
                folders = owned_prefixes(await catalog.validate(location, record))
            except (CorruptCheckpointError, CheckpointNotFoundError):
                continue  # never counted, never deleted here
            cache[record.key] = folders
        valid.append((record, folders))
    doomed = set(steps_to_delete([r.step for r, _ in valid], keep, keep_every))
    deleted = []
    for record, folder in valid:
        if record.step in doomed:
            await delete_record(location, record, folder)
            cache.pop(record.key, None)
            deleted.append(record.step)
    return deleted


async def invalid_records(location: Location) -> list[tuple[Record, str]]:
    """Every committed record that is not valid, with the reason (oldest first)."""
    out = []
    for record in await catalog.records(location):
        try:
            await catalog.validate(location, record)
        except CheckpointNotFoundError:
            continue
        except CorruptCheckpointError as e:
            out.append((record, str(e)))
    return out


async def remove_invalid(location: Location, *, how: str) -> list[int]:
    """Move every invalid record to quarantine (``how="quarantine"``) or delete it and
    its payload (``how="delete"``); valid checkpoints are not touched. Return the steps."""
    if how not in ("quarantine", "delete"):
        raise ValueError(f"how must be 'quarantine' or 'delete', got {how!r}")
    steps = []
    for record, _why in await invalid_records(location):
        if how == "quarantine":
            for key in (*record.superseded, record.key):
                await quarantine(location, key)
        else:
            await delete_record(location, record, await _folders_of(location, record.key))
        steps.append(record.step)
    return steps


async def _folders_of(location: Location, key: str, raw: bytes | None = None) -> list[str] | None:
    """The payload folders a manifest names, or None when it cannot be read."""
    try:
        if raw is None:
            raw = await _call(location.get, key)
        return folders_of(decode_record(raw, key=key))
    except (FileNotFoundError, CorruptCheckpointError):
        return None


async def collect_orphans(
    location: Location,
    grace: timedelta,
    *,
    writer: str | None = None,
    generation: str | None = None,
) -> list[str]:
    """Delete payload folders no manifest points to, older than ``grace``, and the part
    records of sharded steps whose launch is gone without completing them; return them
    (``data/<step>-<writer>`` and ``parts/<step>/<generation>`` folders).

    Ages are measured by the store's clock (the collector's lease, just rewritten, says
    what time it is there; it names ``generation`` when the collector is a sharded
    writer). Never collected: folders of a writer with a live lease (``writer``, the
    collector's own, always is), folders a committed or quarantined manifest names. A
    manifest's temporary file is a few milliseconds' work, so one is only taken once it
    is older than ``grace`` *and* ten minutes.
    """
    collector = writer or f"gc{secrets.token_hex(6)}"
    leases = await read_leases(location, collector, generation)
    try:
        now = leases.now
        cutoff = now - grace
        objs = await _call(location.list, DATA)
        folders: dict[str, list[ObjectInfo]] = defaultdict(list)
        for o in objs:
            folders["/".join(o.key.split("/")[:2])].append(o)
        # Part records of sharded steps nobody will complete go first (then their
        # payload below); the payload their live generations name is kept.
        protected, swept = await sweep_parts(location, leases, cutoff)
        candidates: dict[str, tuple[int, list[ObjectInfo]]] = {}
        stale_tmp: list[str] = []
        for folder, contents in sorted(folders.items()):
            parsed = parse_data_dir(folder)
            if parsed is None or parsed[1] == collector or leases.alive(parsed[1]):
                continue
            stale_tmp += [o.key for o in contents if _stale_tmp(o, cutoff)]
            if max(o.last_modified for o in contents) < cutoff:
                candidates[folder] = (parsed[0], contents)
        named, unreadable = await _referenced(location, {s for s, _ in candidates.values()})
        doomed: list[str] = []
        for folder, (step, contents) in candidates.items():
            if folder in named or step in unreadable or folder in protected:
                continue
            doomed.append(folder)
            await _call(location.delete, [o.key for o in contents])
        manifests = await _call(location.list, "manifests/")
        tmp_cutoff = min(cutoff, now - MANIFEST_TMP_AGE)
        stale_tmp += [o.key for o in manifests if _stale_tmp(o, tmp_cutoff)]
        stale_tmp += leases.expired()
        if stale_tmp:
            await _call(location.delete, stale_tmp)
    finally:
        if writer is None:  # a one-off collector (the command line): its lease goes
            await drop(location, collector)
    if doomed:
        log.info("collected %d orphaned payload folder(s) in %s", len(doomed), location.description)
    if swept:
        log.info(
            "collected %d abandoned part record folder(s) in %s", len(swept), location.description
        )
    return doomed + swept


async def _referenced(location: Location, steps: set[int]) -> tuple[set[str], set[int]]:
    """Of the candidate ``steps``: the payload folders a manifest names (committed, any
    revision, or quarantined: kept for inspection with their data), and the steps with
    a manifest too broken to name its folder (every folder of those is kept)."""
    named: set[str] = set()
    unreadable: set[int] = set()
    if not steps:
        return named, unreadable
    keys = [
        (r.step, k)
        for r in await catalog.records(location)
        if r.step in steps
        for k in (*r.superseded, r.key)
    ]
    for o in await _call(location.list, QUARANTINE):
        head = o.key[len(QUARANTINE) : len(QUARANTINE) + 20]
        if head.isdigit() and int(head) in steps:
            keys.append((int(head), o.key))
    for step, key in keys:
        try:
            raw = await _call(location.get, key)
        except FileNotFoundError:
            continue
        if is_tombstone(raw):
            continue  # a replaced record: its copy in quarantine/ is among the keys
        folders = await _folders_of(location, key, raw)
        if folders is None:
            unreadable.add(step)
        else:
            named.update(folders)
    return named, unreadable
