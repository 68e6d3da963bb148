"""What the supervisor retries, how long it waits first, and whom it tells.

The options of :func:`asynccp.supervise` that decide a retry (``recoverable``,
``backoff``, ``on_retry``) arrive in several accepted shapes; this module turns each
into one plain callable, and rejects anything else with a ``TypeError`` or
``ValueError`` before the job runs. It also holds :data:`DEFAULT_BACKOFF` (the default
wait between attempts). :class:`~asynccp._retry.Backoff` and
:class:`~asynccp._retry.RetryEvent` live below, in :mod:`asynccp._retry`. None
of it touches the store, the event loop or signals.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from .._checks import as_seconds, check_seconds, is_number
from .._retry import Backoff, RetryEvent
from .._types import BackoffSpec, OnRetry, Recoverable
from ..errors import NotAwaitableError, RecoverableError

if sys.version_info < (3, 11):  # pragma: no cover - 3.10 only
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "DEFAULT_BACKOFF",
    "Backoff",
    "BackoffSpec",
    "OnRetry",
    "Recoverable",
    "RetryEvent",
    "backoff_function",
    "callbacks",
    "classifier",
    "retry_after",
]


#: The default ``backoff`` of :func:`supervise`: about 1, 2, 4... up to 60 s, jittered.
DEFAULT_BACKOFF = Backoff()


# -- how long to wait -------------------------------------------------------------------


def backoff_function(backoff: object) -> Callable[[int], float]:
    """Turn a ``backoff`` option into ``retry_number -> seconds``; reject anything else."""
    if isinstance(backoff, Backoff):
        return backoff.delay
    if is_number(backoff) or isinstance(backoff, timedelta):
        fixed = check_seconds("backoff", backoff, finite=True)
        return lambda _retry: fixed
    if callable(backoff):
        custom = backoff

        def delay(retry: int) -> float:
            return check_seconds(
                f"backoff({retry}) (the value your backoff function returned)",
                custom(retry),
                finite=True,
            )

        return delay
    raise TypeError(
        "backoff must be a number of seconds (0 for none), a timedelta, an asynccp.Backoff, "
        f"or a function of the retry number returning seconds; got {type(backoff).__name__}"
    )


def retry_after(exc: BaseException) -> float | None:
    """The delay an error asks for (its ``retry_after``), or None; the longest in a group.

    An error that says when to come back (such as ``RecoverableError(retry_after=30)``)
    knows better than the backoff; a value that is not a duration is ignored.
    """
    if isinstance(exc, BaseExceptionGroup):
        delays = [d for e in exc.exceptions if (d := retry_after(e)) is not None]
        return max(delays) if delays else None
    return as_seconds(getattr(exc, "retry_after", None), finite=True)


# -- what to retry ----------------------------------------------------------------------


def classifier(recoverable: object) -> Callable[[BaseException], bool]:
    """Turn a ``recoverable`` option into a test; reject anything else before the job runs.

    :class:`~asynccp.RecoverableError` always passes the test, an exception group passes
    when all its errors do, and :class:`NotAwaitableError` never does.
    """
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
        if not isinstance(exc, Exception) or isinstance(exc, NotAwaitableError):
            return False  # cancellation, KeyboardInterrupt, SystemExit; a usage error
        if isinstance(exc, (RecoverableError, *types)):
            return True
        return predicate is not None and bool(predicate(exc))

    return is_recoverable


# -- whom to tell -----------------------------------------------------------------------


def callbacks(on_retry: object) -> tuple[Callable[[RetryEvent], Any], ...]:
    """Turn an ``on_retry`` option into a tuple of callbacks; reject anything else."""
    if on_retry is None:
        return ()
    if callable(on_retry):
        return (on_retry,)
    if isinstance(on_retry, Iterable) and not isinstance(on_retry, (str, bytes)):
        found = tuple(on_retry)
        if all(callable(cb) for cb in found):
            return found
    raise TypeError(
        "on_retry must be a function taking an asynccp.RetryEvent (sync or async), "
        f"or a list of them; got {on_retry!r}"
    )
