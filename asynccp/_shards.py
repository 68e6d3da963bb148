"""Part records of sharded steps as readers and collectors see them.

The protocol that writes them is :mod:`asynccp._write._shards` (the design and why it is
safe: ``docs/sharding.md``); the format is :mod:`asynccp._shard_records`. This module
groups the records of ``parts/`` by step and generation (the command line shows them),
collects those a dead launch left behind without completing their step, and checks a
step whole before one shard of a launch resumes from it (:func:`whole_step`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from . import _catalog as catalog
from ._checkpoint import Checkpoint
from ._layout import PARTS, parse_part_key, parts_dir
from ._leases import Leases
from ._shard_records import Part, ShardedManifest, ShardSpec, decode_record
from ._store import ObjectInfo, Store, call
from .errors import CorruptCheckpointError

__all__ = ["PartGroup", "part_groups", "read_part", "sweep_parts", "uncommitted", "whole_step"]

log = logging.getLogger("asynccp")
T = TypeVar("T")


def whole_step(
    spec: ShardSpec, location: str, action: Callable[[Checkpoint], Awaitable[T]]
) -> Callable[[Checkpoint], Awaitable[T]]:
    """``action``, run by one shard of a launch once the checkpoint is checked whole:
    every part verifies.

    Every part, not only this shard's: each shard must reach the same verdict on a
    step without talking to the others, so a corrupt part makes every shard fall back
    past its step alike.

    A step of another number of parts (the job was relaunched on another number of
    processes) is handed over too, marked: its global tensors (saved as
    :class:`~asynccp.Shard`) load on any number of processes with ``read_state`` and
    ``load_into``, while ``ckpt.shard(r)`` — a part this process did not write, of
    another layout — is a :class:`ShardMismatchError`, as are ``read()`` and
    ``restore()`` of the own part.
    """

    async def checked(ckpt: Checkpoint) -> T:
        await ckpt.verify()
        if ckpt.shards != spec.shards:
            why = (
                f"checkpoint {ckpt.step} in {location} was written by "
                f"{ckpt.shards} process(es), and this Checkpointer is shard {spec.shard} "
                f"of {spec.shards}: part {{r}} of {ckpt.shards} is not this process's "
                "part. Load the global tensors (saved as asynccp.Shard) with "
                "ckpt.read_state(slices=...) or ckpt.load_into(...) (docs/loading.md), "
                f"restore it with shards={ckpt.shards}, or read every part from a "
                "Checkpointer without sharding= and reshard it yourself"
            )
            ckpt = dataclasses.replace(ckpt, _foreign=why)
        return await action(ckpt)

    return checked


async def read_part(store: Store, key: str) -> Part | None:
    """The part record at ``key`` (None when it is invalid); FileNotFoundError if none."""
    raw = await call(store, store.get, key, key=key, action="reading")
    try:
        return Part.decode(raw, key=key)
    except CorruptCheckpointError as e:
        log.warning("asynccp: %s: %s", store.description, e)
        return None


@dataclass
class PartGroup:
    """The part records of one step and generation (from a listing of ``parts/``)."""

    step: int
    generation: str
    #: ``(shard, shards)`` of each record, and its object.
    records: dict[tuple[int, int], ObjectInfo] = field(default_factory=dict)

    @property
    def shard_counts(self) -> list[int]:
        """The numbers of shards the records name (more than one: they disagree)."""
        return sorted({n for _, n in self.records})

    @property
    def complete(self) -> bool:
        """Whether every part is recorded, and they agree on how many there are."""
        counts = self.shard_counts
        return len(counts) == 1 and len(self.records) == counts[0]

    @property
    def missing(self) -> list[int]:
        """The shards not recorded yet (when the records agree on their number)."""
        counts = self.shard_counts
        if len(counts) != 1:
            return []
        return [r for r in range(counts[0]) if (r, counts[0]) not in self.records]

    @property
    def newest(self) -> datetime:
        return max(o.last_modified for o in self.records.values())


async def part_groups(store: Store) -> list[PartGroup]:
    """Every step and generation with part records, ascending (one listing)."""
    objs = await call(store, store.list_objects, PARTS, key=PARTS, action="listing")
    groups: dict[tuple[int, str], PartGroup] = {}
    for o in objs:
        parsed = parse_part_key(o.key)
        if parsed is None:
            continue
        step, gen, r, n = parsed
        groups.setdefault((step, gen), PartGroup(step, gen)).records[(r, n)] = o
    return [groups[k] for k in sorted(groups)]


async def uncommitted(store: Store) -> list[PartGroup]:
    """Part records of steps that have no manifest: steps waiting for parts (or whose
    parts disagree, or were abandoned)."""
    groups = await part_groups(store)
    if not groups:
        return []
    committed = set(await catalog.list_steps(store))
    return [g for g in groups if g.step not in committed]


async def sweep_parts(
    store: Store, leases: Leases, cutoff: datetime, *, dry_run: bool = False
) -> tuple[set[str], list[str]]:
    """Orphan collection of part records; returns ``(protected, removed)``.

    The part records of a step that is not committed by their generation are orphans
    once the generation is dead: none of its records (any step) is newer than
    ``cutoff``, and no live lease names the generation or a writer of those records.
    Those records are deleted here (before their payload, which the caller then
    collects); the payload folders named by the records of a generation still alive
    are ``protected``: another shard of it may yet complete the step. ``removed`` lists
    the ``parts/<step>/<gen>`` folders deleted. Records of the generation that committed
    their step belong to the checkpoint (retention deletes them with it). With
    ``dry_run`` nothing is deleted (``removed``: what would be).
    """
    groups = await part_groups(store)
    if not groups:
        return set(), []
    committed = {r.step: r for r in await catalog.records(store)}
    newest: dict[str, datetime] = {}
    per_step: dict[int, set[str]] = defaultdict(set)
    for g in groups:
        newest[g.generation] = max(newest.get(g.generation, g.newest), g.newest)
        per_step[g.step].add(g.generation)
    committed_by: dict[int, str | None] = {}
    candidates: list[PartGroup] = []
    for g in groups:
        if g.step in committed:
            if len(per_step[g.step]) == 1 and g.complete:
                continue  # the parts that committed it (no need to read the record to know)
            if g.step not in committed_by:
                committed_by[g.step] = await _committing_generation(store, committed[g.step])
            if committed_by[g.step] in (g.generation, None):
                continue  # the checkpoint's own (or unknown: kept)
        candidates.append(g)
    protected: set[str] = set()
    removed: list[str] = []
    writers: dict[str, set[str]] = defaultdict(set)
    folders: dict[str, set[str]] = defaultdict(set)
    for g in candidates:
        for o in g.records.values():
            try:
                found = await read_part(store, o.key)
            except FileNotFoundError:
                continue
            if found is not None:
                writers[g.generation].add(found.manifest.writer)
                folders[g.generation].add(found.manifest.data)
    live = leases.live_generations()
    for g in candidates:
        gen = g.generation
        alive = gen in live or newest[gen] >= cutoff or any(leases.alive(w) for w in writers[gen])
        if alive:
            protected |= folders[gen]
            continue
        keys = [o.key for o in g.records.values()]
        if not dry_run:
            await call(store, store.delete, keys, key=keys, action="deleting")
        removed.append(parts_dir(g.step, gen).rstrip("/"))
    return protected, removed


async def _committing_generation(store: Store, record: catalog.Record) -> str | None:
    """The generation whose parts commit ``record``'s step ("" for a step of one
    process; None when the record cannot be read, so nothing of it is touched)."""
    try:
        raw = await call(store, store.get, record.key, key=record.key, action="reading")
        m = decode_record(raw, key=record.key)
    except (FileNotFoundError, CorruptCheckpointError):
        return None
    return m.generation if isinstance(m, ShardedManifest) else ""
