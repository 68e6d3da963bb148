"""Argument checks shared by every public entry point: one rule, one message each.

The error style of the whole surface: a value of the wrong *type* is a ``TypeError``, a
value of the right type that is out of range is a ``ValueError``; each message names
the argument and says what it must be. ``bool`` is never a number here (``True`` is
not a count), NaN never a duration. An unknown keyword argument is reported as such,
with the closest known name when there is one.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Collection
from datetime import timedelta
from typing import TypeGuard

from ._layout import MAX_STEP

__all__ = [
    "as_plain_int",
    "as_seconds",
    "check_bool",
    "check_int",
    "check_seconds",
    "check_step",
    "is_int",
    "is_number",
    "unknown_keyword",
]


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float (``True`` and ``False`` are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an int (``True`` and ``False`` are not ints here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int = 0, maximum: int | None = None) -> int:
    """Check that argument ``name`` is an int in ``[minimum, maximum]``; return it.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: it is out of range.
    """
    bound = f" >= {minimum}" if maximum is None else f" from {minimum} to {maximum}"
    if not is_int(value):
        raise TypeError(f"{name} must be an int{bound}, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{bound}, got {value}")
    return value


def check_step(value: object, name: str = "step") -> int:
    """Check a checkpoint step: an int from 0 to ``MAX_STEP``; return it as a Python int.

    A step counted by numerical code is often a numpy integer (``np.int64``, from an
    array's index or a counter array): any integer type registered as
    ``numbers.Integral`` is accepted and converted, without importing numpy. ``bool``
    (Python's or numpy's) is no step.
    """
    return check_int(name, as_plain_int(value), minimum=0, maximum=MAX_STEP)


def as_plain_int(value: object) -> object:
    """``value`` as a Python int when it is another integer type (``np.int64``, any
    ``numbers.Integral`` but bool); anything else unchanged, for the check to judge."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
        return int(value)
    return value


def check_bool(name: str, value: object) -> bool:
    """Check that argument ``name`` is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def as_seconds(value: object, *, finite: bool = False, positive: bool = False) -> float | None:
    """``value`` (a number of seconds or a ``timedelta``) as float seconds, or None.

    None when it is not a duration: not a number, NaN, negative, infinite when
    ``finite``, or 0 when ``positive``.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not is_number(value):
        return None
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (finite and math.isinf(seconds)):
        return None
    if positive and seconds == 0:
        return None
    return seconds


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
        TypeError: ``value`` is neither a number nor a ``timedelta``.
        ValueError: it is NaN, negative, or out of the range above.
    """
    result = as_seconds(value, finite=finite, positive=positive)
    if result is not None:
        return result
    kind = "a finite number" if finite else "a number"
    bound = "> 0" if positive else ">= 0"
    if not (is_number(value) or isinstance(value, timedelta)):
        raise TypeError(
            f"{name} must be {kind} of seconds or a timedelta, got {type(value).__name__} {value!r}"
        )
    shown = value.total_seconds() if isinstance(value, timedelta) else value
    raise ValueError(f"{name} must be {kind} of seconds {bound}, got {shown!r}")


def unknown_keyword(caller: str, key: str, known: Collection[str], *, hint: str = "") -> TypeError:
    """The error for an unknown keyword argument ``key`` of ``caller``.

    Names the closest of ``known`` when there is one (``kep`` -> ``keep``); ``hint`` says
    what else the keyword could have been meant for.
    """
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    message = f"{caller} got an unexpected keyword argument {key!r}"
    if close:
        message += f"; did you mean {close[0]!r}?"
    if hint:
        message += f" ({hint})"
    return TypeError(message)
