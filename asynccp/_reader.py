"""Readers: what a Checkpointer's reads go through.

A :class:`~asynccp.Checkpointer` writes to one location, and reads through one
:class:`Reader`: ``latest``, ``list``, ``get``, ``load_latest`` / ``read`` /
``restore`` (through :meth:`Reader.newest`), ``prev_exists``, and the step ``write``
numbers its save with. The checkpointer checks its arguments and its phase, and for a
sharded checkpointer wraps the restore in its shard checks; the reader decides which
checkpoints there are.

- :class:`CatalogReader`, every checkpointer's default, reads its own location through
  the catalog (:mod:`asynccp._catalog`) and keeps the checkpointer's
  :class:`~asynccp._write.StepOrder` up to date (the floor, the checkpoints found bad).
- ``LineageReader`` (:mod:`asynccp._lineage`) reads a framework plugin's attempt along
  the earlier attempts' prefixes too; the plugin hands it to the attempt's checkpointer
  for the attempt's body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from . import _catalog as catalog
from ._checkpoint import Checkpoint
from ._store import Store
from ._write import StepOrder

__all__ = ["CatalogReader", "Reader"]

T = TypeVar("T")


class Reader(Protocol):
    """The read side of a Checkpointer (its arguments checked by the Checkpointer)."""

    async def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint (cheap: no payload reads), or None."""
        ...

    async def list(self) -> list[Checkpoint]:
        """Every valid checkpoint, oldest first."""
        ...

    async def get(self, step: int) -> Checkpoint:
        """The checkpoint at ``step``; :class:`CheckpointNotFoundError` if there is none."""
        ...

    async def newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """``await action(ckpt)`` on the newest checkpoint for which it does not raise
        :class:`CorruptCheckpointError` (each one skipped is warned about); None when
        there is none."""
        ...

    def next_step(self) -> int:
        """The step an automatically numbered save (``write``) takes. Thread-safe where
        steps are handed out before their saves (a plugin's bridge)."""
        ...

    def saved(self, step: int) -> None:
        """A save of ``step`` was staged (automatic numbering continues after it)."""
        ...


class CatalogReader:
    """Reads one location through the catalog: a checkpointer's own.

    Shares the checkpointer's :class:`StepOrder`: what it reads raises the floor, and
    the checkpoints it finds not to verify are skipped from then on.
    """

    def __init__(self, store: Store, order: StepOrder) -> None:
        self._store = store
        self._order = order

    def __repr__(self) -> str:
        return f"<CatalogReader {self.location}>"

    @property
    def location(self) -> str:
        """The location it reads, as a readable string."""
        return self._store.description

    async def latest(self) -> Checkpoint | None:
        ckpt = await catalog.latest(self._store, skip=self._order.bad)
        if ckpt is not None:
            self._order.raise_floor(ckpt.step)
        return ckpt

    async def list(self) -> list[Checkpoint]:
        return await catalog.list_checkpoints(self._store)

    async def get(self, step: int) -> Checkpoint:
        return await catalog.load(self._store, step)

    async def newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """The skipped ones are remembered as bad; the floor is the one found."""
        found = await catalog.newest(
            self._store, action, skip=self._order.bad, on_skipped=self._order.skip
        )
        self._order.found_newest(None if found is None else found[0].step)
        return found

    def next_step(self) -> int:
        """After everything saved or found (the save that takes it records it)."""
        return self._order.next_step()

    def saved(self, step: int) -> None:
        """Nothing to do: the step order records every save itself."""
