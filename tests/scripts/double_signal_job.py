"""A supervised job for the second-signal tests (tests/test_preemption.py)::

    python double_signal_job.py --location LOCATION [--gate] [--backend asyncio|trio]

Saves small checkpoints in a loop under ``asynccp.supervise`` on ``LOCATION``, and
prints ``ready`` once the first one has committed (the signal may then be sent). A
SIGTERM or SIGINT pre-empts it: it flushes and exits with code 75 by leaving
``asynccp.Preempted`` uncaught, as a real job does.

With ``--gate`` it prints ``preempted`` once ``supervise`` has raised ``Preempted``
(its signal handling is over) and waits for a line on stdin before letting the exit go
on, so that a test can send the next signal exactly in that window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

import asynccp


async def job(cp: asynccp.Checkpointer) -> None:
    await (await cp.save(0, b"first"))
    print("ready", flush=True)
    step = 1
    while True:  # keep something staged, so that the pre-emption has a flush to do
        await cp.save(step, step.to_bytes(8, "little") * 4096)
        step += 1
        await anyio.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--location", type=Path, required=True)
    parser.add_argument("--gate", action="store_true")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    try:
        anyio.run(asynccp.supervise, job, args.location, backend=args.backend)
    except asynccp.Preempted:
        if args.gate:
            print("preempted", flush=True)
            sys.stdin.readline()
        raise


if __name__ == "__main__":
    main()
