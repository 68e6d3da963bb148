"""A Flyte 2 task with asynccp.flyte, for the SIGTERM tests (tests/test_plugin_signals.py)::

    python flyte_pod_job.py ROOT TASK MIB     # one attempt, as a pod runs it
    python flyte_pod_job.py ROOT TASK MIB --local

``TASK`` is ``async_job`` (an ``async def`` task, saving with ``await cp.save``) or
``def_job`` (a ``def`` task, saving with ``cp.save_sync``). The task prints
``location L`` (its checkpoint location), saves up to ``WRITES`` checkpoints of ``MIB``
MiB through ``flyte.ctx().checkpoint``, printing ``wrote N`` once save ``N`` has
returned, then computes for an hour without saving. Save ``N`` is step ``N - 1``, its
payload ``N`` as 8 big-endian bytes, repeated. Only a signal ends it.

As a pod runs it: Flyte's per-attempt runner (``direct_dispatch``) under ``asyncio.run``
in the main thread, as Flyte's ``a0`` entry point runs it, with checkpoint path
``ROOT/attempt-0``. With ``--local``: Flyte 2's local run mode (``flyte.run``), raw data
path ``ROOT``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import flyte
from flyte._internal.runtime import convert
from flyte._internal.runtime.entrypoints import direct_dispatch
from flyte.models import ActionID, CheckpointPaths, RawDataPath

import asynccp
import asynccp.flyte

WRITES = 10
env = flyte.TaskEnvironment(name="asynccp_signal_tests")


def payload(n: int, mib: int) -> bytes:
    """Save ``n``'s bytes: ``n`` as 8 big-endian bytes, repeated to ``mib`` MiB."""
    return n.to_bytes(8, "big") * (mib << 17)


@asynccp.flyte.checkpointed(keep=None)  # every write is checked: none retired
@env.task
async def async_job(mib: int) -> int:
    cp = flyte.ctx().checkpoint
    print(f"location {asynccp.current().location}", flush=True)
    for n in range(1, WRITES + 1):
        await cp.save(payload(n, mib))
        print(f"wrote {n}", flush=True)
    await asyncio.sleep(3600)  # a long computation between saves
    return WRITES


@asynccp.flyte.checkpointed(keep=None)  # every write is checked: none retired
@env.task
def def_job(mib: int) -> int:
    cp = flyte.ctx().checkpoint
    print(f"location {asynccp.current().location}", flush=True)
    for n in range(1, WRITES + 1):
        cp.save_sync(payload(n, mib))
        print(f"wrote {n}", flush=True)
    time.sleep(3600)
    return WRITES


TASKS = {"async_job": async_job, "def_job": def_job}


async def pod(root: str, task: object, mib: int) -> None:
    args = await convert.convert_from_native_to_inputs(task.native_interface, mib=mib)  # type: ignore[attr-defined]
    await direct_dispatch(
        task,  # type: ignore[arg-type]
        action=ActionID(name="a0", run_name="run"),
        raw_data_path=RawDataPath(path=f"{root}/raw"),
        controller=None,  # type: ignore[arg-type]  # the task launches no sub-tasks
        version="v1",
        output_path=f"{root}/out",
        run_base_dir=f"{root}/base",
        checkpoint_paths=CheckpointPaths(
            prev_checkpoint_path=None, checkpoint_path=f"{root}/attempt-0"
        ),
        inputs=args,
    )


def main() -> None:
    root, task, mib = sys.argv[1], TASKS[sys.argv[2]], int(sys.argv[3])
    if "--local" in sys.argv[4:]:
        flyte.init()
        flyte.with_runcontext(mode="local", raw_data_path=root).run(task, mib)
    else:
        asyncio.run(pod(root, task, mib))


if __name__ == "__main__":
    main()
