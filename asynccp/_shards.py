"""Committing a step written by many processes, with nothing shared but the store.

Each of the ``n`` processes of a launch (``Checkpointer(..., shard=r, shards=n)``)
uploads its part's payload to its own folder, exactly as a single writer does, and then:

1. **records its part** with a create-if-absent put of
   ``parts/<step>/<generation>/<r>-of-<n>.json`` (one record per step, generation and
   shard: of two processes claiming the same part, exactly one records it);
2. **lists** ``parts/<step>/<generation>/`` once;
3. if that listing shows all ``n`` parts, **commits the step**: it reads the other
   part records and creates the step's manifest, create-if-absent, from them. The
   manifest is a function of the part records alone, so when two shards both see the
   step complete they write identical bytes: one create wins, the other finds the
   same commit and is done.

Why a step is committed exactly when its last part lands, on a store whose listings
show every write that completed before they started (S3, GCS, Azure, local files):
the part whose create completed last lists after every other create completed, so it
sees all ``n`` and commits. No listing can show ``n`` parts before they all exist, and
the manifest is only ever built from ``n`` records, so no step is ever visible with a
part missing. ``docs/sharding.md`` has the whole argument and the failure cases.

A save's handle resolves when its part is recorded (and, for the last part, when the
step is committed): a shard never waits for the others, so one dead or slow process
does not block anybody's saves; its steps simply never complete.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime

import anyio
import anyio.to_thread

from . import _catalog as catalog
from ._catalog import Bad
from ._groups import first_leaf
from ._leases import Leases
from ._location import Location, ObjectExists, ObjectInfo
from ._manifest import PARTS, Manifest, parse_part_key, part_key, parts_dir
from ._restore import Checkpoint
from ._shard_records import (
    Part,
    ShardedManifest,
    ShardSpec,
    checkpoint_of,
    decode_record,
    part_checkpoint,
)
from ._upload import PAYLOAD_CHECK_AFTER, _cleanup, _commit
from .errors import (
    CommitUnknownError,
    CorruptCheckpointError,
    ShardConflictError,
    ShardMismatchError,
    StoreError,
    UploadError,
)

__all__ = ["PartGroup", "commit_part", "part_groups", "sweep_parts"]

log = logging.getLogger("asynccp")
#: Other shards' part records read at once by the shard that commits a step.
_READS = 16


async def commit_part(
    location: Location,
    manifest: Manifest,
    bad: Collection[Bad],
    *,
    spec: ShardSpec,
    mine: Collection[str] = (),
) -> Checkpoint:
    """Record this shard's part of ``manifest.step``; commit the step if it is complete.

    ``manifest`` describes the part's uploaded payload. ``mine`` holds the writer ids of
    this shard's earlier attempts in this process (``supervise``): a part one of them
    recorded is this shard's own and is kept (the new payload is dropped). Returns the
    part as a :class:`Checkpoint`.

    Raises :class:`ShardConflictError` when another process recorded this part,
    :class:`ShardMismatchError` when the step's records disagree on the number of
    shards (the step is never committed), and what committing the step raises.
    """
    step, gen = manifest.step, spec.generation
    key = part_key(step, gen, spec.shard, spec.shards)
    part = await _record(location, Part(spec.shard, spec.shards, gen, manifest), key, mine)
    listed = await catalog.store_call(location, location.list, parts_dir(step, gen))
    recorded: dict[int, ObjectInfo] = {}
    others: set[int] = set()
    for o in listed:
        parsed = parse_part_key(o.key)
        if parsed is None:
            continue  # a temporary file of a local write under way
        if parsed[3] == spec.shards:
            recorded[parsed[2]] = o
        else:
            others.add(parsed[3])
    if others:
        raise ShardMismatchError(
            f"step {step} in {location.description}, generation {gen}: its part records "
            f"disagree on the number of shards: this process writes part {spec.shard} of "
            f"{spec.shards}, and parts of {', '.join(map(str, sorted(others)))} shard(s) "
            "are recorded too (a launch with another world size that reused this "
            "generation?). The step is never committed. Give every launch its own "
            "generation (generation=, ASYNCCP_GENERATION, or the launcher's run id)."
        )
    if len(recorded) == spec.shards:
        await _commit_step(location, part, recorded, bad)
    return part_checkpoint(part, location, key=key)


async def _record(location: Location, part: Part, key: str, mine: Collection[str]) -> Part:
    """Create the part record ``key``; return the part it records (ours, or adopted)."""
    writer = part.manifest.writer
    # Not fsynced on a local disk: a part record only counts until the step's manifest,
    # which embeds it, is created — durably. A power cut that loses a record loses a step
    # that was not committed yet (its launch died with the machine anyway); the part's
    # payload itself is durable before the record is written.
    records = replace(location, durable=False)
    try:
        await anyio.to_thread.run_sync(records.create, key, part.encode(), abandon_on_cancel=True)
        return part
    except ObjectExists:
        pass
    except Exception as e:
        # The answer may be what was lost: the store says whether the record landed.
        try:
            existing = await _read_part(location, key)
        except FileNotFoundError:
            raise UploadError(
                f"part {part.shard} of step {part.manifest.step} was not recorded in "
                f"{location.description}: {e}"
            ) from e
        except StoreError as e2:
            raise CommitUnknownError(
                f"part {part.shard} of step {part.manifest.step} in {location.description}: "
                f"recording it failed ({e}) and the store could not be asked whether it "
                f"landed ({e2}). Its payload is kept."
            ) from e
        if existing is not None and existing.manifest.writer == writer:
            return part
        raise _conflict(location, part, key, existing) from e
    existing = await _read_part(location, key)
    if existing is not None and existing.manifest.writer == writer:
        return part  # a retried request whose first try landed
    if existing is not None and existing.manifest.writer in mine:
        log.info(
            "asynccp: part %d of step %d was recorded by this shard's earlier attempt "
            "(writer %s): it is kept, the new payload dropped",
            part.shard,
            part.manifest.step,
            existing.manifest.writer,
        )
        m = part.manifest
        await _cleanup(location, [f"{m.data}/{name}" for name in m.files])
        return existing
    raise _conflict(location, part, key, existing)


async def _read_part(location: Location, key: str) -> Part | None:
    """The part record at ``key`` (None when it is invalid); FileNotFoundError if none."""
    raw = await catalog.store_call(location, location.get, key)
    try:
        return Part.decode(raw, key=key)
    except CorruptCheckpointError as e:
        log.warning("asynccp: %s: %s", location.description, e)
        return None


def _conflict(
    location: Location, part: Part, key: str, existing: Part | None
) -> ShardConflictError:
    who = "an invalid record" if existing is None else f"writer {existing.manifest.writer}"
    return ShardConflictError(
        f"part {part.shard} of {part.shards} of step {part.manifest.step} in generation "
        f"{part.generation} is already recorded in {location.description} ({key}, by "
        f"{who}; this process is writer {part.manifest.writer}): another process was "
        f"started with shard={part.shard}, or an earlier launch used the same generation. "
        "This part was not recorded and its payload was deleted. Give each process its "
        "own shard and each launch its own generation."
    )


async def _commit_step(
    location: Location, part: Part, recorded: dict[int, ObjectInfo], bad: Collection[Bad]
) -> None:
    """Every part is recorded: read the others' records and create the step's manifest."""
    step = part.manifest.step
    parts: dict[int, Part] = {part.shard: part}
    limiter = anyio.CapacityLimiter(_READS)

    async def read(r: int, key: str) -> None:
        async with limiter:
            try:
                found = await _read_part(location, key)
            except FileNotFoundError:
                raise UploadError(
                    f"step {step}: the record of part {r} ({key}) vanished while the step "
                    "was committed (collected as abandoned?); the step is not committed"
                ) from None
        if found is None:
            raise UploadError(
                f"step {step} in {location.description}: the record of part {r} ({key}) is "
                "invalid, so the step cannot be committed"
            )
        parts[r] = found

    try:
        async with anyio.create_task_group() as tg:
            for r, o in recorded.items():
                if r != part.shard:
                    tg.start_soon(read, r, o.key)
    except Exception as e:  # a task group wraps its children's errors
        leaf = first_leaf(e)
        raise leaf from leaf.__cause__
    manifest = ShardedManifest.from_parts(list(parts.values()))
    key = await _commit(location, manifest, bad)
    # A part that waited long for the others may have had its payload collected meanwhile
    # (only once its writer's lease lapsed): then the record just made is invalid, and
    # says so (readers skip it; saving the step again replaces it).
    times = [o.last_modified for o in recorded.values()]
    if (max(times) - min(times)).total_seconds() > PAYLOAD_CHECK_AFTER:
        ckpt = checkpoint_of(manifest, location, key=key)
        if not await catalog.is_complete(ckpt):
            raise UploadError(
                f"step {step} in {location.description}: the payload of a part that "
                "waited for the others was deleted meanwhile (collected as abandoned), so "
                "the step's record is invalid and readers skip it"
            )
    log.debug("asynccp: step %d committed by part %d of %d", step, part.shard, part.shards)


# -- what the part records say: the command line, orphan collection ---------------------


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


async def part_groups(location: Location) -> list[PartGroup]:
    """Every step and generation with part records, ascending (one listing)."""
    objs = await catalog.store_call(location, location.list, PARTS)
    groups: dict[tuple[int, str], PartGroup] = {}
    for o in objs:
        parsed = parse_part_key(o.key)
        if parsed is None:
            continue
        step, gen, r, n = parsed
        groups.setdefault((step, gen), PartGroup(step, gen)).records[(r, n)] = o
    return [groups[k] for k in sorted(groups)]


async def uncommitted(location: Location) -> list[PartGroup]:
    """Part records of steps that have no manifest: steps waiting for parts (or whose
    parts disagree, or were abandoned)."""
    groups = await part_groups(location)
    if not groups:
        return []
    committed = set(await catalog.list_steps(location))
    return [g for g in groups if g.step not in committed]


async def sweep_parts(
    location: Location, leases: Leases, cutoff: datetime
) -> tuple[set[str], list[str]]:
    """Orphan collection of part records; returns ``(protected, removed)``.

    The part records of a step that is not committed by their generation are orphans
    once the generation is dead: none of its records (any step) is newer than
    ``cutoff``, and no live lease names the generation or a writer of those records.
    Those records are deleted here (before their payload, which the caller then
    collects); the payload folders named by the records of a generation still alive
    are ``protected``: another shard of it may yet complete the step. ``removed`` lists
    the ``parts/<step>/<gen>`` folders deleted. Records of the generation that committed
    their step belong to the checkpoint (retention deletes them with it).
    """
    groups = await part_groups(location)
    if not groups:
        return set(), []
    committed = {r.step: r for r in await catalog.records(location)}
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
                committed_by[g.step] = await _committing_generation(
                    location, committed[g.step], per_step[g.step]
                )
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
                found = await _read_part(location, o.key)
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
        await catalog.store_call(location, location.delete, [o.key for o in g.records.values()])
        removed.append(parts_dir(g.step, gen).rstrip("/"))
    return protected, removed


async def _committing_generation(
    location: Location, record: catalog.Record, generations: set[str]
) -> str | None:
    """The generation whose parts commit ``record``'s step ("" for a step of one
    process; None when the record cannot be read, so nothing of it is touched)."""
    try:
        raw = await catalog.store_call(location, location.get, record.key)
        m = decode_record(raw, key=record.key)
    except (FileNotFoundError, CorruptCheckpointError):
        return None
    return m.generation if isinstance(m, ShardedManifest) else ""
