"""How ``asynccp bench`` reduces its samples: rates, medians, ratios, loop-lag summaries.

A figure without samples (a ticker that never ticked, a time too short to measure) is
``None``, never ``0`` or ``nan``: the report shows it as ``n/a``, and a target on it
is not met.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from ._bench_options import MiB

__all__ = [
    "lag_summary",
    "median",
    "mib_s",
    "ms",
    "per_s",
    "pooled_median",
    "ratio",
    "settled",
    "spread",
]


def per_s(count: int, seconds: float) -> float | None:
    """``count`` per second; None when no time was measured (no rate to speak of)."""
    return count / seconds if seconds > 0 else None


def mib_s(nbytes: int, seconds: float) -> float | None:
    rate = per_s(nbytes, seconds)
    return None if rate is None else rate / MiB


def median(values: Iterable[float | None]) -> float | None:
    """The median of the measured ``values`` (None ones left out); None when there are none."""
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None


def pooled_median(groups: Iterable[list[float]]) -> float | None:
    """The median of all values in all ``groups`` (every round's samples pooled)."""
    return median([x for g in groups for x in g])


def ratio(mine: float | None, baseline: float | None) -> float | None:
    """``mine / baseline``; None when either is missing or the quotient is not finite."""
    if mine is None or not baseline or not math.isfinite(mine / baseline):
        return None
    return mine / baseline


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def lag_summary(lags: list[float]) -> dict[str, float | int | None]:
    """Tick count and p50 / p99 / max lateness (ms) of a Ticker's ticks (None: no ticks)."""
    if not lags:
        return {"ticks": 0, "p50": None, "p99": None, "max": None}
    s = sorted(lags)
    return {
        "ticks": len(s),
        "p50": ms(s[len(s) // 2]),
        "p99": ms(s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]),
        "max": ms(s[-1]),
    }


def spread(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """The lowest and the highest of the measured ``values`` (None, None: none)."""
    measured = [v for v in values if v is not None]
    return (min(measured), max(measured)) if measured else (None, None)


def settled(rounds: Sequence[Sequence[float | None]], *, slack: float = 0.25) -> bool:
    """Whether the spread of per-round figures is known: the newest round's figures
    (``rounds[-1]``, several side by side) each widened the range of the rounds before
    it by at most ``slack`` of that range (or of the median, when the range is narrow),
    so another round is not expected to change it much. At least three rounds."""
    if len(rounds) < 3:
        return False
    *before, last = rounds
    for k, value in enumerate(last):
        low, high = spread(r[k] for r in before)
        middle = median(r[k] for r in before)
        if value is None or low is None or high is None or middle is None:
            continue
        allowed = slack * max(high - low, 0.1 * abs(middle))
        if value < low - allowed or value > high + allowed:
            return False
    return True
