"""The autosave's cadence: when to save, what to skip, what to do on failure, and the
final save on exit.

Two tasks run while the block does (:meth:`Engine.run`: wait for the interval or
enough changes, read the state, skip it when unchanged, stage it; :meth:`Engine.watch`:
settle the autosaves in flight, in order). :meth:`Engine.finish` stops them and saves
once more. The steps are the engine's: one more than the newest valid step at the
location (or than the checkpointer's last committed one), then growing by one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

import anyio

from .._checkpointer import Checkpointer
from ..errors import CheckpointClosedError, CheckpointError, StepOrderError, SupersededError
from ._options import AutosaveOptions
from ._outcomes import AutosaveStats, Outcomes, log
from ._payload import Digest, StatePayload, call, digest, manifest_digest, payload_files

if TYPE_CHECKING:
    from .._write import SaveHandle

__all__ = ["Engine"]

#: Our own failed saves are raised again by the next ``save()``; retried this often.
_RESUBMIT = 3

Phase = Literal["new", "starting", "running", "closing", "closed"]


@dataclass
class _Mark:
    """What a saved (or saving) state was: its files' sizes and CRC32Cs, and the change
    count when it was read."""

    digest: Digest | None
    changes: int


@dataclass
class _Submitted:
    """An autosave staged in the checkpointer, waiting for its commit."""

    handle: SaveHandle
    step: int
    mark: _Mark
    started: float  # perf_counter() when its state was read
    end: Callable[..., None]  # ends its span


class Engine:
    """Saves ``state()`` on the cadence of ``options`` to ``cp``."""

    def __init__(
        self,
        cp: Checkpointer,
        state: Callable[[], StatePayload | Awaitable[StatePayload]],
        options: AutosaveOptions,
    ) -> None:
        self.cp = cp
        self._state = state
        self._opts = options
        self.final_timeout = (
            cp.options.flush_timeout if options.final_timeout is None else options.final_timeout
        )
        self.outcomes = Outcomes(cp, options)
        self.phase: Phase = "new"
        self.step = 0
        self._changes = 0
        #: The newest committed state (before the first commit: the location's newest).
        self._committed = _Mark(None, 0)
        self._outstanding: deque[_Submitted] = deque()
        #: Failures of our own saves: the checkpointer raises them again on the next save.
        self._recent_errors: deque[BaseException] = deque(maxlen=32)
        self._waiting: anyio.CancelScope | None = None
        self._waiting_mark = 0
        #: The change count when the last attempt read the state (``every_changes``
        #: counts from there, whatever became of that attempt).
        self._attempt_mark = 0
        self._wake: anyio.Event | None = None
        self._final_handle: SaveHandle | None = None

    @property
    def _closing(self) -> bool:
        return self.phase in ("closing", "closed")

    def stats(self) -> AutosaveStats:
        return self.outcomes.stats(len(self._outstanding), self._changes, self._committed.changes)

    def changed(self, n: int) -> None:
        """Count ``n`` changes; wake the cadence (or a save waiting for room) at
        ``every_changes``."""
        self._changes += n
        limit = self._opts.every_changes
        if limit is None or self.phase != "running":
            return
        if self._changes - self._attempt_mark >= limit and self._wake is not None:
            self._wake.set()
        if self._waiting is not None and self._changes - self._waiting_mark >= limit:
            self._waiting.cancel()  # a save waiting for room: read the newer state instead

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Find the first step and what is committed; the tasks may start after this."""
        if self.phase != "new":
            raise RuntimeError("an Autosave can be used in one `async with` block only")
        self.phase = "starting"
        try:
            prev = await self.cp.latest()
        except BaseException:
            self.phase = "closed"
            raise
        newest = [s for s in (self.cp.stats.last_committed_step,) if s is not None]
        if prev is not None:
            newest.append(prev.step)
        self.step = max(newest) + 1 if newest else 0
        if prev is not None:
            self._committed = _Mark(manifest_digest(prev.files), 0)
        self._wake = anyio.Event()
        self._run_scope = anyio.CancelScope()
        self._watch_scope = anyio.CancelScope()
        self._run_done = anyio.Event()
        self._watch_done = anyio.Event()
        self._queued = anyio.Event()

    async def finish(self) -> tuple[BaseException | None, BaseException | None]:
        """Stop the tasks, save once more (unless unchanged) and wait for it and the
        autosaves in flight, within ``final_timeout``; shielded.

        Returns ``(final_error, fatal)``: the final save's failure, and what no retry
        could fix (a payload that can never be saved, a closed checkpointer).
        """
        self.phase = "closing"
        final_error: BaseException | None = None
        fatal: BaseException | None = None
        with anyio.CancelScope(shield=True):
            self._run_scope.cancel()
            self._watch_scope.cancel()
            await self._run_done.wait()
            await self._watch_done.wait()
            with anyio.move_on_after(self.final_timeout) as bound:
                try:
                    # Staged at once: if the commits in flight outlast final_timeout, the
                    # checkpointer's exit flush still commits the newest state.
                    held = self._baseline()  # what a skip compares with (and updates)
                    final_error = await self._attempt(final=True)
                    await self._drain()
                    if (
                        self._final_handle is None
                        and final_error is None
                        and self._baseline() != held
                    ):
                        # Skipped for an autosave in flight that then failed: what is
                        # committed is older, so the state is saved now. (Skipped for a
                        # state already committed, or that committed since: done, one
                        # skip logged and counted.)
                        final_error = await self._attempt(final=True)
                        await self._drain()
                except Exception as e:  # a payload that can never be saved, a closed checkpointer
                    fatal = e
                handle = self._final_handle
                if final_error is None and handle is not None and handle.done():
                    final_error = handle.exception()
            if bound.cancelled_caught:
                log.warning(
                    "asynccp: autosave to %s: the final save did not commit within %g s; "
                    "the checkpointer's exit flush takes it from here",
                    self.cp.location,
                    self.final_timeout,
                    extra=self.outcomes.extra("autosave.final_timeout", self.step - 1),
                )
        return final_error, fatal

    # -- the cadence ---------------------------------------------------------------------

    def _baseline(self) -> _Mark:
        """The state the next save is compared with: the newest in flight, else committed."""
        return self._outstanding[-1].mark if self._outstanding else self._committed

    async def run(self) -> None:
        """Wait for the next interval (or enough changes), autosave, repeat."""
        every = self._opts.every
        try:
            with self._run_scope:
                next_at = math.inf if every is None else anyio.current_time() + every
                while True:
                    assert self._wake is not None
                    with anyio.CancelScope(deadline=next_at):
                        await self._wake.wait()
                    self._wake = anyio.Event()  # changes from here on wake the next round
                    started = anyio.current_time()
                    await self._attempt(final=False)
                    next_at = math.inf if every is None else started + every
        finally:
            self._run_done.set()

    async def _attempt(self, *, final: bool) -> BaseException | None:
        """One autosave: read the state, skip it if unchanged, stage it.

        Returns the failure, if any (it is logged and counted here). Raises what no
        retry can fix (a payload type that cannot be saved), and :class:`AutosaveError`
        when ``max_failures`` failures in a row are reached.
        """
        outcomes = self.outcomes
        while True:
            base = self._baseline()
            mark = self._attempt_mark = self._changes
            if self._opts.skip == "changes" and mark <= base.changes:
                outcomes.skipped(final)
                return None
            step = self.step
            wall, started = time.time_ns(), time.perf_counter()
            try:
                payload = await call(self._state)
            except Exception as e:
                end = outcomes.start(wall, step, final)
                outcomes.failed(e, step, started, end, "reading the state", closing=self._closing)
                return e
            files = payload_files(payload)
            found = await digest(files)
            if self._opts.skip == "digest" and found == base.digest:
                base.changes = max(base.changes, mark)  # the same state covers these changes
                outcomes.skipped(final)
                return None
            end = outcomes.start(wall, step, final)
            try:
                handle, step = await self._submit(files, mark, final=final)
            except (TypeError, ValueError, CheckpointClosedError) as e:
                if not isinstance(e, StepOrderError):
                    end(e)
                    raise  # no retry can fix these: the owner must hear at once
                outcomes.failed(e, self.step, started, end, "saving", closing=self._closing)
                return e
            except Exception as e:
                outcomes.failed(e, step, started, end, "saving", closing=self._closing)
                return e
            finally:
                del files  # release our views of the caller's buffers
            if handle is None:  # waited for room too long: read the newer state instead
                outcomes.replaced(step, end, superseded=False)
                continue
            self.step = step + 1
            if final:
                self._final_handle = handle
            item = _Submitted(handle, step, _Mark(found, mark), started, partial(end, step=step))
            self._outstanding.append(item)
            self._queued.set()
            return None

    async def _submit(
        self, files: dict[str, bytes | memoryview], mark: int, *, final: bool
    ) -> tuple[SaveHandle | None, int]:
        """Stage one autosave at the next step: ``(handle, step)``, the handle None when
        it waited for room until newer state came.

        ``save()`` raises earlier failures first: ours were counted already, so the save
        is tried again. A StepOrderError (someone else saved meanwhile) moves the step
        past what the location holds and tries again.
        """
        every = self._opts.every
        for attempt in range(_RESUBMIT):
            step = self.step
            try:
                if final:
                    return await self.cp.save(step, files, metadata=self._opts.metadata), step
                handle: SaveHandle | None = None
                deadline = math.inf if every is None else anyio.current_time() + every
                with anyio.CancelScope(deadline=deadline) as scope:
                    self._waiting, self._waiting_mark = scope, mark
                    try:
                        handle = await self.cp.save(step, files, metadata=self._opts.metadata)
                    finally:
                        self._waiting = None
                return handle, step
            except StepOrderError:
                await self._refresh_step()
                if attempt + 1 == _RESUBMIT:
                    raise
            except CheckpointError as e:
                if attempt + 1 == _RESUBMIT or not self._is_ours(e):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_ours(self, error: BaseException) -> bool:
        """Whether ``error`` is the failure of one of our own saves (reported already)."""
        return any(error is e for e in self._recent_errors) or any(
            error is s.handle.exception() for s in self._outstanding
        )

    async def _refresh_step(self) -> None:
        """After a StepOrderError: someone else saved; move past what the location holds."""
        candidates = [self.step + 1]
        try:
            prev = await self.cp.latest()
        except Exception as e:
            log.warning("asynccp: autosave could not read %s: %s", self.cp.location, e)
        else:
            if prev is not None:
                candidates.append(prev.step + 1)
        committed = self.cp.stats.last_committed_step
        if committed is not None:
            candidates.append(committed + 1)
        self.step = max(candidates)

    # -- outcomes ------------------------------------------------------------------------

    async def watch(self) -> None:
        """Settle the autosaves in flight, in order, as they commit or fail."""
        try:
            with self._watch_scope:
                while True:
                    while not self._outstanding:
                        self._queued = anyio.Event()
                        await self._queued.wait()
                    await self._settle_next()
        finally:
            self._watch_done.set()

    async def _drain(self) -> None:
        """Settle every autosave in flight (on exit: the watcher has stopped)."""
        while self._outstanding:
            await self._settle_next()

    async def _settle_next(self) -> None:
        item = self._outstanding[0]
        try:
            ckpt = await item.handle.wait()
        except SupersededError:
            self._outstanding.popleft()
            self.outcomes.replaced(item.step, item.end, superseded=True)
            return
        except Exception as e:
            self._outstanding.popleft()
            self._recent_errors.append(e)
            self.outcomes.failed(
                e, item.step, item.started, item.end, "uploading", closing=self._closing
            )
            return
        self._outstanding.popleft()
        self._committed = _Mark(
            manifest_digest(ckpt.files), max(item.mark.changes, self._committed.changes)
        )
        self.outcomes.committed(ckpt.step, ckpt.size, item.started, item.end)
