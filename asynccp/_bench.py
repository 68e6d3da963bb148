"""The engine behind ``asynccp bench``: caller stall, throughput, loop lag, memory.

Everything is measured in one run, interleaved so that machine drift hits asynccp and
its baselines alike: each round of a case runs asynccp and the baseline back to back,
alternating which goes first, and every reported ratio is the median of the per-round
ratios. The baselines use the same store, the same objects and the same durability:

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
returns a plain dict (the ``--json`` document); :func:`render_text`, :func:`render_rich`
and :func:`plot` turn that dict into a table or a figure.
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import obstore
from obstore.store import LocalStore

from ._checkpointer import Checkpointer
from ._location import resolve
from .errors import CheckpointError, SupersededError

__all__ = ["KINDS", "BenchError", "Options", "parse_size", "plot", "render_text", "run"]

KINDS = ("bytes", "bytearray", "file", "files")
MiB = 1 << 20
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
}

#: The targets of issue 4; each is checked on the largest payload size measured.
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


def parse_size(text: str) -> int:
    """``"64MiB"``, ``"16m"``, ``"4096"`` -> bytes; BenchError when it is not a positive size."""
    raw = text.strip().lower().replace("_", "")
    num = raw.rstrip("kmgib")
    unit = raw[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise BenchError(f"not a size: {text!r} (use e.g. 64MiB, 512k, 4096)") from None
    if unit not in _SIZE_UNITS:
        raise BenchError(f"unknown size unit in {text!r} (use k, M, G, KiB, MiB, GiB)")
    size = int(value * _SIZE_UNITS[unit])
    if not math.isfinite(value) or size <= 0:
        raise BenchError(f"size must be positive, got {text!r}")
    return size


def fmt_size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass
class Options:
    """What ``asynccp bench`` measures (the CLI's options, validated)."""

    url: str | None = None
    sizes: list[int] = field(default_factory=lambda: [MiB, 16 * MiB, 64 * MiB])
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    saves: int = 4
    rounds: int = 3
    policy: str = "block"
    max_pending: int = 4
    max_pending_bytes: int = 256 * MiB
    small_saves: int = 10_000
    files_per_save: int = 64
    durable: bool = True
    memory: bool = True
    tick_seconds: float = 0.005
    store_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
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
            base = resolve(url, **opts.store_options)
        except (TypeError, ValueError) as e:
            raise BenchError(f"bad location {url!r}: {e}") from e
        except Exception as e:
            raise BenchError(f"cannot use location {url!r}: {_one_line(e)}") from e
        self.description = base.description
        run_id = f"asynccp-bench-{secrets.token_hex(4)}"
        self.root: Path | None = None
        self.prefix = ""
        if base.local_root is not None:
            self.root = base.local_root if self.tmp else base.local_root / run_id
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BenchError(f"cannot create {self.root}: {e.strerror or e}") from e
            self.store: Any = LocalStore(self.root)
            self.kind = "local directory" + ("" if self.durable else " (durable=False)")
        else:
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
            raise BenchError(f"cannot reach {self.description}: {_one_line(e)}") from e

    def checkpointer(self, sub: str, **kwargs: Any) -> Checkpointer:
        if self.root is not None:
            return Checkpointer(self.root / sub, durable=self.durable, **kwargs)
        return Checkpointer(self.store, prefix=self.prefix + sub, **kwargs)

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def put(self, rel: str, src: Any) -> None:
        """One raw obstore put; durable on local directories (file and folders fsynced)."""
        obstore.put(self.store, self.key(rel), src)
        if self.root is not None and self.durable:
            _fsync(self.root / rel)
            self.sync_dirs([rel])

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        """Raw puts of several objects, folders fsynced once at the end (local)."""
        for rel, src in items:
            obstore.put(self.store, self.key(rel), src)
            if self.root is not None and self.durable:
                _fsync(self.root / rel)
        self.sync_dirs([rel for rel, _ in items])

    def sync_dirs(self, rels: list[str]) -> None:
        if self.root is None or not self.durable:
            return
        dirs = set()
        for rel in rels:
            d = (self.root / rel).parent
            while d != self.root and d not in dirs:
                dirs.add(d)
                d = d.parent
        for d in sorted(dirs, key=lambda p: -len(p.parts)):
            _fsync(d)
        _fsync(self.root)

    def get(self, rel: str) -> Any:
        return obstore.get(self.store, self.key(rel)).bytes()

    def remove(self, sub: str) -> None:
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
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):
                self._delete_prefix(self.prefix)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


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
    stalls: list[float] = field(default_factory=list)
    write_seconds: float = 0.0
    committed_bytes: int = 0
    restore_seconds: float = 0.0
    restored_bytes: int = 0
    copies: list[float] = field(default_factory=list)


class Engine:
    def __init__(self, opts: Options, target: Target, progress: Callable[[str], None]) -> None:
        self.opts = opts
        self.target = target
        self.progress = progress
        self._n = 0

    def _sub(self, what: str) -> str:
        self._n += 1
        return f"{what}-{self._n:04d}"

    async def asynccp_round(self, case: Case, ticker: Ticker | None) -> Round:
        o = self.opts
        r = Round()
        sub = self._sub("asynccp")
        cp = self.target.checkpointer(
            sub, policy=o.policy, max_pending=o.max_pending, max_pending_bytes=o.max_pending_bytes
        )
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
            for name in c.files:
                r.restored_bytes += len(await c.read(name))
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
        o = self.opts
        a_rounds: list[Round] = []
        s_rounds: list[Round] = []
        a_lags = Ticker(o.tick_seconds)
        s_lags = Ticker(o.tick_seconds)
        for i in range(o.rounds):
            order = ("asynccp", "sync") if i % 2 == 0 else ("sync", "asynccp")
            for who in order:
                self.progress(f"{case.label}: round {i + 1}/{o.rounds}, {who}")
                if who == "asynccp":
                    a_rounds.append(await self.asynccp_round(case, a_lags))
                else:
                    s_rounds.append(await self.sync_round(case, s_lags))
        pairs = list(zip(a_rounds, s_rounds, strict=True))

        def med_ratio(f: Callable[[Round, Round], float]) -> float:
            return statistics.median(f(a, s) for a, s in pairs)

        def mbps(nbytes: int, secs: float) -> float:
            return nbytes / secs / MiB if secs > 0 else math.inf

        out: dict[str, Any] = {
            "kind": case.kind,
            "size": case.size,
            "files": len(case.parts),
            "rounds": o.rounds,
            "saves_per_round": o.saves,
            "stall_ms": {
                "asynccp": _ms(_median(a.stalls for a in a_rounds)),
                "asynccp_max": _ms(max(max(a.stalls) for a in a_rounds)),
                "sync_write": _ms(_median(s.stalls for s in s_rounds)),
                "ratio": med_ratio(
                    lambda a, s: statistics.median(a.stalls) / statistics.median(s.stalls)
                ),
            },
            "throughput_mib_s": {
                "asynccp": statistics.median(
                    mbps(a.committed_bytes, a.write_seconds) for a in a_rounds
                ),
                "raw_obstore": statistics.median(
                    mbps(s.committed_bytes, s.write_seconds) for s in s_rounds
                ),
                "ratio": med_ratio(
                    lambda a, s: (
                        (a.committed_bytes / a.write_seconds)
                        / (s.committed_bytes / s.write_seconds)
                    )
                ),
                "committed_bytes": sum(a.committed_bytes for a in a_rounds),
            },
            "restore_mib_s": {
                "asynccp": statistics.median(
                    mbps(a.restored_bytes, a.restore_seconds) for a in a_rounds
                ),
                "raw_obstore": statistics.median(
                    mbps(s.restored_bytes, s.restore_seconds) for s in s_rounds
                ),
                "ratio": med_ratio(
                    lambda a, s: (
                        (a.restored_bytes / a.restore_seconds)
                        / (s.restored_bytes / s.restore_seconds)
                        if a.restored_bytes
                        else 0.0
                    )
                ),
            },
            "loop_lag_ms": {
                "asynccp": _lag_summary(a_lags.lags),
                "sync_writer": _lag_summary(s_lags.lags),
            },
        }
        if case.buffer is not None:
            out["stall_ms"]["memory_copy"] = _ms(_median(s.copies for s in s_rounds))
            out["stall_ms"]["ratio_to_copy"] = med_ratio(
                lambda a, s: statistics.median(a.stalls) / statistics.median(s.copies)
            )
        out["lag_case"] = lag_case
        return out

    async def small_saves(self) -> dict[str, Any]:
        """The seed's loop: many 16-byte counter saves, policy="latest", vs a sync write each."""
        o = self.opts
        per_round = max(1, o.small_saves // o.rounds)
        a_rates, s_rates, ratios = [], [], []
        committed = superseded = 0
        for i in range(o.rounds):
            order = ("asynccp", "sync") if i % 2 == 0 else ("sync", "asynccp")
            rates: dict[str, float] = {}
            for who in order:
                self.progress(f"small saves: round {i + 1}/{o.rounds}, {who}")
                if who == "asynccp":
                    sub = self._sub("small-asynccp")
                    cp = self.target.checkpointer(
                        sub, policy="latest", max_pending=o.max_pending, keep=3
                    )
                    async with cp:
                        t0 = time.perf_counter()
                        for n in range(per_round):
                            await cp.save(n, b"%016d" % (n + 1))
                        await cp.flush()
                        rates[who] = per_round / (time.perf_counter() - t0)
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
                    rates[who] = n / (time.perf_counter() - t0)
                await anyio.to_thread.run_sync(self.target.remove, sub)
            a_rates.append(rates["asynccp"])
            s_rates.append(rates["sync"])
            ratios.append(rates["asynccp"] / rates["sync"])
        return {
            "saves": per_round * o.rounds,
            "payload_bytes": 16,
            "policy": "latest",
            "asynccp_saves_per_s": statistics.median(a_rates),
            "sync_writes_per_s": statistics.median(s_rates),
            "ratio": statistics.median(ratios),
            "committed": committed,
            "superseded": superseded,
        }


def _median(groups: Any) -> float:
    return statistics.median([x for g in groups for x in g])


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _lag_summary(lags: list[float]) -> dict[str, float | int]:
    if not lags:
        return {"ticks": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(lags)
    return {
        "ticks": len(s),
        "p50": _ms(s[len(s) // 2]),
        "p99": _ms(s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]),
        "max": _ms(s[-1]),
    }


# -- peak memory, in a fresh process ---------------------------------------------------


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
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
        kwargs: dict[str, Any] = {"durable": spec["durable"]}
    else:
        base = resolve(spec["url"], **spec["store_options"])
        location, kwargs = base.store, {"prefix": base.prefix + spec["prefix"]}

    async def main() -> None:
        async with Checkpointer(
            location,
            max_pending=spec["max_pending"],
            max_pending_bytes=spec["max_pending_bytes"],
            **kwargs,
        ) as cp:
            for i in range(count):
                buf[:8] = i.to_bytes(8, "little")
                await cp.save(i, buf)

    before = _rss_now()
    exact = _reset_peak()
    asyncio.run(main())
    peak = _peak_rss()
    return {"rss_before": before, "peak_rss": peak, "exact_peak": exact}


async def memory(opts: Options, target: Target, progress: Callable[[str], None]) -> dict[str, Any]:
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
        "import json, sys; from asynccp._bench import _memory_child; "
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
    """The issue's targets, each checked on the largest size measured."""
    out: list[dict[str, Any]] = []
    cases = doc["cases"]
    largest = max(c["size"] for c in cases)
    top = {c["kind"]: c for c in cases if c["size"] == largest}

    def add(name: str, value: float, limit: float, ok: bool, unit: str = "") -> None:
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": ok})

    size = fmt_size(largest)
    if "bytes" in top:
        r = top["bytes"]["stall_ms"]["ratio"]
        add(f"stall, {size} bytes / sync write", r, TARGETS["stall_bytes"], r <= 0.01, "x")
    if "bytearray" in top:
        r = top["bytearray"]["stall_ms"]["ratio_to_copy"]
        add(f"stall, {size} bytearray / memory copy", r, 1.5, r <= 1.5, "x")
    for kind, c in top.items():
        r = c["throughput_mib_s"]["ratio"]
        add(f"throughput, {size} {kind} / raw puts", r, 0.9, r >= 0.9, "x")
    small = doc.get("small_saves")
    if small:
        r = small["ratio"]
        add("small saves (latest) / sync writes", r, 5.0, r >= 5.0, "x")
    for kind, c in top.items():
        p99 = c["loop_lag_ms"]["asynccp"]["p99"]
        add(f"loop lag p99, {size} {kind} uploading", p99, 5.0, p99 <= 5.0, "ms")
    for kind, c in top.items():
        r = c["restore_mib_s"]["ratio"]
        add(f"restore, {size} {kind} / raw gets", r, 0.9, r >= 0.9, "x")
    mem = doc.get("memory")
    if mem:
        g = mem["growth_mib"]
        add(
            "peak RSS growth / max_pending_bytes + 100 MiB",
            g,
            mem["bound_mib"],
            g <= mem["bound_mib"],
            "MiB",
        )
    return out


# -- output ----------------------------------------------------------------------------


def _rows(doc: dict[str, Any]) -> Iterator[list[str]]:
    """The per-case table: measure, asynccp, baseline, ratio."""
    for c in doc["cases"]:
        label = f"{c['kind']} {fmt_size(c['size'])}"
        if c["kind"] == "files":
            label += f" ({c['files']} files)"
        s = c["stall_ms"]
        yield [
            label,
            "caller stall",
            f"{s['asynccp']:.3f} ms",
            f"sync write {s['sync_write']:.1f} ms",
            f"{s['ratio'] * 100:.2f} %",
        ]
        if "memory_copy" in s:
            yield [
                "",
                "",
                "",
                f"memory copy {s['memory_copy']:.1f} ms",
                f"{s['ratio_to_copy']:.2f} x",
            ]
        t = c["throughput_mib_s"]
        yield [
            "",
            "committed throughput",
            f"{t['asynccp']:.0f} MiB/s",
            f"raw puts {t['raw_obstore']:.0f} MiB/s",
            f"{t['ratio'] * 100:.0f} %",
        ]
        r = c["restore_mib_s"]
        yield [
            "",
            "restore throughput",
            f"{r['asynccp']:.0f} MiB/s",
            f"raw gets {r['raw_obstore']:.0f} MiB/s",
            f"{r['ratio'] * 100:.0f} %",
        ]
        la, ls = c["loop_lag_ms"]["asynccp"], c["loop_lag_ms"]["sync_writer"]
        yield [
            "",
            "loop lag p50 / p99",
            f"{la['p50']:.2f} / {la['p99']:.2f} ms",
            f"sync writer {ls['p50']:.1f} / {ls['p99']:.1f} ms",
            "",
        ]
    small = doc.get("small_saves")
    if small:
        yield [
            f"16 B x {small['saves']}",
            "saves per second (latest)",
            f"{small['asynccp_saves_per_s']:,.0f}/s",
            f"sync writes {small['sync_writes_per_s']:,.0f}/s",
            f"{small['ratio']:.1f} x",
        ]
    mem = doc.get("memory")
    if mem:
        yield [
            f"bytearray {fmt_size(mem['size'])} x {mem['saves']}",
            "peak RSS growth",
            f"{mem['growth_mib']:.0f} MiB",
            f"max_pending_bytes {mem['max_pending_bytes'] / MiB:.0f} MiB",
            f"peak {mem['peak_rss_mib']:.0f} MiB",
        ]


_HEAD = ["payload", "measure", "asynccp", "baseline", "ratio"]


def _summary(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    lines = [
        f"asynccp {m['asynccp']} on {doc['location']['kind']} {doc['location']['description']}",
        f"machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, obstore {m['obstore']}; {doc['seconds']} s; "
        f"medians of {doc['options']['rounds']} interleaved rounds",
    ]
    return lines


def _target_rows(doc: dict[str, Any]) -> Iterator[list[str]]:
    for t in doc["targets"]:
        unit = t["unit"]
        if unit == "x" and t["limit"] < 1:
            val, lim = f"{t['value'] * 100:.2f} %", f"{t['limit'] * 100:.0f} %"
        elif unit == "x":
            val, lim = f"{t['value']:.2f} x", f"{t['limit']:g} x"
        else:
            val, lim = f"{t['value']:.1f} {unit}", f"{t['limit']:.0f} {unit}"
        op = (
            "<="
            if ("stall" in t["target"] or "lag" in t["target"] or "RSS" in t["target"])
            else ">="
        )
        yield [t["target"], val, f"{op} {lim}", "met" if t["met"] else "MISSED"]


def render_text(doc: dict[str, Any]) -> str:
    """Plain-text tables (when rich is not installed, or for logs)."""

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        return [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]

    out = [*_summary(doc), "", "asynccp bench", ""]
    out += table(_HEAD, list(_rows(doc)))
    out += ["", "targets", ""]
    out += table(["target", "measured", "goal", ""], list(_target_rows(doc)))
    return "\n".join(out)


def render_rich(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for line in _summary(doc):
        console.print(line, highlight=False)
    t = Table(*_HEAD, title="asynccp bench", title_justify="left")
    for col in t.columns[2:]:
        col.justify = "right"
    last = None
    for row in _rows(doc):
        if row[0] and last is not None:
            t.add_section()
        last = row
        t.add_row(*row)
    console.print(t)
    tt = Table("target", "measured", "goal", "", title="targets", title_justify="left")
    for row in _target_rows(doc):
        style = "green" if row[3] == "met" else "bold red"
        tt.add_row(*row[:3], f"[{style}]{row[3]}[/]")
    console.print(tt)


def plot(doc: dict[str, Any], path: str) -> None:
    """Stall and throughput against payload size, asynccp beside its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = sorted({c["kind"] for c in doc["cases"]}, key=KINDS.index)
    colors = dict(zip(KINDS, ["C0", "C1", "C2", "C3"], strict=True))
    for kind in kinds:
        cs = sorted((c for c in doc["cases"] if c["kind"] == kind), key=lambda c: c["size"])
        x = [c["size"] / MiB for c in cs]
        col = colors[kind]
        ax1.plot(
            x,
            [c["stall_ms"]["asynccp"] for c in cs],
            "o-",
            color=col,
            label=f"asynccp save ({kind})",
        )
        ax1.plot(
            x,
            [c["stall_ms"]["sync_write"] for c in cs],
            "s--",
            color=col,
            alpha=0.6,
            label=f"sync write ({kind})",
        )
        if kind == "bytearray":
            ax1.plot(
                x,
                [c["stall_ms"]["memory_copy"] for c in cs],
                "^:",
                color=col,
                alpha=0.6,
                label="memory copy (bytearray)",
            )
        ax2.plot(
            x,
            [c["throughput_mib_s"]["asynccp"] for c in cs],
            "o-",
            color=col,
            label=f"asynccp ({kind})",
        )
        ax2.plot(
            x,
            [c["throughput_mib_s"]["raw_obstore"] for c in cs],
            "s--",
            color=col,
            alpha=0.6,
            label=f"raw obstore puts ({kind})",
        )
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="payload size (MiB)",
        ylabel="caller stall (ms)",
        title="caller stall per save",
    )
    ax2.set(
        xscale="log",
        xlabel="payload size (MiB)",
        ylabel="MiB/s",
        title="committed write throughput",
    )
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"asynccp bench — {doc['location']['kind']}, {doc['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
