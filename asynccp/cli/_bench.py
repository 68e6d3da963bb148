"""The engine behind ``asynccp bench``: caller stall, throughput, loop lag, memory.

Everything is measured in one run, interleaved so that machine drift hits asynccp and
its baselines alike: each round of a case runs asynccp and the baseline back to back,
alternating which goes first. Each figure is the median of its samples over every
round; each ratio is the median of the per-round ratios ``asynccp / baseline`` (a
pair run back to back shares the machine's state of the moment), so it need not equal
the ratio of the two medians shown, and the report says so. A figure without samples
(a ticker that never ticked, a time too short to measure) is ``None``, shown as
``n/a``. The baselines use the same store, the same objects and the same durability:

* **sync writer** — what flytekit's ``SyncCheckpoint.write`` does: the caller itself
  writes the bytes to the store and waits (``obstore.put`` on the caller's thread; on
  a local directory followed by ``fsync`` of the file and its folders, because
  asynccp's local commits are durable too). Its per-save time is the stall asynccp
  is compared with, and its puts are also the **raw obstore** throughput baseline
  (the store's own speed, the limit asynccp can approach).
* **memory copy** — ``bytes(buffer)``: the least any snapshot of a mutable buffer
  can cost, the yardstick for ``bytearray`` saves.
* **raw gets** — ``obstore.get(...).bytes()`` of the same objects, for restores.

Peak memory is measured in a fresh child process (``spawn``-free: a plain
``sys.executable`` subprocess, obstore is not fork-safe) so that nothing this process
did earlier counts against it.

The engine knows nothing about terminals: it reports progress through a callback and
returns a plain dict (the ``--json`` document); :mod:`asynccp.cli._bench_report` turns
that dict into tables or a figure. It uses the library as a user would (``Checkpointer``)
plus the location resolver, so that ``--url`` reads like any asynccp location.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import obstore
from obstore.store import LocalStore

from asynccp import Checkpointer, Limits, StoreOptions
from asynccp._store import ObjectStore, local_root, resolve
from asynccp._types import Policy
from asynccp.errors import CheckpointError, SupersededError

from ._format import fmt_size, one_line

__all__ = ["KINDS", "TARGETS", "BenchError", "MiB", "Options", "plan", "run"]

KINDS = ("bytes", "bytearray", "file", "files")
MiB = 1 << 20

#: asynccp's performance targets; each is checked on the largest payload size measured.
TARGETS = {
    "stall_bytes": 0.01,  # asynccp stall / sync write, bytes payload
    "stall_bytearray": 1.5,  # asynccp stall / memory copy, bytearray payload
    "throughput": 0.90,  # asynccp committed throughput / raw obstore puts
    "small_saves": 5.0,  # asynccp saves/s / sync writes/s, policy="latest"
    "lag_p99_ms": 5.0,  # event-loop lag p99 while large checkpoints upload
    "restore": 0.90,  # asynccp restore throughput / raw obstore gets
    "memory_slack_mib": 100,  # peak RSS growth <= max_pending_bytes + this
}


class BenchError(ValueError):
    """A bad benchmark option or an unusable location (reported in one line)."""


# The sync-writer baseline makes its writes durable the way any careful writer does
# (fsync the file, then its folders). These two helpers repeat, on purpose, what the
# core's durable local writer does: the baseline must not depend on how the code it is
# compared with happens to be written, nor reach into its private names.


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (POSIX; Windows has no directory fsync)."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Options:
    """What ``asynccp bench`` measures (the CLI's options, validated)."""

    url: str | None = None
    sizes: list[int] = field(default_factory=lambda: [MiB, 16 * MiB, 64 * MiB])
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    saves: int = 4
    rounds: int = 3
    policy: Policy = "block"
    max_pending: int = 4
    max_pending_bytes: int = 256 * MiB
    small_saves: int = 10_000
    files_per_save: int = 64
    durable: bool = True
    memory: bool = True
    tick_seconds: float = 0.005
    store_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise BenchError, in one line, on the first bad option; sort the sizes."""
        if not self.sizes:
            raise BenchError("give at least one payload size")
        if any(not isinstance(s, int) or s <= 0 for s in self.sizes):
            raise BenchError(f"payload sizes must be positive, got {self.sizes}")
        self.sizes = sorted(set(self.sizes))
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise BenchError(f"unknown payload kind(s) {bad}; choose from {', '.join(KINDS)}")
        if self.policy not in ("block", "latest"):
            raise BenchError(f"unknown policy {self.policy!r}; choose 'block' or 'latest'")
        for name in ("saves", "rounds", "max_pending", "max_pending_bytes", "files_per_save"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.small_saves < 0:
            raise BenchError(f"--small-saves must be >= 0, got {self.small_saves}")
        if not self.tick_seconds > 0:
            raise BenchError("the ticker interval must be > 0")


# -- the store under test --------------------------------------------------------------


class Target:
    """The location under test: a private folder (or prefix) removed at the end.

    asynccp and the baselines write to sibling sub-folders of it, on the same store.
    """

    def __init__(self, opts: Options) -> None:
        self.tmp: Path | None = None
        url = opts.url
        if url is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="asynccp-bench-"))
            url = str(self.tmp)
        self.durable = opts.durable
        try:
            base = resolve(url, StoreOptions(obstore=opts.store_options))
        except (TypeError, ValueError) as e:
            raise BenchError(f"bad location {url!r}: {e}") from e
        except Exception as e:
            raise BenchError(f"cannot use location {url!r}: {one_line(e, limit=300)}") from e
        self.description = base.description
        run_id = f"asynccp-bench-{secrets.token_hex(4)}"
        self.root: Path | None = None
        self.prefix = ""
        root = local_root(base)
        if root is not None:
            self.root = root if self.tmp else root / run_id
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BenchError(f"cannot create {self.root}: {e.strerror or e}") from e
            self.store: Any = LocalStore(self.root)
            self.kind = "local directory" + ("" if self.durable else " (durable=False)")
        else:
            assert isinstance(base, ObjectStore)
            self.store = base.store
            self.prefix = f"{base.prefix}{run_id}/"
            self.kind = type(base.store).__name__
        self.url = url
        self.run_prefix = f"{run_id}/"

    def probe(self) -> None:
        """Fail early, in one line, when the store cannot be listed and written."""
        try:
            next(iter(obstore.list(self.store, prefix=self.prefix + "probe/")), None)
            self.put("probe/x", b"x")
            self.remove("probe")
        except Exception as e:
            raise BenchError(f"cannot reach {self.description}: {one_line(e, limit=300)}") from e

    def checkpointer(self, sub: str, limits: Limits, keep: int | None = None) -> Checkpointer:
        """An asynccp Checkpointer on sub-folder ``sub``, with the run's durability."""
        if self.root is not None:
            store = StoreOptions(durable=self.durable)
            return Checkpointer(self.root / sub, limits=limits, keep=keep, store=store)
        store = StoreOptions(prefix=self.prefix + sub)
        return Checkpointer(self.store, limits=limits, keep=keep, store=store)

    def key(self, rel: str) -> str:
        """The store key of ``rel`` (a path inside the target)."""
        return self.prefix + rel

    def put(self, rel: str, src: Any) -> None:
        """One raw obstore put; durable on local directories (file and folders fsynced)."""
        obstore.put(self.store, self.key(rel), src)
        if self.root is not None and self.durable:
            _fsync_file(self.root / rel)
            self.sync_dirs([rel])

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        """Raw puts of several objects, folders fsynced once at the end (local)."""
        for rel, src in items:
            obstore.put(self.store, self.key(rel), src)
            if self.root is not None and self.durable:
                _fsync_file(self.root / rel)
        self.sync_dirs([rel for rel, _ in items])

    def sync_dirs(self, rels: list[str]) -> None:
        """fsync the folders holding ``rels``, deepest first, up to the root (durable local)."""
        if self.root is None or not self.durable:
            return
        dirs = set()
        for rel in rels:
            d = (self.root / rel).parent
            while d != self.root and d not in dirs:
                dirs.add(d)
                d = d.parent
        for d in sorted(dirs, key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        _fsync_dir(self.root)

    def get(self, rel: str) -> Any:
        """One raw obstore get, read whole."""
        return obstore.get(self.store, self.key(rel)).bytes()

    def remove(self, sub: str) -> None:
        """Delete sub-folder ``sub`` (between rounds, so the store does not fill up)."""
        if self.root is not None:
            shutil.rmtree(self.root / sub, ignore_errors=True)
        else:
            self._delete_prefix(self.key(sub + "/"))

    def _delete_prefix(self, prefix: str) -> None:
        for batch in obstore.list(self.store, prefix=prefix, chunk_size=1000):
            paths = [m["path"] for m in batch]
            if paths:
                obstore.delete(self.store, paths)

    def close(self) -> None:
        """Delete everything this run wrote (and the temporary folder, if it made one)."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):
                self._delete_prefix(self.prefix)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


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
        return _mib_s(self.committed_bytes, self.write_seconds)

    @property
    def restore_mib_s(self) -> float | None:
        """Restore (read) throughput, in MiB/s (None when no time was measured)."""
        return _mib_s(self.restored_bytes, self.restore_seconds)


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
            return _median([_ratio(mine(a), base(s)) for a, s in pairs])

        def rates(rate: Callable[[Round], float | None]) -> dict[str, float | None]:
            return {
                "asynccp": _median([rate(a) for a in a_rounds]),
                "raw_obstore": _median([rate(s) for s in s_rounds]),
                "ratio": med_ratio(rate, rate),
            }

        def stalls(r: Round) -> float | None:
            return _median(r.stalls)

        out: dict[str, Any] = {
            "kind": case.kind,
            "size": case.size,
            "files": len(case.parts),
            "rounds": o.rounds,
            "saves_per_round": o.saves,
            "stall_ms": {
                "asynccp": _ms(_pooled_median(a.stalls for a in a_rounds)),
                "asynccp_max": _ms(max((x for a in a_rounds for x in a.stalls), default=None)),
                "sync_write": _ms(_pooled_median(s.stalls for s in s_rounds)),
                "ratio": med_ratio(stalls, stalls),
            },
            "throughput_mib_s": {
                **rates(lambda r: r.write_mib_s),
                "committed_bytes": sum(a.committed_bytes for a in a_rounds),
            },
            "restore_mib_s": rates(lambda r: r.restore_mib_s),
            "loop_lag_ms": {
                "asynccp": _lag_summary(a_lags.lags),
                "sync_writer": _lag_summary(s_lags.lags),
            },
        }
        if case.buffer is not None:
            out["stall_ms"]["memory_copy"] = _ms(_pooled_median(s.copies for s in s_rounds))
            out["stall_ms"]["ratio_to_copy"] = med_ratio(stalls, lambda s: _median(s.copies))
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
                        rates[who] = _per_s(per_round, time.perf_counter() - t0)
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
                    rates[who] = _per_s(n, time.perf_counter() - t0)
                await anyio.to_thread.run_sync(self.target.remove, sub)
            a_rates.append(rates["asynccp"])
            s_rates.append(rates["sync"])
            ratios.append(_ratio(rates["asynccp"], rates["sync"]))
        return {
            "saves": per_round * o.rounds,
            "payload_bytes": 16,
            "policy": "latest",
            "asynccp_saves_per_s": _median(a_rates),
            "sync_writes_per_s": _median(s_rates),
            "ratio": _median(ratios),
            "committed": committed,
            "superseded": superseded,
        }


def _order(i: int) -> tuple[str, str]:
    """Who runs first in round ``i``: asynccp and the baseline take turns, so drift is shared."""
    return ("asynccp", "sync") if i % 2 == 0 else ("sync", "asynccp")


def _per_s(count: int, seconds: float) -> float | None:
    """``count`` per second; None when no time was measured (no rate to speak of)."""
    return count / seconds if seconds > 0 else None


def _mib_s(nbytes: int, seconds: float) -> float | None:
    rate = _per_s(nbytes, seconds)
    return None if rate is None else rate / MiB


def _median(values: Iterable[float | None]) -> float | None:
    """The median of the measured ``values`` (None ones left out); None when there are none."""
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None


def _pooled_median(groups: Iterable[list[float]]) -> float | None:
    """The median of all values in all ``groups`` (every round's samples pooled)."""
    return _median([x for g in groups for x in g])


def _ratio(mine: float | None, baseline: float | None) -> float | None:
    """``mine / baseline``; None when either is missing or the quotient is not finite."""
    if mine is None or not baseline or not math.isfinite(mine / baseline):
        return None
    return mine / baseline


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _lag_summary(lags: list[float]) -> dict[str, float | int | None]:
    """Tick count and p50 / p99 / max lateness (ms) of a Ticker's ticks (None: no ticks)."""
    if not lags:
        return {"ticks": 0, "p50": None, "p99": None, "max": None}
    s = sorted(lags)
    return {
        "ticks": len(s),
        "p50": _ms(s[len(s) // 2]),
        "p99": _ms(s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]),
        "max": _ms(s[-1]),
    }


# -- peak memory, in a fresh process ---------------------------------------------------


def _rss_now() -> int:
    """This process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM) to now; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """This process's peak resident set size, in bytes (since :func:`_reset_peak`)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: save a reused bytearray many times, track peak RSS."""
    size, count = spec["size"], spec["count"]
    buf = bytearray(random.Random(1).randbytes(size))
    if spec["root"] is not None:
        location: Any = spec["root"]
        store = StoreOptions(durable=spec["durable"])
    else:
        base = resolve(spec["url"], StoreOptions(obstore=spec["store_options"]))
        assert isinstance(base, ObjectStore)
        location, store = base.store, StoreOptions(prefix=base.prefix + spec["prefix"])

    async def main() -> None:
        limits = Limits(spec["max_pending"], spec["max_pending_bytes"])
        async with Checkpointer(location, limits=limits, store=store) as cp:
            for i in range(count):
                buf[:8] = i.to_bytes(8, "little")
                await cp.save(i, buf)

    before = _rss_now()
    exact = _reset_peak()
    asyncio.run(main())
    peak = _peak_rss()
    return {"rss_before": before, "peak_rss": peak, "exact_peak": exact}


async def memory(opts: Options, target: Target, progress: Callable[[str], None]) -> dict[str, Any]:
    """Peak RSS growth of many saves of the largest bytearray, measured in a fresh process."""
    size = max(opts.sizes)
    m = opts.max_pending_bytes
    count = max(8, 2 * opts.max_pending, math.ceil(3 * m / size))
    sub = f"memory-{secrets.token_hex(3)}"
    spec = {
        "size": size,
        "count": count,
        "max_pending": opts.max_pending,
        "max_pending_bytes": m,
        "durable": opts.durable,
        "root": str(target.root / sub) if target.root is not None else None,
        "url": target.url,
        "prefix": target.run_prefix + sub,
        "store_options": opts.store_options,
    }
    progress(f"peak memory: {count} saves of a {fmt_size(size)} bytearray, fresh process")
    code = (
        "import json, sys; from asynccp.cli._bench import _memory_child; "
        "print(json.dumps(_memory_child(json.loads(sys.argv[1]))))"
    )
    proc = await anyio.run_process([sys.executable, "-c", code, json.dumps(spec)], check=False)
    await anyio.to_thread.run_sync(target.remove, sub)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CheckpointError(f"memory probe failed: {err[-1] if err else proc.returncode}")
    child = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    growth = child["peak_rss"] - child["rss_before"]
    return {
        "payload": "bytearray",
        "size": size,
        "saves": count,
        "max_pending_bytes": m,
        "rss_before_mib": child["rss_before"] / MiB,
        "peak_rss_mib": child["peak_rss"] / MiB,
        "growth_mib": growth / MiB,
        "bound_mib": m / MiB + TARGETS["memory_slack_mib"],
        "exact_peak": child["exact_peak"],
    }


# -- the run ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, OS, Python, obstore and asynccp."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "obstore": _version("obstore"),
        "asynccp": _version("asynccp"),
    }


def _version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def plan(opts: Options) -> int:
    """How many progress steps a run takes."""
    steps = len(opts.kinds) * len(opts.sizes) * opts.rounds * 2
    if opts.small_saves:
        steps += opts.rounds * 2
    return steps + (1 if opts.memory else 0)


async def run(opts: Options, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run every measurement; return the result document (what ``--json`` writes)."""
    opts.validate()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    target = await anyio.to_thread.run_sync(Target, opts)
    src = Path(tempfile.mkdtemp(prefix="asynccp-bench-src-"))
    try:
        await anyio.to_thread.run_sync(target.probe)
        engine = Engine(opts, target, progress)
        cases = []
        largest = max(opts.sizes)
        for kind in opts.kinds:
            for size in opts.sizes:
                case = await anyio.to_thread.run_sync(Case, kind, size, src, opts.files_per_save)
                cases.append(await engine.case(case, lag_case=size == largest))
                del case
        small = await engine.small_saves() if opts.small_saves else None
        mem = await memory(opts, target, progress) if opts.memory else None
    finally:
        await anyio.to_thread.run_sync(target.close)
        shutil.rmtree(src, ignore_errors=True)
    doc = {
        "asynccp_bench": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "location": {"description": target.description, "kind": target.kind},
        "options": {k: v for k, v in asdict(opts).items() if k != "store_options"},
        "cases": cases,
        "small_saves": small,
        "memory": mem,
    }
    doc["targets"] = targets(doc)
    return doc


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """asynccp's targets (:data:`TARGETS`), each checked on the largest size measured.

    A target whose figure has no samples (``None``) is not met: nothing shows it is.
    """
    out: list[dict[str, Any]] = []
    cases = doc["cases"]
    largest = max(c["size"] for c in cases)
    top = {c["kind"]: c for c in cases if c["size"] == largest}

    def add(name: str, value: float | None, limit: float, op: str, unit: str) -> None:
        met = value is not None and (value <= limit if op == "<=" else value >= limit)
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "unit": unit, "met": met}
        )

    def at_most(name: str, value: float | None, limit: float, unit: str = "x") -> None:
        add(name, value, limit, "<=", unit)

    def at_least(name: str, value: float | None, limit: float, unit: str = "x") -> None:
        add(name, value, limit, ">=", unit)

    size = fmt_size(largest)
    if "bytes" in top:
        r = top["bytes"]["stall_ms"]["ratio"]
        at_most(f"stall, {size} bytes / sync write", r, TARGETS["stall_bytes"])
    if "bytearray" in top:
        r = top["bytearray"]["stall_ms"]["ratio_to_copy"]
        at_most(f"stall, {size} bytearray / memory copy", r, TARGETS["stall_bytearray"])
    for kind, c in top.items():
        r = c["throughput_mib_s"]["ratio"]
        at_least(f"throughput, {size} {kind} / raw puts", r, TARGETS["throughput"])
    small = doc.get("small_saves")
    if small:
        at_least("small saves (latest) / sync writes", small["ratio"], TARGETS["small_saves"])
    for kind, c in top.items():
        p99 = c["loop_lag_ms"]["asynccp"]["p99"]
        at_most(f"loop lag p99, {size} {kind} uploading", p99, TARGETS["lag_p99_ms"], "ms")
    for kind, c in top.items():
        r = c["restore_mib_s"]["ratio"]
        at_least(f"restore, {size} {kind} / raw gets", r, TARGETS["restore"])
    mem = doc.get("memory")
    if mem:
        name = "peak RSS growth / max_pending_bytes + 100 MiB"
        at_most(name, mem["growth_mib"], mem["bound_mib"], "MiB")
    return out
