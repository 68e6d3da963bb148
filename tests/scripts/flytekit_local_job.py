"""A flytekit task with asynccp.flytekit run locally, for the SIGTERM tests
(tests/test_plugin_signals.py)::

    python flytekit_local_job.py TASK MIB          # asyncio.run, as a script runs it
    pyflyte run flytekit_local_job.py TASK --mib MIB

``TASK`` is ``async_block``, ``async_latest`` (an ``async def`` task, with that policy)
or ``def_block`` (a ``def`` task; as a script, called from code running under
``asyncio.run``). The task prints ``location L`` (its checkpoint location), then writes
up to ``WRITES`` checkpoints of ``MIB`` MiB through flytekit's
``current_context().checkpoint.write``, printing ``wrote N`` once write ``N`` has
returned; then it computes for an hour without saving. Write ``N`` is step ``N - 1``,
its payload ``N`` as 8 big-endian bytes, repeated. Only a signal ends it.
"""

from __future__ import annotations

import asyncio
import sys
import time

from flytekit import current_context, task

import asynccp
import asynccp.flytekit

WRITES = 10
# keep=None: the test checks every write that returned committed (the plugin keeps 3
# by default, and retention would take the older ones).


def payload(n: int, mib: int) -> bytes:
    """Write ``n``'s bytes: ``n`` as 8 big-endian bytes, repeated to ``mib`` MiB."""
    return n.to_bytes(8, "big") * (mib << 17)


@task(task_config=asynccp.flytekit.Checkpointing(policy="block", keep=None))
async def async_block(mib: int) -> int:
    cp = current_context().checkpoint
    print(f"location {asynccp.current().location}", flush=True)
    for n in range(1, WRITES + 1):
        cp.write(payload(n, mib))
        print(f"wrote {n}", flush=True)
        await asyncio.sleep(0)  # the loop's turn: the bridge hands writes over meanwhile
    await asyncio.sleep(3600)  # a long computation between saves
    return WRITES


@task(task_config=asynccp.flytekit.Checkpointing(policy="latest", keep=None))
async def async_latest(mib: int) -> int:
    cp = current_context().checkpoint
    print(f"location {asynccp.current().location}", flush=True)
    for n in range(1, WRITES + 1):
        cp.write(payload(n, mib))
        print(f"wrote {n}", flush=True)
        await asyncio.sleep(0)
    await asyncio.sleep(3600)
    return WRITES


@task(task_config=asynccp.flytekit.Checkpointing(policy="block", keep=None))
def def_block(mib: int) -> int:
    cp = current_context().checkpoint
    print(f"location {asynccp.current().location}", flush=True)
    for n in range(1, WRITES + 1):
        cp.write(payload(n, mib))
        print(f"wrote {n}", flush=True)
    time.sleep(3600)
    return WRITES


TASKS = {"async_block": async_block, "async_latest": async_latest, "def_block": def_block}


async def main(name: str, mib: int) -> int:
    """Call the task from code running on an event loop (a def task's call blocks it)."""
    out = TASKS[name](mib=mib)
    return await out if asyncio.iscoroutine(out) else out  # type: ignore[no-any-return]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
