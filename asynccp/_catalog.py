"""The read catalog: what is committed at a location, and which of it can be trusted.

Every reader goes through here: ``latest()``, ``load_latest()``, ``read()``,
``restore()``, the commit (judging a record already there), retention, the orphan
collector and the command line. The rules:

- A step is committed when a record for it exists; its commit record is its highest
  revision (see :mod:`asynccp._layout`).
- A checkpoint is *valid* when that record decodes and validates and every payload
  object it names exists with its recorded size (one listing, no payload reads). It
  *verifies* when, in addition, every checksum matches on read.
- A checkpoint that vanishes while it is being read (retention on another writer
  rotated it away) is not corrupt: the reader lists again and takes the newer one.
- A checkpoint skipped because it is invalid or does not verify is reported one way,
  wherever it is skipped: a :class:`~asynccp.CorruptCheckpointWarning` naming it,
  attributed to the caller's line (:func:`warn_skipped`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import anyio

from ._checkpoint import Checkpoint, checkpoint_from
from ._layout import MANIFESTS, QUARANTINE, manifest_key, parse_manifest_key
from ._manifest import Manifest
from ._shard_records import AnyManifest, ShardedManifest, decode_record
from ._store import Store, call
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
    "newest",
    "quarantined",
    "read_manifest",
    "records",
    "still_committed",
    "survey",
    "validate",
    "verify",
    "warn_skipped",
]

T = TypeVar("T")

#: A checkpoint known not to verify: ``(step, writer)``.
Bad = tuple[int, str]

#: Times a reader lists again because what it was reading vanished (rotation); past
#: this, the store is changing faster than it can be read and the reader gives up.
_MAX_RELISTS = 20
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Record:
    """One committed step as a listing shows it: its commit record and older revisions."""

    step: int
    key: str
    rev: int
    superseded: tuple[str, ...] = ()


def warn_skipped(store: Store, step: int, error: CorruptCheckpointError) -> None:
    """Report a checkpoint a reader skipped: a :class:`CorruptCheckpointWarning`.

    The warning is attributed to the first caller outside asynccp (whatever the depth
    of the call inside it), so Python's warning filters and ``-W`` work per call site.
    """
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the caller of this function
    while os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE) and frame.f_back:
        level += 1
        frame = frame.f_back
    warnings.warn(
        f"asynccp: checkpoint {step} in {store.description} was skipped: {error}",
        CorruptCheckpointWarning,
        stacklevel=level,
    )


async def records(store: Store, step: int | None = None) -> list[Record]:
    """Every committed step (or only ``step``), ascending, from one listing.

    (Stores list by folder, not by string prefix: a step's revisions are found by
    listing the records' folder whole.)
    """
    objs = await call(store, store.list_objects, MANIFESTS, key=MANIFESTS, action="listing")
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


async def list_steps(store: Store) -> list[int]:
    """Every committed step at ``store``, ascending (one LIST call)."""
    return [r.step for r in await records(store)]


async def read_manifest(store: Store, record: Record) -> AnyManifest:
    """The manifest a record holds, read and validated (its payload unchecked).

    Raises :class:`CheckpointNotFoundError` when the record is gone (deleted since it
    was listed) and :class:`CorruptCheckpointError` when it is invalid.
    """
    try:
        raw = await call(store, store.get, record.key, key=record.key, action="reading")
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"no checkpoint committed at step {record.step} in {store.description}"
        ) from None
    return decode_record(raw, key=record.key)


async def is_complete(store: Store, manifest: AnyManifest) -> bool:
    """Whether every payload object exists with its recorded size (one LIST, no reads;
    a sharded step: one per part, side by side; none when every file is inline)."""
    if isinstance(manifest, ShardedManifest):
        complete = [False] * len(manifest.parts)

        async def check(r: int, part: Manifest) -> None:
            complete[r] = await is_complete(store, part)

        async with anyio.create_task_group() as tg:
            for r, part in enumerate(manifest.parts):
                tg.start_soon(check, r, part)
        return all(complete)
    stored = manifest.stored  # (inline files were checked against their size when decoded)
    if not stored:
        return True  # every file is inside the record: nothing to list
    folder = manifest.data + "/"
    objs = await call(store, store.list_objects, folder, key=folder, action="listing")
    sizes = {o.key[len(folder) :]: o.size for o in objs}
    return all(sizes.get(name) == info.size for name, info in stored.items())


async def validate(store: Store, record: Record) -> AnyManifest:
    """The record's manifest if its checkpoint is valid; else :class:`CorruptCheckpointError`."""
    manifest = await read_manifest(store, record)
    if not await is_complete(store, manifest):
        raise CorruptCheckpointError(
            f"checkpoint {record.step}: payload objects of {manifest.data} are missing or truncated"
        )
    return manifest


async def verify(store: Store, manifest: AnyManifest) -> None:
    """Read every payload object of ``manifest`` and check it (CorruptCheckpointError)."""
    await checkpoint_from(manifest, store).verify()


async def still_committed(store: Store, key: str) -> bool:
    """Whether the record ``key`` is still there (False: deleted since, by retention)."""
    try:
        await call(store, store.get, key, key=key, action="reading")
    except FileNotFoundError:
        return False
    return True


async def load(store: Store, step: int) -> Checkpoint:
    """The checkpoint committed at ``step`` (its newest revision read and validated)."""
    found = await records(store, step)
    # Not listed (or a missing bucket, which some stores list as empty): the plain
    # key's read says which.
    record = found[-1] if found else Record(step, manifest_key(step), 0)
    return checkpoint_from(await read_manifest(store, record), store)


async def list_checkpoints(store: Store) -> list[Checkpoint]:
    """Every committed checkpoint whose manifest is valid, oldest first (payload unchecked)."""
    out = []
    for record in await records(store):
        try:
            out.append(checkpoint_from(await read_manifest(store, record), store))
        except CheckpointNotFoundError:
            continue  # deleted since the listing
        except CorruptCheckpointError as e:
            warn_skipped(store, record.step, e)
    return out


async def latest(store: Store, *, skip: Collection[Bad] = ()) -> Checkpoint | None:
    """The newest valid checkpoint not in ``skip``, or None (metadata calls only)."""
    for _ in range(_MAX_RELISTS):
        vanished = False
        listed = await records(store)
        for record in reversed(listed):
            try:
                manifest = await validate(store, record)
            except CheckpointNotFoundError:
                vanished = True  # rotated away since the listing: list again
                break
            except CorruptCheckpointError as e:
                if not await still_committed(store, record.key):
                    vanished = True  # its payload went with it: rotation, not corruption
                    break
                warn_skipped(store, record.step, e)
                continue
            if (manifest.step, manifest.writer) in skip:
                continue
            return checkpoint_from(manifest, store)
        if not vanished and await _settled(store, listed):
            return None
    raise StoreError(_too_fast(store))


async def newest(
    store: Store,
    action: Callable[[Checkpoint], Awaitable[T]],
    *,
    skip: Collection[Bad] = (),
    on_skipped: Callable[[Bad], None] | None = None,
) -> tuple[Checkpoint, T] | None:
    """Apply ``action`` to the newest valid checkpoint for which it succeeds.

    A checkpoint whose manifest is invalid, whose payload is incomplete, that is in
    ``skip``, or on which ``action`` raises :class:`CorruptCheckpointError` is skipped
    (:func:`warn_skipped`; a valid one is also reported to ``on_skipped``), and the next
    older one is tried. One that vanishes meanwhile (retention) is no corruption: the
    location is listed again.
    """
    for _ in range(_MAX_RELISTS):
        vanished = False
        listed = await records(store)
        for record in reversed(listed):
            manifest: AnyManifest | None = None
            try:
                manifest = await validate(store, record)
                if (manifest.step, manifest.writer) in skip:
                    raise CorruptCheckpointError("it failed verification when read before")
                ckpt = checkpoint_from(manifest, store)
                result = await action(ckpt)
            except CheckpointNotFoundError:
                if manifest is not None:
                    raise  # the action's own (a file name the checkpoint does not have)
                vanished = True  # the record was deleted since the listing
                break
            except CorruptCheckpointError as e:
                if not await still_committed(store, record.key):
                    vanished = True
                    break
                warn_skipped(store, record.step, e)
                if manifest is not None and on_skipped is not None:
                    on_skipped((manifest.step, manifest.writer))
            else:
                return ckpt, result
        if not vanished and await _settled(store, listed):
            return None
    raise StoreError(_too_fast(store))


@dataclass(frozen=True)
class Surveyed:
    """One committed step as the command line shows it: valid, or why not."""

    record: Record
    checkpoint: Checkpoint | None
    problem: str | None


async def survey(store: Store) -> list[Surveyed]:
    """Every committed step, oldest first, each valid (with its checkpoint) or not (with
    the reason): what ``asynccp ls`` shows. Steps deleted while surveyed are left out."""
    out = []
    for record in await records(store):
        try:
            manifest = await validate(store, record)
        except CheckpointNotFoundError:
            continue
        except CorruptCheckpointError as e:
            out.append(Surveyed(record, None, str(e)))
        else:
            out.append(Surveyed(record, checkpoint_from(manifest, store), None))
    return out


async def quarantined(store: Store) -> list[str]:
    """Keys of the records moved to ``quarantine/`` (kept for inspection), sorted."""
    objs = await call(store, store.list_objects, QUARANTINE, key=QUARANTINE, action="listing")
    return sorted(o.key for o in objs if o.key.endswith(".json"))


async def _settled(store: Store, listed: list[Record]) -> bool:
    """Whether "nothing usable" is the answer, not a listing that raced a writer.

    A listing is no snapshot (a local directory read while one record is created and
    another deleted may show neither), so before a reader answers None the location is
    listed once more: the answer stands when the two listings agree; otherwise the
    reader goes round again.
    """
    return await records(store) == listed


def _too_fast(store: Store) -> str:
    return (
        f"the checkpoints of {store.description} vanished {_MAX_RELISTS} times while "
        "being read: retention deletes them faster than they can be read"
    )
