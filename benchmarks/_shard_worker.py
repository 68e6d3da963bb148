"""One writer process of benchmarks/bench_shards.py, driven line by line on stdin.

    ASYNCCP_GENERATION=g python _shard_worker.py LOCATION SIZE [SHARD SHARDS]

Without SHARD and SHARDS it is a single writer (``Checkpointer(location)``); with them,
part SHARD of SHARDS. It prints ``ready`` once its checkpointer is open, then answers:

- ``step K``: save step K (SIZE bytes), wait for its handle; print
  ``step K <t_save> <t_done>`` (``time.time()``: the processes share the clock);
- ``burst K N``: save steps K..K+N-1 back to back, wait for every handle; print
  ``burst <t_first_save> <t_last_done>``;
- ``quit``: close the checkpointer (flushing) and exit.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
import anyio.to_thread

import asynccp


async def main(location: str, size: int, shard: int | None, shards: int | None) -> None:
    payload = os.urandom(size)  # bytes: kept as is, zero-copy
    sharding = None if shard is None or shards is None else asynccp.Sharding(shard, shards)
    async with asynccp.Checkpointer(
        location, limits=asynccp.Limits(8, 1 << 31), sharding=sharding
    ) as cp:
        print("ready", flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            if line[0] == "step":
                t0 = time.time()
                await (await cp.save(int(line[1]), {"data": payload}))
                print(f"step {line[1]} {t0!r} {time.time()!r}", flush=True)
            elif line[0] == "burst":
                first, n = int(line[1]), int(line[2])
                t0 = time.time()
                handles = [await cp.save(first + i, {"data": payload}) for i in range(n)]
                for h in handles:
                    await h
                print(f"burst {t0!r} {time.time()!r}", flush=True)


if __name__ == "__main__":
    loc, size = sys.argv[1], int(sys.argv[2])
    r, n = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (None, None)
    anyio.run(main, loc, size, r, n)
