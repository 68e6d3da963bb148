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

import functools
import inspect
import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import anyio
from obstore.store import MemoryStore

from .._checkpointer import Checkpointer
from .._checks import check_bool, check_int, check_seconds
from .._context import CURRENT, current
from .._groups import add_note
from .._options import CheckpointerOptions, Unpack, keywords, options_of
from .._store import resolve
from .._types import BackoffSpec, LocationLike, OnRetry, Recoverable
from .._write import FlushResult
from ..errors import (
    PREEMPTED_EXIT_CODE,
    NotAwaitableError,
    Preempted,
    RetriesExhausted,
)
from ._notices import Notice, NoticeWatcher, check_notices
from ._retry_policy import (
    DEFAULT_BACKOFF,
    RetryEvent,
    backoff_function,
    callbacks,
    classifier,
    retry_after,
)
from ._signals import DEFAULT_GRACE, SignalWatcher

__all__ = ["checkpointed", "current", "preempted", "supervise"]

#: The keyword arguments of :func:`supervise` itself (for "did you mean ...?").
_OWN_NAMES = frozenset(
    {
        "retries",
        "recoverable",
        "backoff",
        "on_retry",
        "handle_signals",
        "grace",
        "preemptions",
        "notices",
        "notice_endpoint",
    }
)

log = logging.getLogger("asynccp")

T = TypeVar("T")
P = ParamSpec("P")


def _name(fn: Callable[..., Any]) -> str:
    """The job's name for messages and logs (through ``functools.partial`` wrappers).

    What a reader can find in their code: a function by its name, a method as
    ``Class.method``, without the ``outer.<locals>.`` path of a function defined inside
    another; a lambda, which has no name, by where it is: ``<lambda> (train.py:12)``
    (not ``<lambda>.<locals>.<lambda>``); a callable object by its class.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name:
        return type(fn).__qualname__
    name = name.rpartition("<locals>.")[2]
    code = getattr(fn, "__code__", None)
    if name == "<lambda>" and code is not None:
        return f"<lambda> ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    return name


# -- outcomes ---------------------------------------------------------------------------


@dataclass
class _Done(Generic[T]):
    """The attempt returned ``value``."""

    value: T


@dataclass
class _Failed:
    """The attempt raised ``error`` (after flushing its checkpoints)."""

    error: Exception


@dataclass
class _Stopped:
    """A signal stopped the attempt; ``flushed`` says how its flush within grace went."""

    signal: signal.Signals
    flushed: FlushResult
    cause: str | None = None  # a cloud's notice, when that stopped it

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"{type(e).__name__}: {e}" for e in self.flushed.errors)


# -- the supervisor ---------------------------------------------------------------------


class _Supervisor:
    """Validated options of one supervised job; ``run`` runs it (any number of times)."""

    def __init__(
        self,
        location: LocationLike,
        *,
        caller: str,
        retries: int,
        recoverable: object,
        backoff: object,
        on_retry: object,
        handle_signals: bool,
        grace: float | timedelta,
        preemptions: int,
        checkpointer_options: CheckpointerOptions,
        notices: str | None = None,
        notice_endpoint: str | None = None,
        resume: str | None = None,
    ) -> None:
        self.retries = check_int("retries", retries)
        self.preemptions = check_int("preemptions", preemptions)
        self.is_recoverable = classifier(recoverable)
        self.backoff = backoff_function(backoff)
        self.callbacks = callbacks(on_retry)
        self.handle_signals = check_bool("handle_signals", handle_signals)
        self.grace = check_seconds("grace", grace, finite=True, positive=True)
        self.notices, self.notice_endpoint = check_notices(notices, notice_endpoint)
        if "attempt" in checkpointer_options:
            raise TypeError("attempt= is set by the supervisor (0, 1, 2... per attempt)")
        # Every Checkpointer option is checked now, before anything runs (no I/O): the
        # options as values, and the location with its store options.
        self.options = options_of(caller, checkpointer_options, also=_OWN_NAMES)
        resolve(location, self.options.store)
        self.description = (
            os.fspath(location) if isinstance(location, (str, os.PathLike)) else repr(location)
        )
        self.location = location
        #: What resumes from what the job committed, as its messages say it (a plugin's
        #: words for its own runs); None: running it again on the same location.
        self.resume = resume
        if isinstance(location, str) and location.lower().startswith("memory://"):
            # One in-process store for every attempt, so each sees the others' saves.
            rest = location.split("://", 1)[1].strip("/")
            self.location = MemoryStore()
            store = replace(self.options.store, prefix=rest or None)
            self.options = replace(self.options, store=store)

    def checkpointer(self, attempt: int) -> Checkpointer:
        """A fresh Checkpointer for attempt number ``attempt``, on the shared location."""
        return Checkpointer(self.location, attempt=attempt, **keywords(self.options))

    async def run(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        signals = SignalWatcher(self.grace)
        outcome: _Done[T] | BaseException
        nested = CURRENT.get() is not None  # the outer supervisor handles signals
        async with anyio.create_task_group() as tg:
            if self.handle_signals and not nested:
                await tg.start(signals.watch)
            if self.notices is not None and not nested:  # a notice is a SIGTERM

                def notice(n: Notice) -> None:
                    signals.receive(signal.SIGTERM, cause=str(n))

                tg.start_soon(NoticeWatcher(self.notices, self.notice_endpoint, notice).watch)
            try:
                outcome = _Done(await self._attempts(fn, args, kwargs, signals))
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # raised below, outside the task group, unwrapped
                outcome = exc
                if isinstance(exc, Preempted):
                    signals.exiting()  # so a second signal cannot kill the exit
            finally:
                tg.cancel_scope.cancel()
        # The signal handlers are back to what they were before supervise() (after a
        # pre-emption: further signals are logged and ignored until the process exits).
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome.value

    async def _attempts(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        signals: SignalWatcher,
    ) -> T:
        name = _name(fn)
        attempt = failures = preempted = 0
        writers: tuple[str, ...] = ()
        while True:
            cp = self.checkpointer(attempt)
            # A sharded attempt resumes from the newest *complete* step, which may lie
            # behind parts its predecessors recorded: those parts are its own.
            cp._continue_from(writers)
            writers = (*writers, cp.writer_id)
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
                    how = self.resume or "fix the cause and run again to resume"
                    raise RetriesExhausted(
                        f"{name} failed {failures} time(s) with a recoverable error "
                        f"(retries={self.retries}), the last time with "
                        f"{type(error).__name__}: {error}. What the attempts committed is "
                        f"kept in {self.description}: {how}.",
                        attempts=attempt + 1,
                    ) from error
                after = retry_after(error)
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
                    raise self._preempted(name, attempt, _Stopped(signals.pending, FlushResult()))
                log.warning("asynccp: %s pre-empted while waiting; restarting now", name)
                signals.pending = None
            attempt += 1

    async def _attempt(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cp: Checkpointer,
        signals: SignalWatcher,
    ) -> _Done[T] | _Failed | _Stopped:
        """Run one attempt in its own Checkpointer and flush it; say how it ended.

        A signal cancels the body (and the flush after it, if it came then); the
        attempt's checkpoints are then flushed within ``grace`` of the signal, whatever
        the checkpointer's ``flush_timeout``, and the exit keeps to that deadline.
        """
        token = CURRENT.set(cp)
        outcome: _Done[T] | _Failed | _Stopped | None = None
        try:
            async with cp:
                with signals.interruptible():
                    failure: Exception | None = None
                    try:
                        value = await _call(fn, cp, args, kwargs)
                    except Exception as exc:
                        failure = exc
                    # Flush here, not only on exit: the next attempt must see what this
                    # one committed, and a failure's flush errors belong on it.
                    flushed = await cp._flush_within(math.inf)
                    if failure is not None:
                        _note_flush(failure, flushed)
                        outcome = _Failed(failure)
                    else:
                        error = flushed.error()
                        outcome = _Done(value) if error is None else _Failed(error)
                if outcome is None:  # only a signal cancels that scope
                    assert signals.pending is not None
                    # Within grace of the signal: what the body's cancellation took
                    # (a plugin handing its last saves over) counts too.
                    flushed = await cp._flush_within(signals.time_left())
                    outcome = _Stopped(signals.pending, flushed, signals.cause)
        except Exception as exc:  # the checkpointer could not open (or its exit failed)
            return _Failed(exc)
        finally:
            CURRENT.reset(token)
        assert outcome is not None
        return outcome

    def _preempted(self, name: str, attempt: int, stopped: _Stopped) -> Preempted:
        return preempted(
            f"{name} was pre-empted by {stopped.cause or stopped.signal.name} during "
            f"attempt {attempt}",
            sig=stopped.signal,
            attempt=attempt,
            last_step=stopped.flushed.last_committed,
            errors=stopped.errors,
            how=self.resume or f"run it again on {self.description} to resume",
        )


def preempted(
    what: str,
    *,
    sig: signal.Signals,
    attempt: int,
    last_step: int | None,
    errors: tuple[str, ...],
    how: str,
) -> Preempted:
    """The :class:`Preempted` a pre-empted run raises (``what``: who was pre-empted by
    what), its message logged: what the flush did, the newest committed step, how to
    resume."""
    saved = (
        f"its newest committed step is {last_step}"
        if last_step is not None
        else "it committed no checkpoint"
    )
    outcome = "every staged checkpoint committed"
    if errors:
        outcome = f"flushing failed: {'; '.join(errors)}"
    message = f"{what}: {outcome}; {saved}. Exiting with code {PREEMPTED_EXIT_CODE}: {how}."
    (log.error if errors else log.warning)("asynccp: %s", message)
    return Preempted(message, signal=sig, attempt=attempt, last_step=last_step, errors=errors)


async def _call(
    fn: Callable[..., Awaitable[T]],
    cp: Checkpointer,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    """``await fn(cp, *args, **kwargs)``; a sync ``fn`` is a :class:`NotAwaitableError`."""
    result = fn(cp, *args, **kwargs)
    if not inspect.isawaitable(result):
        name = _name(fn)
        plain = all(part.isidentifier() for part in name.split("."))
        called = f"{name}(cp)" if plain else f"{name}, called with cp,"
        define = name.rpartition(".")[2] if plain else "job"
        raise NotAwaitableError(
            f"{called} returned {type(result).__name__}, not an awaitable: the job must be "
            f"an async function (`async def {define}(cp, ...)`)"
        )
    return await result


def _note_flush(exc: BaseException, flushed: FlushResult) -> None:
    """Flush failures become notes on the attempt's error (the caller reads them)."""
    for err in flushed.errors:
        add_note(exc, f"asynccp: while flushing checkpoints: {type(err).__name__}: {err}")
        for note in getattr(err, "__notes__", ()):
            add_note(exc, f"asynccp: {note}")


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
    location: LocationLike,
    *,
    retries: int = 3,
    recoverable: Recoverable = (),
    backoff: BackoffSpec = DEFAULT_BACKOFF,
    on_retry: OnRetry = None,
    handle_signals: bool = True,
    grace: float | timedelta = DEFAULT_GRACE,
    preemptions: int = 0,
    notices: str | None = None,
    notice_endpoint: str | None = None,
    **checkpointer_options: Unpack[CheckpointerOptions],
) -> T:
    """Run ``await fn(cp)``, retrying recoverable failures; each attempt resumes.

    Each attempt gets a fresh :class:`~asynccp.Checkpointer` on ``location`` (with the
    same keyword arguments a Checkpointer takes — ``keep``, ``policy``, ``limits``,
    ``retention``, ``store``, ``sharding``, ``flush_timeout``, ``staging_dir``, checked
    before anything runs; ``cp.attempt`` is 0, 1, 2...) and is available
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
        handle_signals: handle SIGTERM and SIGINT (in the main thread, or a thread it
            waits for inside asynccp; see docs/retries.md): cancel the
            attempt, flush within ``grace``, then raise :class:`Preempted` (a
            ``SystemExit`` with code :data:`PREEMPTED_EXIT_CODE`). The previous handlers
            are restored when ``supervise`` returns or raises anything else; after
            ``Preempted``, further SIGTERM/SIGINT are logged and ignored until the
            process exits (a second signal must not turn exit code 75 into 143).
        grace: seconds from the signal a pre-empted attempt may spend flushing
            (default 20).
        preemptions: signals absorbed in process: the first ``preemptions`` signals
            restart the attempt (at once, from the newest checkpoint) instead of
            exiting; they do not count against ``retries``. Default 0: a signal means
            the machine is going away, so flush and exit.
        notices: watch the cloud's pre-emption notices and treat one like SIGTERM
            (flush within ``grace`` — a tiered checkpointer's local tier first —, then
            :class:`Preempted`): ``"aws"``, ``"gcp"``, ``"azure"``, ``"auto"`` (the cloud
            whose metadata server answers within 2 s; none: nothing is watched) or None
            (the default). See ``docs/tiers.md``.
        notice_endpoint: the metadata server to ask (default
            ``http://169.254.169.254``): ``http://HOST:PORT``.

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
        caller="supervise()",
        retries=retries,
        recoverable=recoverable,
        backoff=backoff,
        on_retry=on_retry,
        handle_signals=handle_signals,
        grace=grace,
        preemptions=preemptions,
        checkpointer_options=checkpointer_options,
        notices=notices,
        notice_endpoint=notice_endpoint,
    )
    return await supervisor.run(fn, (), {})


def checkpointed(
    location: LocationLike,
    *,
    retries: int = 3,
    recoverable: Recoverable = (),
    backoff: BackoffSpec = DEFAULT_BACKOFF,
    on_retry: OnRetry = None,
    handle_signals: bool = True,
    grace: float | timedelta = DEFAULT_GRACE,
    preemptions: int = 0,
    notices: str | None = None,
    notice_endpoint: str | None = None,
    **checkpointer_options: Unpack[CheckpointerOptions],
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
        caller="checkpointed()",
        retries=retries,
        recoverable=recoverable,
        backoff=backoff,
        on_retry=on_retry,
        handle_signals=handle_signals,
        grace=grace,
        preemptions=preemptions,
        checkpointer_options=checkpointer_options,
        notices=notices,
        notice_endpoint=notice_endpoint,
    )

    def decorate(
        fn: Callable[Concatenate[Checkpointer, P], Awaitable[T]],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        if not callable(fn):
            raise TypeError(f"@checkpointed decorates an async function, got {fn!r}")

        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await supervisor.run(fn, args, kwargs)

        return run

    return decorate
