"""The rounds of ``asynccp bench``: asynccp and its baselines on one payload, interleaved.

Each round of a case runs asynccp and the sync writer back to back, alternating which
goes first, so that machine drift hits both alike; :class:`Engine` reduces the rounds
to one ``cases`` entry of the result document (the small-save tests are
:mod:`._bench_small`'s).
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
from ._bench_stats import lag_summary, median, mib_s, ms, pooled_median, ratio, settled, spread
from ._bench_store import Target
from ._format import fmt_size

__all__ = ["Case", "Engine", "Round", "Ticker", "order", "ticking"]


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
    #: How late the loop's ticker woke during the round's uploads.
    lags: list[float] = field(default_factory=list)

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

    def sub(self, what: str) -> str:
        """A fresh sub-folder name, so that no round sees another's objects."""
        self._n += 1
        return f"{what}-{self._n:04d}"

    async def asynccp_round(self, case: Case, ticker: Ticker | None) -> Round:
        """asynccp saves ``case`` ``saves`` times, awaits every commit, then reads them back."""
        o = self.opts
        r = Round()
        sub = self.sub("asynccp")
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
        sub = self.sub("sync")
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
        """Interleaved rounds of asynccp and the sync writer on ``case``: one ``cases`` entry.

        At least ``rounds`` rounds, and more, up to ``max_rounds``, until the spread of
        the per-round ratios is known (:func:`~._bench_stats.settled`: the newest round
        no longer widens it).
        """
        o = self.opts
        a_rounds: list[Round] = []
        s_rounds: list[Round] = []
        ratios: list[tuple[float | None, ...]] = []
        while len(a_rounds) < o.max_rounds:
            i = len(a_rounds)
            for who in order(i):
                self.progress(f"{case.label}: round {i + 1}, {who}")
                ticker = Ticker(o.tick_seconds)
                if who == "asynccp":
                    a_rounds.append(await self.asynccp_round(case, ticker))
                    a_rounds[-1].lags = ticker.lags
                else:
                    s_rounds.append(await self.sync_round(case, ticker))
                    s_rounds[-1].lags = ticker.lags
            a, b = a_rounds[-1], s_rounds[-1]
            ratios.append(
                (
                    ratio(median(a.stalls), median(b.stalls)),
                    ratio(a.write_mib_s, b.write_mib_s),
                    ratio(a.restore_mib_s, b.restore_mib_s),
                )
            )
            if len(a_rounds) >= o.rounds and settled(ratios):
                break
        pairs = list(zip(a_rounds, s_rounds, strict=True))

        def ratios_of(
            mine: Callable[[Round], float | None], base: Callable[[Round], float | None]
        ) -> dict[str, float | None]:
            """The median over the rounds of ``mine(asynccp) / base(baseline)``, and
            the lowest and highest of those per-round ratios."""
            each = [ratio(mine(a), base(s)) for a, s in pairs]
            low, high = spread(each)
            return {"ratio": median(each), "ratio_low": low, "ratio_high": high}

        def rates(rate: Callable[[Round], float | None]) -> dict[str, float | None]:
            mine = [rate(a) for a in a_rounds]
            low, high = spread(mine)
            return {
                "asynccp": median(mine),
                "asynccp_low": low,
                "asynccp_high": high,
                "raw_obstore": median([rate(s) for s in s_rounds]),
                **ratios_of(rate, rate),
            }

        def stalls(r: Round) -> float | None:
            return median(r.stalls)

        def lags(rounds: list[Round]) -> dict[str, float | int | None]:
            p99 = [lag_summary(r.lags)["p99"] for r in rounds]
            low, high = spread(p99)
            return {
                **lag_summary([x for r in rounds for x in r.lags]),
                "p99_low": low,
                "p99_high": high,
            }

        out: dict[str, Any] = {
            "kind": case.kind,
            "size": case.size,
            "files": len(case.parts),
            "rounds": len(pairs),
            "saves_per_round": o.saves,
            "stall_ms": {
                "asynccp": ms(pooled_median(a.stalls for a in a_rounds)),
                "asynccp_max": ms(max((x for a in a_rounds for x in a.stalls), default=None)),
                "sync_write": ms(pooled_median(s.stalls for s in s_rounds)),
                **ratios_of(stalls, stalls),
            },
            "throughput_mib_s": {
                **rates(lambda r: r.write_mib_s),
                "committed_bytes": sum(a.committed_bytes for a in a_rounds),
            },
            "restore_mib_s": rates(lambda r: r.restore_mib_s),
            "loop_lag_ms": {"asynccp": lags(a_rounds), "sync_writer": lags(s_rounds)},
        }
        if case.buffer is not None:
            out["stall_ms"]["memory_copy"] = ms(pooled_median(s.copies for s in s_rounds))
            to_copy = ratios_of(stalls, lambda s: median(s.copies))
            out["stall_ms"]["ratio_to_copy"] = to_copy["ratio"]
            out["stall_ms"]["ratio_to_copy_low"] = to_copy["ratio_low"]
            out["stall_ms"]["ratio_to_copy_high"] = to_copy["ratio_high"]
        out["lag_case"] = lag_case
        return out


def order(i: int) -> tuple[str, str]:
    """Who runs first in round ``i``: asynccp and the baseline take turns, so drift is shared."""
    return ("asynccp", "sync") if i % 2 == 0 else ("sync", "asynccp")
