"""The floor under a tiny local checkpoint: what one costs the raw loop, what a hand-over
to a worker thread costs, and where asynccp's time per checkpoint goes.

    python benchmarks/floor_small.py [--dir PATH] [--saves 20000] [--rounds 3]

Prints, per round (medians at the end), in microseconds:

- ``raw``: one write of 16 bytes to a temporary file and its rename over the checkpoint
  file (``bench_small.py``'s ``local`` baseline), wall time and the process's user and
  system CPU per checkpoint;
- ``asynccp``: one checkpoint of 16 bytes, ``policy="block"``, ``keep=3``,
  ``durable=False``, default ``Limits`` (``bench_small.py``'s ``local`` case), the same
  three figures;
- ``hop (bare)``: a round trip to an idle thread and back to the event loop with
  nothing done there (``queue.SimpleQueue`` in, ``call_soon_threadsafe`` out), the
  least any design that keeps file system calls off the event loop pays per hand-over;
- ``hop (anyio)``: the same through ``anyio.to_thread.run_sync``.

A checkpoint that costs more user CPU than the raw loop's whole checkpoint, or a
hand-over per few checkpoints that costs as much, sets a ceiling on the ``local`` ratio
that no file system makes up for.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as c  # noqa: E402
from bench_small import asynccp_tiny, raw_tiny  # noqa: E402


def per_checkpoint(run: Callable[[], object], n: int) -> tuple[float, float, float]:
    """Wall, user and system microseconds per checkpoint of ``run()`` (``n`` of them)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    scale = 1e6 / n
    return (
        wall * scale,
        (after.ru_utime - before.ru_utime) * scale,
        (after.ru_stime - before.ru_stime) * scale,
    )


async def hop_bare(n: int) -> float:
    """Microseconds per round trip to a plain thread and back."""
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def serve() -> None:
        while (future := jobs.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        started = time.perf_counter()
        for _ in range(n):
            future = loop.create_future()
            jobs.put(future)
            await future
        return (time.perf_counter() - started) / n * 1e6
    finally:
        jobs.put(None)
        thread.join()


async def hop_anyio(n: int) -> float:
    """Microseconds per ``anyio.to_thread.run_sync`` of nothing."""
    await anyio.to_thread.run_sync(lambda: None)  # (the pool's thread started)
    started = time.perf_counter()
    for _ in range(n):
        await anyio.to_thread.run_sync(lambda: None)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temporary folder)")
    parser.add_argument("--saves", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="asynccp-floor-", dir=args.dir))
    n = args.saves
    print(f"{n:,} checkpoints of 16 bytes in {root}: {c.file_system(root)}")
    rows: dict[str, list[tuple[float, ...]]] = {}
    try:
        for r in range(args.rounds):
            raw_dir, mine_dir = root / f"raw{r}", root / f"a{r}"
            raw = per_checkpoint(partial(raw_tiny, raw_dir, n, durable=False), n)
            mine = per_checkpoint(
                partial(anyio.run, partial(asynccp_tiny, mine_dir, n, durable=False)), n
            )
            bare = anyio.run(hop_bare, n)
            hop = anyio.run(hop_anyio, n)
            for name, figures in (
                ("raw", raw),
                ("asynccp", mine),
                ("hop (bare)", (bare,)),
                ("hop (anyio)", (hop,)),
            ):
                rows.setdefault(name, []).append(figures)
            print(
                f"round {r + 1}: raw {raw[0]:.1f} µs (user {raw[1]:.1f}, sys {raw[2]:.1f}); "
                f"asynccp {mine[0]:.1f} µs (user {mine[1]:.1f}, sys {mine[2]:.1f}); "
                f"hop {bare:.1f} µs bare, {hop:.1f} µs anyio",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n| per checkpoint (µs, medians) | wall | user CPU | system CPU |")
    print("|---|---|---|---|")
    for name, runs in rows.items():
        cols = [statistics.median(col) for col in zip(*runs, strict=True)]
        cells = [f"{v:.1f}" for v in cols] + [""] * (3 - len(cols))
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
