"""The small-save tests of ``asynccp bench``: many 16-byte checkpoints, two ways.

- **latest** — Flyte's example loop (``examples/seed_checkpoint.py``): counter saves
  with ``policy="latest"``, ``keep=3``, until ``flush()``; a save never waits, and a
  checkpoint a newer one overtakes before its upload is dropped.
- **block** — the same loop with ``policy="block"``: every save is committed (grouped,
  in save order), as a loop that must not lose an update saves.

Each against the sync writer's durable put of the same 16 bytes (time-boxed to a
second a round), interleaved, the order alternating; rounds repeat, up to
``max_rounds``, until the spread of the per-round ratio is known.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from asynccp import Limits
from asynccp._types import Policy

from ._bench_engine import Engine, order
from ._bench_stats import median, per_s, ratio, settled, spread

__all__ = ["small_saves"]


async def small_saves(engine: Engine, policy: Policy, total: int) -> dict[str, Any]:
    """``total`` 16-byte saves with ``policy``, split over the rounds, vs a sync write each."""
    o = engine.opts
    per_round = max(1, total // o.rounds)
    a_rates: list[float | None] = []
    s_rates: list[float | None] = []
    ratios: list[float | None] = []
    committed = superseded = 0
    while len(ratios) < o.max_rounds:
        i = len(ratios)
        rates: dict[str, float | None] = {}
        for who in order(i):
            engine.progress(f"small saves ({policy}): round {i + 1}, {who}")
            if who == "asynccp":
                sub = engine.sub(f"small-{policy}")
                limits = Limits(max_pending=o.max_pending, policy=policy)
                cp = engine.target.checkpointer(sub, limits, keep=3)
                async with cp:
                    t0 = time.perf_counter()
                    for n in range(per_round):
                        await cp.save(n, b"%016d" % (n + 1))
                    await cp.flush()
                    rates[who] = per_s(per_round, time.perf_counter() - t0)
                    committed += cp.stats.committed
                    superseded += cp.stats.superseded
            else:
                sub = engine.sub("small-sync")
                rates[who] = _sync_writes(engine, f"{sub}/counter", per_round)
            await anyio.to_thread.run_sync(engine.target.remove, sub)
        a_rates.append(rates["asynccp"])
        s_rates.append(rates["sync"])
        ratios.append(ratio(rates["asynccp"], rates["sync"]))
        if len(ratios) >= o.rounds and settled([(r,) for r in ratios]):
            break
    low, high = spread(ratios)
    return {
        "saves": per_round * len(ratios),
        "rounds": len(ratios),
        "payload_bytes": 16,
        "policy": policy,
        "asynccp_saves_per_s": median(a_rates),
        "sync_writes_per_s": median(s_rates),
        "ratio": median(ratios),
        "ratio_low": low,
        "ratio_high": high,
        "committed": committed,
        "superseded": superseded,
    }


def _sync_writes(engine: Engine, key: str, most: int) -> float | None:
    """The sync writer's durable puts of a counter per second: at most ``most`` of them,
    or one second's worth."""
    deadline = time.perf_counter() + 1.0
    n = 0
    t0 = time.perf_counter()
    while n < most and time.perf_counter() < deadline:
        engine.target.put(key, b"%016d" % (n + 1))
        n += 1
    return per_s(n, time.perf_counter() - t0)
