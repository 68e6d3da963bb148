"""A synchronous training loop on ``asynccp.sync.Checkpointer``, to be sent SIGTERM.

    python sync_loop.py LOCATION STEPS

Resumes from the newest checkpoint, saves ``STEPS`` steps of 16 MiB of state (printing
``staged <step> <done>`` once each save returned: staged, maybe not yet committed),
then waits on stdin. The test sends SIGTERM there: the block's exit must flush what
was staged and the process exit with 75 (``asynccp.Preempted``).
"""

from __future__ import annotations

import sys

import numpy as np

import asynccp
import asynccp.sync


def main() -> None:
    location, steps = sys.argv[1], int(sys.argv[2])
    weights = np.zeros(4 << 20, np.float32)  # 16 MiB
    with asynccp.sync.Checkpointer(location, grace=60) as cp:
        found = cp.load_latest(lambda ckpt: ckpt.load_into({"w": weights, "step": 0}))
        start = found[0].step + 1 if found else 0
        print(f"resumed {start}", flush=True)
        for step in range(start, start + steps):
            weights += 1.0
            handle = cp.save(step, asynccp.State({"w": weights, "step": step}))
            print(f"staged {step} {handle.done()}", flush=True)
        sys.stdin.readline()  # SIGTERM arrives here
        print("not reached", flush=True)


if __name__ == "__main__":
    main()
