"""Argument checks shared by the Checkpointer and the supervisor.

Both take durations as seconds or a ``timedelta`` and must reject a bad one before any
work starts, with a message naming the argument. One implementation keeps the rules
(``bool`` is not a number, NaN is never a duration) the same everywhere.
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["as_seconds", "check_seconds", "is_int", "is_number"]


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (``True`` and ``False`` are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """Whether ``value`` is an int (``True`` and ``False`` are not ints here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_seconds(value: object, *, finite: bool = False, positive: bool = False) -> float | None:
    """``value`` (a number of seconds or a ``timedelta``) as float seconds, or None.

    None when it is not a duration: not a number, NaN, negative, infinite when
    ``finite``, or 0 when ``positive``.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        not is_number(value)
        or math.isnan(value)  # type: ignore[arg-type]
        or value < 0  # type: ignore[operator]
        or (finite and math.isinf(value))  # type: ignore[arg-type]
        or (positive and value == 0)
    ):
        return None
    return float(value)  # type: ignore[arg-type]


def check_seconds(
    name: str, value: object, *, finite: bool = False, positive: bool = False
) -> float:
    """Check that argument ``name`` is a duration; return it as float seconds.

    Args:
        name: the argument's name, for the error message.
        value: seconds (int or float) or a ``timedelta``.
        finite: reject infinity too (an infinite timeout can make sense, an infinite
            backoff cannot).
        positive: reject 0 too.

    Raises:
        ValueError: ``value`` is not a duration (see :func:`as_seconds`).
    """
    result = as_seconds(value, finite=finite, positive=positive)
    if result is None:
        if isinstance(value, timedelta):
            value = value.total_seconds()
        kind = "a finite number" if finite else "a number"
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {kind} of seconds {bound}, got {value!r}")
    return result
