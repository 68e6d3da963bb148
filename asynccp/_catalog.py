"""The catalog: what is committed at a location, and which of it can be trusted.

Every reader goes through here: ``latest()``, ``load_latest()``, ``read()``,
``restore()``, retention, the orphan collector and the command line. The rules:

- A step is committed when a manifest for it exists; its commit record is its highest
  revision (see :mod:`asynccp._manifest`).
- A checkpoint is *valid* when that record decodes and validates and every payload
  object it names exists with its recorded size (one listing, no payload reads). It
  *verifies* when, in addition, every checksum matches on read.
- A checkpoint that vanishes while it is being read (retention on another writer
  rotated it away) is not corrupt: the reader lists again and takes the newer one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ._location import Location
from ._manifest import MANIFESTS, QUARANTINE, manifest_key, parse_manifest_key
from ._restore import Checkpoint
from ._shard_records import checkpoint_of, decode_record
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    StoreError,
)

__all__ = [
    "Bad",
    "Record",
    "is_complete",
    "latest",
    "list_checkpoints",
    "list_steps",
    "load",
    "load_record",
    "newest",
    "quarantined",
    "records",
    "survey",
    "validate",
]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: A checkpoint known not to verify: ``(step, writer)``.
Bad = tuple[int, str]

#: Times a reader lists again because what it was reading vanished (rotation); past
#: this, the store is changing faster than it can be read and the reader gives up.
_MAX_RELISTS = 20


@dataclass(frozen=True)
class Record:
    """One committed step as a listing shows it: its commit record and older revisions."""

    step: int
    key: str
    rev: int
    superseded: tuple[str, ...] = ()


async def store_call(location: Location, fn: Callable[..., T], *args: Any) -> T:
    """A metadata call in a worker thread (abandoned if the caller is cancelled);
    store failures become :class:`StoreError` naming the location."""
    try:
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise StoreError(f"store call on {location.description} failed: {e}") from e


async def records(location: Location, step: int | None = None) -> list[Record]:
    """Every committed step (or only ``step``), ascending, from one listing.

    (Stores list by folder, not by string prefix: a step's revisions are found by
    listing ``manifests/`` whole.)
    """
    objs = await store_call(location, location.list, MANIFESTS)
    revisions: dict[int, list[tuple[int, str]]] = {}
    for o in objs:
        parsed = parse_manifest_key(o.key)
        if parsed is not None and (step is None or parsed[0] == step):
            revisions.setdefault(parsed[0], []).append((parsed[1], o.key))
    out = []
    for s in sorted(revisions):
        revs = sorted(revisions[s])
        out.append(Record(s, revs[-1][1], revs[-1][0], tuple(k for _, k in revs[:-1])))
    return out


async def list_steps(location: Location) -> list[int]:
    """Every committed step at ``location``, ascending (one LIST call)."""
    return [r.step for r in await records(location)]


async def load_record(location: Location, record: Record) -> Checkpoint:
    """The checkpoint a record commits (its manifest read and validated, payload unchecked).

    Raises :class:`CheckpointNotFoundError` when the record is gone (deleted since it
    was listed) and :class:`CorruptCheckpointError` when it is invalid.
    """
    try:
        raw = await store_call(location, location.get, record.key)
    except FileNotFoundError as e:
        if "NoSuchBucket" in str(e):  # S3 says "not found" for the bucket too
            raise StoreError(f"the bucket of {location.description} does not exist") from e
        raise CheckpointNotFoundError(
            f"no checkpoint committed at step {record.step} in {location.description}"
        ) from None
    return checkpoint_of(decode_record(raw, key=record.key), location, key=record.key)


async def load(location: Location, step: int) -> Checkpoint:
    """The checkpoint committed at ``step`` (its newest revision read and validated)."""
    found = await records(location, step)
    if not found:
        # Not found (or a missing bucket, which some stores list as empty): the plain
        # key's read says which.
        return await load_record(location, Record(step, manifest_key(step), 0))
    return await load_record(location, found[-1])


async def is_complete(ckpt: Checkpoint) -> bool:
    """Whether every payload object exists with its recorded size (one LIST, no reads;
    a sharded step: one per part, side by side)."""
    if ckpt._parts:
        complete = [False] * len(ckpt._parts)

        async def check(r: int, part: Checkpoint) -> None:
            complete[r] = await is_complete(part)

        async with anyio.create_task_group() as tg:
            for r, part in enumerate(ckpt._parts):
                tg.start_soon(check, r, part)
        return all(complete)
    loc = ckpt._location
    objs = await store_call(loc, loc.list, ckpt._data + "/")
    sizes = {o.key[len(ckpt._data) + 1 :]: o.size for o in objs}
    return all(sizes.get(name) == info.size for name, info in ckpt.files.items())


async def validate(location: Location, record: Record) -> Checkpoint:
    """The record's checkpoint if it is valid; else :class:`CorruptCheckpointError`."""
    ckpt = await load_record(location, record)
    if not await is_complete(ckpt):
        where = ", ".join(p._data for p in ckpt._parts) if ckpt._parts else ckpt._data
        raise CorruptCheckpointError(
            f"checkpoint {record.step}: payload objects of {where} are missing or truncated"
        )
    return ckpt


async def still_committed(location: Location, key: str) -> bool:
    """Whether the commit record ``key`` is still there (False: deleted since, by retention)."""
    try:
        await store_call(location, location.get, key)
    except FileNotFoundError:
        return False
    return True


async def list_checkpoints(location: Location) -> list[Checkpoint]:
    """Every committed checkpoint whose manifest is valid, oldest first (payload unchecked)."""
    out = []
    for record in await records(location):
        try:
            out.append(await load_record(location, record))
        except CheckpointNotFoundError:
            continue  # deleted since the listing
        except CorruptCheckpointError as e:
            log.warning("asynccp: skipping step %d in %s: %s", record.step, location.description, e)
    return out


async def latest(location: Location, *, skip: Collection[Bad] = ()) -> Checkpoint | None:
    """The newest valid checkpoint not in ``skip``, or None (metadata calls only)."""
    for _ in range(_MAX_RELISTS):
        vanished = False
        for record in reversed(await records(location)):
            try:
                ckpt = await validate(location, record)
            except CheckpointNotFoundError:
                vanished = True  # rotated away since the listing: list again
                break
            except CorruptCheckpointError as e:
                if not await still_committed(location, record.key):
                    vanished = True  # its payload went with it: rotation, not corruption
                    break
                log.warning(
                    "asynccp: latest(): skipping step %d in %s: %s",
                    record.step,
                    location.description,
                    e,
                )
                continue
            if (ckpt.step, ckpt.writer) in skip:
                continue
            return ckpt
        if not vanished:
            return None
    raise StoreError(_too_fast(location))


async def newest(
    location: Location,
    action: Callable[[Checkpoint], Awaitable[T]],
    *,
    skip: Collection[Bad] = (),
    on_corrupt: Callable[[Checkpoint | None, int, CorruptCheckpointError], None] | None = None,
    stacklevel: int = 3,
) -> tuple[Checkpoint, T] | None:
    """Apply ``action`` to the newest valid checkpoint for which it succeeds.

    A checkpoint whose manifest is invalid, whose payload is incomplete, or on which
    ``action`` raises :class:`CorruptCheckpointError` is skipped with a
    :class:`CorruptCheckpointWarning` naming it (and reported to ``on_corrupt``), and
    the next older one is tried. One that vanishes meanwhile (retention) is no
    corruption: the location is listed again.
    """
    for _ in range(_MAX_RELISTS):
        vanished = False
        for record in reversed(await records(location)):
            ckpt: Checkpoint | None = None
            try:
                ckpt = await validate(location, record)
                if (ckpt.step, ckpt.writer) in skip:
                    raise CorruptCheckpointError("it failed verification when read before")
                result = await action(ckpt)
            except CheckpointNotFoundError:
                if ckpt is not None:
                    raise  # the action's own (a file name the checkpoint does not have)
                vanished = True  # the record was deleted since the listing
                break
            except CorruptCheckpointError as e:
                if not await still_committed(location, record.key):
                    vanished = True
                    break
                warnings.warn(
                    f"asynccp: checkpoint {record.step} in {location.description} failed "
                    f"verification and was skipped: {e}",
                    CorruptCheckpointWarning,
                    stacklevel=stacklevel,
                )
                if on_corrupt is not None:
                    on_corrupt(ckpt, record.step, e)
            else:
                return ckpt, result
        if not vanished:
            return None
    raise StoreError(_too_fast(location))


@dataclass(frozen=True)
class Surveyed:
    """One committed step as the command line shows it: valid, or why not."""

    record: Record
    checkpoint: Checkpoint | None
    problem: str | None


async def survey(location: Location) -> list[Surveyed]:
    """Every committed step, oldest first, each valid (with its checkpoint) or not (with
    the reason): what ``asynccp ls`` shows. Steps deleted while surveyed are left out."""
    out = []
    for record in await records(location):
        try:
            ckpt = await validate(location, record)
        except CheckpointNotFoundError:
            continue
        except CorruptCheckpointError as e:
            out.append(Surveyed(record, None, str(e)))
        else:
            out.append(Surveyed(record, ckpt, None))
    return out


async def quarantined(location: Location) -> list[str]:
    """Keys of the records moved to ``quarantine/`` (kept for inspection), sorted."""
    objs = await store_call(location, location.list, QUARANTINE)
    return sorted(o.key for o in objs if o.key.endswith(".json"))


def _too_fast(location: Location) -> str:
    return (
        f"the checkpoints of {location.description} vanished {_MAX_RELISTS} times while "
        "being read: retention deletes them faster than they can be read"
    )
