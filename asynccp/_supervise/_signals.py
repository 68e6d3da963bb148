"""SIGTERM and SIGINT as pre-emption: cancel the running attempt, flush within a grace.

An orchestrator (Kubernetes, Slurm, a spot-instance reclaim) sends SIGTERM, waits a
grace period, then sends SIGKILL. A :class:`SignalWatcher` turns the first signal into
the cancellation of the supervised attempt (the scope :meth:`~SignalWatcher.interruptible`
opened) and records it in ``pending``; the supervisor then flushes the attempt's
checkpoints within ``grace`` seconds, so they commit before the SIGKILL, and exits with
:data:`~asynccp.PREEMPTED_EXIT_CODE`. The watcher never touches a checkpointer.

Supervisors running at once in one process share a single signal receiver (an event
loop has one handler per signal), and the handlers found at the start are put back when
the last one finishes. Signals are only handled in the main thread.

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
from collections.abc import Iterator
from types import FrameType

import anyio
from anyio.abc import TaskStatus

__all__ = ["DEFAULT_GRACE", "SignalWatcher"]

log = logging.getLogger("asynccp")

#: Seconds a pre-empted attempt may spend flushing: well under Kubernetes' default
#: ``terminationGracePeriodSeconds`` of 30, leaving time to exit before SIGKILL.
DEFAULT_GRACE = 20.0

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))

#: The supervisors handling signals in this process, oldest first. The oldest owns the
#: signal receiver and hands each signal to all of them; when it finishes, the next
#: oldest takes the receiver over. (One event loop handler per signal: two receivers
#: would replace, then remove, each other's.)
_watching: list[SignalWatcher] = []

#: True when a run that was watching signals has ended in pre-emption since the current
#: signal receiver opened: when it closes, further signals are then ignored (logged)
#: instead of going back to the handlers of before.
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
        """This run ends in pre-emption: from the moment the signal receiver closes
        until the process exits, SIGTERM/SIGINT are logged and ignored."""
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
        when a run ended in pre-emption, ignore further signals."""
        global _exiting
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        _exiting = False
        stack = contextlib.ExitStack()
        opened = False
        try:
            try:
                received = stack.enter_context(anyio.open_signal_receiver(*_SIGNALS))
                opened = True
            except (NotImplementedError, RuntimeError, ValueError) as e:
                log.debug("asynccp: signals are not handled here: %s", e)
                return
            finally:
                task_status.started()
            async for signum in received:
                for watcher in list(_watching):
                    watcher.receive(signum)
        finally:
            if opened and _exiting:
                _close_and_ignore(stack)
            else:
                stack.close()
                for sig, handler in previous.items():
                    if handler is not None:
                        signal.signal(sig, handler)


def _close_and_ignore(stack: contextlib.ExitStack) -> None:
    """Close the signal receiver and install :func:`_log_and_ignore`, with no signal
    able to end the process on the way.

    Closing the receiver puts the default actions back for a moment (asyncio does so,
    whatever was there before): Python's default SIGINT handler raises
    KeyboardInterrupt wherever the main thread then is — 2 runs in 80 with a second
    SIGINT 10 ms after the first exited by SIGINT (-2) instead of 75, the
    KeyboardInterrupt raised inside asyncio's ``remove_signal_handler``. So a
    KeyboardInterrupt raised here is taken as that signal (logged, ignored), and the
    close is finished: an asyncio registration the interrupted close left behind is
    removed (else the loop's own close would put the default action back later), and
    :func:`_log_and_ignore` installed, SIGTERM first (its default action kills at once,
    with no Python involved: the microseconds between asyncio's reset and the install
    below are the only moment left where a SIGTERM does).
    """
    for _ in range(100):  # (each round but the last is a KeyboardInterrupt)
        try:
            try:
                stack.close()
                _remove_loop_handlers()
            finally:
                _ignore_further_signals()
            return
        except KeyboardInterrupt:
            _log_and_ignore(signal.SIGINT, None)


def _remove_loop_handlers() -> None:
    """Remove asyncio's registrations of SIGTERM/SIGINT, if any are left."""
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio restores what it replaced by itself)
        return
    for sig in _SIGNALS:
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(sig)


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


def _ignore_at_exit() -> None:
    """At interpreter exit: ``SIG_IGN`` where :func:`_log_and_ignore` still handles."""
    for sig in _SIGNALS:
        try:
            if signal.getsignal(sig) is _log_and_ignore:
                signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread: nothing to do
            pass
