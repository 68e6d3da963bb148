"""SIGTERM and SIGINT as pre-emption: cancel the running attempt, flush within a grace.

An orchestrator (Kubernetes, Slurm, a spot-instance reclaim) sends SIGTERM, waits a
grace period, then sends SIGKILL. A :class:`SignalWatcher` turns the first signal into
the cancellation of the supervised attempt (the scope :meth:`~SignalWatcher.interruptible`
opened) and records it in ``pending``; the supervisor then flushes the attempt's
checkpoints within ``grace`` seconds of the signal, so they commit before the SIGKILL,
and exits with :data:`~asynccp.PREEMPTED_EXIT_CODE`. The watcher never touches a
checkpointer.

Only the main thread can install a signal handler, and Python runs handlers there. So
signals are handled for a supervisor whose event loop runs in the main thread, or in a
thread the main thread is waiting for in :meth:`MainThreadLoan.serve` (the plugins'
``run_blocking``, called in the main thread beside a running event loop: a local
``async def`` flytekit task under ``asyncio.run`` or ``pyflyte run``). The lent main
thread installs and removes the handlers for that thread's supervisor, and runs them
while it waits; each signal is handed to every watcher on its own loop. A supervisor in
any other thread (one the main thread does not wait for in asynccp) handles no signals.

Supervisors running at once in one process share a single set of handlers (a process
has one handler per signal); the handlers found when the first one started are put back
when the last one finishes.

Once a run has ended in pre-emption the process is on its way out, so the old handlers
are *not* put back: the default SIGTERM action would kill it (exit code 143 instead of
75) if the orchestrator, or an impatient user, sends the signal again while it exits.
Further SIGTERM/SIGINT are logged and ignored instead, until the process exits.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import logging
import queue
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

__all__ = ["DEFAULT_GRACE", "MainThreadLoan", "SignalWatcher", "ignore_further_signals"]

log = logging.getLogger("asynccp")

DEFAULT_GRACE = 20.0
"""Seconds a pre-empted attempt may spend flushing: well under Kubernetes' default
``terminationGracePeriodSeconds`` of 30, leaving time to exit before SIGKILL."""

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))

#: The supervisors handling signals in this process, oldest first, in any thread; each
#: signal goes to all of them. Changed only in the main thread (where the handler runs).
_watching: list[SignalWatcher] = []

#: The handlers found when asynccp's were installed, or None when asynccp's are not.
_previous: dict[signal.Signals, Any] | None = None

#: True when a run that was watching signals has ended in pre-emption since the current
#: handlers were installed: when they are taken down, further signals are then ignored
#: (logged) instead of going back to the handlers of before.
_exiting = False
_exit_hook_registered = False

#: The main thread, while it waits in :meth:`MainThreadLoan.serve` for another thread.
_lent: MainThreadLoan | None = None


class SignalWatcher:
    """Turns SIGTERM/SIGINT into the cancellation of whatever the supervisor is running.

    One per supervised run. ``pending`` is the signal received and not yet dealt with
    (the supervisor clears it when it restarts the attempt in process).
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pending: signal.Signals | None = None
        #: What sent ``pending`` when it was not a signal (a cloud's notice).
        self.cause: str | None = None
        self._received_at = 0.0  # time.monotonic() when ``pending`` came
        self._scope: anyio.CancelScope | None = None
        self._schedule: Callable[..., Any] | None = None  # runs a call on this one's loop

    def time_left(self) -> float:
        """Seconds left of the grace since the pending signal came (the whole grace when
        none is pending): the supervisor's flush keeps to it, whatever came before."""
        if self.pending is None:
            return self.grace
        return max(0.0, self._received_at + self.grace - time.monotonic())

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

    def receive(self, signum: signal.Signals, cause: str | None = None) -> None:
        """Take one signal: cancel what runs (the supervisor then flushes within grace).

        ``cause``: what stands for the signal (a cloud's pre-emption notice,
        :mod:`._notices`, arrives as SIGTERM with the notice as its cause).
        """
        name = cause or signal.Signals(signum).name
        if self.pending is not None:
            log.warning("asynccp: %s received while already stopping; still flushing", name)
            return
        self.pending = signal.Signals(signum)
        self.cause = cause
        self._received_at = time.monotonic()  # a loop callback: no anyio clock here
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
        """Handle signals until cancelled (each one goes to every supervisor watching).

        The handlers are asynccp's own (``signal.signal``), not an event loop's signal
        receiver: closing one of those puts the default actions back for a moment
        (asyncio does, whatever was there before), and a second signal then killed a
        pre-empted process — 2 runs in 80 with a SIGINT 10 ms after the SIGTERM exited
        by KeyboardInterrupt, and a SIGTERM there is fatal at once. Here the handler
        that hands signals to the loops is replaced directly by the one that logs and
        ignores them: there is no moment with a default action in between.
        """
        on_main = _main_thread()
        if not _SIGNALS or on_main is None:
            log.debug(
                "asynccp: not in the main thread, which is not waiting for this one in "
                "asynccp: signals are not handled"
            )
            task_status.started()
            return
        self._schedule = _scheduler()
        try:
            try:
                await on_main(functools.partial(_join, self))
            except (ValueError, OSError, RuntimeError) as e:
                log.debug("asynccp: signals are not handled here: %s", e)
                return
            finally:
                task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(RuntimeError):  # the main thread is gone
                    await on_main(functools.partial(_leave, self))


class MainThreadLoan:
    """The main thread, lent to a helper thread while it waits for it.

    ::

        with MainThreadLoan() as loan:   # from here, supervisors elsewhere can use it
            helper.start()               # ... which calls loan.finish() at its end
            loan.serve()

    ``serve()`` runs, until :meth:`finish`, what supervisors in other threads ask of the
    main thread: installing and removing signal handlers (:meth:`run`). Signals arriving
    meanwhile are handled by the main thread there, and handed to those supervisors'
    loops. Entered in any other thread, the loan lends nothing: ``serve()`` only waits
    for :meth:`finish`. It is lent from ``__enter__``, before the helper starts, so
    that a supervisor there cannot look for it too early.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._lending = False

    def __enter__(self) -> MainThreadLoan:
        global _lent
        if threading.current_thread() is threading.main_thread() and _lent is None:
            _lent = self
            self._lending = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _lent
        if self._lending:
            _lent = None
        with self._lock:
            self._closed = True  # from now on run() fails at once: nothing waits forever
        while True:  # what was asked before still runs (the serving wait was interrupted)
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request()

    def serve(self) -> None:
        """Do what :meth:`run` asks, until :meth:`finish`."""
        while (request := self._requests.get()) is not None:
            request()

    def finish(self) -> None:
        """The helper thread is done: :meth:`serve` returns (any thread)."""
        with self._lock:
            self._closed = True
            self._requests.put(None)

    async def run(self, fn: Callable[[], None]) -> None:
        """``fn()`` in the serving thread; raises what it raised (RuntimeError: no more
        served)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def request() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                fn()
            except BaseException as e:  # handed to the waiting thread
                done.set_exception(e)
            else:
                done.set_result(None)

        with self._lock:
            if self._closed:
                raise RuntimeError("the main thread is no longer waiting for this thread")
            self._requests.put(request)
        await anyio.to_thread.run_sync(done.result)


def _main_thread() -> Callable[[Callable[[], None]], Awaitable[None]] | None:
    """How this thread runs a call in the main thread: directly (it is the main thread),
    through the loan of a main thread waiting for it, or not at all (None)."""
    if threading.current_thread() is threading.main_thread():

        async def direct(fn: Callable[[], None]) -> None:
            fn()

        return direct
    loan = _lent
    return None if loan is None else loan.run


def _join(watcher: SignalWatcher) -> None:
    """In the main thread: ``watcher`` receives signals from now on (the first one
    installs asynccp's handlers)."""
    global _previous, _exiting
    if _previous is None:
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        try:
            for sig in _SIGNALS:
                signal.signal(sig, _handler)
        except BaseException:
            _restore(previous)
            raise
        _previous = previous
        _exiting = False
    _watching.append(watcher)


def _leave(watcher: SignalWatcher) -> None:
    """In the main thread: ``watcher`` receives no more signals (the last one puts the
    handlers of before back, or, after a pre-emption, ignores further signals)."""
    global _previous
    if watcher in _watching:
        _watching.remove(watcher)
    if _watching or _previous is None:
        return
    previous, _previous = _previous, None
    if _exiting:
        _ignore_further_signals()
    else:
        _restore(previous)


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for sig, old in handlers.items():
        if old is not None:
            signal.signal(sig, old)


def _handler(signum: int, frame: FrameType | None) -> None:
    """asynccp's SIGTERM/SIGINT handler: hand the signal to every watcher's loop.

    Runs in the main thread between two bytecodes of whatever runs there: it must never
    raise. A watcher whose loop is closing cannot take it; when none can, the signal is
    logged and ignored (the process is on its way out).
    """
    delivered = False
    for watcher in tuple(_watching):
        if watcher._schedule is None:
            continue
        try:
            watcher._schedule(watcher.receive, signal.Signals(signum))
            delivered = True
        except Exception:  # its loop is closing: nothing to hand it to
            pass
    if not delivered:
        _log_and_ignore(signum, frame)


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
