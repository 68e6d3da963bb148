"""Sharded commits: n processes each saving their part of a step, against one writer
saving the same bytes, on the local disk and on the S3 test server, in one run.

    pip install -e '.[bench,test]'     # moto, for the S3 test server
    python benchmarks/bench_shards.py [--total-mib 8] [--steps 5] [--rounds 3]
                                      [--shards 1,2,4] [--no-s3] [--json out.json]

Every writer is its own process (``benchmarks/_shard_worker.py``), started before it is
timed. For each store and round, in an order that rotates each round:

- **single**: one ``Checkpointer(location)`` saves steps of ``--total-mib``;
- **n shards** (n in ``--shards``): n processes, ``Checkpointer(location,
  sharding=Sharding(r, n))``, each saving ``total / n`` bytes of every step.

Figures:

- *commit latency* of a step: the steps are driven one at a time (every process gets
  "save step k" at once, and the next step only once all answered); the latency is from
  the first ``save()`` of the step to the last of its handles resolving, which for a
  sharded step is when its manifest exists (the last part's handle resolves after it
  created the manifest). Median over steps and rounds.
- *part*: the fastest part's save-to-resolve time: a single writer's commit of
  ``total / n`` bytes plus the one listing every shard makes.
- *aggregate committed throughput*: every process saves ``--steps`` steps back to back;
  bytes of the whole step times steps, over first save to last handle resolved.
- *LIST*: one listing of a step's part records, measured apart: what the protocol
  adds to a part's commit (the last part also reads the others' records, side by side,
  and creates the manifest).

Ratios are medians of per-round ratios against the single writer of the same round.
The machine has few cores: n processes compete for them, and for the test server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_shard_worker.py"
MiB = 1 << 20


class Writers:
    """The processes of one writer configuration, driven over stdin."""

    def __init__(self, location: str, size: int, shards: int | None, env: dict[str, str]):
        self.procs: list[subprocess.Popen[str]] = []
        for r in range(shards or 1):
            args = [sys.executable, str(WORKER), location, str(size)]
            if shards is not None:
                args += [str(r), str(shards)]
            self.procs.append(
                subprocess.Popen(
                    args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
            )
        for line in self._answers():
            assert line == "ready", line

    def _send(self, text: str) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(text + "\n")
            p.stdin.flush()

    def _answers(self) -> list[str]:
        out = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if not line:
                raise RuntimeError(f"a writer died (exit {p.wait()})")
            out.append(line)
        return out

    def step(self, k: int) -> tuple[float, float]:
        """(step latency, fastest part's latency) in seconds."""
        self._send(f"step {k}")
        times = [tuple(map(float, line.split()[2:])) for line in self._answers()]
        return max(d for _, d in times) - min(s for s, _ in times), min(d - s for s, d in times)

    def burst(self, first: int, n: int) -> float:
        self._send(f"burst {first} {n}")
        times = [tuple(map(float, line.split()[1:])) for line in self._answers()]
        return max(d for _, d in times) - min(s for s, _ in times)

    def close(self) -> None:
        self._send("quit")
        for p in self.procs:
            if p.wait(timeout=120) != 0:
                raise RuntimeError(f"a writer exited {p.returncode}")


def list_ms(url: str, env: dict[str, str], shards: int) -> float:
    """Median time of one listing of a step's part records (``shards`` of them)."""
    code = f"""
import statistics, time
from asynccp._layout import part_key, parts_dir
from asynccp._store import resolve
loc = resolve({url!r})
loc.open()
for r in range({shards}):
    loc.create(part_key(0, "g", r, {shards}), b"{{}}")
ts = []
for _ in range(30):
    t = time.perf_counter()
    loc.list_objects(parts_dir(0, "g"))
    ts.append(time.perf_counter() - t)
print(statistics.median(ts) * 1000)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip())


def run_store(
    name: str, url: Callable[[str], str], env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    total = int(args.total_mib * MiB)
    configs: list[int | None] = [None, *args.shards]
    lat: dict[str, list[float]] = {}
    part: dict[str, list[float]] = {}
    thr: dict[str, list[float]] = {}
    ratio_lat: dict[str, list[float]] = {}
    ratio_thr: dict[str, list[float]] = {}
    for rnd in range(args.rounds):
        k = rnd % len(configs)
        per_round: dict[str, tuple[float, float]] = {}
        for n in configs[k:] + configs[:k]:
            label = "single" if n is None else f"{n} shards"
            where = url(f"r{rnd}-{'single' if n is None else n}")
            writers = Writers(where, total // (n or 1), n, {**env, "ASYNCCP_GENERATION": f"r{rnd}"})
            try:
                steps = [writers.step(s) for s in range(args.steps + 1)][1:]  # step 0: warm-up
                seconds = writers.burst(args.steps + 1, args.steps)
            finally:
                writers.close()
            med = statistics.median(s for s, _ in steps)
            lat.setdefault(label, []).extend(s for s, _ in steps)
            part.setdefault(label, []).extend(p for _, p in steps)
            thr.setdefault(label, []).append(args.steps * total / seconds / MiB)
            per_round[label] = (med, args.steps * total / seconds / MiB)
            print(f"  {name} round {rnd}: {label}: {med * 1000:.1f} ms/step", file=sys.stderr)
        for label, (m, t) in per_round.items():
            ratio_lat.setdefault(label, []).append(m / per_round["single"][0])
            ratio_thr.setdefault(label, []).append(t / per_round["single"][1])
    listing = {n: list_ms(url(f"list-{n}"), env, n) for n in args.shards}
    return {
        "store": name,
        "total_bytes": total,
        "latency_ms": {k: statistics.median(v) * 1000 for k, v in lat.items()},
        "part_ms": {k: statistics.median(v) * 1000 for k, v in part.items()},
        "throughput_mib_s": {k: statistics.median(v) for k, v in thr.items()},
        "latency_ratio": {k: statistics.median(v) for k, v in ratio_lat.items()},
        "throughput_ratio": {k: statistics.median(v) for k, v in ratio_thr.items()},
        "list_ms": listing,
    }


def table(doc: dict[str, Any]) -> None:
    print(
        f"\n### {doc['store']}: {doc['total_bytes'] / MiB:g} MiB per step\n\n"
        "| writers | commit latency | vs single | fastest part | LIST | committed MiB/s "
        "| vs single |\n|---|---|---|---|---|---|---|"
    )
    for label in doc["latency_ms"]:
        n = None if label == "single" else int(label.split()[0])
        listing = "" if n is None else f"{doc['list_ms'][n]:.1f} ms"
        print(
            f"| {label} | {doc['latency_ms'][label]:.1f} ms | "
            f"{doc['latency_ratio'][label]:.2f}x | {doc['part_ms'][label]:.1f} ms | {listing} | "
            f"{doc['throughput_mib_s'][label]:.0f} | {doc['throughput_ratio'][label]:.2f}x |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total-mib", type=float, default=8.0, help="bytes per step (default 8)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--shards", default="1,2,4", help="shard counts (default 1,2,4)")
    p.add_argument("--no-s3", action="store_true", help="local disk only")
    p.add_argument("--dir", help="parent folder of the local runs (default: a temp dir)")
    p.add_argument("--json", help="write the figures as JSON to this file")
    args = p.parse_args()
    args.shards = [int(s) for s in args.shards.split(",") if s.strip()]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="asynccp-bench-shards-", dir=args.dir))
    docs = []
    try:
        docs.append(run_store("local disk", lambda s: str(root / s), env, args))
        if not args.no_s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer, create_bucket

            with MotoServer() as server:
                create_bucket(server.url, "bench")
                s3 = {
                    **env,
                    "AWS_ENDPOINT_URL": server.url,
                    "AWS_ALLOW_HTTP": "true",
                    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                    "AWS_REGION": REGION,
                }
                docs.append(run_store("S3 (moto, loopback)", lambda s: f"s3://bench/{s}", s3, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n## Sharded commits ({os.cpu_count()} CPUs, {time.time() - started:.0f} s; "
        f"medians of {args.rounds} interleaved rounds x {args.steps} steps)"
    )
    for doc in docs:
        table(doc)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": docs, "options": vars(args)}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
