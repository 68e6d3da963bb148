"""The example service under a loopback load, autosave on vs off: request latency.

    python benchmarks/bench_service.py [--rounds 60] [--requests 600] [--concurrency 8]
                                       [--keys 5000] [--interval 1.0] [--json out.json]

Starts ``examples/service.py`` twice on 127.0.0.1: with autosave (a local temp dir,
every ``--interval`` seconds, durable commits) and with ``--no-autosave`` (the same
routes, state in memory only). Both are filled with ``--keys`` counters first, so the
autosaved state is that large (about 14 bytes of JSON per key). Then this process — the
load generator, separate from both servers — runs ``--rounds`` rounds against each in
turn, the order alternating: ``--requests`` POSTs over ``--concurrency`` keep-alive
HTTP/1.1 connections (a closed loop: each connection sends its next request when the
previous one is answered), every one changing a random counter, so every autosave has
new state to save. Each round is bounded by ``--round-timeout`` seconds.

Reports per mode the median over rounds of each round's p50, p99 and max latency, the
p99 of all requests pooled, and the server's CPU time per round (less sensitive than
latency to load from elsewhere); the p99 ratio on / off is the geometric mean of the
per-round ratios (each round runs both back to back, so load from elsewhere on the
machine mostly cancels out); the target is autosave on within 10 % of off. ``--aa`` replaces
the autosaving server by a second server without autosave: the ratio it prints is the
noise floor of the machine at the time. ``--cost`` measures one autosave of the same
state alone, in this process: CPU per autosave and the state callable's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "service.py"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One ``examples/service.py`` process."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE), "--port", str(self.port), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.status()
                break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/status", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far (Linux)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _connection(port: int, paths: list[str], latencies: list[float]) -> None:
    """One keep-alive connection sending ``paths`` one after the other."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for path in paths:
            request = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n"
            started = time.perf_counter()
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{path}: {head.splitlines()[0]!r}")
    finally:
        writer.close()


async def load(
    port: int, requests: int, concurrency: int, keys: int, timeout: float
) -> list[float]:
    """``requests`` POSTs over ``concurrency`` connections; the latency of each, seconds."""
    rng = random.Random(port)
    paths = [f"/incr/k{rng.randrange(keys)}" for _ in range(requests)]
    latencies: list[float] = []
    share = [paths[i::concurrency] for i in range(concurrency)]
    await asyncio.wait_for(
        asyncio.gather(*(_connection(port, p, latencies) for p in share)), timeout
    )
    return latencies


async def fill_state(port: int, paths: list[str], concurrency: int, timeout: float) -> None:
    """Send ``paths`` over ``concurrency`` connections (untimed)."""
    share = [paths[i::concurrency] for i in range(concurrency)]
    await asyncio.wait_for(asyncio.gather(*(_connection(port, p, []) for p in share)), timeout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cost(keys: int, saves: int = 100) -> None:
    """``--cost``: what one autosave of the example's state costs, measured alone.

    An ``asynccp.autosave`` of the example's state (``keys`` counters) in this process,
    on a local temp dir with the example's settings, until ``saves`` autosaves
    committed, the state changing all along: process CPU per autosave (the loop's idle
    ticks included), and the state callable's own time on the event loop.
    """
    import anyio

    sys.path.insert(0, str(EXAMPLE.parent))
    import service  # examples/service.py

    import asynccp

    state = service.fresh()
    state["counts"] = {f"k{i}": 1 for i in range(keys)}  # as after the fill

    async def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="bench-service-cost-") as where:
            return await autosaves(where)

    async def autosaves(where: str) -> tuple[float, float]:
        async with (
            asynccp.Checkpointer(where, policy="latest", keep=3) as cp,
            asynccp.autosave(cp, lambda: service.dump(state), every=0.02) as saver,
        ):
            cpu, wall = time.process_time(), time.perf_counter()
            while saver.stats.saves < saves:
                state["writes"] += 1
                await anyio.sleep(0.005)
            return time.process_time() - cpu, time.perf_counter() - wall

    cpu, wall = anyio.run(run)
    started = time.perf_counter()
    for _ in range(saves):
        size = len(service.dump(state))
    dump = (time.perf_counter() - started) / saves
    print(
        f"{saves} autosaves of {keys} counters ({size / 1024:.0f} KiB) in {wall:.1f} s: "
        f"{cpu / saves * 1000:.1f} ms of process CPU per autosave; the state callable "
        f"(json.dumps) {dump * 1000:.2f} ms on the event loop"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--round-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--aa", action="store_true", help="off vs off: the noise floor")
    parser.add_argument("--cost", action="store_true", help="one autosave's cost, alone")
    args = parser.parse_args()
    if args.cost:
        cost(args.keys)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    on_args = ["--location", str(tmp / "state"), "--interval", str(args.interval)]
    if args.aa:
        on_args = ["--no-autosave"]
    servers = {
        "on": Server("autosave on", on_args, tmp / "on.log"),
        "off": Server("autosave off", ["--no-autosave"], tmp / "off.log"),
    }
    started = time.perf_counter()
    try:
        for server in servers.values():  # the same state size in both: every key once
            fill = [f"/incr/k{k}" for k in range(args.keys)]
            asyncio.run(fill_state(server.port, fill, args.concurrency, args.round_timeout))
        saves_before = servers["on"].status().get("saves", 0)
        rounds: dict[str, list[list[float]]] = {"on": [], "off": []}
        cpu_ms: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.rounds):
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            for mode in order:
                cpu = servers[mode].cpu_seconds()
                latencies = asyncio.run(
                    load(
                        servers[mode].port,
                        args.requests,
                        args.concurrency,
                        args.keys,
                        args.round_timeout,
                    )
                )
                rounds[mode].append(latencies)
                cpu_ms[mode].append((servers[mode].cpu_seconds() - cpu) * 1000)
        status = servers["on"].status()
        data = tmp / "state" / "data"
        folders = list(data.iterdir()) if data.is_dir() else []
        checkpoint_bytes = sum(
            f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file()
        ) // max(1, len(folders))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started

    def summary(mode: str) -> dict[str, float]:
        per_round = rounds[mode]
        pooled = [x for lat in per_round for x in lat]
        return {
            "p50_ms": statistics.median(percentile(lat, 50) for lat in per_round) * 1000,
            "p99_ms": statistics.median(percentile(lat, 99) for lat in per_round) * 1000,
            "max_ms": statistics.median(max(lat) for lat in per_round) * 1000,
            "pooled_p99_ms": percentile(pooled, 99) * 1000,
            "requests_per_s": statistics.median(
                len(lat) / sum(lat) * args.concurrency for lat in per_round
            ),
            "server_cpu_ms_per_round": statistics.median(cpu_ms[mode]),
        }

    on, off = summary("on"), summary("off")
    # The geometric mean of the per-round ratios: the order alternates each round, and an
    # order effect (x one round, 1/x the next) cancels out in it, not in a median.
    per_round = [
        percentile(a, 99) / percentile(b, 99)
        for a, b in zip(rounds["on"], rounds["off"], strict=True)
    ]
    ratio = statistics.geometric_mean(per_round)
    logs = [math.log(r) for r in per_round]
    spread = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    interval = (ratio * math.exp(-spread), ratio * math.exp(spread))  # ~95 %
    doc = {
        "machine": (
            f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
        ),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "on": on,
        "off": off,
        "p99_ratio": ratio,
        "p99_ratio_95ci": interval,
        "p99_ratio_per_round": per_round,
        "autosaves_during_rounds": status.get("saves", 0) - saves_before,
        "autosave_failures": status.get("failures", 0),
        "checkpoint_bytes": checkpoint_bytes,
        "seconds": elapsed,
    }
    print(f"{doc['machine']}; {elapsed:.0f} s; medians of {args.rounds} interleaved rounds")
    print(
        f"{args.requests} POSTs per round over {args.concurrency} connections; state "
        f"{args.keys} counters ({checkpoint_bytes / 1024:.0f} KiB a checkpoint); autosave "
        f"every {args.interval:g} s: {doc['autosaves_during_rounds']} autosaves committed "
        f"during the rounds, {doc['autosave_failures']} failed"
        f"{' (A/A: both servers without autosave)' if args.aa else ''}\n"
    )
    print("| autosave | p50 | p99 | max | p99 of all requests | requests/s | server CPU |")
    print("|---|---|---|---|---|---|---|")
    for name, s in (("on", on), ("off", off)):
        print(
            f"| {name} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms | {s['max_ms']:.1f} ms "
            f"| {s['pooled_p99_ms']:.2f} ms | {s['requests_per_s']:,.0f} "
            f"| {s['server_cpu_ms_per_round']:.0f} ms |"
        )
    verdict = "within" if ratio <= 1.10 else "NOT within"
    print(
        f"\np99 on / off, geometric mean of per-round ratios = {ratio:.3f} "
        f"(95 % interval {interval[0]:.2f}-{interval[1]:.2f}; {verdict} the 10 % target)"
    )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
