"""The write pipeline: from ``save()`` to committed checkpoints, in order, within budget.

``save()`` plans the payload, reserves room in the bounded queue (count and bytes),
snapshots, and returns a :class:`SaveHandle`. The worker task takes checkpoints in save
order and commits them strictly in that order (:mod:`asynccp._write._commit`); while
one commits, the next small one's payload already uploads. Each outcome reaches the
caller three ways: its handle, the next ``save()``, and the flush. Failures are
reported in step order, the earliest first (several checkpoints fail together when the
disk is full, and they settle in no fixed order: a small one committed alone can fail
before the group saved ahead of it): a ``save()`` reports a failure only once every
checkpoint saved before it has settled, and a flush reports them all, sorted.

A flush's outcome is typed (:class:`FlushResult`): the failures not reported before,
and whether pending work had to be abandoned at the deadline. Nothing is passed as text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from .._options import Limits
from .._store import Store, local_files
from .._telemetry import Telemetry
from .._types import Payload
from ..errors import CheckpointClosedError, CheckpointError, FlushTimeoutError, SupersededError
from . import _handle
from ._commit import Committed, Item, RecordHook, commit
from ._group import commit_group, groupable
from ._handle import SaveHandle
from ._order import StepOrder
from ._queue import Changes, StagingQueue
from ._results import FlushResult, Replication, Stats
from ._stager import Stager
from ._staging import StagingFolder
from ._turns import CommitContext, Turn

if TYPE_CHECKING:
    from .._checkpoint import Checkpoint

__all__ = ["FlushResult", "Pipeline", "Replication", "Stats"]  # (the results: ._results)

log = logging.getLogger("asynccp")

#: Checkpoints uploading at once: one committing, the next one's payload under way.
PIPELINE = 2
#: Only checkpoints smaller than this overlap the previous one's commit: for them the
#: commit's fixed cost (fsyncs, a request) is what pipelining hides. Large ones are
#: bound by the store's bandwidth, and running two at once only adds threads competing
#: for the GIL (event-loop lag p99 at 64 MiB: 2-4 ms alone, 5-7 ms overlapped).
PIPELINE_BELOW = 8 << 20
#: At most this many small checkpoints saved back to back commit as one group (see
#: :func:`asynccp._write._group.commit_group`).
GROUP_MAX = 64


@dataclass(eq=False)
class Pending(Item):
    """A checkpoint staged by ``save()`` and waiting for (or in) upload."""

    handle: SaveHandle
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(f.size for f in self.files)


@dataclass
class _Counters:
    saves: int = 0
    committed: int = 0
    failed: int = 0
    superseded: int = 0
    bytes_saved: int = 0
    bytes_committed: int = 0
    stall: float = 0.0
    max_stall: float = 0.0
    upload_time: float = 0.0


class _Busy:
    """How many checkpoints are being processed (uploaded, committed, tidied up)."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = Changes()

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        self._changed.notify()

    async def wait_idle(self) -> None:
        while self.count:
            await self._changed.wait()


class Pipeline:
    """The bounded queue, the stager and the worker of one checkpointer.

    Created with the checkpointer (no I/O); :meth:`start` runs the worker in the
    checkpointer's task group; :meth:`close` is its exit.
    """

    def __init__(
        self,
        store: Store,
        *,
        writer: str,
        attempt: int,
        limits: Limits,
        order: StepOrder,
        checkpoint_of: Callable[[Committed], Checkpoint],
        after_commit: Callable[[list[Committed], Callable[[], bool]], Awaitable[None]],
        record: Callable[[], RecordHook | None] = lambda: None,
    ) -> None:
        self._store = store
        self._writer = writer
        self._order = order
        self._checkpoint_of = checkpoint_of
        self._after_commit = after_commit
        #: A sharded checkpointer's part recorder (asked at each commit: a supervised
        #: attempt learns its predecessors after it is created).
        self._record = record
        self._queue: StagingQueue[Pending] = StagingQueue(
            limits.max_pending, limits.max_pending_bytes, limits.policy, self._supersede
        )
        budget = limits.max_pending_bytes
        self._stager = Stager(lambda: budget - self._queue.staged_bytes)
        #: (Taken without a pass of the event loop: save() makes its one pass itself.)
        self._save_lock = anyio.Lock(fast_acquire=True)
        #: What every commit shares (each one gets the previous commit to follow).
        self._context = CommitContext(
            writer, attempt, anyio.CapacityLimiter(limits.max_concurrency), order.bad
        )
        #: The checkpoints that may be uploading at once: the queue's count, less one
        #: slot with policy="latest", kept for a waiting checkpoint (a save then
        #: supersedes it instead of waiting for an upload to finish).
        self._uploading = max(1, limits.max_pending - (limits.policy == "latest"))
        self._in_flight = anyio.Semaphore(min(PIPELINE, self._uploading))
        self._busy = _Busy()
        self._worker_done = anyio.Event()
        self._worker_scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None
        #: Failures not reported yet, with their steps.
        self._failures: list[tuple[int, CheckpointError]] = []
        #: The steps staged and not settled yet (committed, failed, superseded,
        #: abandoned): a failure is not reported by save() before the earlier ones.
        self._unsettled: set[int] = set()
        self._counters = _Counters()
        #: Set when pending work was abandoned at a deadline: nothing more is accepted.
        self._abandoned = False
        #: OpenTelemetry instruments (no-ops without the API).
        self.telemetry = Telemetry(store.description, writer, lambda: self._queue.depth)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, tg: TaskGroup, staging: StagingFolder, ready: anyio.Event) -> None:
        """Stage into ``staging``; run the worker in ``tg`` (uploads wait for ``ready``).

        On a local directory, the records retention deletes are kept to write the next
        ones over (:meth:`~asynccp._store.LocalFiles.recycle_records`) until
        :meth:`release`."""
        self._stager.open(staging)
        files = local_files(self._store)
        if files is not None:
            files.recycle_records(True)
        self._tg = tg
        self._worker_scope = await tg.start(self._worker, ready)

    async def close(self, seconds: float) -> FlushResult:
        """The exit: accept nothing more, wait for every staged checkpoint to commit and
        for housekeeping, at most ``seconds``; past that, abandon what is left.

        Shielded from cancellation: this is the flush that saves progress when the
        holder of the checkpointer is cancelled.
        """
        self._queue.close()
        if self._abandoned:  # a deadline passed already: the worker is being cancelled
            with anyio.CancelScope(shield=True):
                await self._worker_done.wait()
            return self._result(False, seconds)
        with anyio.CancelScope(shield=True), anyio.move_on_after(seconds) as scope:
            await self._queue.wait_idle()
            await self._worker_done.wait()  # retention after the last commit, too
        return self._result(scope.cancelled_caught, seconds)

    async def release(self) -> None:
        """Remove the staging folder and the spare records (after the worker is gone)."""
        files = local_files(self._store)

        def release() -> None:
            self._stager.close()
            if files is not None:
                files.recycle_records(False)

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(release)

    async def flush_within(self, seconds: float) -> FlushResult:
        """Wait for every staged checkpoint to commit and for housekeeping, at most
        ``seconds`` (``math.inf``: no limit); past that, abandon what is left.

        Not shielded: a cancelled caller stops waiting, and nothing is abandoned.
        """
        with anyio.move_on_after(seconds) as scope:
            await self._queue.wait_idle()
            await self._busy.wait_idle()
        return self._result(scope.cancelled_caught, seconds)

    def _result(self, timed_out: bool, seconds: float) -> FlushResult:
        errors = self.take_failures()
        abandoned: tuple[int, ...] = ()
        if timed_out:
            error, abandoned = self._abandon(seconds)
            if error is not None:
                errors.append(error)
        return FlushResult(
            errors=tuple(errors),
            abandoned=abandoned,
            timed_out=timed_out,
            last_committed=self._order.last_committed,
        )

    def _abandon(self, seconds: float) -> tuple[FlushTimeoutError | None, tuple[int, ...]]:
        """Give up after ``seconds``: fail every pending handle, stop the worker.

        Only housekeeping left (nothing pending): it can wait for next time, no error.
        """
        self._abandoned = True
        if self._worker_scope is not None:
            self._worker_scope.cancel()
        if self._queue.idle:
            log.warning(
                "asynccp: retention in %s cut short by the flush deadline", self._store.description
            )
            return None, ()
        pending = self._queue.drain()
        staged = sorted(p.step for p in pending)
        in_flight = sorted(self._unsettled.difference(staged))
        self._unsettled.difference_update(staged)
        steps = tuple(sorted([*staged, *in_flight]))
        parts = []
        if in_flight:
            parts.append(
                f"{len(in_flight)} uploading (steps {in_flight}: they may still commit if "
                "their last request lands)"
            )
        if staged:
            parts.append(f"{len(staged)} staged, not started (steps {staged})")
        err = FlushTimeoutError(
            f"flush did not finish within {seconds:g} s: {len(steps)} checkpoint(s) were "
            f"abandoned, {' and '.join(parts)}; the latest committed step is "
            f"{self._order.last_committed}"
        )
        for item in pending:
            _handle.fail(item.handle, err)
            self._stager.discard(item.files)
        return err, steps

    # -- saving -------------------------------------------------------------------------

    async def save(self, step: int, payload: Payload, metadata: Mapping[str, Any]) -> SaveHandle:
        """Stage checkpoint ``step`` (validated by the caller) and return its handle.

        One pass of the event loop (a cancellation point) whatever happens: the worker
        runs then, so uploads start even in a loop whose only await is ``save()``.
        """
        await anyio.lowlevel.checkpoint()
        async with self._save_lock:
            started = time.perf_counter()
            self.raise_failures()
            if self._abandoned:
                raise CheckpointClosedError(
                    "the Checkpointer gave up on its pending checkpoints at a flush deadline; "
                    "it accepts no more"
                )
            self._order.check(step)
            parts = await self._stager.plan(payload)  # validates: nothing waits for room yet
            size = sum(p.size for p in parts)
            await self._queue.reserve(size)
            try:
                files = await self._stager.snapshot(parts)
            except BaseException:
                self._queue.unreserve(size)
                raise
            item = Pending(
                step, files, dict(metadata), datetime.now(timezone.utc), SaveHandle(step)
            )
            self._queue.add(item, reserved=size)
            self._unsettled.add(step)
            self._order.saved(step)
            stall = time.perf_counter() - started
        c = self._counters
        c.saves += 1
        c.bytes_saved += item.size
        c.stall += stall
        c.max_stall = max(c.max_stall, stall)
        self.telemetry.saved(item.size, stall)
        return item.handle

    async def prepare(self, payload: Payload) -> int:
        """Plan ``payload`` and pool its staging memory, faulted in, within the budget
        (see :meth:`Stager.prepare`); the bytes made ready."""
        parts = await self._stager.plan(payload)
        return await anyio.to_thread.run_sync(self._stager.prepare, parts)

    async def wait_idle(self) -> None:
        """Wait until every staged checkpoint has committed or failed."""
        await self._queue.wait_idle()

    async def wait_quiet(self, seconds: float) -> None:
        """Wait until every staged checkpoint has committed or failed and none has been
        staged since, for ``seconds``."""
        await self._queue.wait_quiet(seconds)

    def take_failures(self, *, settled_only: bool = False) -> list[CheckpointError]:
        """The failures not reported yet, in step order (each is reported once).

        ``settled_only``: only those below every step still pending, so that a later
        step's failure is never reported before an earlier one's that is still to come
        (what ``save()`` reports while uploads run).
        """
        floor = min(self._unsettled, default=None) if settled_only else None
        ready = sorted(
            (f for f in self._failures if floor is None or f[0] < floor), key=lambda f: f[0]
        )
        self._failures = [f for f in self._failures if floor is not None and f[0] >= floor]
        return [error for _, error in ready]

    def raise_failures(self) -> None:
        """Raise the earliest unreported failure (the others as its notes), of those
        whose earlier checkpoints have all settled."""
        if self._failures:  # (checked first: this runs in every save())
            error = FlushResult(errors=tuple(self.take_failures(settled_only=True))).error()
            if error is not None:
                raise error

    def _supersede(self, item: Pending) -> None:
        self._unsettled.discard(item.step)
        _handle.fail(
            item.handle,
            SupersededError(f"checkpoint {item.step} was superseded by a newer one before upload"),
        )
        if any(f.path is not None for f in item.files) and self._tg is not None:
            # Staged file copies are deleted off the loop: this runs inside save().
            self._tg.start_soon(partial(anyio.to_thread.run_sync, self._stager.discard, item.files))
        else:
            self._stager.discard(item.files)  # buffers only: nothing touches the disk
        self._counters.superseded += 1
        self.telemetry.superseded()

    # -- the worker ---------------------------------------------------------------------

    async def _worker(
        self, ready: anyio.Event, *, task_status: TaskStatus[anyio.CancelScope]
    ) -> None:
        """Take checkpoints in save order; upload up to ``PIPELINE`` at once, commit in order.

        While one checkpoint's record commits (and its fsyncs run), the next small one's
        payload already uploads: the commit's fixed cost is hidden behind the next
        payload instead of adding to it. Each commit still waits for the previous one.
        """
        try:
            with anyio.CancelScope(shield=True) as scope:
                task_status.started(scope)
                async with anyio.create_task_group() as tg:
                    previous: Turn | None = None
                    await ready.wait()  # no upload before this writer's lease
                    while True:
                        await self._in_flight.acquire()  # before get(): an item is never held
                        while self._uploading_now() >= self._uploading:
                            await self._queue.changed()  # (latest: one waits, to supersede)
                        item = await self._queue.get()
                        if item is None:
                            break
                        committed = Turn()
                        self._busy.enter()
                        group = await self._group_after(item)
                        tg.start_soon(self._process, item, group, previous, committed)
                        previous = committed
        finally:
            self._worker_done.set()

    def _uploading_now(self) -> int:
        """Checkpoints taken from the queue and not settled yet."""
        return self._queue.depth - self._queue.waiting

    async def _group_after(self, item: Pending) -> list[Pending]:
        """The checkpoints to commit in one group with ``item``: the small ones saved
        right after it (none: ``item`` goes alone).

        Each group costs a worker-thread trip (and, on a durable local directory, two
        journal flushes), so the group takes what a saver adds while it can: the worker
        yields to the event loop as long as the queue grows, up to what may be
        uploading. A saver that is not saving right now costs the group one pass of
        the loop.
        """
        if self._record() is not None or not groupable(item.files):
            return []
        # All that may be uploading, less those already are. (Measured with
        # max_pending=4, 16-byte saves: groups of 4 committed 1.6 x as many per second
        # as groups of 2 staged while the other 2 commit: the overlap cost more than it
        # won, the worker thread's many small system calls waiting for the event loop's
        # hold on the GIL.)
        limit = min(GROUP_MAX - 1, self._uploading - self._uploading_now())
        waiting = self._queue.waiting
        while waiting < limit:
            await anyio.lowlevel.checkpoint()
            if self._queue.waiting == waiting:
                break
            waiting = self._queue.waiting
        return self._queue.take_while(lambda p: groupable(p.files), limit)

    async def _upload_group(
        self, items: list[Pending], previous: Turn | None, this: Turn
    ) -> list[Committed | None]:
        """Commit ``items`` as one group and settle each one's handle, in order."""
        started = time.perf_counter()
        spans = [
            self.telemetry.open_span("asynccp.commit", step=p.step, bytes=p.size) for p in items
        ]
        try:
            outcomes = await commit_group(self._store, items, self._context.after(previous, this))
        except BaseException as e:
            for end in spans:
                end(e)
            if isinstance(e, anyio.get_cancelled_exc_class()):
                for p in items:
                    self._give_up(p)
            raise
        finally:
            self._counters.upload_time += time.perf_counter() - started
            await self._release(items)
        settled: list[Committed | None] = []
        for p, outcome, end in zip(items, outcomes, spans, strict=True):
            end(outcome if isinstance(outcome, CheckpointError) else None)
            settled.append(self._settle(p, outcome, started))
        return settled

    def _give_up(self, item: Pending) -> None:
        """The exit flush ran out of time while ``item`` uploaded: fail it, free its room."""
        self._unsettled.discard(item.step)
        _handle.fail(
            item.handle, FlushTimeoutError(f"checkpoint {item.step} was abandoned mid-upload")
        )
        self._queue.done(item)

    async def _release(self, items: list[Pending]) -> None:
        """Give back what the items' snapshots hold (off the loop when there are maps
        to unmap or staged copies to delete; bytes only: nothing to do, no thread trip)."""

        def discard() -> None:
            for p in items:
                self._stager.discard(p.files, counted=p.size)

        if any(f.path is not None or f.buffer is not None for p in items for f in p.files):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(discard)
        else:
            discard()

    async def _process(
        self,
        item: Pending,
        group: list[Pending],
        previous: Turn | None,
        committed: Turn,
    ) -> None:
        """Upload one checkpoint (with ``group``: it and those, committed as one group),
        commit after ``previous``; free their room before their handles resolve; then
        housekeeping — after ``committed`` is set and this upload's slot is free, so
        the next commits do not wait for it (rounds are batched: see
        :class:`~asynccp._housekeeping.Housekeeping`)."""
        released = False
        try:
            if group:
                outcomes = await self._upload_group([item, *group], previous, committed)
            else:
                if previous is not None and item.size >= PIPELINE_BELOW:
                    await previous.wait()
                outcomes = [await self._upload(item, previous, committed)]
            committed.set()
            self._in_flight.release()
            released = True
            await self._after_commit([o for o in outcomes if o is not None], self._idle)
        finally:
            committed.set()
            if not released:
                self._in_flight.release()
            self._busy.leave()

    def _idle(self) -> bool:
        return self._queue.idle

    async def _upload(self, item: Pending, previous: Turn | None, this: Turn) -> Committed | None:
        """Commit ``item`` and settle its handle; what committed (None: it failed)."""
        started = time.perf_counter()
        outcome: Committed | CheckpointError
        span = self.telemetry.span("asynccp.commit", step=item.step, bytes=item.size)
        try:
            with span:
                outcome = await commit(
                    self._store, item, self._context.after(previous, this), record=self._record()
                )
        except CheckpointError as e:
            outcome = e
        except anyio.get_cancelled_exc_class():
            self._give_up(item)
            raise
        finally:
            self._counters.upload_time += time.perf_counter() - started
            await self._release([item])
        return self._settle(item, outcome, started)

    def _settle(
        self, item: Pending, outcome: Committed | CheckpointError, started: float
    ) -> Committed | None:
        """Give ``item``'s room back, count it, and resolve or fail its handle."""
        self._queue.done(item)
        self._unsettled.discard(item.step)
        c = self._counters
        if isinstance(outcome, CheckpointError):
            c.failed += 1
            self.telemetry.failed()
            self._failures.append((item.step, outcome))
            _handle.fail(item.handle, outcome)
            return None
        c.committed += 1
        c.bytes_committed += item.size
        self.telemetry.committed(item.size, time.perf_counter() - started)
        self._order.committed(item.step)
        _handle.resolve(item.handle, partial(self._checkpoint_of, outcome))
        return outcome

    # -- figures ------------------------------------------------------------------------

    def stats(self) -> Stats:
        c = self._counters
        return Stats(
            saves=c.saves,
            committed=c.committed,
            failed=c.failed,
            superseded=c.superseded,
            bytes_saved=c.bytes_saved,
            bytes_committed=c.bytes_committed,
            queue_depth=self._queue.depth,
            queue_bytes=self._queue.staged_bytes,
            stall_seconds=c.stall,
            max_stall_seconds=c.max_stall,
            upload_seconds=c.upload_time,
            last_committed_step=self._order.last_committed,
        )
