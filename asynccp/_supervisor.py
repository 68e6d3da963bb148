"""The retry supervisor: run a job again, from its newest checkpoint, until it succeeds.

``supervise(fn, location)`` runs ``await fn(cp)`` with a fresh
:class:`~asynccp.Checkpointer` per attempt, all on the same location. An attempt that
fails with a recoverable error is closed first (its staged checkpoints are flushed),
the backoff is waited, and the next attempt starts: ``await cp.latest()`` then returns
what every earlier attempt committed. Any other error propagates at once, unchanged.

Pre-emption: while an attempt runs, SIGTERM and SIGINT cancel its body, its staged
checkpoints are flushed for at most ``grace`` seconds, and :class:`Preempted` (a
``SystemExit`` carrying :data:`PREEMPTED_EXIT_CODE`) is raised, so an uncaught one
ends the process with that code and no traceback; the orchestrator restarts the job,
which resumes from the flushed step. ``preemptions=n`` instead restarts the attempt in
this process for the first ``n`` signals, without using up ``retries``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import random
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import anyio
from anyio.abc import TaskStatus
from obstore.store import MemoryStore

from ._checkpointer import Checkpointer, add_note
from .errors import CheckpointClosedError, CheckpointError, RecoverableError, RetriesExhausted

if sys.version_info < (3, 11):  # pragma: no cover - 3.10 only
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_GRACE",
    "PREEMPTED_EXIT_CODE",
    "Backoff",
    "Preempted",
    "RetryEvent",
    "checkpointed",
    "current",
    "supervise",
]

log = logging.getLogger("asynccp")

T = TypeVar("T")
P = ParamSpec("P")

#: Exit code of a process stopped by SIGTERM/SIGINT after flushing its checkpoints.
#: 75 is ``EX_TEMPFAIL`` in sysexits.h ("temporary failure, try again later"): distinct
#: from 0/1/2, from the shell's 126/127, and from the 128+N of a process killed by a
#: signal (143 for SIGTERM, 137 for SIGKILL, 130 for Ctrl-C, 134 for an abort).
PREEMPTED_EXIT_CODE = 75

#: Seconds a pre-empted attempt may spend flushing: well under Kubernetes' default
#: ``terminationGracePeriodSeconds`` of 30, leaving time to exit before SIGKILL.
DEFAULT_GRACE = 20.0

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))

_current: ContextVar[Checkpointer | None] = ContextVar("asynccp_current", default=None)


def current() -> Checkpointer:
    """The :class:`~asynccp.Checkpointer` of the supervised attempt running this code.

    The counterpart of Flyte's ``current_context().checkpoint``: deep inside a
    supervised job, reach the checkpointer without passing it down. Works in tasks
    started from the attempt too (they inherit its context).

    Raises:
        CheckpointClosedError: outside a supervised attempt.
    """
    cp = _current.get()
    if cp is None:
        raise CheckpointClosedError(
            "asynccp.current() was called outside a supervised attempt: call it from "
            "code run by asynccp.supervise() or an @asynccp.checkpointed function"
        )
    return cp


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        not _is_number(value)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value < 0  # type: ignore[operator]
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


# -- backoff ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a cap and jitter, between attempts.

    The wait before retry ``n`` (1 for the first retry) is
    ``min(max, initial * exp_base ** (n - 1) + uniform(0, jitter))`` seconds: the
    formula (and the defaults' shape) of stamina, which asynccp's HTTP-minded users
    already know. ``Backoff(initial=1, max=60)`` waits about 1, 2, 4, 8... up to 60 s.
    """

    initial: float = 1.0
    max: float = 60.0
    exp_base: float = 2.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        for name in ("initial", "max", "jitter"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        base = self.exp_base
        if not _is_number(base) or not math.isfinite(base) or base < 1:
            raise ValueError(f"exp_base must be a number >= 1, got {base!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if not isinstance(retry, int) or isinstance(retry, bool) or retry < 1:
            raise ValueError(f"retry must be an int >= 1, got {retry!r}")
        jitter = random.uniform(0, self.jitter) if self.jitter else 0.0
        try:
            return min(self.max, self.initial * self.exp_base ** (retry - 1) + jitter)
        except OverflowError:
            return self.max


#: The default ``backoff`` of :func:`supervise`: about 1, 2, 4... up to 60 s, jittered.
DEFAULT_BACKOFF = Backoff()

BackoffSpec = float | timedelta | Backoff | Callable[[int], float | timedelta]
Recoverable = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
OnRetry = Callable[["RetryEvent"], Any] | Iterable[Callable[["RetryEvent"], Any]] | None


def _backoff_function(backoff: object) -> Callable[[int], float]:
    if isinstance(backoff, Backoff):
        return backoff.delay
    if _is_number(backoff) or isinstance(backoff, timedelta):
        fixed = _seconds("backoff", backoff)
        return lambda _retry: fixed
    if callable(backoff):
        custom = backoff

        def delay(retry: int) -> float:
            return _seconds(
                f"backoff({retry}) (the value your backoff function returned)", custom(retry)
            )

        return delay
    raise TypeError(
        "backoff must be a number of seconds (0 for none), a timedelta, an asynccp.Backoff, "
        f"or a function of the retry number returning seconds; got {type(backoff).__name__}"
    )


def _retry_after(exc: BaseException) -> float | None:
    """The delay an error asks for (its ``retry_after``), or None; the longest in a group."""
    if isinstance(exc, BaseExceptionGroup):
        delays = [d for e in exc.exceptions if (d := _retry_after(e)) is not None]
        return max(delays) if delays else None
    value = getattr(exc, "retry_after", None)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if _is_number(value) and math.isfinite(value) and value >= 0:  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    return None


# -- classification ---------------------------------------------------------------------


class _NotAwaitableError(TypeError):
    """fn(cp) returned something that cannot be awaited: a usage error, never retried."""


def _classifier(recoverable: object) -> Callable[[BaseException], bool]:
    """Turn ``recoverable`` into a test; reject anything else before the job runs."""
    types: tuple[type[Exception], ...] = ()
    predicate: Callable[[Exception], Any] | None = None
    if isinstance(recoverable, type) or (
        isinstance(recoverable, tuple) and all(isinstance(t, type) for t in recoverable)
    ):
        types = recoverable if isinstance(recoverable, tuple) else (recoverable,)
        for t in types:
            if not issubclass(t, Exception):
                raise TypeError(
                    f"recoverable types must be Exception subclasses, got {t.__name__}: "
                    "cancellation, KeyboardInterrupt and SystemExit are never retried"
                )
    elif callable(recoverable):
        predicate = recoverable
    else:
        raise TypeError(
            "recoverable must be an exception type, a tuple of exception types, or a "
            f"function taking the error and returning True to retry; got {recoverable!r}"
        )

    def is_recoverable(exc: BaseException) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            return all(is_recoverable(e) for e in exc.exceptions)
        if isinstance(exc, _NotAwaitableError):
            return False
        if isinstance(exc, (RecoverableError, *types)):
            return True
        return predicate is not None and bool(predicate(exc))

    return is_recoverable


def _callbacks(on_retry: object) -> tuple[Callable[[RetryEvent], Any], ...]:
    if on_retry is None:
        return ()
    if callable(on_retry):
        return (on_retry,)
    if isinstance(on_retry, Iterable) and not isinstance(on_retry, (str, bytes)):
        callbacks = tuple(on_retry)
        if all(callable(cb) for cb in callbacks):
            return callbacks
    raise TypeError(
        "on_retry must be a function taking an asynccp.RetryEvent (sync or async), "
        f"or a list of them; got {on_retry!r}"
    )


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return value


def _name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


# -- events and outcomes ----------------------------------------------------------------


@dataclass(frozen=True)
class RetryEvent:
    """What ``on_retry`` callbacks receive before the next attempt starts.

    Attributes:
        attempt: the attempt that just ended (0-based, as ``cp.attempt``).
        error: the recoverable error it failed with; None when a signal pre-empted it.
        delay: seconds the supervisor waits before the next attempt.
        resume_step: the newest committed step, which the next attempt resumes from
            (None when nothing is committed yet, or the store could not be asked).
        retries_left: recoverable failures still allowed after this one.
        preemptions_left: in-process pre-emptions still allowed.
        signal: the signal that pre-empted the attempt, or None.
    """

    attempt: int
    error: BaseException | None
    delay: float
    resume_step: int | None
    retries_left: int
    preemptions_left: int
    signal: signal.Signals | None = None

    @property
    def preempted(self) -> bool:
        """Whether a signal (not an error) ended the attempt."""
        return self.signal is not None


class Preempted(SystemExit):
    """A signal stopped the job; its checkpoints were flushed (within ``grace``).

    A ``SystemExit`` whose ``code`` is :data:`PREEMPTED_EXIT_CODE`: left uncaught, the
    process exits with that code and no traceback, and the orchestrator restarts it.
    ``errors`` lists what went wrong while flushing (empty when every staged
    checkpoint committed); they are also logged.
    """

    def __init__(
        self,
        message: str,
        *,
        signal: signal.Signals,
        attempt: int,
        last_step: int | None,
        errors: tuple[str, ...] = (),
    ) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message
        self.signal = signal
        self.attempt = attempt
        self.last_step = last_step
        self.errors = errors

    def __str__(self) -> str:
        return self.message


@dataclass
class _Done(Generic[T]):
    value: T


@dataclass
class _Failed:
    error: Exception


@dataclass
class _Stopped:
    signal: signal.Signals
    errors: tuple[str, ...] = ()
    committed: int | None = None


# -- signals ----------------------------------------------------------------------------


#: The supervisors handling signals in this process, oldest first. The oldest owns the
#: signal receiver and hands each signal to all of them; when it finishes, the next
#: oldest takes the receiver over. (One event loop handler per signal: two receivers
#: would replace, then remove, each other's.)
_watching: list[_Signals] = []


class _Signals:
    """Turns SIGTERM/SIGINT into the cancellation of whatever the supervisor is running."""

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


# -- the supervisor ---------------------------------------------------------------------


class _Supervisor:
    """Validated options of one supervised job; ``run`` runs it (any number of times)."""

    def __init__(
        self,
        location: Any,
        *,
        retries: int,
        recoverable: object,
        backoff: object,
        on_retry: object,
        handle_signals: bool,
        grace: float | timedelta,
        preemptions: int,
        checkpointer_options: dict[str, Any],
    ) -> None:
        self.retries = _count("retries", retries)
        self.preemptions = _count("preemptions", preemptions)
        self.is_recoverable = _classifier(recoverable)
        self.backoff = _backoff_function(backoff)
        self.callbacks = _callbacks(on_retry)
        if not isinstance(handle_signals, bool):
            raise TypeError(f"handle_signals must be a bool, got {type(handle_signals).__name__}")
        self.handle_signals = handle_signals
        self.grace = _seconds("grace", grace, positive=True)
        if "attempt" in checkpointer_options:
            raise TypeError("attempt= is set by the supervisor (0, 1, 2... per attempt)")
        # Every Checkpointer option is checked now, before anything runs (no I/O).
        Checkpointer(location, **checkpointer_options)
        plain = isinstance(location, (str, os.PathLike))
        self.description = os.fspath(location) if plain else repr(location)
        self.location = location
        self.options = dict(checkpointer_options)
        if isinstance(location, str) and location.lower().startswith("memory://"):
            # One in-process store for every attempt, so each sees the others' saves.
            rest = location.split("://", 1)[1].strip("/")
            self.location = MemoryStore()
            self.options["prefix"] = rest or None

    def checkpointer(self, attempt: int) -> Checkpointer:
        return Checkpointer(self.location, attempt=attempt, **self.options)

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        signals = _Signals(self.grace)
        outcome: _Done[Any] | BaseException
        nested = _current.get() is not None  # the outer supervisor handles signals
        async with anyio.create_task_group() as tg:
            if self.handle_signals and not nested:
                await tg.start(signals.watch)
            try:
                outcome = _Done(await self._attempts(fn, args, kwargs, signals))
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # raised below, outside the task group, unwrapped
                outcome = exc
            finally:
                tg.cancel_scope.cancel()
        # The signal handlers are back to what they were before supervise().
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome.value

    async def _attempts(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        signals: _Signals,
    ) -> Any:
        name = _name(fn)
        attempt = failures = preempted = 0
        while True:
            cp = self.checkpointer(attempt)
            outcome = await self._attempt(fn, args, kwargs, cp, signals)
            if isinstance(outcome, _Done):
                if signals.pending is not None:
                    log.warning("asynccp: %s finished despite %s", name, signals.pending.name)
                return outcome.value
            error: Exception | None = None
            if isinstance(outcome, _Failed):
                error = outcome.error
                if not self.is_recoverable(error):
                    raise error
                failures += 1
                if failures > self.retries:
                    raise RetriesExhausted(
                        f"{name} failed {failures} time(s) with a recoverable error "
                        f"(retries={self.retries}), the last time with "
                        f"{type(error).__name__}: {error}. What the attempts committed is "
                        f"kept in {self.description}: fix the cause and run again to resume.",
                        attempts=attempt + 1,
                    ) from error
                after = _retry_after(error)
                delay = after if after is not None else self.backoff(failures)
            else:
                preempted += 1
                if preempted > self.preemptions:
                    raise self._preempted(name, attempt, outcome)
                signals.pending = None
                delay = 0.0
            event = RetryEvent(
                attempt=attempt,
                error=error,
                delay=delay,
                resume_step=await _latest_step(cp),
                retries_left=self.retries - failures,
                preemptions_left=self.preemptions - preempted,
                signal=None if isinstance(outcome, _Failed) else outcome.signal,
            )
            _log_retry(name, event)
            for callback in self.callbacks:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            if delay > 0:
                with signals.interruptible():
                    await anyio.sleep(delay)
            if signals.pending is not None:  # pre-empted between attempts
                preempted += 1
                if preempted > self.preemptions:
                    raise self._preempted(name, attempt, _Stopped(signals.pending))
                log.warning("asynccp: %s pre-empted while waiting; restarting now", name)
                signals.pending = None
            attempt += 1

    async def _attempt(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cp: Checkpointer,
        signals: _Signals,
    ) -> _Done[Any] | _Failed | _Stopped:
        notes: tuple[str, ...] = ()
        token = _current.set(cp)
        try:
            with signals.interruptible(cp):
                try:
                    async with cp:
                        try:
                            value = await _call(fn, cp, args, kwargs)
                        except Exception as exc:
                            await _flush_noting(cp, exc)
                            raise
                        # Flush here, not only on exit: a signal can cut this flush
                        # short, while the exit flush is shielded for flush_timeout.
                        await cp.flush()
                    return _Done(value)
                except Exception as exc:
                    return _Failed(exc)
                except anyio.get_cancelled_exc_class() as exc:
                    notes = tuple(getattr(exc, "__notes__", ()))
                    raise
        finally:
            _current.reset(token)
        # Only a signal cancels the scope above, and the scope swallowed it.
        assert signals.pending is not None
        errors = _flush_errors(cp, notes, signals.failed_before, signals.grace)
        return _Stopped(signals.pending, errors, cp.stats.last_committed_step)

    def _preempted(self, name: str, attempt: int, stopped: _Stopped) -> Preempted:
        errors = stopped.errors
        saved = (
            f"its newest committed step is {stopped.committed}"
            if stopped.committed is not None
            else "it committed no checkpoint"
        )
        outcome = (
            "every staged checkpoint committed"
            if not errors
            else f"flushing failed: {'; '.join(errors)}"
        )
        message = (
            f"{name} was pre-empted by {stopped.signal.name} during attempt {attempt}: "
            f"{outcome}; {saved}. Exiting with code {PREEMPTED_EXIT_CODE}: run it again "
            f"on {self.description} to resume."
        )
        (log.error if errors else log.warning)("asynccp: %s", message)
        return Preempted(
            message,
            signal=stopped.signal,
            attempt=attempt,
            last_step=stopped.committed,
            errors=errors,
        )


async def _call(
    fn: Callable[..., Any], cp: Checkpointer, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    result = fn(cp, *args, **kwargs)
    if not inspect.isawaitable(result):
        name = _name(fn)
        raise _NotAwaitableError(
            f"{name}(cp) returned {type(result).__name__}, not an awaitable: the job must be "
            f"an async function (`async def {name}(cp, ...)`)"
        )
    return await result


async def _flush_noting(cp: Checkpointer, exc: BaseException) -> None:
    """Flush before the retry; flush failures become notes on the attempt's error."""
    try:
        await cp.flush()
    except CheckpointError as err:
        add_note(exc, f"asynccp: while flushing checkpoints: {type(err).__name__}: {err}")
        for note in getattr(err, "__notes__", ()):
            add_note(exc, f"asynccp: {note}")


def _flush_errors(
    cp: Checkpointer, notes: tuple[str, ...], failed_before: int, grace: float
) -> tuple[str, ...]:
    """What went wrong while a pre-empted attempt flushed, from the exit's notes.

    Under asyncio the cancellation leaving the Checkpointer is not the one its exit
    annotated (the notes are lost), so the counts tell instead.
    """
    prefix = "asynccp: while flushing checkpoints: "
    errors = tuple(n.removeprefix(prefix) for n in notes if n.startswith(prefix))
    if errors:
        return errors
    stats = cp.stats
    derived = []
    lost = stats.saves - stats.committed - stats.failed - stats.superseded
    if lost > 0:
        derived.append(
            f"FlushTimeoutError: {lost} staged checkpoint(s) did not commit within the "
            f"grace period ({grace:g} s)"
        )
    if stats.failed > failed_before:
        derived.append(
            f"UploadError: {stats.failed - failed_before} checkpoint(s) failed to upload "
            "while flushing"
        )
    return tuple(derived)


async def _latest_step(cp: Checkpointer) -> int | None:
    """The newest committed step at cp's location (read after cp closed), or None."""
    try:
        ckpt = await cp.latest()
    except Exception as e:
        log.debug("asynccp: could not read the latest checkpoint: %s", e)
        return None
    return None if ckpt is None else ckpt.step


def _log_retry(name: str, event: RetryEvent) -> None:
    resume = "the start" if event.resume_step is None else f"step {event.resume_step}"
    if event.signal is not None:
        log.warning(
            "asynccp: %s attempt %d pre-empted by %s; restarting from %s (%d pre-emption(s) left)",
            name,
            event.attempt,
            event.signal.name,
            resume,
            event.preemptions_left,
        )
        return
    error = event.error
    log.warning(
        "asynccp: %s attempt %d failed with %s: %s; retrying in %.3g s from %s (%d retr%s left)",
        name,
        event.attempt,
        type(error).__name__,
        error,
        event.delay,
        resume,
        event.retries_left,
        "y" if event.retries_left == 1 else "ies",
    )


# -- public entry points ----------------------------------------------------------------


async def supervise(
    fn: Callable[[Checkpointer], Awaitable[T]],
    location: Any,
    *,
    retries: int = 3,
    recoverable: Recoverable = (),
    backoff: BackoffSpec = DEFAULT_BACKOFF,
    on_retry: OnRetry = None,
    handle_signals: bool = True,
    grace: float | timedelta = DEFAULT_GRACE,
    preemptions: int = 0,
    **checkpointer_options: Any,
) -> T:
    """Run ``await fn(cp)``, retrying recoverable failures; each attempt resumes.

    Each attempt gets a fresh :class:`~asynccp.Checkpointer` on ``location``
    (``checkpointer_options`` go to it; ``cp.attempt`` is 0, 1, 2...) and is available
    as :func:`asynccp.current` inside ``fn``. When the attempt ends its checkpoints are
    flushed, so the next one's ``await cp.latest()`` sees everything committed so far.
    A ``memory://`` location is resolved once, so all attempts share its store.

    Args:
        retries: recoverable failures retried; ``fn`` runs at most ``retries + 1`` times
            (plus pre-empted attempts, which have their own budget).
        recoverable: exception type(s), or a predicate ``error -> bool``, that are worth
            a retry. :class:`~asynccp.RecoverableError` always is; so is an exception
            group whose errors all are. Everything else propagates at once, unchanged;
            cancellation, ``KeyboardInterrupt`` and ``SystemExit`` are never retried.
        backoff: wait between attempts: seconds (0 for none), a :class:`Backoff`
            (default: exponential, 1 s to 60 s, jittered), or ``retry_number -> seconds``.
            An error with a numeric ``retry_after`` attribute (such as
            ``RecoverableError(retry_after=30)``) overrides it.
        on_retry: callback(s), sync or async, called with a :class:`RetryEvent` before
            each new attempt. Each retry is also logged (logger ``"asynccp"``).
        handle_signals: handle SIGTERM and SIGINT (main thread only): cancel the
            attempt, flush within ``grace``, then raise :class:`Preempted` (a
            ``SystemExit`` with code :data:`PREEMPTED_EXIT_CODE`). The previous handlers
            are restored when ``supervise`` returns.
        grace: seconds a pre-empted attempt may spend flushing (default 20).
        preemptions: signals absorbed in process: the first ``preemptions`` signals
            restart the attempt (at once, from the newest checkpoint) instead of
            exiting; they do not count against ``retries``. Default 0: a signal means
            the machine is going away, so flush and exit.

    Returns:
        What ``fn`` returned on the attempt that succeeded.

    Raises:
        RetriesExhausted: every attempt failed recoverably (``__cause__`` is the last
            error, ``attempts`` the number of calls).
        Preempted: a signal stopped the job and the pre-emption budget was spent.
        TypeError, ValueError: bad arguments (before anything runs), or ``fn(cp)``
            returned something that is not awaitable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async function taking the Checkpointer, got {fn!r}")
    supervisor = _Supervisor(
        location,
        retries=retries,
        recoverable=recoverable,
        backoff=backoff,
        on_retry=on_retry,
        handle_signals=handle_signals,
        grace=grace,
        preemptions=preemptions,
        checkpointer_options=checkpointer_options,
    )
    return await supervisor.run(fn, (), {})  # type: ignore[no-any-return]


def checkpointed(
    location: Any,
    *,
    retries: int = 3,
    recoverable: Recoverable = (),
    backoff: BackoffSpec = DEFAULT_BACKOFF,
    on_retry: OnRetry = None,
    handle_signals: bool = True,
    grace: float | timedelta = DEFAULT_GRACE,
    preemptions: int = 0,
    **checkpointer_options: Any,
) -> Callable[
    [Callable[Concatenate[Checkpointer, P], Awaitable[T]]],
    Callable[P, Coroutine[Any, Any, T]],
]:
    """Decorator form of :func:`supervise` for ``async def job(cp, *args, **kwargs)``.

    ``await job(*args, **kwargs)`` runs the job supervised on ``location``, passing a
    fresh Checkpointer as ``cp`` to each attempt. Options are those of
    :func:`supervise` and are checked when decorating. A ``memory://`` location is
    resolved here, once: every call of the decorated function shares its store (as
    every call shares a directory or a bucket prefix).
    """
    supervisor = _Supervisor(
        location,
        retries=retries,
        recoverable=recoverable,
        backoff=backoff,
        on_retry=on_retry,
        handle_signals=handle_signals,
        grace=grace,
        preemptions=preemptions,
        checkpointer_options=checkpointer_options,
    )

    def decorate(
        fn: Callable[Concatenate[Checkpointer, P], Awaitable[T]],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        if not callable(fn):
            raise TypeError(f"@checkpointed decorates an async function, got {fn!r}")

        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await supervisor.run(fn, args, kwargs)  # type: ignore[no-any-return]

        return run

    return decorate
