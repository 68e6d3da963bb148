"""Save checkpoints in a loop, as a training job would, until killed (or N steps are done).

Run by tests/test_crash.py as a subprocess, which SIGKILLs it at arbitrary moments::

    python crash_saver.py LOCATION [--steps N]

LOCATION is a local directory or an ``s3://bucket/prefix`` URL (endpoint and
credentials come from the usual ``AWS_*`` environment variables). The process
resumes after the latest checkpoint already at LOCATION, prints ``start <step>``,
then ``committed <step>`` (flushed) each time a save handle resolves, and ``done``
when ``--steps`` were saved and the checkpointer closed. The payload of each step is
derived from the step (:func:`payload_for`), so a reader can check every byte.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys

import anyio

import asynccp

MiB = 1 << 20


def payload_size(step: int) -> int:
    """Between 1 and 4 MiB, varying with the step."""
    return MiB + (step * 654_321) % (3 * MiB)


def payload_for(step: int) -> bytes:
    """The exact bytes saved at ``step``."""
    return random.Random(step).randbytes(payload_size(step))


async def report(handle: asynccp.SaveHandle) -> None:
    """Print the step once its checkpoint committed (the handle resolved)."""
    ckpt = await handle
    print(f"committed {ckpt.step}", flush=True)


async def main(location: str, steps: int | None) -> None:
    # keep= and orphan_grace=0 make retention and orphan collection run under the kills too
    async with asynccp.Checkpointer(
        location,
        limits=asynccp.Limits(max_pending=2),
        retention=asynccp.Retention(keep=4, orphan_grace=0),
    ) as cp:
        prev = await cp.latest()
        start = prev.step + 1 if prev is not None else 0
        print(f"start {start}", flush=True)
        counter = itertools.count(start) if steps is None else range(start, start + steps)
        async with anyio.create_task_group() as tg:
            for step in counter:
                handle = await cp.save(step, payload_for(step), metadata={"step": step})
                tg.start_soon(report, handle)
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    anyio.run(main, args.location, args.steps)
    sys.exit(0)
