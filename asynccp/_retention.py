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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from . import _catalog as catalog
from ._catalog import Bad, Record
from ._layout import (
    DATA,
    MANIFESTS,
    PARTS,
    QUARANTINE,
    is_temporary,
    parse_data_dir,
    payload_key,
    quarantine_key,
    step_of_quarantine_key,
)
from ._leases import drop, read_leases
from ._manifest import Manifest
from ._shard_records import AnyManifest, decode_record, folders_of, owned_prefixes
from ._shards import sweep_parts
from ._store import ObjectInfo, Store, call
from .errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = [
    "Known",
    "Retained",
    "Trust",
    "apply_retention",
    "collect_orphans",
    "delete_record",
    "delete_records",
    "invalid_records",
    "is_tombstone",
    "purge_quarantine",
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


@dataclass(frozen=True)
class Known:
    """A valid record, as retention knows it: the checkpoint it commits, the folders
    deleting it removes, and — when its manifest names them all — its payload objects
    (deleted by name, with no listing; None: list the folders)."""

    checkpoint: Bad
    folders: list[str]
    objects: list[str] | None = None

    @classmethod
    def of(cls, manifest: AnyManifest) -> Known:
        folders = owned_prefixes(manifest)
        if isinstance(manifest, Manifest):  # (a sharded step's part records: listed)
            objects = [payload_key(manifest.data, name) for name in manifest.stored]
            return cls((manifest.step, manifest.writer), folders, objects)
        return cls((manifest.step, manifest.writer), folders)


async def delete_record(store: Store, record: Record, folders: list[str] | None) -> None:
    """Delete one checkpoint: its record (every revision), then its payload ``folders``
    (a sharded step: every part's folder, then its part records).

    With ``folders`` None (a record too broken to name them) the payload is left to the
    orphan collector.
    """
    known = None if folders is None else Known((record.step, ""), folders)
    await delete_records(store, [(record, known)])


async def delete_records(store: Store, doomed: Sequence[tuple[Record, Known | None]]) -> None:
    """Delete checkpoints: every record (all revisions) in one call, so that each stops
    being committed before any of its payload goes; then all their payload in one call
    (objects named by their manifests; folders listed where the manifest cannot name
    everything, such as a sharded step's part records). A record known as None (too
    broken to name its payload) leaves its payload to the orphan collector.
    """
    if not doomed:
        return
    await _delete(store, [k for record, _ in doomed for k in (record.key, *record.superseded)])
    objects: list[str] = []
    for _, known in doomed:
        if known is None:
            continue
        if known.objects is not None:
            objects += known.objects
            continue
        for prefix in known.folders:
            objects += [o.key for o in await _list(store, prefix + "/")]
    if objects:
        await _delete(store, objects)


@dataclass
class Trust:
    """What a writer (or one ``gc`` run) knows about the records at its location.

    Filled as retention goes, so that each record is validated once and verified at most
    once: a steady writer, whose own commits are known to verify, reads no payload.
    """

    #: Records found valid: key → what deleting its checkpoint removes.
    valid: dict[str, Known] = field(default_factory=dict)
    #: Records known to verify: committed by this writer, or read whole and checked.
    verified: set[str] = field(default_factory=set)
    #: Checkpoints known not to verify (a checkpointer shares its step order's set:
    #: what a read skipped, retention skips, and what retention finds, a save replaces).
    bad: set[Bad] = field(default_factory=set)

    def committed(self, key: str, manifest: AnyManifest) -> None:
        """This writer committed ``manifest`` as ``key``: valid, and known to verify."""
        self.valid[key] = Known.of(manifest)
        self.verified.add(key)


@dataclass(frozen=True)
class Retained:
    """What one retention round did (or, in a dry run, would do)."""

    #: Steps deleted (or that would be), ascending.
    deleted: list[int]
    #: Valid checkpoints kept and counted, ascending.
    kept: list[int]
    #: Steps this round read whole and found to verify.
    verified: list[int]
    #: Steps this round (or an earlier read) found not to verify: never counted, kept.
    not_verifying: list[int]
    #: Why nothing was deleted although ``keep`` asked for it, or None.
    held: str | None = None


async def apply_retention(
    store: Store,
    keep: int | None,
    keep_every: int | None,
    *,
    trust: Trust | None = None,
    trusted: Callable[[AnyManifest], bool] | None = None,
    dry_run: bool = False,
    hold: Callable[[], Collection[int]] = tuple,
) -> Retained:
    """Delete the valid checkpoints retention does not keep, never trading a checkpoint
    that verifies for one that does not.

    The rule (``DESIGN.md`` §8): only valid checkpoints not known to be bad count towards
    ``keep``; and nothing is deleted unless a *newer kept* checkpoint is known to verify.
    The kept ones are tried newest first: one this writer committed (``trust.verified``)
    or that ``trusted`` vouches for (a sharded step of this very launch) counts at once;
    any other is read whole and checked once (the answer cached in ``trust``). One that
    fails joins ``trust.bad`` (a logged warning names it), stops
    counting, and the count is made again, so an older checkpoint that verifies takes
    its place instead of being deleted. Deleted: only checkpoints older than the newest
    kept one known to verify.

    A store error while checking propagates (the caller retries later): nothing is
    deleted on a guess. With ``dry_run`` the checks are made, nothing is deleted.
    ``hold()`` gives the steps that stay whatever ``keep`` says (a local tier's
    checkpoints not yet committed to the remote one), asked after the listing.
    """
    if keep is None:
        return Retained([], [], [], [])
    trust = Trust() if trust is None else trust
    entries: list[tuple[Record, AnyManifest | None]] = []  # valid, oldest first
    for record in await catalog.records(store):
        if record.key not in trust.valid:
            try:
                manifest = await catalog.validate(store, record)
            except (CorruptCheckpointError, CheckpointNotFoundError):
                continue  # never counted, never deleted here
            trust.valid[record.key] = Known.of(manifest)
            entries.append((record, manifest))
        else:
            entries.append((record, None))
    verified: list[int] = []
    while True:
        counted = [(r, m) for r, m in entries if trust.valid[r.key].checkpoint not in trust.bad]
        doomed = set(steps_to_delete([r.step for r, _ in counted], keep, keep_every))
        not_verifying = [r.step for r, _ in entries if trust.valid[r.key].checkpoint in trust.bad]
        kept = [r.step for r, _ in counted if r.step not in doomed]
        if not doomed:
            return Retained([], kept, verified, not_verifying)
        anchor = await _anchor(store, counted, doomed, trust, trusted, verified)
        if anchor is _RECOUNT:
            continue
        if anchor is None:
            return Retained([], kept, verified, not_verifying, held=_HELD)
        assert isinstance(anchor, int)
        held = hold()
        going = [
            (r, m)
            for r, m in counted
            if r.step in doomed and r.step < anchor and r.step not in held
        ]
        gone = {r.step for r, _ in going}
        kept = [r.step for r, _ in counted if r.step not in gone]
        if not dry_run:
            await delete_records(store, [(r, trust.valid[r.key]) for r, _ in going])
            for record, _ in going:
                trust.valid.pop(record.key, None)
                trust.verified.discard(record.key)
        return Retained([r.step for r, _ in going], kept, verified, not_verifying)


_RECOUNT = object()
_HELD = "no kept checkpoint newer than those retention would delete verifies"


async def _anchor(
    store: Store,
    counted: list[tuple[Record, AnyManifest | None]],
    doomed: set[int],
    trust: Trust,
    trusted: Callable[[AnyManifest], bool] | None,
    verified: list[int],
) -> int | object | None:
    """The step of the newest kept checkpoint known to verify (checking the kept ones
    newest first), :data:`_RECOUNT` when one turned out bad (count again), or None."""
    for record, manifest in reversed(counted):
        if record.step in doomed:
            continue  # (older kept ones — milestones — cannot vouch for newer doomed ones,
            # but may for older ones: keep looking)
        if record.key in trust.verified:
            return record.step
        if manifest is None:
            try:
                manifest = await catalog.read_manifest(store, record)
            except (CheckpointNotFoundError, CorruptCheckpointError):
                return None  # changed since it was validated: next round
        if trusted is not None and trusted(manifest):
            trust.verified.add(record.key)
            return record.step
        try:
            await catalog.verify(store, manifest)
        except CorruptCheckpointError as e:
            if not await catalog.still_committed(store, record.key):
                return None  # deleted meanwhile (another writer's retention): next round
            log.warning(
                "asynccp: checkpoint %d in %s does not verify, so retention does not count it: %s",
                record.step,
                store.description,
                e,
            )
            trust.bad.add((manifest.step, manifest.writer))
            return _RECOUNT
        trust.verified.add(record.key)
        verified.append(record.step)
        return record.step
    return None


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
    its payload (``how="delete"``); valid checkpoints are not touched. Return the steps.

    A record too broken to name its payload folder: the step's folders that nothing
    else names and no live writer holds go with it (an invalid checkpoint's payload is
    not left to wait for the orphan collector's grace).
    """
    if how not in ("quarantine", "delete"):
        raise ValueError(f"how must be 'quarantine' or 'delete', got {how!r}")
    steps = []
    for record, _why in await invalid_records(store):
        if how == "quarantine":
            for key in (*record.superseded, record.key):
                await quarantine(store, key)
        else:
            folders = await _folders_of(store, record.key)
            await delete_record(store, record, folders)
            if folders is None:
                await collect_orphans(store, timedelta(0), steps={record.step})
        steps.append(record.step)
    return steps


async def purge_quarantine(store: Store, *, dry_run: bool = False) -> list[str]:
    """Delete every record in ``quarantine/`` and the payload folders they name (those no
    committed record names too); return the records' keys.

    Quarantine keeps replaced and invalid records, with their payload, for inspection;
    this is the explicit way to let them go (the orphan collector never takes a
    quarantined record's payload).
    """
    keys = await catalog.quarantined(store)
    named: set[str] = set()
    for key in keys:
        named.update(await _folders_of(store, key) or [])
    if named:
        for record in await catalog.records(store):
            for key in (record.key, *record.superseded):
                named.difference_update(await _folders_of(store, key) or [])
    if dry_run:
        return keys
    if keys:
        await _delete(store, keys)
    for prefix in sorted(named):
        objs = await _list(store, prefix + "/")
        if objs:
            await _delete(store, [o.key for o in objs])
    return keys


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
    dry_run: bool = False,
    steps: Collection[int] | None = None,
) -> list[str]:
    """Delete payload folders no record points to, older than ``grace``, and the part
    records of sharded steps whose launch is gone without completing them; return them
    (``data/<step>-<writer>`` and ``parts/<step>/<generation>`` folders).

    Ages are measured by the store's clock (the collector's lease, just rewritten, says
    what time it is there; it names ``generation`` when the collector is a sharded
    writer). Never collected: folders of a writer with a live lease
    (``writer``, the collector's own, always is), folders a committed or quarantined
    record names. A record's temporary file is a few milliseconds' work, so one is only
    taken once it is older than ``grace`` *and* :data:`MANIFEST_TMP_AGE` (under
    ``manifests/`` and under ``parts/`` alike). With ``dry_run``, nothing is deleted: the
    folders that would be are returned. With ``steps``, only the payload folders of
    those steps are looked at (and no part records or temporary files).
    """
    collector = writer or f"gc{secrets.token_hex(6)}"
    leases = await read_leases(store, collector, generation)
    try:
        now = leases.now
        cutoff = now - grace
        # Part records of sharded steps nobody will complete go first (then their
        # payload below); the payload their live generations name is kept.
        protected: set[str] = set()
        swept: list[str] = []
        if steps is None:
            protected, swept = await sweep_parts(store, leases, cutoff, dry_run=dry_run)
        folders: dict[str, list[ObjectInfo]] = defaultdict(list)
        for o in await _list(store, DATA):
            folders["/".join(o.key.split("/")[:2])].append(o)
        candidates: dict[str, tuple[int, list[ObjectInfo]]] = {}
        stale_tmp: list[str] = []
        for folder, contents in sorted(folders.items()):
            parsed = parse_data_dir(folder)
            if parsed is None or parsed[1] == collector or leases.alive(parsed[1]):
                continue
            if steps is not None and parsed[0] not in steps:
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
            if not dry_run:
                await _delete(store, [o.key for o in contents])
        if steps is None:  # records whose write was cut short; leases of the dead
            tmp_cutoff = min(cutoff, now - MANIFEST_TMP_AGE)
            for records_folder in (MANIFESTS, PARTS):
                objs = await _list(store, records_folder)
                stale_tmp += [o.key for o in objs if _stale_tmp(o, tmp_cutoff)]
            stale_tmp += leases.expired()
        if stale_tmp and not dry_run:
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
