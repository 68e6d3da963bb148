"""Two tiers behind one Checkpointer: what ``Checkpointer(remote, local=path)`` adds.

The checkpointer's write path is unchanged: its pipeline commits every checkpoint to the
local directory (a handle resolves once the checkpoint is durable there). :class:`Tiers`
adds, around it:

- the remote store, its writer lease and its housekeeping (``keep=`` and the orphan
  collector apply to the remote tier);
- the local tier's housekeeping (``local_keep=``), which never deletes a checkpoint the
  remote tier does not hold yet (its retention is *held* for those steps);
- the :class:`~._replicator.Replicator`, a task in the checkpointer's task group;
- the :class:`~._reader.TieredReader` the checkpointer reads through;
- the flush of the remote tier after the local one (``flush()``, the exit, a
  supervisor's flush within a deadline), and the replication figures of ``stats``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .. import _catalog as catalog
from .._catalog import Bad
from .._housekeeping import Housekeeping
from .._layout import manifest_key
from .._leases import LeaseKeeper
from .._manifest import Manifest
from .._options import Options, Retention
from .._reader import CatalogReader
from .._store import LocalFiles, Store, StoreOptions, call, resolve
from .._write import Committed, FlushResult, Replication, StepOrder
from ..errors import FlushTimeoutError
from ._reader import TieredReader
from ._replicator import Replicator

__all__ = ["Tiers"]

log = logging.getLogger("asynccp")

#: Seconds the exit spends, at most, deleting the remote lease.
_LEASE_RELEASE_SECONDS = 10.0


class Tiers:
    """The remote tier of a checkpointer that commits to a local directory first."""

    def __init__(self, remote: Store, options: Options, *, writer: str) -> None:
        assert options.local is not None and options.local_keep is not None
        self.remote = remote
        self.local = resolve(options.local, StoreOptions(durable=True))
        if not isinstance(self.local, LocalFiles):  # (a path always resolves to one)
            raise ValueError(f"local must be a local directory, got {options.local!r}")
        if self.local.description == remote.description:
            raise ValueError(
                f"local= is the location itself ({options.local!r}): the local tier must be "
                "another directory than the remote tier"
            )
        self.order = StepOrder(self.local.description)
        #: The remote copies known not to verify (a save of their step replaces them).
        self.remote_bad: set[Bad] = set()
        self.reader = TieredReader(self.local, remote, self.order, self.remote_bad)
        self._local_reader = CatalogReader(self.local, self.order)
        self.local_retention = Retention(
            keep=options.local_keep, orphan_grace=options.retention.orphan_grace
        )
        self.local_housekeeping = Housekeeping(
            self.local,
            retention=self.local_retention,
            writer=writer,
            bad=self.order.bad,
            hold=self._hold,
        )
        self._remote_housekeeping = Housekeeping(
            remote, retention=options.retention, writer=writer, bad=self.remote_bad
        )
        self._lease = LeaseKeeper(remote, writer)
        self.replicator = Replicator(
            self.local,
            remote,
            limiter=anyio.CapacityLimiter(options.limits.max_concurrency),
            bad=self.remote_bad,
            local_bad=self.order.skip,
            after_commit=self._after_remote_commit,
            ready=self._lease.written,
        )
        self._tidy = anyio.Lock()  # one local retention round at a time
        #: Whether the pipeline has nothing staged (given by its first commit; until
        #: then, a catch-up after a crash, it has not staged anything).
        self._idle: Callable[[], bool] = lambda: True
        self._scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Tiers {self.local.description} -> {self.remote.description}>"

    def _hold(self) -> Collection[int]:
        return self.replicator.hold()

    # -- lifecycle ----------------------------------------------------------------------

    async def discover(self) -> None:
        """At open: both tiers' newest steps (the floor for new saves); the remote's also
        tells the replicator what an earlier launch left behind. A remote that cannot
        be read now is logged: the replicator asks again in the background."""
        try:
            await self._local_reader.latest()
        except Exception as e:  # best effort, as a one-tier checkpointer's open
            log.warning("asynccp: could not read %s at open: %s", self.local.description, e)
        try:
            await call(self.remote, self.remote.open, action="preparing the location")
            newest = await catalog.latest(self.remote, skip=self.remote_bad)
        except Exception as e:
            log.warning("asynccp: could not read %s at open: %s", self.remote.description, e)
            return
        step = None if newest is None else newest.step
        if step is not None:
            self.order.raise_floor(step)
        self.replicator.remote_newest(step)

    async def start(self, tg: TaskGroup, quiet: Callable[[float], Awaitable[None]]) -> None:
        """Keep the remote lease and run the replicator in ``tg`` (until :meth:`stop`);
        ``quiet(seconds)`` returns once the write pipeline has had nothing staged for
        ``seconds`` (the replicator gives way to saves)."""
        self.replicator.quiet = quiet
        tg.start_soon(self._lease.run)
        await tg.start(self._replicate)

    async def _replicate(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.CancelScope() as self._scope:
            await self.replicator.run(task_status=task_status)

    def stop(self) -> None:
        """Stop the replicator and the lease (what is not replicated stays local)."""
        if self._scope is not None:
            self._scope.cancel()
        self._lease.stop()

    # -- the write path -----------------------------------------------------------------

    async def committed_locally(self, committed: list[Committed], idle: Callable[[], bool]) -> None:
        """The pipeline committed checkpoints locally: replicate them; local retention.

        ``idle()`` says whether the pipeline has nothing staged; the local tier's
        retention rounds after a replication use it too.
        """
        self._idle = idle
        for c in committed:
            self.local_housekeeping.trust.committed(c.key, c.manifest)
            self.replicator.add(c.manifest)
        async with self._tidy:
            await self.local_housekeeping.after_commit(
                [(c.key, c.manifest) for c in committed], idle=idle
            )

    async def _after_remote_commit(self, committed: Committed, local: Manifest) -> None:
        replicator = self.replicator
        await self._remote_housekeeping.after_commit(
            [(committed.key, committed.manifest)], idle=lambda: replicator.nothing_behind
        )
        async with self._tidy:  # what the remote tier holds now may leave the local one
            await self.local_housekeeping.after_commit(
                [(manifest_key(local.step), None)], idle=self._idle
            )

    # -- flushing -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until the remote tier holds every checkpoint committed locally; raise
        the replication failures not reported yet."""
        await self.replicator.wait_caught_up()
        error = FlushResult(errors=tuple(self.replicator.take_failures())).error()
        if error is not None:
            raise error

    async def flush_within(self, local: FlushResult, seconds: float) -> FlushResult:
        """After the local tier's flush (``local``), wait for the remote tier for at
        most ``seconds``; the result of both (the remote's lag is a
        :class:`FlushTimeoutError` past the deadline, nothing is abandoned: the local
        copies stay, and a relaunch replicates them)."""
        with anyio.move_on_after(seconds) as scope:
            await self.replicator.wait_caught_up()
        errors = [*local.errors, *self.replicator.take_failures()]
        late = scope.cancelled_caught and not self.replicator.caught_up
        if late:
            behind = self.replicator.behind()
            errors.append(
                FlushTimeoutError(
                    f"{len(behind)} checkpoint(s) committed in {self.local.description} "
                    f"(steps {behind}) are not yet in {self.remote.description} after "
                    f"{seconds:g} s: they stay in the local tier, and a relaunch with "
                    f"local={self.local.description!r} replicates them"
                )
            )
        return replace(local, errors=tuple(errors), timed_out=local.timed_out or late)

    async def close(self, local: FlushResult, seconds: float) -> FlushResult:
        """The exit, after the local tier's: :meth:`flush_within`, then stop; the remote
        lease is deleted (briefly: an expired lease is harmless too)."""
        result = await self.flush_within(local, seconds) if not local.timed_out else local
        self.stop()
        if not result.timed_out:
            with anyio.CancelScope(shield=True):
                await self._lease.release(min(_LEASE_RELEASE_SECONDS, max(0.0, seconds)))
        return result

    def stats(self) -> Replication:
        return self.replicator.stats()
