"""SIGTERM and SIGINT as pre-emption: cancel the running attempt, flush within a grace.

An orchestrator (Kubernetes, Slurm, a spot-instance reclaim) sends SIGTERM, waits a
grace period, then sends SIGKILL. A :class:`SignalWatcher` turns the first signal into
the cancellation of the supervised attempt (the scope :meth:`~SignalWatcher.interruptible`
opened) and records it in ``pending``; the supervisor then flushes the attempt's
checkpoints within ``grace`` seconds, so they commit before the SIGKILL, and exits with
:data:`~asynccp.PREEMPTED_EXIT_CODE`. The watcher never touches a checkpointer.

Supervisors running at once in one process share a single set of handlers (a process
has one handler per signal), and the handlers found at the start are put back when the
last one finishes. Signals are only handled in the main thread.

Once a run has ended in pre-emption the process is on its way out, so the old handlers
are *not* put back: the default SIGTERM action would kill it (exit code 143 instead of
75) if the orchestrator, or an impatient user, sends the signal again while it exits.
Further SIGTERM/SIGINT are logged and ignored instead, until the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import anyio
from anyio.abc import TaskStatus

__all__ = ["DEFAULT_GRACE", "SignalWatcher", "ignore_further_signals"]

log = logging.getLogger("asynccp")

DEFAULT_GRACE = 20.0
"""Seconds a pre-empted attempt may spend flushing: well under Kubernetes' default
``terminationGracePeriodSeconds`` of 30, leaving time to exit before SIGKILL."""

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))

#: The supervisors handling signals in this process, oldest first. The oldest owns the
#: handlers and hands each signal to all of them; when it finishes, the next oldest
#: takes them over. (One handler per signal: two owners would replace, then remove,
#: each other's.)
_watching: list[SignalWatcher] = []

#: True when a run that was watching signals has ended in pre-emption since the current
#: handlers were installed: when they are taken down, further signals are then ignored
#: (logged) instead of going back to the handlers of before.
_exiting = False
_exit_hook_registered = False


class SignalWatcher:
    """Turns SIGTERM/SIGINT into the cancellation of whatever the supervisor is running.

    One per supervised run. ``pending`` is the signal received and not yet dealt with
    (the supervisor clears it when it restarts the attempt in process).
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pending: signal.Signals | None = None
        self._scope: anyio.CancelScope | None = None
        self._turn = anyio.Event()  # set when this one is to own the receiver

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that a signal cancels (at once, if one is pending)."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self.pending is not None:
                scope.cancel()
            try:
                yield scope
            finally:
                self._scope = None

    def receive(self, signum: signal.Signals) -> None:
        """Take one signal: cancel what runs (the supervisor then flushes within grace)."""
        name = signal.Signals(signum).name
        if self.pending is not None:
            log.warning("asynccp: %s received while already stopping; still flushing", name)
            return
        self.pending = signal.Signals(signum)
        log.warning(
            "asynccp: %s received: stopping, flushing staged checkpoints (at most %g s)",
            name,
            self.grace,
        )
        if self._scope is not None:
            self._scope.cancel()

    def exiting(self) -> None:
        """This run ends in pre-emption: from the moment its signal handlers are taken
        down until the process exits, SIGTERM/SIGINT are logged and ignored."""
        global _exiting
        if self in _watching:  # a run that does not handle signals changes nothing
            _exiting = True

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
        """Receive signals until cancelled; then put the previous handlers back, or,
        when a run ended in pre-emption, ignore further signals.

        The handlers are asynccp's own (``signal.signal``), not an event loop's signal
        receiver: closing one of those puts the default actions back for a moment
        (asyncio does, whatever was there before), and a second signal then killed a
        pre-empted process — 2 runs in 80 with a SIGINT 10 ms after the SIGTERM exited
        by KeyboardInterrupt, and a SIGTERM there is fatal at once. Here the handler
        that hands signals to the loop is replaced directly by the one that logs and
        ignores them: there is no moment with a default action in between.
        """
        global _exiting
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        _exiting = False
        installed = False
        try:
            try:
                schedule = _scheduler()

                def handler(signum: int, frame: FrameType | None) -> None:
                    # Runs in the main thread between two bytecodes of whatever runs
                    # there: hand the signal to the loop, never raise.
                    try:
                        schedule(_deliver, signum)
                    except Exception:  # the loop is closing: nothing to hand it to
                        _log_and_ignore(signum, frame)

                for sig in _SIGNALS:
                    signal.signal(sig, handler)
                installed = True
            except (ValueError, OSError, RuntimeError) as e:
                log.debug("asynccp: signals are not handled here: %s", e)
                return
            finally:
                task_status.started()
            await anyio.sleep_forever()
        finally:
            if installed and _exiting:
                _ignore_further_signals()
            elif installed:
                for sig, old in previous.items():
                    if old is not None:
                        signal.signal(sig, old)


def _scheduler() -> Callable[..., Any]:
    """A function that runs ``fn(*args)`` soon on the running event loop, safe to call
    from a signal handler (asyncio's ``call_soon_threadsafe``, trio's
    ``run_sync_soon``)."""
    try:
        import asyncio

        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        pass
    import trio  # anyio runs on asyncio or trio

    run_sync_soon: Callable[..., Any] = trio.lowlevel.current_trio_token().run_sync_soon
    return run_sync_soon


def _deliver(signum: int) -> None:
    """On the event loop: hand a signal to every supervisor watching."""
    for watcher in list(_watching):
        watcher.receive(signal.Signals(signum))


def _log_and_ignore(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM/SIGINT handler of a pre-empted process: log the signal, nothing else.

    It runs in the main thread between two bytecodes of whatever is exiting, so it must
    never raise (no ``KeyboardInterrupt`` either): a failure to log is dropped.
    """
    with contextlib.suppress(Exception):
        log.warning(
            "asynccp: %s received after pre-emption: ignored, the process is exiting",
            signal.Signals(signum).name,
        )


def _ignore_further_signals() -> None:
    """Install :func:`_log_and_ignore` for SIGTERM/SIGINT, for the rest of the process.

    Python drops its own handlers (back to the default action) late in interpreter
    shutdown, after the ``atexit`` callbacks, and the process may take a while to get
    there from this point (the event loop closes, threads are joined, modules torn
    down). So an ``atexit`` callback turns the handler into a plain ``SIG_IGN`` in time:
    a signal arriving during the very last steps of the exit is ignored without a log
    line (there is no Python left to write one).
    """
    global _exit_hook_registered
    for sig in _SIGNALS:
        signal.signal(sig, _log_and_ignore)
    if not _exit_hook_registered:
        atexit.register(_ignore_at_exit)
        _exit_hook_registered = True


def ignore_further_signals() -> None:
    """A pre-empted process on its way out (``asynccp.sync``'s exit after SIGTERM):
    further SIGTERM/SIGINT are logged and ignored until it exits."""
    if threading.current_thread() is threading.main_thread():
        _ignore_further_signals()


def _ignore_at_exit() -> None:
    """At interpreter exit: ``SIG_IGN`` where :func:`_log_and_ignore` still handles."""
    for sig in _SIGNALS:
        try:
            if signal.getsignal(sig) is _log_and_ignore:
                signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread: nothing to do
            pass
