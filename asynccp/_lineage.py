"""Attempts that each write to their own prefix, read back as one history.

An orchestrator such as Flyte gives every attempt of a task its own checkpoint prefix,
and tells the attempt only the previous attempt's prefix. When the previous attempt
died before it saved anything, its prefix is empty, and an attempt that looked only
there would start from zero although the attempt before had saved. So every attempt
writes a small record first, ``<prefix>/asynccp-attempt.json``, naming the previous
attempt's prefix and the checkpoint it resumes from: following the records back from
the previous prefix crosses any number of attempts that saved nothing.

Resume order: this attempt's own prefix, then the previous attempt's, then the one
before it, and so on; within one prefix, the newest step first. The first checkpoint
that verifies wins; corrupt ones are skipped with a :class:`CorruptCheckpointWarning`.

Two things a plugin may add, both read-only:

- ``foreign``: the name of the framework whose own checkpoints may be at an earlier
  prefix (flytekit's ``SyncCheckpoint`` data, for one). Such a checkpoint is read as
  one at step -1, the oldest point of its prefix (:mod:`asynccp._foreign`).
- ``earlier``: the orchestrator's naming scheme, ``prefix -> the previous attempt's
  prefix`` (or None). An attempt that died before it wrote its record (a pod lost at
  start-up, killed while importing) leaves no record to follow; the scheme goes on
  past it (:mod:`asynccp._propeller`, for Flyte).

Earlier attempts' prefixes are inputs: the lineage reads them (listings, gets) and
never writes to them — no lease, no staging, no retention. Only the attempt's own
prefix is written: its record, and its checkpoints.

:class:`LineageReader` is the :class:`~asynccp._reader.Reader` a framework plugin gives
the attempt's :class:`Checkpointer` (``asynccp.current()``) for the task body: the
checkpointer still writes to the attempt's own prefix, and its reads (``latest``,
``read``, ``restore``, ``load_latest``...) follow the records back.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from ._checkpoint import Checkpoint
from ._checkpointer import Checkpointer
from ._foreign import ForeignReader
from ._layout import ATTEMPT_RECORD
from ._reader import CatalogReader
from ._store import Store, StoreOptions, local_root, resolve
from ._write import StepOrder
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    StoreError,
)

__all__ = [
    "RECORD_NAME",
    "AttemptRecord",
    "Lineage",
    "LineageReader",
    "load_latest",
    "read_record",
    "write_record",
]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: The attempt record's object name, at the root of the attempt's prefix.
RECORD_NAME = ATTEMPT_RECORD
_RECORD_FORMAT = 1
#: Records followed back at most (a guard against a chain that loops through copies).
MAX_LINEAGE = 1000


# -- the attempt record -----------------------------------------------------------------


@dataclass(frozen=True)
class AttemptRecord:
    """What an attempt writes at its start: where it writes, and where it came from.

    ``previous`` is the previous attempt's prefix (None for the first attempt);
    ``resume_from`` is ``(prefix, step)`` of the newest valid checkpoint the attempt
    found when it started (the one it resumes from unless that fails verification;
    step -1: a checkpoint the framework itself wrote there, see :mod:`asynccp._foreign`).
    """

    prefix: str
    previous: str | None
    resume_from: tuple[str, int] | None
    writer: str
    created_at: datetime

    def encode(self) -> bytes:
        doc = {
            "format": _RECORD_FORMAT,
            "prefix": self.prefix,
            "previous": self.previous,
            "resume_from": (
                None
                if self.resume_from is None
                else {"prefix": self.resume_from[0], "step": self.resume_from[1]}
            ),
            "writer": self.writer,
            "created_at": self.created_at.isoformat(),
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> AttemptRecord:
        """Parse and validate a record; :class:`CorruptCheckpointError` if it is not one."""
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
            if doc.get("format") != _RECORD_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            previous = doc["previous"]
            if previous is not None and (not isinstance(previous, str) or not previous):
                raise ValueError(f"previous must be a prefix or null, got {previous!r}")
            resume = doc["resume_from"]
            resume_from: tuple[str, int] | None = None
            if resume is not None:
                prefix, step = resume["prefix"], resume["step"]
                if not isinstance(prefix, str) or not isinstance(step, int) or step < -1:
                    raise ValueError(f"bad resume_from {resume!r}")
                resume_from = (prefix, step)
            if not isinstance(doc["prefix"], str) or not isinstance(doc["writer"], str):
                raise ValueError("prefix and writer must be strings")
            created_at = datetime.fromisoformat(doc["created_at"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"attempt record {where} is not valid: {e}") from e
        return cls(doc["prefix"], previous, resume_from, doc["writer"], created_at)


def _record_location(prefix: str, store_options: StoreOptions) -> Store:
    return resolve(prefix, store_options)


async def read_record(prefix: str, store_options: StoreOptions) -> AttemptRecord | None:
    """The attempt record at ``prefix``, or None when there is none.

    Raises :class:`CorruptCheckpointError` for a record that does not parse and
    :class:`StoreError` when the store fails (after its retries): a chain must not be
    cut short silently, or the attempt would resume from less than was saved.
    """
    loc = _record_location(prefix, store_options)

    def get() -> bytes | None:
        try:
            return loc.get(RECORD_NAME)
        except (FileNotFoundError, NotADirectoryError):
            return None

    try:
        raw = await anyio.to_thread.run_sync(get)
    except Exception as e:
        raise StoreError(f"reading the attempt record in {prefix} failed: {e}") from e
    return None if raw is None else AttemptRecord.decode(raw, f"{prefix}/{RECORD_NAME}")


async def write_record(record: AttemptRecord, store_options: StoreOptions) -> None:
    """Write ``record`` at the root of its prefix (overwriting an earlier one there)."""
    loc = _record_location(record.prefix, store_options)
    try:
        await anyio.to_thread.run_sync(loc.put, RECORD_NAME, record.encode())
    except Exception as e:
        raise StoreError(f"writing the attempt record in {record.prefix} failed: {e}") from e


# -- reading along the lineage ----------------------------------------------------------


#: What the lineage reads one prefix with: its asynccp checkpoints (the catalog), or a
#: checkpoint the framework itself wrote there.
PrefixReader = CatalogReader | ForeignReader


async def load_latest(
    reader: PrefixReader,
    loader: Callable[[Checkpoint], Awaitable[T]],
    *,
    exclude_writer: str | None = None,
) -> tuple[Checkpoint, T] | None:
    """``await loader(ckpt)`` on the newest valid checkpoint at ``reader``'s location
    whose loader does not raise :class:`CorruptCheckpointError`; None when none does.

    Each one skipped is reported with a :class:`CorruptCheckpointWarning`. Checkpoints
    written by ``exclude_writer`` (a writer id) are passed over: an attempt resuming
    from what came before it ignores what it has saved itself.
    """
    if exclude_writer is None:
        return await reader.newest(loader)
    # The newest valid one first (cheap: a listing, no manifest reads of older ones);
    # the full list only when it is passed over or does not verify.
    newest = await reader.latest()
    if newest is None:
        return None
    candidates: list[Checkpoint] = [newest]
    listed = False
    while candidates:
        ckpt = candidates.pop(0)
        if exclude_writer is None or ckpt.writer != exclude_writer:
            try:
                return ckpt, await loader(ckpt)
            except CheckpointNotFoundError:
                # deleted by retention since the listing: not corruption; the next older one
                log.debug("asynccp: checkpoint %d in %s went away", ckpt.step, reader.location)
            except CorruptCheckpointError as e:
                warnings.warn(
                    f"asynccp: checkpoint {ckpt.step} in {reader.location} failed verification "
                    f"and was skipped: {e}",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
        if not candidates and not listed:
            listed = True
            candidates = [c for c in reversed(await reader.list()) if c.step < newest.step]
    return None


@dataclass(frozen=True)
class _Source:
    """One earlier attempt's prefix: a reader of its asynccp checkpoints (None: none can
    be there), and one of the framework's own checkpoint there (None: not asked for)."""

    prefix: str
    reader: CatalogReader | None
    foreign: ForeignReader | None = None

    def readers(self) -> list[PrefixReader]:
        """Its readers, newest first: asynccp's steps, then the framework's (step -1)."""
        return [r for r in (self.reader, self.foreign) if r is not None]


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class Lineage:
    """This attempt's prefix and the earlier attempts' prefixes, newest first, each
    with its readers: the attempt's Checkpointer's own (:meth:`Checkpointer._own_reader`),
    and read-only ones on each earlier prefix (its asynccp checkpoints; the framework's
    own checkpoint there, when the plugin asks for it)."""

    def __init__(self, own: Checkpointer, own_prefix: str, earlier: list[_Source]) -> None:
        #: The own prefix's reader: the catalog of the attempt's Checkpointer, not the
        #: Checkpointer (which reads along this lineage while the task body runs).
        self.own = own._own_reader()
        self.own_prefix = own_prefix
        self.earlier = earlier

    @property
    def prefixes(self) -> list[str]:
        """Every prefix along the lineage, this attempt's first."""
        return [self.own_prefix, *(s.prefix for s in self.earlier)]

    @classmethod
    async def open(
        cls,
        own: Checkpointer,
        own_prefix: str,
        previous: str | None,
        store_options: StoreOptions,
        *,
        foreign: str | None = None,
        earlier: Callable[[str], str | None] | None = None,
    ) -> Lineage:
        """Follow the attempt records back from ``previous`` (reads only).

        ``foreign`` names the framework whose own checkpoints an earlier prefix may
        hold (read at step -1); ``earlier(prefix)`` is the orchestrator's previous
        attempt's prefix, followed where a prefix has no record to name it.
        """
        sources: list[_Source] = []
        seen = [own_prefix]
        prefix = previous
        while prefix and not any(_same(prefix, s) for s in seen):
            if len(sources) >= MAX_LINEAGE:
                log.warning("asynccp: stopped following attempt records after %d", MAX_LINEAGE)
                break
            seen.append(prefix)
            store = resolve(prefix, store_options)
            reader = await _reader(store)
            try:
                record = await read_record(prefix, store_options)
            except CorruptCheckpointError as e:
                log.warning("asynccp: %s; not following it further back", e)
                sources.append(_Source(prefix, reader))
                break
            # A prefix with a record is an asynccp attempt's: no other tool wrote there.
            outsider = None if foreign is None or record else ForeignReader(store, foreign)
            sources.append(_Source(prefix, reader, outsider))
            if record is not None:
                prefix = record.previous
            elif earlier is not None and (before := earlier(prefix)) is not None:
                log.info(
                    "asynccp: %s has no attempt record (its attempt never started, or ran "
                    "without asynccp); going on to %s, the attempt before it",
                    prefix,
                    before,
                )
                prefix = before
            else:
                prefix = None
        return cls(own, own_prefix, sources)

    def sources(self) -> list[tuple[str, PrefixReader]]:
        """``(prefix, reader)`` of every reader along the lineage, newest first: the own
        prefix's, then each earlier prefix's asynccp checkpoints and the framework's."""
        return [
            (self.own_prefix, self.own),
            *((s.prefix, r) for s in self.earlier for r in s.readers()),
        ]

    def readers(self) -> list[PrefixReader]:
        """Every reader along the lineage, newest first."""
        return [reader for _, reader in self.sources()]

    async def newest_valid(self) -> tuple[str, Checkpoint] | None:
        """The newest valid checkpoint along the lineage and its prefix (no payload reads)."""
        for prefix, reader in self.sources():
            ckpt = await reader.latest()
            if ckpt is not None:
                return prefix, ckpt
        return None

    async def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint along the lineage (cheap: no payload reads)."""
        found = await self.newest_valid()
        return None if found is None else found[1]

    async def list(self) -> list[Checkpoint]:
        """Every valid checkpoint along the lineage, oldest first (earliest attempt first)."""
        out: list[Checkpoint] = []
        for reader in reversed(self.readers()):
            out += await reader.list()
        return out

    async def get(self, step: int) -> Checkpoint:
        """The checkpoint committed at ``step``, from the newest attempt that has one."""
        for reader in self.readers():
            try:
                return await reader.get(step)
            except CheckpointNotFoundError:
                continue
        raise CheckpointNotFoundError(
            f"no checkpoint committed at step {step} in {', '.join(self.prefixes)}"
        )

    async def newest_step(self) -> int | None:
        """The highest step of a valid checkpoint anywhere along the lineage, or None
        (-1 when the only one is the framework's own)."""
        steps = [c.step for reader in self.readers() if (c := await reader.latest()) is not None]
        return max(steps, default=None)

    async def load_latest(
        self,
        loader: Callable[[Checkpoint], Awaitable[T]],
        *,
        exclude_writer: str | None = None,
        fallback: Callable[[str], Awaitable[T | None]] | None = None,
    ) -> tuple[Checkpoint | None, T] | None:
        """``await loader(ckpt)`` on the first checkpoint along the lineage that verifies.

        Prefixes in order (own first), newest step first within each (the framework's
        own checkpoint, at step -1, last); corrupt ones are skipped with a warning.
        ``fallback(prefix)``, when given, is tried for each earlier prefix once its
        checkpoints are exhausted (for data another tool wrote there in a form no
        reader here reads); a result other than None ends the search, with no
        Checkpoint.
        """
        found = await load_latest(self.own, loader, exclude_writer=exclude_writer)
        if found is not None:
            return found
        for source in self.earlier:
            for reader in source.readers():
                found = await load_latest(reader, loader, exclude_writer=exclude_writer)
                if found is not None:
                    return found
            if fallback is not None:
                value = await fallback(source.prefix)
                if value is not None:
                    return None, value
        return None


async def _reader(store: Store) -> CatalogReader | None:
    """A read-only reader of the asynccp checkpoints in an earlier attempt's prefix, or
    None.

    No Checkpointer is opened there: opening one writes (a lease, the location's
    folders), and the prefix is another attempt's, maybe not writable at all. None for
    a local path that is not a directory: nothing asynccp wrote is there (a file is
    what another tool, such as ``flyte.Checkpoint``, writes at the prefix).
    """
    local = local_root(store)
    if local is not None and not await anyio.to_thread.run_sync(Path(local).is_dir):
        return None
    return CatalogReader(store, StepOrder(store.description))


# -- the attempt's reader ------------------------------------------------------------------


class LineageReader:
    """The :class:`~asynccp._reader.Reader` of an attempt's Checkpointer inside a plugin.

    A plugin gives it to the attempt's Checkpointer for the task body
    (``cp._read_through(reader)``): the Checkpointer saves to this attempt's own
    prefix as always, while ``latest``, ``list``, ``get``, ``read``, ``restore``,
    ``prev_exists`` and ``load_latest`` look along the lineage (own prefix first, then
    the earlier attempts'), and ``write`` numbers steps after the newest one found
    anywhere on it.
    """

    def __init__(self, lineage: Lineage, next_step: int) -> None:
        self._lineage = lineage
        self._next_step = next_step
        self._step_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LineageReader of {len(self._lineage.earlier)} earlier prefix(es)>"

    @property
    def lineage(self) -> Lineage:
        """This attempt's prefix and the earlier attempts' prefixes."""
        return self._lineage

    def next_step(self) -> int:
        """The next step for an automatically numbered save, reserved (thread-safe: a
        plugin's bridge hands steps out on the caller's thread)."""
        with self._step_lock:
            step = self._next_step
            self._next_step = step + 1
            return step

    def saved(self, step: int) -> None:
        """A save of ``step``: automatic numbering continues after it."""
        with self._step_lock:
            self._next_step = max(self._next_step, step + 1)

    async def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint: this attempt's, else the earlier attempts'."""
        return await self._lineage.latest()

    async def list(self) -> list[Checkpoint]:
        """Every valid checkpoint along the lineage, oldest first."""
        return await self._lineage.list()

    async def get(self, step: int) -> Checkpoint:
        """The checkpoint at ``step``, from the newest attempt that committed one."""
        return await self._lineage.get(step)

    async def newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """``await action(ckpt)`` on the newest checkpoint along the lineage that verifies."""
        found = await self._lineage.load_latest(action)
        if found is None or found[0] is None:
            return None
        return found[0], found[1]
