"""Flyte's intra-task checkpoint example (``use_checkpoint``), on asynccp, with real retries.

Flyte's version retries only on its platform; run locally, "the checkpoint is stored,
but not used since retries are not supported". Here ``asynccp.supervise`` runs the
retries itself: the job fails deterministically every ``failure_interval`` iterations
past its start, each attempt resumes from the newest committed checkpoint, and the job
finishes within ``RETRIES`` retries::

    python examples/seed_checkpoint.py                 # a fresh temp dir, removed after
    python examples/seed_checkpoint.py --location ./ck # keep the checkpoints (run it twice)
    python examples/seed_checkpoint.py --backend trio

It prints one line per attempt (where it resumed) and per retry, then the result.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

import anyio

import asynccp

RETRIES = 3


async def use_checkpoint(cp: asynccp.Checkpointer, n_iterations: int) -> int:
    prev = await cp.read()  # the newest checkpoint's payload that verifies, or None
    start = 0
    if prev:
        start = int(prev.decode())
    print(f"attempt {cp.attempt}: resuming at iteration {start}", flush=True)

    # Fail every `failure_interval` iterations past the start, so the job completes
    # within RETRIES retries (n_iterations must be a multiple of RETRIES for that).
    failure_interval = n_iterations * 1.0 / RETRIES
    # The seed starts from i = 0, which returns 0 when run again on a finished location.
    i = start - 1 if start else 0
    for i in range(start, n_iterations):
        # simulate a deterministic failure, for demonstration
        if i > start and i % failure_interval == 0:
            raise asynccp.RecoverableError(
                f"Failed at iteration {i} (started at {start}), failure_interval {failure_interval}"
            )
        # save progress: returns once staged; the upload runs in the background, and the
        # supervisor flushes it before the next attempt starts
        await cp.write(f"{i + 1}".encode())
    return i


def report(event: asynccp.RetryEvent) -> None:
    print(
        f"retry: attempt {event.attempt} failed ({event.error}); attempt {event.attempt + 1} "
        f"resumes after checkpoint step {event.resume_step} in {event.delay:.2f} s",
        flush=True,
    )


async def main(location: str, n_iterations: int) -> int:
    # The decorator form; `asynccp.supervise(fn, location, ...)` is the same as a call.
    job = asynccp.checkpointed(
        location,
        retries=RETRIES,
        backoff=asynccp.Backoff(initial=0.05, max=0.5, jitter=0.05),
        on_retry=report,
    )(use_checkpoint)
    return await job(n_iterations)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--location", help="where checkpoints go (default: a fresh temp dir)")
    parser.add_argument("--iterations", type=int, default=12, help="a multiple of RETRIES")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    location = args.location or tempfile.mkdtemp(prefix="asynccp-seed-")
    try:
        result = anyio.run(main, location, args.iterations, backend=args.backend)
    except asynccp.RetriesExhausted as e:
        print(f"gave up after {e.attempts} attempts: {e.__cause__}", file=sys.stderr)
        return 1
    finally:
        if args.location is None:
            shutil.rmtree(location, ignore_errors=True)
    print(f"result: {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
