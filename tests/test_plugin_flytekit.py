"""asynccp.flytekit on the real flytekit: attempts through its own execution entry points.

A cluster attempt is what a Flyte pod runs: ``setup_execution`` with the attempt's
checkpoint path and the previous attempt's, then the task's ``dispatch_execute``. Here
each attempt gets its own local directory as the platform would give it its own prefix.
Local runs call the task as a Python function, as ``python wf.py`` does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip(
    "flytekit", reason="the flytekit extra is not installed (pip install 'asynccp[flytekit]')"
)

from _child import Child
from flytekit import current_context, task, workflow
from flytekit.bin.entrypoint import setup_execution
from flytekit.core.base_task import PythonTask
from flytekit.core.type_engine import TypeEngine
from flytekit.exceptions.user import (
    FlyteRecoverableException,
    FlyteUserRuntimeException,
)

import asynccp
import asynccp.flytekit
from asynccp.flytekit import Checkpointing

#: What each attempt of the tasks below saw: (task kind, where it resumed, its prefix).
SEEN: list[tuple[str, int, str]] = []


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    SEEN.clear()


# keep=None: these tests look at every step the attempts committed.
@task(retries=3, task_config=Checkpointing(backoff=0, keep=None))
def counter(n: int, fail_at: int, fail_on_start: bool) -> int:
    """Counts to ``n`` through flytekit's checkpoint interface; returns where it resumed."""
    cp = current_context().checkpoint
    prev = cp.read()
    start = int(prev) if prev else 0
    SEEN.append(("def", start, asynccp.current().location))
    if fail_on_start:
        raise FlyteRecoverableException("this attempt dies before it saves anything")
    for i in range(start, n):
        if i == fail_at and i > start:
            raise FlyteRecoverableException(f"failed at iteration {i}")
        cp.write(b"%d" % (i + 1))
    return start


@task(retries=3, task_config=Checkpointing(backoff=0, keep=None))
async def acounter(n: int, fail_at: int, fail_on_start: bool) -> int:
    """The same with asynccp's own API, in an ``async def`` task."""
    cp = asynccp.current()
    assert isinstance(cp, asynccp.Checkpointer)  # the attempt's own, reading the lineage
    prev = await cp.read()
    start = int(prev) if prev else 0
    SEEN.append(("async def", start, cp.location))
    if fail_on_start:
        raise asynccp.RecoverableError("this attempt dies before it saves anything")
    for i in range(start, n):
        if i == fail_at and i > start:
            raise asynccp.RecoverableError(f"failed at iteration {i}")
        await cp.write(b"%d" % (i + 1))
    return start


COUNTERS = pytest.mark.parametrize("counter_task", [counter, acounter], ids=["def", "async_def"])


def attempt(
    counter_task: PythonTask, root: Path, k: int, previous: int | None, **inputs: Any
) -> Any:
    """Attempt ``k`` as a pod runs it: its own checkpoint prefix, the previous one's.

    Returns the task's output, or the error flytekit's entry point would record.
    """
    prev = None if previous is None else str(root / f"attempt-{previous}")
    with setup_execution(
        raw_output_data_prefix=str(root / "raw"),
        checkpoint_path=str(root / f"attempt-{k}"),
        prev_checkpoint=prev,
    ) as ctx:
        types = {name: type(value) for name, value in inputs.items()}
        literals = TypeEngine.dict_to_literal_map(ctx, inputs, types)
        try:
            out = counter_task.dispatch_execute(ctx, literals)
        except FlyteUserRuntimeException as e:
            return e
    return out.literals["o0"].scalar.primitive.value  # type: ignore[no-any-return]


def committed(prefix: Path) -> list[tuple[int, bytes]]:
    """Every checkpoint committed at ``prefix``: (step, payload), oldest first."""

    async def read() -> list[tuple[int, bytes]]:
        async with asynccp.Checkpointer(prefix) as cp:
            return [(c.step, await c.read()) for c in await cp.list()]

    return anyio.run(read)


def assert_recoverable(outcome: object) -> None:
    """flytekit's entry point records this error as recoverable: Flyte retries it."""
    assert isinstance(outcome, FlyteUserRuntimeException), outcome
    assert isinstance(outcome.value, FlyteRecoverableException), repr(outcome.value)


@COUNTERS
def test_attempt_saves_and_fails_then_the_next_resumes(
    counter_task: PythonTask, tmp_path: Path
) -> None:
    first = attempt(counter_task, tmp_path, 0, None, n=10, fail_at=5, fail_on_start=False)
    assert_recoverable(first)
    # The task's end flushed before the error reached flytekit: all five saves committed.
    assert committed(tmp_path / "attempt-0") == [(s, b"%d" % (s + 1)) for s in range(5)]

    assert attempt(counter_task, tmp_path, 1, 0, n=10, fail_at=-1, fail_on_start=False) == 5
    assert [(start, loc) for _, start, loc in SEEN] == [
        (0, str(tmp_path / "attempt-0")),
        (5, str(tmp_path / "attempt-1")),
    ]
    # Attempt 1 wrote to its own prefix, numbering on from where it resumed.
    assert committed(tmp_path / "attempt-1") == [(s, b"%d" % (s + 1)) for s in range(5, 10)]
    record = json.loads((tmp_path / "attempt-1" / "asynccp-attempt.json").read_text())
    assert record["previous"] == str(tmp_path / "attempt-0")
    assert record["resume_from"] == {"prefix": str(tmp_path / "attempt-0"), "step": 4}


@COUNTERS
def test_an_attempt_that_saved_nothing_does_not_cut_the_chain(
    counter_task: PythonTask, tmp_path: Path
) -> None:
    """Attempt 2 is pointed at attempt 1 only, which saved nothing; it still resumes
    from attempt 0's last checkpoint, found through attempt 1's record."""
    assert_recoverable(
        attempt(counter_task, tmp_path, 0, None, n=10, fail_at=5, fail_on_start=False)
    )
    assert_recoverable(attempt(counter_task, tmp_path, 1, 0, n=10, fail_at=-1, fail_on_start=True))
    assert committed(tmp_path / "attempt-1") == []
    assert attempt(counter_task, tmp_path, 2, 1, n=10, fail_at=-1, fail_on_start=False) == 5
    assert [start for _, start, _ in SEEN] == [0, 5, 5]
    assert committed(tmp_path / "attempt-2")[0] == (5, b"6")


@COUNTERS
def test_a_corrupt_newest_checkpoint_is_skipped(counter_task: PythonTask, tmp_path: Path) -> None:
    assert_recoverable(
        attempt(counter_task, tmp_path, 0, None, n=10, fail_at=5, fail_on_start=False)
    )
    # Change the bytes of the newest checkpoint, as a bad disk or a bad copy would: a
    # counter is tiny, its bytes live inside its record (its size stays, its checksum
    # no longer matches).
    record = tmp_path / "attempt-0" / "manifests" / f"{4:020d}.json"
    doc = json.loads(record.read_bytes())
    (info,) = doc["files"].values()  # the one file write() stores
    assert base64.b64decode(info["inline"]) == b"5"
    info["inline"] = base64.b64encode(b"9").decode()
    record.write_text(json.dumps(doc))
    with pytest.warns(asynccp.CorruptCheckpointWarning, match="checkpoint 4 .* skipped"):
        assert attempt(counter_task, tmp_path, 1, 0, n=10, fail_at=-1, fail_on_start=False) == 4
    # The bad checkpoint is not deleted: the next attempt numbers on after it.
    assert committed(tmp_path / "attempt-1")[0] == (5, b"5")


@COUNTERS
def test_local_runs_retry_in_process_and_resume(counter_task: PythonTask) -> None:
    """Called as a function (``python wf.py``), the task's retries are real retries."""
    call = counter_task(n=12, fail_at=7, fail_on_start=False)
    if asyncio.iscoroutine(call):
        call = asyncio.run(call)
    assert call == 7  # attempt 1 resumed at 7 and finished
    assert [start for _, start, _ in SEEN] == [0, 7]
    # Both attempts used the local sandbox's checkpoint folder.
    assert SEEN[0][2] == SEEN[1][2]


@COUNTERS
def test_local_retries_run_out(counter_task: PythonTask) -> None:
    with pytest.raises(asynccp.RetriesExhausted) as info:
        call = counter_task(n=12, fail_at=-1, fail_on_start=True)
        if asyncio.iscoroutine(call):
            asyncio.run(call)
    assert info.value.attempts == 4  # retries=3
    assert isinstance(info.value.__cause__, (FlyteRecoverableException, asynccp.RecoverableError))


# -- the seed example, as a flytekit task with the plugin --------------------------------

RETRIES = 3


@task(retries=RETRIES, task_config=Checkpointing(backoff=0))
def use_checkpoint(n_iterations: int) -> int:
    """Flyte's ``use_checkpoint`` example, unchanged but for the task_config."""
    cp = current_context().checkpoint
    prev = cp.read()
    start = 0
    if prev:
        start = int(prev.decode())
    SEEN.append(("seed", start, ""))

    # create a failure interval so we can create failures for every 'n' iterations and then
    # succeed within configured retries
    failure_interval = n_iterations * 1.0 / RETRIES
    i = 0
    for i in range(start, n_iterations):
        # simulate a deterministic failure, for demonstration. We want to show how it
        # eventually completes within the given retries
        if i > start and i % failure_interval == 0:
            raise FlyteRecoverableException(
                f"Failed at iteration {start}, failure_interval {failure_interval}"
            )
        # save progress state. It is also entirely possible save state every few intervals.
        cp.write(f"{i + 1}".encode())

    return i


@workflow
def example(n_iterations: int) -> int:
    return use_checkpoint(n_iterations=n_iterations)


def test_the_seed_example_retries_locally_and_returns_its_result() -> None:
    assert example(n_iterations=12) == 11
    assert [start for _, start, _ in SEEN] == [0, 4, 8]


# -- flytekit's checkpoint interface ------------------------------------------------------


@task(retries=1, task_config=Checkpointing(backoff=0, keep=2))
def folders(fail: bool) -> str:
    """Saves a folder with ``save``; the next attempt gets it back with ``restore``."""
    cp = current_context().checkpoint
    restored = cp.restore()
    SEEN.append(("folders", int(cp.prev_exists()), ""))
    if restored is not None:
        return "|".join(
            f"{p.relative_to(restored)}={p.read_text()}"
            for p in sorted(restored.rglob("*"))
            if p.is_file()
        )
    work = Path(current_context().working_directory) / "state"
    (work / "sub").mkdir(parents=True)
    (work / "a.txt").write_text("one")
    (work / "sub" / "b.txt").write_text("two")
    cp.save(work)
    (work / "a.txt").write_text("changed after save")  # save() returned: it had copied
    if fail:
        raise FlyteRecoverableException("after saving the folder")
    return ""


def test_save_a_folder_and_restore_it(tmp_path: Path) -> None:
    assert_recoverable(attempt(folders, tmp_path, 0, None, fail=True))
    out = attempt(folders, tmp_path, 1, 0, fail=False)
    assert out == "a.txt=one|sub/b.txt=two"
    assert [flag for _, flag, _ in SEEN] == [0, 1]  # prev_exists()


@task(retries=2, task_config=Checkpointing(backoff=0))
async def sync_interface_in_async_task(n: int) -> int:
    """flytekit's (synchronous) checkpoint interface, called from an ``async def`` task."""
    cp = current_context().checkpoint
    prev = cp.read()
    start = int(prev) if prev else 0
    SEEN.append(("async sync-interface", start, ""))
    for i in range(start, n):
        cp.write(b"%d" % (i + 1))
        await asyncio.sleep(0)
        if i == 3 and start == 0:
            raise FlyteRecoverableException("once")
    return start


def test_the_sync_interface_works_in_an_async_task() -> None:
    assert asyncio.run(sync_interface_in_async_task(n=8)) == 4
    assert [start for _, start, _ in SEEN] == [0, 4]


@task(retries=1, task_config=Checkpointing(backoff=0))
async def saves_a_file_from_the_loop(path: str) -> str:
    """flytekit's ``save(path)`` called on the event loop of an ``async def`` task."""
    cp = current_context().checkpoint
    restored = cp.restore()
    if restored is not None:
        return (restored / "state.txt").read_text()
    # Synchronous on purpose: this is flytekit's synchronous interface, on the loop.
    Path(path).write_text("saved")  # noqa: ASYNC240
    cp.save(path)
    Path(path).write_text("changed after save")  # noqa: ASYNC240 - save() had copied it
    raise FlyteRecoverableException("after saving the file")


def test_save_a_file_from_the_event_loop(tmp_path: Path) -> None:
    assert asyncio.run(saves_a_file_from_the_loop(path=str(tmp_path / "state.txt"))) == "saved"


def test_the_chain_on_s3(moto_server: str, s3_bucket: str, tmp_path: Path) -> None:
    """The same chain with each attempt's prefix in a bucket (records are objects)."""
    store = asynccp.StoreOptions(
        obstore={
            "config": {
                "endpoint": moto_server,
                "access_key_id": "testing",
                "secret_access_key": "testing",
                "region": "us-east-1",
            },
            "client_options": {"allow_http": True},
        }
    )

    @task(task_config=Checkpointing(keep=2, store=store))
    def on_s3(n: int, fail_at: int, fail_on_start: bool) -> int:
        return counter.task_function(n=n, fail_at=fail_at, fail_on_start=fail_on_start)  # type: ignore[no-any-return]

    def pod(k: int, previous: int | None, **inputs: Any) -> Any:
        prefix = f"s3://{s3_bucket}/run/node"
        with setup_execution(
            raw_output_data_prefix=str(tmp_path / "raw"),
            checkpoint_path=f"{prefix}/{k}",
            prev_checkpoint=None if previous is None else f"{prefix}/{previous}",
        ) as ctx:
            literals = TypeEngine.dict_to_literal_map(
                ctx, inputs, {k: type(v) for k, v in inputs.items()}
            )
            try:
                return on_s3.dispatch_execute(ctx, literals).literals["o0"].scalar.primitive.value
            except FlyteUserRuntimeException as e:
                return e

    assert_recoverable(pod(0, None, n=10, fail_at=5, fail_on_start=False))
    assert_recoverable(pod(1, 0, n=10, fail_at=-1, fail_on_start=True))
    assert pod(2, 1, n=10, fail_at=-1, fail_on_start=False) == 5
    assert [start for _, start, _ in SEEN] == [0, 5, 5]
    assert SEEN[2][2] == f"s3://{s3_bucket}/run/node/2"


def test_other_errors_are_not_retried_and_still_flush(tmp_path: Path) -> None:
    """An error Flyte does not retry propagates at once; what was saved is committed."""
    out = attempt(counter, tmp_path, 0, None, n=10, fail_at=-1, fail_on_start=False)
    assert out == 0
    assert len(committed(tmp_path / "attempt-0")) == 10


# -- pre-emption in a pod ---------------------------------------------------------------------

POD = Path(__file__).parent / "scripts" / "flytekit_pod.py"


def pod(root: Path, k: int, previous: int | None = None) -> Child:
    """``scripts/flytekit_pod.py``: attempt ``k`` in its own process."""
    args = [sys.executable, str(POD), str(root), str(k)]
    args += [] if previous is None else [str(previous)]
    return Child(args, root / f"pod-{k}.stderr")


def test_sigterm_in_a_pod_flushes_and_exits_75(tmp_path: Path) -> None:
    """The body is computing (not saving) when SIGTERM comes: its checkpoints are
    flushed, the process exits with 75 at once, and the next attempt resumes."""
    first = pod(tmp_path, 0)
    try:
        assert first.wait_for("resumed") == "resumed 0"
        assert first.wait_for("saved") == "saved 50"
        assert first.terminate() == asynccp.PREEMPTED_EXIT_CODE
    finally:
        first.close()
    # every write handed over before the signal committed (the default keep=3 retires
    # the older ones)
    assert committed(tmp_path / "attempt-0") == [(47, b"48"), (48, b"49"), (49, b"50")]
    second = pod(tmp_path, 1, previous=0)
    try:
        assert second.wait_for("resumed") == "resumed 50"
        assert second.terminate() == asynccp.PREEMPTED_EXIT_CODE
    finally:
        second.close()


# -- configuration and imports ------------------------------------------------------------


def test_bad_options_fail_when_the_task_is_declared() -> None:
    with pytest.raises(ValueError, match="keep"):
        Checkpointing(keep=0)
    with pytest.raises(ValueError, match="policy"):
        Checkpointing(policy="newest")
    with pytest.raises(TypeError, match="set by the plugin"):
        Checkpointing(store=asynccp.StoreOptions(prefix="x"))
    with pytest.raises(TypeError, match="recoverable"):
        Checkpointing(recoverable="yes")
    assert repr(Checkpointing(keep=5)) == "Checkpointing(keep=5)"
    assert repr(Checkpointing(keep=3)) == "Checkpointing()"  # the default
    assert repr(Checkpointing(keep=None)) == "Checkpointing(keep=None)"
    assert (
        repr(Checkpointing(keep=5, limits=asynccp.Limits(max_pending=2)))
        == "Checkpointing(limits=Limits(max_pending=2), keep=5)"
    )


def test_import_asynccp_imports_no_framework() -> None:
    code = (
        "import sys, asynccp; print(sorted(m for m in ('flytekit', 'flyte') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_extra_is_a_one_line_error_naming_it() -> None:
    # sys.modules[name] = None makes Python's import system refuse the package.
    code = "import sys; sys.modules['flytekit'] = None; import asynccp.flytekit"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: asynccp.flytekit needs flytekit")
    assert "pip install 'asynccp[flytekit]'" in last
