"""A training loop that checkpoints every step, gets interrupted, and resumes.

    python examples/train_loop.py --crash-at 60    # dies hard at step 60 (like a lost spot VM)
    python examples/train_loop.py                  # resumes after the newest committed step

The "model" is a numpy array nudged each step; its state and the step's loss are
saved without stalling the loop. ``--crash-at`` kills the process with ``os._exit``:
no flush, no cleanup — whatever was committed before is what the next run resumes from.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import numpy as np

import asynccp


async def train(location: str, steps: int, crash_at: int | None) -> None:
    async with asynccp.Checkpointer(location, keep=3, limits=asynccp.Limits(max_pending=2)) as cp:

        async def load(ckpt: asynccp.Checkpoint) -> np.ndarray:
            return np.frombuffer(await ckpt.read("weights"), dtype=np.float32).copy()

        # the newest checkpoint that loads (a corrupt one is skipped, with a warning)
        found = await cp.load_latest(load)
        if found is None:
            weights = np.zeros(1 << 18, dtype=np.float32)  # 1 MiB of "model"
            start = 0
            print(f"no checkpoint in {cp.location}: starting from scratch")
        else:
            prev, weights = found
            start = prev.step + 1
            print(f"resuming from step {prev.step} (loss {prev.metadata['loss']:.4f})")
        if start >= steps:
            print(
                f"{cp.location} is already past the requested {steps} steps "
                f"(step {start - 1} is committed): nothing to do"
            )
            return
        for step in range(start, steps):
            weights += 0.01 * (1.0 - weights)  # a "gradient step"
            loss = float(np.mean((1.0 - weights) ** 2))
            if crash_at is not None and step == crash_at:
                print(f"crashing at step {step} (simulated pre-emption)", flush=True)
                os._exit(137)
            # returns once the array is copied; the upload runs in the background
            await cp.save(step, {"weights": weights}, metadata={"loss": loss})
        print(
            f"done: {steps} steps, final loss {loss:.4f}; saves stalled the loop "
            f"{cp.stats.stall_seconds * 1e3:.1f} ms in total"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--location",
        default="checkpoints/train_loop",
        help="path or URL (default: ./checkpoints/train_loop)",
    )
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--crash-at", type=int, default=None)
    args = ap.parse_args()
    if args.steps < 1:
        sys.exit("--steps must be >= 1")
    anyio.run(train, args.location, args.steps, args.crash_at)


if __name__ == "__main__":
    main()
