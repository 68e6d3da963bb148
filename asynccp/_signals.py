"""SIGTERM and SIGINT as pre-emption: cancel the running attempt, flush within a grace.

An orchestrator (Kubernetes, Slurm, a spot-instance reclaim) sends SIGTERM, waits a
grace period, then sends SIGKILL. A :class:`SignalWatcher` turns the first signal into
the cancellation of the supervised attempt and cuts that attempt's exit flush to
``grace`` seconds, so its staged checkpoints commit before the SIGKILL; the supervisor
then exits with :data:`PREEMPTED_EXIT_CODE`.

Supervisors running at once in one process share a single signal receiver (an event
loop has one handler per signal), and the handlers found at the start are put back when
the last one finishes. Signals are only handled in the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from ._checkpointer import Checkpointer

__all__ = ["DEFAULT_GRACE", "PREEMPTED_EXIT_CODE", "SignalWatcher"]

log = logging.getLogger("asynccp")

#: Exit code of a process stopped by SIGTERM/SIGINT after flushing its checkpoints.
#: 75 is ``EX_TEMPFAIL`` in sysexits.h ("temporary failure, try again later"): distinct
#: from 0/1/2, from the shell's 126/127, and from the 128+N of a process killed by a
#: signal (143 for SIGTERM, 137 for SIGKILL, 130 for Ctrl-C, 134 for an abort).
PREEMPTED_EXIT_CODE = 75

#: Seconds a pre-empted attempt may spend flushing: well under Kubernetes' default
#: ``terminationGracePeriodSeconds`` of 30, leaving time to exit before SIGKILL.
DEFAULT_GRACE = 20.0

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))

#: The supervisors handling signals in this process, oldest first. The oldest owns the
#: signal receiver and hands each signal to all of them; when it finishes, the next
#: oldest takes the receiver over. (One event loop handler per signal: two receivers
#: would replace, then remove, each other's.)
_watching: list[SignalWatcher] = []


class SignalWatcher:
    """Turns SIGTERM/SIGINT into the cancellation of whatever the supervisor is running.

    One per supervised run. ``pending`` is the signal received and not yet
    dealt with (the supervisor clears it when it restarts the attempt in process);
    ``failed_before`` is the attempt's ``cp.stats.failed`` when it arrived, so that the
    failures of the pre-emption flush can be told apart from earlier ones.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pending: signal.Signals | None = None
        self.failed_before = 0  # cp.stats.failed when the signal arrived
        self._scope: anyio.CancelScope | None = None
        self._cp: Checkpointer | None = None
        self._turn = anyio.Event()  # set when this one is to own the receiver

    @contextlib.contextmanager
    def interruptible(self, cp: Checkpointer | None = None) -> Iterator[anyio.CancelScope]:
        """A cancel scope that a signal cancels; ``cp``'s exit flush is then cut to grace."""
        with anyio.CancelScope() as scope:
            self._scope, self._cp = scope, cp
            if self.pending is not None:
                scope.cancel()
            try:
                yield scope
            finally:
                self._scope = self._cp = None

    def receive(self, signum: signal.Signals) -> None:
        """Take one signal: cancel what runs, and cut its exit flush to ``grace``."""
        name = signal.Signals(signum).name
        if self.pending is not None:
            log.warning("asynccp: %s received while already stopping; still flushing", name)
            return
        self.pending = signal.Signals(signum)
        if self._cp is not None:
            self.failed_before = self._cp.stats.failed
            # The exit flush of a pre-empted attempt gets `grace`, not the full
            # flush_timeout: the orchestrator's SIGKILL follows.
            self._cp.flush_timeout = min(self._cp.flush_timeout, self.grace)
        log.warning(
            "asynccp: %s received: stopping, flushing staged checkpoints (at most %g s)",
            name,
            self.grace,
        )
        if self._scope is not None:
            self._scope.cancel()

    async def watch(self, *, task_status: TaskStatus[None]) -> None:
        """Handle signals until cancelled (handing them to every supervisor watching)."""
        if not _SIGNALS or threading.current_thread() is not threading.main_thread():
            log.debug("asynccp: not in the main thread: signals are not handled")
            task_status.started()
            return
        _watching.append(self)
        try:
            if _watching[0] is not self:  # another supervisor owns the receiver
                task_status.started()
                await self._turn.wait()
                task_status = anyio.TASK_STATUS_IGNORED
            await self._own_receiver(task_status)
        finally:
            owner = _watching[0] is self
            _watching.remove(self)
            if owner and _watching:
                _watching[0]._turn.set()

    async def _own_receiver(self, task_status: TaskStatus[None]) -> None:
        """Receive signals until cancelled; then put the previous handlers back."""
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        try:
            with contextlib.ExitStack() as stack:
                try:
                    received = stack.enter_context(anyio.open_signal_receiver(*_SIGNALS))
                except (NotImplementedError, RuntimeError, ValueError) as e:
                    log.debug("asynccp: signals are not handled here: %s", e)
                    return
                finally:
                    task_status.started()
                async for signum in received:
                    for watcher in list(_watching):
                        watcher.receive(signum)
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
