"""Tasks that ``pyflyte-execute`` runs in tests/test_flytekit_compat.py, as a Flyte pod
runs a task: ``pyflyte-execute ... -- task-module flytekit_tasks task-name <task>``.

``plain_counter`` is a flytekit task without the plugin (flytekit's own
``SyncCheckpoint``); ``counter`` is the same body with ``asynccp.flytekit``. Both count
from where the previous checkpoint left off to ``n``, writing each count, and fail with
a ``FlyteRecoverableException`` at ``fail_at`` (unless they resumed there); they return
where they started.
"""

from __future__ import annotations

from typing import Any

from flytekit import current_context, task
from flytekit.exceptions.user import FlyteRecoverableException

import asynccp.flytekit


def count(cp: Any, n: int, fail_at: int) -> int:
    prev = cp.read()
    start = int(prev) if prev else 0
    for i in range(start, n):
        if i == fail_at and i > start:
            raise FlyteRecoverableException(f"failed at iteration {i}")
        cp.write(b"%d" % (i + 1))
    return start


@task
def plain_counter(n: int, fail_at: int) -> int:
    return count(current_context().checkpoint, n, fail_at)


@task(task_config=asynccp.flytekit.Checkpointing(backoff=0))
def counter(n: int, fail_at: int) -> int:
    return count(current_context().checkpoint, n, fail_at)
