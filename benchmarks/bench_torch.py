"""asynccp against PyTorch's torch.distributed.checkpoint.async_save, one process, same disk.

    python benchmarks/bench_torch.py [--sizes 1,16,64] [--rounds 5] [--json out.json]

Both save a float32 tensor that the loop changes right after the save returns, so
both must snapshot it: DCP stages a CPU copy then writes it from a thread
(``FileSystemWriter``, files fsynced by default); asynccp copies the buffer (one copy)
and commits it durably. ``torch.save`` (synchronous, no fsync) is the sync baseline.
Restores: ``dcp.load`` into a preallocated tensor vs ``asynccp`` ``read()``.
Skips with a message when torch is not installed (``pip install torch==2.13.0``).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import warnings
from pathlib import Path

import _common as c

try:
    import torch
    import torch.distributed.checkpoint as dcp
except ImportError:
    print("torch is not installed: skipping (pip install torch==2.13.0)")
    sys.exit(0)

# Single process: DCP warns that torch.distributed is not initialised; that is the point.
warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")


def dcp_round(where: Path, t: torch.Tensor, saves: int) -> c.Round:
    r = c.Round(nbytes=saves * t.nbytes)
    futures = []
    t0 = time.perf_counter()
    for i in range(saves):
        s = time.perf_counter()
        futures.append(dcp.async_save({"w": t}, checkpoint_id=str(where / f"step-{i}")))
        r.stalls.append(time.perf_counter() - s)
        t.add_(1.0)
    for f in futures:
        f.result()
    r.seconds = time.perf_counter() - t0
    out = {"w": torch.empty_like(t)}
    t0 = time.perf_counter()
    dcp.load(out, checkpoint_id=str(where / f"step-{saves - 1}"))
    r.restore_seconds = time.perf_counter() - t0
    return r


def torch_save_round(where: Path, t: torch.Tensor, saves: int) -> c.Round:
    where.mkdir(parents=True)
    r = c.Round(nbytes=saves * t.nbytes)
    t0 = time.perf_counter()
    for i in range(saves):
        s = time.perf_counter()
        torch.save({"w": t}, where / f"step-{i}.pt")
        r.stalls.append(time.perf_counter() - s)
        t.add_(1.0)
    r.seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.load(where / f"step-{saves - 1}.pt")
    r.restore_seconds = time.perf_counter() - t0
    return r


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    root, cleanup = c.workdir(args.dir)
    counter = itertools.count()

    def sub(name: str) -> Path:
        return root / f"{name}-{next(counter)}"

    results, rows = [], []
    try:
        for size in c.sizes(args.sizes):
            t = torch.randn(size // 4)
            arr = t.numpy()  # shares memory with t: the buffer asynccp snapshots

            runs = {
                "dcp_async_save": lambda _i, t=t: dcp_round(sub("dcp"), t, args.saves),
                "asynccp": lambda _i, t=t, arr=arr, size=size: asyncio.run(
                    c.asynccp_round(
                        sub("a"), lambda _: arr, lambda _: t.add_(1.0), args.saves, size
                    )
                ),
                "torch_save": lambda _i, t=t: torch_save_round(sub("ts"), t, args.saves),
            }
            res = c.interleaved(args.rounds, runs)
            a, d = res["asynccp"], res["dcp_async_save"]
            doc = {
                "size": size,
                **c.medians(res),
                "stall_ratio": c.ratio([r.stall_ms for r in a], [r.stall_ms for r in d]),
                "throughput_ratio": c.ratio([r.mib_s for r in a], [r.mib_s for r in d]),
            }
            results.append(doc)
            s, tp, rs = doc["stall_ms"], doc["throughput_mib_s"], doc["restore_ms"]
            rows.append([
                f"{size // c.MiB} MiB float32 tensor", "caller stall per save",
                f"{s['asynccp']:.1f} ms", f"{s['dcp_async_save']:.1f} ms",
                f"{s['torch_save']:.1f} ms", f"{doc['stall_ratio']:.2f} x",
            ])  # fmt: skip
            rows.append([
                "", "throughput to commit", f"{tp['asynccp']:.0f} MiB/s",
                f"{tp['dcp_async_save']:.0f} MiB/s", f"{tp['torch_save']:.0f} MiB/s (no fsync)",
                f"{doc['throughput_ratio']:.2f} x",
            ])  # fmt: skip
            rows.append([
                "", "restore (read newest)", f"{rs['asynccp']:.1f} ms",
                f"{rs['dcp_async_save']:.1f} ms", f"{rs['torch_save']:.1f} ms",
                f"{rs['dcp_async_save'] / rs['asynccp']:.2f} x faster",
            ])  # fmt: skip
    finally:
        cleanup()
    head = ["payload", "measure", "asynccp", "DCP async_save", "torch.save (sync)", "ratio"]
    c.print_table(head, rows)
    c.dump(args.json, {"peer": "torch", "torch": torch.__version__, "cases": results})


if __name__ == "__main__":
    main()
