"""One shard of a sharded job: save part SHARD of SHARDS of every step, until done or killed.

Run by tests/test_shard_fleet.py (and by benchmarks/bench_shards.py) as a subprocess::

    ASYNCCP_GENERATION=<launch> python shard_saver.py LOCATION SHARD SHARDS --steps N --seed S

LOCATION is a local directory or an ``s3://bucket/prefix`` URL (endpoint and credentials
from the usual ``AWS_*`` environment variables); the generation comes from the
environment, as it would from a launcher. The process resumes after the newest complete
step at LOCATION, prints ``start <step>``, then ``part <step>`` (flushed) each time a
save handle resolves (this part is recorded), and ``done`` once its checkpointer closed.
Each part's bytes, of a random size, follow from (seed, step, shard):
:func:`payload_for`, so a reader can check every byte.
"""

from __future__ import annotations

import argparse
import random
import sys

import anyio

import asynccp

KiB = 1 << 10


def payload_for(seed: int, step: int, shard: int, *, max_size: int = 256 * KiB) -> bytes:
    """The exact bytes shard ``shard`` saves at ``step`` (0 to ``max_size`` bytes)."""
    rng = random.Random(f"{seed}/{step}/{shard}")
    return rng.randbytes(rng.randrange(max_size + 1))


async def report(handle: asynccp.SaveHandle) -> None:
    """Print the step once this part is recorded (its handle resolved)."""
    part = await handle
    print(f"part {part.step}", flush=True)


async def main(args: argparse.Namespace) -> None:
    async with asynccp.Checkpointer(
        args.location,
        sharding=asynccp.Sharding(args.shard, args.shards),
        limits=asynccp.Limits(max_pending=3),
        retention=asynccp.Retention(orphan_grace=0),
    ) as cp:
        prev = await cp.latest()
        start = prev.step + 1 if prev is not None else 0
        print(f"start {start}", flush=True)
        async with anyio.create_task_group() as tg:
            for step in range(start, args.steps):
                payload = payload_for(args.seed, step, args.shard, max_size=args.max_size)
                handle = await cp.save(step, {"part": payload}, metadata={"shard": args.shard})
                tg.start_soon(report, handle)
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location")
    parser.add_argument("shard", type=int)
    parser.add_argument("shards", type=int)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-size", type=int, default=256 * KiB)
    anyio.run(main, parser.parse_args())
    sys.exit(0)
