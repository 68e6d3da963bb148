"""Deleting what is no longer needed: old checkpoints, and payload nobody committed.

Retention keeps the newest ``keep`` *valid* checkpoints plus every valid step divisible
by ``keep_every`` (the milestones), and deletes only valid checkpoints older than those:
an invalid checkpoint never counts towards ``keep`` (so a broken newest record can never
push the last good checkpoint out) and is never deleted by retention — ``asynccp ls`` and
``verify`` show it, and only an explicit :func:`remove_invalid` (``asynccp gc``) removes
it or moves it to quarantine. A checkpoint is deleted record first, so it stops being
committed before any of its payload goes.

Orphans are payload folders no record points to: a crashed writer's upload, the loser
of a two-writer race, temporary files of an interrupted local write. They are collected
once they are older than a grace period *by the store's clock*, and never while their
writer holds a live lease (:mod:`asynccp._leases`): an upload still in flight in another
process is never touched, however slow its commit.

Every store call here is abandoned when the caller is cancelled
(:func:`asynccp._store.call`): housekeeping is cut short when the exit flush runs out of
time, and must not hold the exit for as long as a hung request takes to give up.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import defaultdict
from collections.abc import MutableMapping
from datetime import datetime, timedelta
from typing import Literal

from . import _catalog as catalog
from ._catalog import Record
from ._layout import (
    DATA,
    MANIFESTS,
    QUARANTINE,
    is_temporary,
    parse_data_dir,
    quarantine_key,
    step_of_quarantine_key,
)
from ._leases import drop, read_leases
from ._shard_records import decode_record, folders_of, owned_prefixes
from ._shards import sweep_parts
from ._store import ObjectInfo, Store, call
from .errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = [
    "Housekeeping",
    "apply_retention",
    "collect_orphans",
    "delete_record",
    "invalid_records",
    "is_tombstone",
    "quarantine",
    "remove_invalid",
    "steps_to_delete",
]

log = logging.getLogger("asynccp")
#: A record's temporary file is a few milliseconds' work: one older than this is stale.
MANIFEST_TMP_AGE = timedelta(minutes=10)


def _stale_tmp(o: ObjectInfo, cutoff: datetime) -> bool:
    """A temporary file of an interrupted local write, older than ``cutoff``."""
    return is_temporary(o.key) and o.last_modified < cutoff


async def _list(store: Store, folder: str) -> list[ObjectInfo]:
    return await call(store, store.list_objects, folder, key=folder, action="listing")


async def _delete(store: Store, keys: list[str]) -> None:
    await call(store, store.delete, keys, key=keys, action="deleting")


def steps_to_delete(steps: list[int], keep: int | None, keep_every: int | None) -> list[int]:
    """Which committed ``steps`` retention removes (ascending ``steps`` in, ascending out)."""
    if keep is None:
        return []
    kept = set(steps[-keep:]) if keep else set()
    if keep_every:
        kept |= {s for s in steps if s % keep_every == 0}
    return [s for s in steps if s not in kept]


async def delete_record(store: Store, record: Record, folders: list[str] | None) -> None:
    """Delete one checkpoint: its record (every revision), then its payload ``folders``
    (a sharded step: every part's folder, then its part records).

    With ``folders`` None (a record too broken to name them) the payload is left to the
    orphan collector.
    """
    await _delete(store, [record.key, *record.superseded])
    for prefix in folders or []:
        objs = await _list(store, prefix + "/")
        await _delete(store, [o.key for o in objs])


async def apply_retention(
    store: Store,
    keep: int | None,
    keep_every: int | None,
    *,
    known_valid: MutableMapping[str, list[str]] | None = None,
) -> list[int]:
    """Delete the valid checkpoints retention does not keep; return their steps.

    ``known_valid`` caches the records found valid (key → what deleting removes; a
    checkpointer's own commits go straight in): each record is checked once, not at
    every commit.
    """
    if keep is None:
        return []
    cache: MutableMapping[str, list[str]] = {} if known_valid is None else known_valid
    valid: list[tuple[Record, list[str]]] = []  # oldest first, with what deleting removes
    for record in await catalog.records(store):
        folders = cache.get(record.key)
        if folders is None:
            try:
                folders = owned_prefixes(await catalog.validate(store, record))
            except (CorruptCheckpointError, CheckpointNotFoundError):
                continue  # never counted, never deleted here
            cache[record.key] = folders
        valid.append((record, folders))
    doomed = set(steps_to_delete([r.step for r, _ in valid], keep, keep_every))
    deleted = []
    for record, folders in valid:
        if record.step in doomed:
            await delete_record(store, record, folders)
            cache.pop(record.key, None)
            deleted.append(record.step)
    return deleted


async def quarantine(store: Store, key: str, *, tombstone_for: str | None = None) -> str | None:
    """Copy the record ``key`` into ``quarantine/``; return the copy's key (None when the
    record is gone already, or is a tombstone).

    With ``tombstone_for`` (the record that replaced it), ``key`` is then overwritten by
    a tombstone naming its replacement and the copy: it must stay, so that revision is
    never created again (see :mod:`asynccp._write._commit`). Without it, ``key`` is
    deleted (a step whose every revision goes at once), tombstones included.
    """
    try:
        raw = await call(store, store.get, key, key=key, action="reading")
    except FileNotFoundError:
        return None
    if is_tombstone(raw):  # its content is in quarantine already
        if tombstone_for is None:
            await _delete(store, [key])
        return None
    target = quarantine_key(key, secrets.token_hex(4))
    await call(store, store.create, target, raw, key=target, action="writing")
    if tombstone_for is None:
        await _delete(store, [key])
    else:
        stone = {"tombstone": True, "replaced_by": tombstone_for, "moved_to": target}
        await call(store, store.put, key, json.dumps(stone).encode(), key=key, action="writing")
    log.warning("asynccp: moved %s in %s to %s", key, store.description, target)
    return target


def is_tombstone(raw: bytes) -> bool:
    """Whether a record object is the tombstone of a replaced record."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("tombstone") is True


async def invalid_records(store: Store) -> list[tuple[Record, str]]:
    """Every committed record that is not valid, with the reason (oldest first)."""
    out = []
    for record in await catalog.records(store):
        try:
            await catalog.validate(store, record)
        except CheckpointNotFoundError:
            continue
        except CorruptCheckpointError as e:
            out.append((record, str(e)))
    return out


async def remove_invalid(store: Store, *, how: Literal["quarantine", "delete"]) -> list[int]:
    """Move every invalid record to quarantine (``how="quarantine"``) or delete it and
    its payload (``how="delete"``); valid checkpoints are not touched. Return the steps."""
    if how not in ("quarantine", "delete"):
        raise ValueError(f"how must be 'quarantine' or 'delete', got {how!r}")
    steps = []
    for record, _why in await invalid_records(store):
        if how == "quarantine":
            for key in (*record.superseded, record.key):
                await quarantine(store, key)
        else:
            await delete_record(store, record, await _folders_of(store, record.key))
        steps.append(record.step)
    return steps


async def _folders_of(store: Store, key: str, raw: bytes | None = None) -> list[str] | None:
    """The payload folders a record names, or None when it cannot be read."""
    try:
        if raw is None:
            raw = await call(store, store.get, key, key=key, action="reading")
        return folders_of(decode_record(raw, key=key))
    except (FileNotFoundError, CorruptCheckpointError):
        return None


async def collect_orphans(
    store: Store,
    grace: timedelta,
    *,
    writer: str | None = None,
    generation: str | None = None,
) -> list[str]:
    """Delete payload folders no record points to, older than ``grace``, and the part
    records of sharded steps whose launch is gone without completing them; return them
    (``data/<step>-<writer>`` and ``parts/<step>/<generation>`` folders).

    Ages are measured by the store's clock (the collector's lease, just rewritten, says
    what time it is there; it names ``generation`` when the collector is a sharded
    writer). Never collected: folders of a writer with a live lease
    (``writer``, the collector's own, always is), folders a committed or quarantined
    record names. A record's temporary file is a few milliseconds' work, so one is only
    taken once it is older than ``grace`` *and* :data:`MANIFEST_TMP_AGE`.
    """
    collector = writer or f"gc{secrets.token_hex(6)}"
    leases = await read_leases(store, collector, generation)
    try:
        now = leases.now
        cutoff = now - grace
        # Part records of sharded steps nobody will complete go first (then their
        # payload below); the payload their live generations name is kept.
        protected, swept = await sweep_parts(store, leases, cutoff)
        folders: dict[str, list[ObjectInfo]] = defaultdict(list)
        for o in await _list(store, DATA):
            folders["/".join(o.key.split("/")[:2])].append(o)
        candidates: dict[str, tuple[int, list[ObjectInfo]]] = {}
        stale_tmp: list[str] = []
        for folder, contents in sorted(folders.items()):
            parsed = parse_data_dir(folder)
            if parsed is None or parsed[1] == collector or leases.alive(parsed[1]):
                continue
            stale_tmp += [o.key for o in contents if _stale_tmp(o, cutoff)]
            if max(o.last_modified for o in contents) < cutoff:
                candidates[folder] = (parsed[0], contents)
        named, unreadable = await _referenced(store, {s for s, _ in candidates.values()})
        doomed: list[str] = []
        for folder, (step, contents) in candidates.items():
            if folder in named or step in unreadable or folder in protected:
                continue
            doomed.append(folder)
            await _delete(store, [o.key for o in contents])
        tmp_cutoff = min(cutoff, now - MANIFEST_TMP_AGE)
        stale_tmp += [o.key for o in await _list(store, MANIFESTS) if _stale_tmp(o, tmp_cutoff)]
        stale_tmp += leases.expired()
        if stale_tmp:
            await _delete(store, stale_tmp)
    finally:
        if writer is None:  # a one-off collector (the command line): its lease goes
            await drop(store, collector)
    if doomed:
        log.info("collected %d orphaned payload folder(s) in %s", len(doomed), store.description)
    if swept:
        log.info(
            "collected %d abandoned part record folder(s) in %s", len(swept), store.description
        )
    return doomed + swept


async def _referenced(store: Store, steps: set[int]) -> tuple[set[str], set[int]]:
    """Of the candidate ``steps``: the payload folders a record names (committed, any
    revision, or quarantined: kept for inspection with their data), and the steps with
    a record too broken to name its folder (every folder of those is kept)."""
    named: set[str] = set()
    unreadable: set[int] = set()
    if not steps:
        return named, unreadable
    keys = [
        (r.step, k)
        for r in await catalog.records(store)
        if r.step in steps
        for k in (*r.superseded, r.key)
    ]
    for o in await _list(store, QUARANTINE):
        step = step_of_quarantine_key(o.key)
        if step is not None and step in steps:
            keys.append((step, o.key))
    for step, key in keys:
        try:
            raw = await call(store, store.get, key, key=key, action="reading")
        except FileNotFoundError:
            continue
        if is_tombstone(raw):
            continue  # a replaced record: its copy in quarantine/ is among the keys
        folders = await _folders_of(store, key, raw)
        if folders is None:
            unreadable.add(step)
        else:
            named.update(folders)
    return named, unreadable


class Housekeeping:
    """A writer's housekeeping: retention after each commit, orphan collection once.

    Never fatal: a failure is logged and retried at the next commit (the commit it
    follows has succeeded, and that is what its caller waits for).
    """

    def __init__(
        self,
        store: Store,
        *,
        keep: int | None,
        keep_every: int | None,
        orphan_grace: float,
        writer: str,
        shard: int | None = None,
        generation: str | None = None,
    ) -> None:
        self.store = store
        #: Of a sharded launch only shard 0 does housekeeping: one process deletes.
        self.active = shard in (None, 0)
        self.generation = generation
        self.keep = keep
        self.keep_every = keep_every
        self.orphan_grace = timedelta(seconds=orphan_grace)
        self.writer = writer
        #: Records found valid, with their payload folders (retention checks each once).
        self._valid: dict[str, list[str]] = {}
        self._orphans_collected = False

    async def after_commit(self, key: str, folders: list[str] | None, *, idle: bool = True) -> None:
        """This writer committed the record ``key`` (deleting it removes ``folders``;
        None: not known here, as for a sharded writer's part): apply retention, collect
        orphans.

        Orphan collection (a lease write, listings, deletes) waits for a commit after
        which nothing is staged (``idle``): on a local disk its writes would take turns
        in the journal with the commits of checkpoints still pending (a burst of four
        1 MiB durable checkpoints committed at ~58 % of raw durable puts with it right
        after the first, at ~100 % with it after the last).
        """
        if not self.active:
            return
        if folders is not None:
            self._valid[key] = folders
        try:
            if self.keep is not None:
                await apply_retention(
                    self.store, self.keep, self.keep_every, known_valid=self._valid
                )
            if not self._orphans_collected and idle:
                self._orphans_collected = True
                await collect_orphans(
                    self.store,
                    self.orphan_grace,
                    writer=self.writer,
                    generation=self.generation,  # its lease, rewritten, still names it
                )
        except Exception as e:
            log.warning(
                "asynccp: retention in %s failed (will retry next commit): %s",
                self.store.description,
                e,
            )
