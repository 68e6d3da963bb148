"""The rounds of ``asynccp bench``: asynccp and its baselines on one payload, interleaved.

Each round of a case runs asynccp and the sync writer back to back, alternating which
goes first, so that machine drift hits both alike; :class:`Engine` reduces the rounds
to one ``cases`` entry of the result document (and the small-save test to its own).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from asynccp import Limits
from asynccp.errors import SupersededError

from ._bench_options import Options
from ._bench_stats import lag_summary, median, mib_s, ms, per_s, pooled_median, ratio
from ._bench_store import Target
from ._format import fmt_size

__all__ = ["Case", "Engine", "Round", "Ticker", "ticking"]


# -- payloads --------------------------------------------------------------------------


class Case:
    """One payload kind at one size: the object saved, and the objects a raw put writes."""

    def __init__(self, kind: str, size: int, src_dir: Path, files_per_save: int) -> None:
        self.kind = kind
        self.size = size
        data = random.Random(size).randbytes(size)
        self.buffer: bytearray | None = None
        if kind == "bytes":
            self.payload: Any = data
            self.parts: list[tuple[str, Any]] = [("data", data)]
        elif kind == "bytearray":
            self.buffer = bytearray(data)
            self.payload = self.buffer
            self.parts = [("data", self.buffer)]
        elif kind == "file":
            path = src_dir / f"file-{size}.bin"
            path.write_bytes(data)
            self.payload = path
            self.parts = [(path.name, path)]
        else:
            folder = src_dir / f"files-{size}"
            folder.mkdir()
            n = max(1, min(files_per_save, size))
            step = size // n
            self.parts = []
            for i in range(n):
                chunk = data[i * step : size if i == n - 1 else (i + 1) * step]
                p = folder / f"part-{i:05d}.bin"
                p.write_bytes(chunk)
                self.parts.append((p.name, p))
            self.payload = folder
        del data

    @property
    def label(self) -> str:
        return f"{self.kind} {fmt_size(self.size)}"

    def touch(self, i: int) -> None:
        """Change the caller's mutable buffer between saves (as a training loop does)."""
        if self.buffer is not None:
            self.buffer[:8] = i.to_bytes(8, "little")


# -- measurements ----------------------------------------------------------------------


class Ticker:
    """A 5 ms ticker on the loop; records how late each tick wakes up."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lags: list[float] = []

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await anyio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - t - self.interval))


@contextlib.asynccontextmanager
async def ticking(ticker: Ticker | None) -> Any:
    """Run ``ticker`` on the loop for the duration of the block (nothing when None)."""
    if ticker is None:
        yield
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


@dataclass
class Round:
    """What one round of one contender (asynccp or the sync writer) measured."""

    stalls: list[float] = field(default_factory=list)
    write_seconds: float = 0.0
    committed_bytes: int = 0
    restore_seconds: float = 0.0
    restored_bytes: int = 0
    copies: list[float] = field(default_factory=list)

    @property
    def write_mib_s(self) -> float | None:
        """Committed write throughput, in MiB/s (None when no time was measured)."""
        return mib_s(self.committed_bytes, self.write_seconds)

    @property
    def restore_mib_s(self) -> float | None:
        """Restore (read) throughput, in MiB/s (None when no time was measured)."""
        return mib_s(self.restored_bytes, self.restore_seconds)


class Engine:
    """Runs the rounds of each measurement and reduces them to the result document's parts."""

    def __init__(self, opts: Options, target: Target, progress: Callable[[str], None]) -> None:
        self.opts = opts
        self.target = target
        self.progress = progress
        self._n = 0

    def _sub(self, what: str) -> str:
        """A fresh sub-folder name, so that no round sees another's objects."""
        self._n += 1
        return f"{what}-{self._n:04d}"

    async def asynccp_round(self, case: Case, ticker: Ticker | None) -> Round:
        """asynccp saves ``case`` ``saves`` times, awaits every commit, then reads them back."""
        o = self.opts
        r = Round()
        sub = self._sub("asynccp")
        limits = Limits(o.max_pending, o.max_pending_bytes, o.policy)
        cp = self.target.checkpointer(sub, limits)
        async with cp, ticking(ticker):
            handles = []
            t0 = time.perf_counter()
            for i in range(o.saves):
                case.touch(i)
                s = time.perf_counter()
                handles.append(await cp.save(i, case.payload))
                r.stalls.append(time.perf_counter() - s)
            ckpts = []
            for h in handles:
                try:
                    ckpts.append(await h)
                except SupersededError:
                    continue
            r.write_seconds = time.perf_counter() - t0
            r.committed_bytes = sum(c.size for c in ckpts)
        # Restores run with the ticker off: the lag figure is about uploads.
        t0 = time.perf_counter()
        for c in ckpts:
            r.restored_bytes += sum(len(b) for b in (await c.read_all()).values())
        r.restore_seconds = time.perf_counter() - t0
        await anyio.to_thread.run_sync(self.target.remove, sub)
        return r

    async def sync_round(self, case: Case, ticker: Ticker | None) -> Round:
        """The sync writer on the caller's thread; its puts are the raw-obstore baseline."""
        o = self.opts
        r = Round()
        sub = self._sub("sync")
        if case.buffer is not None:
            for _ in range(o.saves):
                await anyio.lowlevel.checkpoint()
                s = time.perf_counter()
                copy = bytes(case.buffer)
                r.copies.append(time.perf_counter() - s)
                del copy
        keys: list[str] = []
        async with ticking(ticker):
            t0 = time.perf_counter()
            for i in range(o.saves):
                case.touch(i)
                # Yield, so the ticker sees how long each write then holds the loop.
                await anyio.lowlevel.checkpoint()
                items = [(f"{sub}/{i:04d}/{name}", src) for name, src in case.parts]
                s = time.perf_counter()
                self.target.put_many(items)
                r.stalls.append(time.perf_counter() - s)
                keys += [k for k, _ in items]
            r.write_seconds = time.perf_counter() - t0
            r.committed_bytes = o.saves * case.size
        t0 = time.perf_counter()
        for k in keys:
            r.restored_bytes += len(self.target.get(k))
        r.restore_seconds = time.perf_counter() - t0
        await anyio.to_thread.run_sync(self.target.remove, sub)
        return r

    async def case(self, case: Case, lag_case: bool) -> dict[str, Any]:
        """Interleaved rounds of asynccp and the sync writer on ``case``: one ``cases`` entry."""
        o = self.opts
        a_rounds: list[Round] = []
        s_rounds: list[Round] = []
        a_lags = Ticker(o.tick_seconds)
        s_lags = Ticker(o.tick_seconds)
        for i in range(o.rounds):
            for who in _order(i):
                self.progress(f"{case.label}: round {i + 1}/{o.rounds}, {who}")
                if who == "asynccp":
                    a_rounds.append(await self.asynccp_round(case, a_lags))
                else:
                    s_rounds.append(await self.sync_round(case, s_lags))
        pairs = list(zip(a_rounds, s_rounds, strict=True))

        def med_ratio(
            mine: Callable[[Round], float | None], base: Callable[[Round], float | None]
        ) -> float | None:
            """The median over the rounds of ``mine(asynccp) / base(baseline)``."""
            return median([ratio(mine(a), base(s)) for a, s in pairs])

        def rates(rate: Callable[[Round], float | None]) -> dict[str, float | None]:
            return {
                "asynccp": median([rate(a) for a in a_rounds]),
                "raw_obstore": median([rate(s) for s in s_rounds]),
                "ratio": med_ratio(rate, rate),
            }

        def stalls(r: Round) -> float | None:
            return median(r.stalls)

        out: dict[str, Any] = {
            "kind": case.kind,
            "size": case.size,
            "files": len(case.parts),
            "rounds": o.rounds,
            "saves_per_round": o.saves,
            "stall_ms": {
                "asynccp": ms(pooled_median(a.stalls for a in a_rounds)),
                "asynccp_max": ms(max((x for a in a_rounds for x in a.stalls), default=None)),
                "sync_write": ms(pooled_median(s.stalls for s in s_rounds)),
                "ratio": med_ratio(stalls, stalls),
            },
            "throughput_mib_s": {
                **rates(lambda r: r.write_mib_s),
                "committed_bytes": sum(a.committed_bytes for a in a_rounds),
            },
            "restore_mib_s": rates(lambda r: r.restore_mib_s),
            "loop_lag_ms": {
                "asynccp": lag_summary(a_lags.lags),
                "sync_writer": lag_summary(s_lags.lags),
            },
        }
        if case.buffer is not None:
            out["stall_ms"]["memory_copy"] = ms(pooled_median(s.copies for s in s_rounds))
            out["stall_ms"]["ratio_to_copy"] = med_ratio(stalls, lambda s: median(s.copies))
        out["lag_case"] = lag_case
        return out

    async def small_saves(self) -> dict[str, Any]:
        """Flyte's example loop (examples/seed_checkpoint.py): many 16-byte counter saves,
        policy="latest", vs a sync write each."""
        o = self.opts
        per_round = max(1, o.small_saves // o.rounds)
        a_rates: list[float | None] = []
        s_rates: list[float | None] = []
        ratios: list[float | None] = []
        committed = superseded = 0
        for i in range(o.rounds):
            rates: dict[str, float | None] = {}
            for who in _order(i):
                self.progress(f"small saves: round {i + 1}/{o.rounds}, {who}")
                if who == "asynccp":
                    sub = self._sub("small-asynccp")
                    limits = Limits(max_pending=o.max_pending, policy="latest")
                    cp = self.target.checkpointer(sub, limits, keep=3)
                    async with cp:
                        t0 = time.perf_counter()
                        for n in range(per_round):
                            await cp.save(n, b"%016d" % (n + 1))
                        await cp.flush()
                        rates[who] = per_s(per_round, time.perf_counter() - t0)
                        committed += cp.stats.committed
                        superseded += cp.stats.superseded
                else:
                    sub = self._sub("small-sync")
                    deadline = time.perf_counter() + 1.0
                    n = 0
                    t0 = time.perf_counter()
                    while n < per_round and time.perf_counter() < deadline:
                        self.target.put(f"{sub}/counter", b"%016d" % (n + 1))
                        n += 1
                    rates[who] = per_s(n, time.perf_counter() - t0)
                await anyio.to_thread.run_sync(self.target.remove, sub)
            a_rates.append(rates["asynccp"])
            s_rates.append(rates["sync"])
            ratios.append(ratio(rates["asynccp"], rates["sync"]))
        return {
            "saves": per_round * o.rounds,
            "payload_bytes": 16,
            "policy": "latest",
            "asynccp_saves_per_s": median(a_rates),
            "sync_writes_per_s": median(s_rates),
            "ratio": median(ratios),
            "committed": committed,
            "superseded": superseded,
        }


def _order(i: int) -> tuple[str, str]:
    """Who runs first in round ``i``: asynccp and the baseline take turns, so drift is shared."""
    return ("asynccp", "sync") if i % 2 == 0 else ("sync", "asynccp")
