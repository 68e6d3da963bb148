"""A writer's housekeeping after its commits: retention rounds, orphan collection once.

What to delete is :mod:`asynccp._retention`'s business; this module decides when, for
one open writer. Rounds are batched (see :class:`Housekeeping`): a loop of tiny saves
pays one listing and two bulk deletes per few dozen checkpoints, not a listing and a
delete per checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta

import anyio.lowlevel

from ._catalog import Bad
from ._manifest import Manifest
from ._options import Retention
from ._retention import Trust, apply_retention, collect_orphans
from ._shard_records import AnyManifest, ShardedManifest
from ._store import Store

__all__ = ["ROUND_BYTES", "ROUND_EVERY", "Housekeeping"]

log = logging.getLogger("asynccp")


class Housekeeping:
    """A writer's housekeeping: retention after commits, orphan collection once.

    A retention round lists the records and deletes what ``keep`` lets go, in one call
    for the records and one for their payload. Rounds are batched: one runs after a
    commit once nothing else is staged (and the saver staged nothing more when it had
    the chance), or once :data:`ROUND_EVERY` checkpoints (or :data:`ROUND_BYTES` bytes)
    were committed since the last one — so a loop that saves
    without pause pays a listing per few dozen checkpoints, not per checkpoint. Commits
    that arrive while a round runs are covered by the next one, which starts as soon as
    it ends if they are as many; the next commit never waits for a round. So a location
    holds beyond ``keep`` about :data:`ROUND_EVERY` checkpoints, plus a group's
    overshoot and those committed while a round runs.

    Never fatal: a failure is logged and retried at the next commit (the commit it
    follows has succeeded, and that is what its caller waits for).
    """

    def __init__(
        self,
        store: Store,
        *,
        retention: Retention,
        writer: str,
        bad: set[Bad],
        shard: int | None = None,
        generation: str | None = None,
        hold: Callable[[], Collection[int]] = tuple,
    ) -> None:
        self.store = store
        #: The steps retention must leave now (see :func:`apply_retention`).
        self.hold = hold
        #: Of a sharded launch only shard 0 does housekeeping: one process deletes.
        self.active = shard in (None, 0)
        self.generation = generation
        self.keep = retention.keep
        self.keep_every = retention.keep_every
        self.orphan_grace = timedelta(seconds=retention.orphan_grace)
        self.writer = writer
        #: What retention knows of the records (``bad`` is the step order's own set).
        self.trust = Trust(bad=bad)
        self._orphans_collected = False
        self._since = 0  # checkpoints committed since the last round
        self._bytes = 0  # and their bytes
        self._running = False

    def _this_launch(self, manifest: AnyManifest) -> bool:
        """A sharded step every part of which this launch wrote: as good as our own."""
        return isinstance(manifest, ShardedManifest) and manifest.generation == self.generation

    async def after_commit(
        self,
        commits: Sequence[tuple[str, AnyManifest | None]],
        *,
        idle: Callable[[], bool] = lambda: True,
    ) -> None:
        """This writer committed each ``(key, manifest)`` (a manifest None: a sharded
        writer's part, whose step retention finds); ``idle()`` says whether nothing is
        staged. Apply retention when a round is due (see the class), collect orphans
        once idle.

        Orphan collection (a lease write, listings, deletes) waits for a commit after
        which nothing is staged: on a local disk its writes would take turns in the
        journal with the commits of checkpoints still pending (a burst of four 1 MiB
        durable checkpoints committed at ~58 % of raw durable puts with it right after
        the first, at ~100 % with it after the last).
        """
        if not self.active:
            return
        for key, manifest in commits:
            if manifest is not None:
                self.trust.committed(key, manifest)
                self._bytes += _size(manifest)
            self._since += 1
        if self._running:
            return  # the round under way goes round again
        self._running = True
        try:
            while self._since and (await self._quiet(idle) or self._due()):
                self._since = self._bytes = 0
                await self._round(idle())
        finally:
            self._running = False

    def _due(self) -> bool:
        return self._since >= ROUND_EVERY or self._bytes >= ROUND_BYTES

    @staticmethod
    async def _quiet(idle: Callable[[], bool]) -> bool:
        """Whether nothing is staged, even after the saver had a turn: a loop saving
        without pause (blocked while the queue was full) stages its next checkpoint as
        soon as room is freed, and its rounds wait for :data:`ROUND_EVERY`."""
        if not idle():
            return False
        await anyio.lowlevel.checkpoint()
        return idle()

    async def _round(self, idle: bool) -> None:
        try:
            if self.keep is not None:
                await apply_retention(
                    self.store,
                    self.keep,
                    self.keep_every,
                    trust=self.trust,
                    trusted=self._this_launch if self.generation is not None else None,
                    hold=self.hold,
                )
            if not self._orphans_collected and idle:
                self._orphans_collected = True
                await collect_orphans(
                    self.store,
                    self.orphan_grace,
                    writer=self.writer,
                    generation=self.generation,  # its lease, rewritten, still names it
                )
        except Exception as e:
            log.warning(
                "asynccp: retention in %s failed (will retry next commit): %s",
                self.store.description,
                e,
            )


#: A retention round runs once this many checkpoints were committed since the last
#: one (or earlier, once nothing is staged).
ROUND_EVERY = 64
#: ... or once the checkpoints committed since the last one hold this many bytes.
ROUND_BYTES = 64 << 20


def _size(manifest: AnyManifest) -> int:
    parts = [manifest] if isinstance(manifest, Manifest) else manifest.parts
    return sum(f.size for p in parts for f in p.files.values())
