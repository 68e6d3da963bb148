"""The words of a retry: :class:`Backoff` (how long to wait) and :class:`RetryEvent`
(what a retry tells the ``on_retry`` callbacks).

One backoff formula for every wait before a retry: the supervisor's between attempts
(``supervise(backoff=Backoff(...))``) and the object store's between the attempts of
one store call (:mod:`asynccp._store._object`). This module sits below the store so both
can use it, and below :mod:`asynccp._types`, which names them in its aliases.
"""

from __future__ import annotations

import math
import random
import signal
from dataclasses import dataclass

from ._checks import check_int, check_seconds, is_number

__all__ = ["Backoff", "RetryEvent"]


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
            object.__setattr__(self, name, check_seconds(name, getattr(self, name), finite=True))
        base = self.exp_base
        if not is_number(base):
            raise TypeError(f"exp_base must be a number >= 1, got {type(base).__name__} {base!r}")
        if not math.isfinite(base) or base < 1:
            raise ValueError(f"exp_base must be a number >= 1, got {base!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        check_int("retry", retry, minimum=1)
        jitter = random.uniform(0, self.jitter) if self.jitter else 0.0
        try:
            return min(self.max, self.initial * self.exp_base ** (retry - 1) + jitter)
        except OverflowError:
            return self.max


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
