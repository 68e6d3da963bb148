"""Caller stall of saving 64 MiB, against a synchronous write of the same bytes.

Measured in one run, rounds interleaved so machine drift hits every variant alike:

* ``sync write``: what a synchronous checkpointer does on the caller's path — write the
  bytes to the same local directory and fsync (durable, like asynccp's commits);
* ``memory copy``: ``bytes(bytearray)``, the floor for snapshotting a mutable buffer;
* ``save(bytes)`` / ``save(bytearray)``: the time ``await cp.save()`` keeps the caller.

Run: ``python benchmarks/stall_64mib.py [--rounds 7] [--mib 64] [--dir PATH]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio

import asynccp


def sync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def main(rounds: int, mib: int, root: Path) -> None:
    size = mib << 20
    payload = os.urandom(size)
    mutable = bytearray(payload)
    times: dict[str, list[float]] = {k: [] for k in ("sync", "copy", "bytes", "bytearray")}
    async with asynccp.Checkpointer(
        root / "ckpt", limits=asynccp.Limits(2, 4 * size), keep=2
    ) as cp:
        step = 0
        for r in range(rounds):
            t = time.perf_counter()
            sync_write(root / f"sync-{r}.bin", payload)
            times["sync"].append(time.perf_counter() - t)
            (root / f"sync-{r}.bin").unlink()

            t = time.perf_counter()
            copy = bytes(mutable)
            times["copy"].append(time.perf_counter() - t)
            del copy

            await cp.flush()  # each save starts with room in the queue
            t = time.perf_counter()
            h = await cp.save(step, payload)
            times["bytes"].append(time.perf_counter() - t)
            await h
            step += 1

            t = time.perf_counter()
            h = await cp.save(step, mutable)
            times["bytearray"].append(time.perf_counter() - t)
            await h
            step += 1

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{mib} MiB, {rounds} interleaved rounds, medians (local dir {root}):")
    print(f"  sync write + fsync      {med['sync'] * 1e3:9.2f} ms")
    print(f"  memory copy (bytes())   {med['copy'] * 1e3:9.2f} ms")
    print(
        f"  save(bytes) stall       {med['bytes'] * 1e3:9.3f} ms  "
        f"= {med['bytes'] / med['sync']:.4%} of the sync write  (target <= 1%)"
    )
    print(
        f"  save(bytearray) stall   {med['bytearray'] * 1e3:9.2f} ms  "
        f"= {med['bytearray'] / med['copy']:.2f}x the memory copy  (target <= 1.5x), "
        f"{med['bytearray'] / med['sync']:.1%} of the sync write"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir by default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        anyio.run(main, args.rounds, args.mib, Path(d))
