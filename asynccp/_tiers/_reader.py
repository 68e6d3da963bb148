"""The reader of a tiered checkpointer: both tiers, newest first, the local copy first.

A :class:`~asynccp._reader.Reader` (the checkpointer's read seam) over two locations:
the local tier (the directory the checkpointer commits to) and the remote tier (where
the replicator copies every checkpoint). Each is read through the catalog, with its own
set of checkpoints known not to verify (a local copy and its remote twin share a step
and a writer, and only one of them may be damaged).

- ``latest``, ``load_latest``, ``read``, ``restore``: the newest step in either tier;
  at equal step the local copy; a local copy that does not verify falls back to the
  remote copy of the same step (the skipped copy is warned about, as every skipped
  checkpoint is), then to older steps.
- A local directory that is gone is an empty tier: reads use the remote tier alone.
- A remote tier that cannot be listed while the local tier has checkpoints is logged,
  and the local tier answers alone (a restart does not wait for the network); with
  nothing local either, the remote's error is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import _catalog as catalog
from .._catalog import Bad, Record
from .._checkpoint import Checkpoint, checkpoint_from
from .._manifest import Manifest
from .._shard_records import AnyManifest, ShardedManifest
from .._store import Store
from .._write import StepOrder
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, StoreError

__all__ = ["TieredReader"]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: Times the tiers are listed again because what was being read vanished (retention).
_MAX_RELISTS = 20


#: What a tier's read answers when the record was deleted since the listing (retention):
#: the tiers are listed again.
_VANISHED = object()


class TieredReader:
    """Reads a local tier and a remote tier as one history (see the module doc).

    ``order`` is the checkpointer's step order (the local tier's bad copies, the floor
    for new saves across both tiers); ``remote_bad`` the remote copies known not to
    verify (the replicator replaces them).
    """

    def __init__(self, local: Store, remote: Store, order: StepOrder, remote_bad: set[Bad]) -> None:
        self.local = local
        self.remote = remote
        self._order = order
        self._remote_bad = remote_bad

    def __repr__(self) -> str:
        return f"<TieredReader {self.local.description} + {self.remote.description}>"

    @property
    def location(self) -> str:
        """Both tiers, as a readable string."""
        return f"{self.local.description} (local) + {self.remote.description}"

    def _tiers(self) -> tuple[tuple[Store, set[Bad]], tuple[Store, set[Bad]]]:
        return (self.local, self._order.bad), (self.remote, self._remote_bad)

    async def _records(self) -> tuple[dict[int, Record], dict[int, Record]]:
        """Both tiers' committed steps (the remote's: empty, logged, when it cannot be
        listed while the local tier has some)."""
        local = {r.step: r for r in await catalog.records(self.local)}
        try:
            remote = {r.step: r for r in await catalog.records(self.remote)}
        except StoreError as e:
            if not local:
                raise
            log.warning(
                "asynccp: %s cannot be listed (%s): reading the local tier alone",
                self.remote.description,
                e,
            )
            remote = {}
        return local, remote

    async def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint in either tier (the local copy at equal step)."""

        async def valid(store: Store, record: Record, bad: set[Bad]) -> object:
            manifest = await _valid(store, record, bad)
            if isinstance(manifest, (Manifest, ShardedManifest)):
                return checkpoint_from(manifest, store)
            return manifest  # None or _VANISHED

        found = await self._first(valid)
        if found is None:
            return None
        self._order.raise_floor(found[0])
        ckpt: Checkpoint = found[1]
        return ckpt

    async def list(self) -> list[Checkpoint]:
        """Every valid checkpoint, oldest first: the local copy where there is one."""
        local = {c.step: c for c in await catalog.list_checkpoints(self.local)}
        try:
            remote = await catalog.list_checkpoints(self.remote)
        except StoreError as e:
            if not local:
                raise
            log.warning("asynccp: %s cannot be listed (%s)", self.remote.description, e)
            remote = []
        for ckpt in remote:
            local.setdefault(ckpt.step, ckpt)
        return [local[step] for step in sorted(local)]

    async def get(self, step: int) -> Checkpoint:
        """The checkpoint at ``step``: the local copy, else the remote one."""
        try:
            return await catalog.load(self.local, step)
        except (CheckpointNotFoundError, CorruptCheckpointError):
            return await catalog.load(self.remote, step)

    async def newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """``action`` on the newest checkpoint for which it verifies: per step, the local
        copy, then the remote one; the copies skipped are remembered as bad."""

        async def attempt(store: Store, record: Record, bad: set[Bad]) -> object:
            return await _attempt(store, record, action, bad)

        found = await self._first(attempt)
        if found is None:
            self._order.found_newest(None)
            return None
        self._order.found_newest(found[0])
        result: tuple[Checkpoint, T] = found[1]
        return result

    async def _first(
        self, try_copy: Callable[[Store, Record, set[Bad]], Awaitable[object]]
    ) -> tuple[int, Any] | None:
        """``(step, what try_copy gave)`` for the newest copy it gives something for
        (None: it skipped the copy), newest step first, the local copy first; the
        tiers are listed again when a record vanished (:data:`_VANISHED`: retention)."""
        for _ in range(_MAX_RELISTS):
            local, remote = await self._records()
            vanished = False
            for step in sorted(set(local) | set(remote), reverse=True):
                for (store, bad), records in zip(self._tiers(), (local, remote), strict=True):
                    if step not in records:
                        continue
                    found = await try_copy(store, records[step], bad)
                    if found is _VANISHED:
                        vanished = True
                        break
                    if found is not None:
                        return step, found
                if vanished:
                    break
            if not vanished:
                return None
        raise StoreError(_too_fast(self.location))

    def next_step(self) -> int:
        """After everything saved or found in either tier."""
        return self._order.next_step()

    def saved(self, step: int) -> None:
        """Nothing to do: the step order records every save itself."""


async def _valid(store: Store, record: Record, bad: set[Bad]) -> AnyManifest | object | None:
    """The record's manifest if its checkpoint is valid and not known bad; None (warned
    about when invalid) otherwise; :data:`_VANISHED` when it was deleted."""
    try:
        manifest = await catalog.validate(store, record)
    except CheckpointNotFoundError:
        return _VANISHED
    except CorruptCheckpointError as e:
        if not await catalog.still_committed(store, record.key):
            return _VANISHED
        catalog.warn_skipped(store, record.step, e)
        return None
    return None if (manifest.step, manifest.writer) in bad else manifest


async def _attempt(
    store: Store, record: Record, action: Callable[[Checkpoint], Awaitable[T]], bad: set[Bad]
) -> tuple[Checkpoint, T] | object | None:
    """``action`` on one tier's copy of a step; None when it is invalid or does not
    verify (warned about; one that does not verify joins ``bad``); :data:`_VANISHED`."""
    manifest: AnyManifest | None = None
    try:
        manifest = await catalog.validate(store, record)
        if (manifest.step, manifest.writer) in bad:
            raise CorruptCheckpointError("it failed verification when read before")
        ckpt = checkpoint_from(manifest, store)
        return ckpt, await action(ckpt)
    except CheckpointNotFoundError:
        if manifest is not None:
            raise  # the action's own (a file name the checkpoint does not have)
        return _VANISHED
    except CorruptCheckpointError as e:
        if not await catalog.still_committed(store, record.key):
            return _VANISHED
        catalog.warn_skipped(store, record.step, e)
        if manifest is not None:
            bad.add((manifest.step, manifest.writer))
        return None


def _too_fast(where: str) -> str:
    return (
        f"the checkpoints of {where} vanished {_MAX_RELISTS} times while being read: "
        "retention deletes them faster than they can be read"
    )
