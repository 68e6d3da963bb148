"""A long job that survives pre-emption: stop it, run it again, it goes on where it was.

Send it SIGTERM (what Kubernetes sends before it takes a node away) or press Ctrl-C:
the running step is cancelled, every checkpoint already staged is flushed within the
grace period, and the process exits with code 75 (``asynccp.PREEMPTED_EXIT_CODE``).
Run the same command again and it resumes from the newest committed step::

    python examples/preemptible_job.py --location ./checkpoints/preemptible_job
    ^C                                   # "... pre-empted by SIGINT ..."; echo $? -> 75
    python examples/preemptible_job.py --location ./checkpoints/preemptible_job

It prints ``resume <step|none>`` when an attempt starts, ``staged <step>`` when a
save returns, ``committed <step>`` when that checkpoint's handle resolves, and
``done <step>`` at the end (the tests read these lines).
"""

from __future__ import annotations

import argparse
import functools
import sys

import anyio

import asynccp


async def job(cp: asynccp.Checkpointer, steps: int, size: int, interval: float) -> int:
    found = await cp.load_latest(lambda ckpt: ckpt.read())
    print(f"resume {found[0].step if found else 'none'}", flush=True)
    state = bytearray(size)
    if found is not None:
        state[:] = found[1]
    start = found[0].step + 1 if found else 0

    async def report(handle: asynccp.SaveHandle) -> None:
        try:
            await handle
        except asynccp.CheckpointError as e:
            print(f"failed {handle.step}: {e}", flush=True)
        else:
            print(f"committed {handle.step}", flush=True)

    async with anyio.create_task_group() as tg:
        for step in range(start, steps):
            await anyio.sleep(interval)  # one step of work
            state[:8] = step.to_bytes(8, "little")
            handle = await cp.save(step, state)  # returns once `state` is copied
            print(f"staged {step}", flush=True)
            tg.start_soon(report, handle)
    print(f"done {steps - 1}", flush=True)
    return steps - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--location", default="./checkpoints/preemptible_job")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--size-mb", type=float, default=4.0, help="checkpoint size")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds per step")
    parser.add_argument("--grace", type=float, default=asynccp.DEFAULT_GRACE)
    parser.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)

    async def run() -> int:
        return await asynccp.supervise(
            functools.partial(
                job, steps=args.steps, size=int(args.size_mb * (1 << 20)), interval=args.interval
            ),
            args.location,
            grace=args.grace,
            keep=args.keep,
        )

    # A pre-emption raises asynccp.Preempted, a SystemExit: left uncaught, the process
    # exits with code 75 and no traceback.
    anyio.run(run, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
