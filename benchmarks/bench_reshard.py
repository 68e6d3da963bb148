"""Loading a 4-rank checkpoint on 2 and on 3 ranks: asynccp against PyTorch DCP.

    pip install -e '.[bench,torch]'
    python benchmarks/bench_reshard.py [--tensors 8] [--side 4096] [--rounds 5] [--json out.json]

One save, then interleaved rounds of loads, in one run. The state is ``--tensors``
float32 tensors of ``--side x --side`` (the default: 8 x 64 MiB = 512 MiB), half split
along dimension 0, half along dimension 1, saved once by 4 processes (gloo, CPU) both
ways: asynccp (``asynccp.Shard`` blocks of a sharded step) and
``torch.distributed.checkpoint`` (DTensors, ``FileSystemWriter``), on the same local
disk. Each round then loads both on 2 and on 3 processes (every rank its own blocks of
the new layout, into tensors made beforehand), in an order that rotates each round:

- **asynccp**: ``cp.latest()`` and ``ckpt.load_into(...)``: each rank fetches the
  chunks of its share (ranged reads), each checked against its CRC32C;
- **asynccp, load_latest**: a sharded checkpointer's ``load_latest`` — every part of
  the step verified whole first (each rank reads the whole step), then the same load:
  what a resuming job runs by default, shown for the price of that check;
- **DCP**: ``dcp.load`` into DTensors of the new mesh (rank 0 plans, every rank reads
  what it needs; nothing is checked).

Every load is checked bit for bit against the saved values. Figures: *time* from a
barrier before the load to a barrier after it (the slowest rank; process start and the
targets' allocation are outside), medians over rounds; *read*: bytes each rank's
process read during the load (``rchar``: every ``read``/``pread``, page-cache hits
included: both read files the save just wrote, warm in the cache), summed over the ranks
and as a multiple of the state's size, and the most any rank read over its share;
*peak memory*: the most a rank's resident memory rose during the load (peak VmHWM, reset
when the load began, minus VmRSS then: memory beyond the targets), over its largest
target tensor, the worst rank and round; *ratio*: median of per-round ratios of time,
asynccp / DCP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_reshard_worker.py"
MiB = 1 << 20
MODES = {
    "asynccp": "load-asynccp",
    "DCP": "load-dcp",
    "asynccp, load_latest": "load-asynccp-verified",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(mode: str, where: Path, world: int, tensors: int, side: int) -> list[dict[str, Any]]:
    """``world`` worker processes of ``mode``; their JSON lines."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), mode, str(where), str(tensors), str(side)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=1200)
        if p.returncode != 0:
            raise SystemExit(f"{mode} on {world} ranks failed:\n{stderr[-3000:]}")
        out += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worlds", default="2,3", help="reader process counts (default 2,3)")
    ap.add_argument("--dir", help="parent directory (default: a temp dir)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    root = Path(tempfile.mkdtemp(prefix="asynccp-reshard-", dir=args.dir))
    total = args.tensors * args.side * args.side * 4
    try:
        t0 = time.perf_counter()
        launch("save", root, 4, args.tensors, args.side)
        print(
            f"saved {total / MiB:.0f} MiB on 4 ranks, both ways, in "
            f"{time.perf_counter() - t0:.1f} s; {args.rounds} rounds of loads",
            flush=True,
        )
        results: dict[int, dict[str, list[dict[str, float]]]] = {
            w: {name: [] for name in MODES} for w in worlds
        }
        for r in range(args.rounds):
            names = list(MODES)
            names = names[r % len(names) :] + names[: r % len(names)]
            for w in worlds:
                for name in names:
                    lines = launch(MODES[name], root, w, args.tensors, args.side)
                    results[w][name].append(
                        {
                            "seconds": max(x["seconds"] for x in lines),
                            "read": sum(x["read"] for x in lines),
                            "max_rank_read_share": max(x["read"] / x["share"] for x in lines),
                            "peak_over_largest": max(
                                x["peak_growth"] / x["largest"] for x in lines
                            ),
                        }
                    )
            print(f"round {r + 1} done", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    print()
    print(f"4-rank checkpoint of {total / MiB:.0f} MiB ({args.tensors} x {args.side}^2 float32)")
    print(
        "| load on | reader | time (median) | read, all ranks | read / state "
        "| max rank read / its share | peak memory beyond targets / largest tensor "
        "| time / DCP |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for w in worlds:
        dcp_times = [x["seconds"] for x in results[w]["DCP"]]
        for name in MODES:
            runs = results[w][name]
            times = [x["seconds"] for x in runs]
            read = statistics.median(x["read"] for x in runs)
            share = max(x["max_rank_read_share"] for x in runs)
            peak = max(x["peak_over_largest"] for x in runs)
            ratio = statistics.median(a / b for a, b in zip(times, dcp_times, strict=True))
            row = {
                "world": w,
                "reader": name,
                "seconds": statistics.median(times),
                "read_bytes": read,
                "read_over_state": read / total,
                "max_rank_read_over_share": share,
                "max_rank_peak_over_largest_tensor": peak,
                "time_over_dcp": ratio,
            }
            rows.append(row)
            print(
                f"| {w} ranks | {name} | {row['seconds'] * 1000:.0f} ms | {read / MiB:.0f} MiB | "
                f"{read / total:.2f} x | {share:.3f} x | {peak:.2f} x | {ratio:.2f} x |"
            )
    doc = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "state_bytes": total,
        "tensors": args.tensors,
        "side": args.side,
        "rounds": args.rounds,
        "rows": rows,
        "raw": {str(w): results[w] for w in worlds},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
