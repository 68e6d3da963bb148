"""A checkpoint another tool wrote at a prefix, read as one :class:`Checkpoint`.

A team that switches a framework plugin on in the middle of a run has its progress in
the framework's own format: flytekit's ``SyncCheckpoint`` writes plain objects at the
attempt's checkpoint prefix (``write()`` and ``save(reader)``: one object,
``_dst_cp``; ``save(file)``: the file under its name; ``save(folder)``: the folder's
tree). The next attempt, with the plugin, is handed that prefix as the previous
attempt's. :class:`ForeignReader` reads it as one checkpoint:

- at step ``-1`` (:data:`FOREIGN_STEP`): before every step asynccp numbers, so it is the
  oldest point of its prefix (the plugin's lineage ranks prefixes newest attempt first:
  an asynccp checkpoint of a later attempt is newer, one of an earlier attempt older),
  and an attempt resuming from it numbers its own saves from 0;
- its files are the objects at the prefix, named by their keys relative to it, with the
  sizes the listing gives and no checksum (the tool recorded none; a read checks the
  size only);
- ``metadata`` is ``{"foreign": <tool>}``, ``writer`` the tool's name, ``created_at``
  the newest object's time.

A prefix that holds asynccp's own records (an attempt record, a commit record) holds no
foreign checkpoint; asynccp's own objects found beside another tool's (a lease an older
asynccp left) are never part of one. Reading never writes: the prefix is an earlier
attempt's, a read-only input.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timezone
from types import MappingProxyType
from typing import TypeVar

from ._checkpoint import Checkpoint
from ._layout import ATTEMPT_RECORD, is_layout_key, parse_manifest_key
from ._manifest import FileInfo
from ._store import Store, call
from .errors import CheckpointNotFoundError, CorruptCheckpointError, CorruptCheckpointWarning

__all__ = ["FOREIGN_STEP", "ForeignCheckpoint", "ForeignReader"]

T = TypeVar("T")

#: The step a checkpoint another tool wrote is read at: before asynccp's step 0.
FOREIGN_STEP = -1


@dataclass(frozen=True, eq=False)
class ForeignCheckpoint(Checkpoint):
    """A checkpoint another tool wrote: its files are the objects at the prefix itself
    (not in a writer's payload folder), and have no checksum to check."""

    def _key(self, name: str) -> str:
        return name


class ForeignReader:
    """Reads the checkpoint ``tool`` wrote at one prefix (``store``), if there is one.

    What it finds is kept: an earlier attempt's prefix does not change under the attempt
    that reads it. The same methods a lineage asks of a
    :class:`~asynccp._reader.CatalogReader` (``latest``, ``list``, ``get``, ``newest``).
    """

    def __init__(self, store: Store, tool: str) -> None:
        self._store = store
        self._tool = tool
        self._found: tuple[Checkpoint | None] | None = None

    def __repr__(self) -> str:
        return f"<ForeignReader {self._tool} {self.location}>"

    @property
    def location(self) -> str:
        """The prefix it reads, as a readable string."""
        return self._store.description

    async def checkpoint(self) -> Checkpoint | None:
        """The tool's checkpoint at the prefix (one listing), or None when the prefix
        holds none: no object, or asynccp's own records."""
        if self._found is None:
            self._found = (await self._list(),)
        return self._found[0]

    async def _list(self) -> Checkpoint | None:
        objs = await call(self._store, self._store.list_objects, "", key="", action="listing")
        if any(o.key == ATTEMPT_RECORD or parse_manifest_key(o.key) for o in objs):
            return None  # asynccp's prefix: its catalog reads it
        theirs = sorted((o for o in objs if not is_layout_key(o.key)), key=lambda o: o.key)
        if not theirs:
            return None
        return ForeignCheckpoint(
            step=FOREIGN_STEP,
            metadata=MappingProxyType({"foreign": self._tool}),
            files=MappingProxyType({o.key: FileInfo(o.size, None) for o in theirs}),
            created_at=max(o.last_modified for o in theirs).astimezone(timezone.utc),
            attempt=0,
            writer=self._tool,
            _store=self._store,
        )

    async def latest(self) -> Checkpoint | None:
        """The tool's checkpoint, or None (no payload read)."""
        return await self.checkpoint()

    async def list(self) -> list[Checkpoint]:
        """The tool's checkpoint, if there is one."""
        found = await self.checkpoint()
        return [] if found is None else [found]

    async def get(self, step: int) -> Checkpoint:
        """The tool's checkpoint when ``step`` is :data:`FOREIGN_STEP`."""
        found = await self.checkpoint()
        if found is None or step != FOREIGN_STEP:
            raise CheckpointNotFoundError(f"no checkpoint at step {step} in {self.location}")
        return found

    async def newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """``await action(ckpt)`` on the tool's checkpoint; None when there is none, or
        when it fails verification (warned about: a file changed size since listed)."""
        found = await self.checkpoint()
        if found is None:
            return None
        try:
            return found, await action(found)
        except CorruptCheckpointError as e:
            warnings.warn(
                f"asynccp: the {self._tool} checkpoint in {self.location} failed "
                f"verification and was skipped: {e}",
                CorruptCheckpointWarning,
                stacklevel=2,
            )
            return None
