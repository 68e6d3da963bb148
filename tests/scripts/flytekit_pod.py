"""One attempt of a flytekit task with asynccp.flytekit, run as a Flyte pod runs it.

    python flytekit_pod.py ROOT K [PREVIOUS]

``setup_execution`` with checkpoint path ``ROOT/attempt-K`` (and ``ROOT/attempt-PREVIOUS``
as the previous attempt's), then the task's ``dispatch_execute``. The task prints
``resumed N``, writes checkpoints 1, 2, ... and, after 50 of them, prints ``saved N``
and computes for an hour without saving: only a signal ends it.
"""

from __future__ import annotations

import sys
import time

from flytekit import current_context, task
from flytekit.bin.entrypoint import setup_execution
from flytekit.core.type_engine import TypeEngine

import asynccp.flytekit


# The plugin's default keep=3: the test reads the attempt's last three steps back.
@task(task_config=asynccp.flytekit.Checkpointing(grace=10))
def long_job(saves: int) -> int:
    cp = current_context().checkpoint
    prev = cp.read()
    start = int(prev) if prev else 0
    print(f"resumed {start}", flush=True)
    for i in range(start, start + saves):
        cp.write(b"%d" % (i + 1))
    print(f"saved {start + saves}", flush=True)
    time.sleep(3600)  # a long computation between saves
    return start


def main() -> None:
    root, k = sys.argv[1], int(sys.argv[2])
    previous = f"{root}/attempt-{sys.argv[3]}" if len(sys.argv) > 3 else None
    with setup_execution(
        raw_output_data_prefix=f"{root}/raw",
        checkpoint_path=f"{root}/attempt-{k}",
        prev_checkpoint=previous,
    ) as ctx:
        inputs = TypeEngine.dict_to_literal_map(ctx, {"saves": 50}, {"saves": int})
        long_job.dispatch_execute(ctx, inputs)


if __name__ == "__main__":
    main()
