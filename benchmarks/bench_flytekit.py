"""asynccp against flytekit's SyncCheckpoint (Flyte's own checkpointer), same local disk.

    python benchmarks/bench_flytekit.py [--sizes 1,16,64] [--rounds 5] [--json out.json]

SyncCheckpoint.write(b) writes the bytes to a temporary file and copies it to the
checkpoint destination through flytekit's FileAccessProvider, on the caller's thread,
without fsync. asynccp is measured twice: with its default durable local commits
(payload and manifest fsynced) and with ``durable=False``, the like-for-like setting.
Skips with a message when flytekit is not installed (``pip install flytekit``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import _common as c

try:
    from flytekit.core.checkpointer import SyncCheckpoint
except ImportError:
    print("flytekit is not installed: skipping (pip install flytekit)")
    sys.exit(0)


def flyte_round(where: Path, data: bytes, saves: int) -> c.Round:
    r = c.Round(nbytes=saves * len(data))
    cp = SyncCheckpoint(checkpoint_dest=str(where))
    t0 = time.perf_counter()
    for _ in range(saves):
        s = time.perf_counter()
        cp.write(data)
        r.stalls.append(time.perf_counter() - s)
    r.seconds = time.perf_counter() - t0
    reader = SyncCheckpoint(checkpoint_dest=str(where) + "-next", checkpoint_src=str(where))
    t0 = time.perf_counter()
    got = reader.read()
    r.restore_seconds = time.perf_counter() - t0
    assert got is not None and len(got) == len(data)
    return r


def flyte_small_saves(where: Path, n: int, budget: float = 2.0) -> float:
    """Flyte's example loop: ``cp.write(f"{i + 1}".encode())``, for ``budget`` seconds at most."""
    cp = SyncCheckpoint(checkpoint_dest=str(where))
    t0 = time.perf_counter()
    i = 0
    while i < n and time.perf_counter() - t0 < budget:
        cp.write(b"%016d" % (i + 1))
        i += 1
    return i / (time.perf_counter() - t0)


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    root, cleanup = c.workdir(args.dir)
    results = []
    rows = []
    counter = itertools.count()

    def sub(name: str) -> Path:
        return root / f"{name}-{next(counter)}"

    try:
        for size in c.sizes(args.sizes):
            data = os.urandom(size)

            def asynccp(durable: bool, data: bytes = data, size: int = size) -> c.Round:
                return asyncio.run(
                    c.asynccp_round(
                        sub("a"), lambda _: data, lambda _: None, args.saves, size, durable=durable
                    )
                )

            runs = {
                "flytekit": lambda _i, data=data: flyte_round(sub("flyte"), data, args.saves),
                "asynccp": lambda _i: asynccp(True),
                "asynccp_nofsync": lambda _i: asynccp(False),
            }
            res = c.interleaved(args.rounds, runs)
            f, a, an = res["flytekit"], res["asynccp"], res["asynccp_nofsync"]
            doc = {
                "size": size,
                **c.medians(res),
                "stall_ratio": c.ratio([r.stall_ms for r in a], [r.stall_ms for r in f]),
                "throughput_ratio_durable": c.ratio([r.mib_s for r in a], [r.mib_s for r in f]),
                "throughput_ratio_nofsync": c.ratio([r.mib_s for r in an], [r.mib_s for r in f]),
            }
            results.append(doc)
            mib = size // c.MiB
            s, t, rs = doc["stall_ms"], doc["throughput_mib_s"], doc["restore_ms"]
            rows.append([
                f"{mib} MiB bytes", "caller stall per save",
                f"{s['asynccp']:.3f} ms", f"{s['flytekit']:.1f} ms",
                f"{doc['stall_ratio'] * 100:.2f} %",
            ])  # fmt: skip
            rows.append([
                "", "throughput to commit (asynccp durable / durable=False)",
                f"{t['asynccp']:.0f} / {t['asynccp_nofsync']:.0f} MiB/s",
                f"{t['flytekit']:.0f} MiB/s (no fsync)",
                f"{doc['throughput_ratio_durable']:.2f} x / "
                f"{doc['throughput_ratio_nofsync']:.2f} x",
            ])  # fmt: skip
            rows.append([
                "", "restore (read newest)", f"{rs['asynccp']:.1f} ms", f"{rs['flytekit']:.1f} ms",
                f"{rs['flytekit'] / rs['asynccp']:.2f} x faster",
            ])  # fmt: skip
        small = c.interleaved(
            args.rounds,
            {
                "flytekit": lambda i: flyte_small_saves(root / f"small-f{i}", 10_000),
                "asynccp": lambda i: asyncio.run(
                    c.asynccp_small_saves(root / f"small-a{i}", 10_000)
                ),
            },
        )
        small_doc = {
            "asynccp_saves_per_s": statistics.median(small["asynccp"]),
            "flytekit_writes_per_s": statistics.median(small["flytekit"]),
            "ratio": c.ratio(small["asynccp"], small["flytekit"]),
        }
        rows.append([
            "16 B counter (seed loop)", "saves per second (asynccp: policy=latest)",
            f"{small_doc['asynccp_saves_per_s']:,.0f}/s",
            f"{small_doc['flytekit_writes_per_s']:,.0f}/s", f"{small_doc['ratio']:.1f} x",
        ])  # fmt: skip
    finally:
        cleanup()
    c.print_table(["payload", "measure", "asynccp", "flytekit SyncCheckpoint", "ratio"], rows)
    c.dump(args.json, {"peer": "flytekit", "cases": results, "small_saves": small_doc})


if __name__ == "__main__":
    main()
