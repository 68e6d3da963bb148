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
from collections.abc import Collection

import anyio

from .. import _catalog as catalog
from .._catalog import Bad
from .._groups import first_leaf
from .._layout import parse_part_key, part_key, parts_dir, payload_key
from .._manifest import Manifest
from .._shard_records import Part, ShardedManifest, ShardSpec
from .._shards import read_part
from .._store import ObjectInfo, Store, call
from ..errors import (
    CommitUnknownError,
    ObjectExists,
    ShardConflictError,
    ShardMismatchError,
    StoreError,
    UploadError,
)
from ._commit import PAYLOAD_CHECK_AFTER, Committed, cleanup
from ._record import create_record

__all__ = ["commit_part"]

log = logging.getLogger("asynccp")
#: Other shards' part records read at once by the shard that commits a step.
_READS = 16


async def commit_part(
    store: Store,
    manifest: Manifest,
    bad: Collection[Bad],
    *,
    spec: ShardSpec,
    mine: Collection[str] = (),
) -> Committed:
    """Record this shard's part of ``manifest.step``; commit the step if it is complete.

    ``manifest`` describes the part's uploaded payload. ``mine`` holds the writer ids of
    this shard's earlier attempts in this process (``supervise``): a part one of them
    recorded is this shard's own and is kept (the new payload is dropped). Returns the
    part (:attr:`Committed.part`: the part recorded, under its record's key).

    Raises :class:`ShardConflictError` when another process recorded this part,
    :class:`ShardMismatchError` when the step's records disagree on the number of
    shards (the step is never committed), and what committing the step raises.
    """
    step, gen = manifest.step, spec.generation
    key = part_key(step, gen, spec.shard, spec.shards)
    part = await _record(store, Part(spec.shard, spec.shards, gen, manifest), key, mine)
    folder = parts_dir(step, gen)
    listed = await call(store, store.list_objects, folder, key=folder, action="listing")
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
            f"step {step} in {store.description}, generation {gen}: its part records "
            f"disagree on the number of shards: this process writes part {spec.shard} of "
            f"{spec.shards}, and parts of {', '.join(map(str, sorted(others)))} shard(s) "
            "are recorded too (a launch with another world size that reused this "
            "generation?). The step is never committed. Give every launch its own "
            "generation (generation=, ASYNCCP_GENERATION, or the launcher's run id)."
        )
    if len(recorded) == spec.shards:
        await _commit_step(store, part, recorded, bad)
    return Committed(part.manifest, key, part=part)


async def _record(store: Store, part: Part, key: str, mine: Collection[str]) -> Part:
    """Create the part record ``key``; return the part it records (ours, or adopted)."""
    writer = part.manifest.writer
    try:
        await call(store, store.create, key, part.encode(), key=key, action="recording")
        return part
    except ObjectExists:
        pass
    except StoreError as e:
        # The answer may be what was lost: the store says whether the record landed.
        try:
            existing = await read_part(store, key)
        except FileNotFoundError:
            raise UploadError(
                f"part {part.shard} of step {part.manifest.step} was not recorded in "
                f"{store.description}: {e}"
            ) from e
        except StoreError as e2:
            raise CommitUnknownError(
                f"part {part.shard} of step {part.manifest.step} in {store.description}: "
                f"recording it failed ({e}) and the store could not be asked whether it "
                f"landed ({e2}). Its payload is kept."
            ) from e
        if existing is not None and existing.manifest.writer == writer:
            return part
        raise _conflict(store, part, key, existing) from e
    existing = await read_part(store, key)
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
        await cleanup(store, [payload_key(m.data, name) for name in m.files])
        return existing
    raise _conflict(store, part, key, existing)


def _conflict(store: Store, part: Part, key: str, existing: Part | None) -> ShardConflictError:
    who = "an invalid record" if existing is None else f"writer {existing.manifest.writer}"
    return ShardConflictError(
        f"part {part.shard} of {part.shards} of step {part.manifest.step} in generation "
        f"{part.generation} is already recorded in {store.description} ({key}, by "
        f"{who}; this process is writer {part.manifest.writer}): another process was "
        f"started with shard={part.shard}, or an earlier launch used the same generation. "
        "This part was not recorded and its payload was deleted. Give each process its "
        "own shard and each launch its own generation."
    )


async def _commit_step(
    store: Store, part: Part, recorded: dict[int, ObjectInfo], bad: Collection[Bad]
) -> None:
    """Every part is recorded: read the others' records and create the step's manifest."""
    step = part.manifest.step
    parts: dict[int, Part] = {part.shard: part}
    limiter = anyio.CapacityLimiter(_READS)

    async def read(r: int, key: str) -> None:
        async with limiter:
            try:
                found = await read_part(store, key)
            except FileNotFoundError:
                raise UploadError(
                    f"step {step}: the record of part {r} ({key}) vanished while the step "
                    "was committed (collected as abandoned?); the step is not committed"
                ) from None
        if found is None:
            raise UploadError(
                f"step {step} in {store.description}: the record of part {r} ({key}) is "
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
    await create_record(store, manifest, bad)
    # A part that waited long for the others may have had its payload collected meanwhile
    # (only once its writer's lease lapsed): then the record just made is invalid, and
    # says so (readers skip it; saving the step again replaces it).
    times = [o.last_modified for o in recorded.values()]
    waited = (max(times) - min(times)).total_seconds() > PAYLOAD_CHECK_AFTER
    if waited and not await catalog.is_complete(store, manifest):
        raise UploadError(
            f"step {step} in {store.description}: the payload of a part that "
            "waited for the others was deleted meanwhile (collected as abandoned), so "
            "the step's record is invalid and readers skip it"
        )
    log.debug("asynccp: step %d committed by part %d of %d", step, part.shard, part.shards)
