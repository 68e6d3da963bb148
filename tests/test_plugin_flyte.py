"""asynccp.flyte on the real Flyte 2 SDK.

Two ways attempts run here, both Flyte's own:

- local run mode (``flyte.with_runcontext(mode="local").run``): Flyte retries the task
  in the process; every attempt gets the same checkpoint paths;
- pod attempts: Flyte's per-attempt runner (``direct_dispatch``, what the local
  controller calls for each attempt) given each attempt's own checkpoint path and the
  previous attempt's, as the platform gives them to a pod.
"""

from __future__ import annotations

import asyncio
import gc
import tarfile
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from _sites import edit_newest

pytest.importorskip(
    "flyte", reason="the flyte extra is not installed (pip install 'asynccp[flyte]')"
)

import flyte
from flyte._internal.runtime import convert
from flyte._internal.runtime.entrypoints import direct_dispatch
from flyte.models import ActionID, CheckpointPaths, RawDataPath

import asynccp
import asynccp.flyte

env = flyte.TaskEnvironment(name="asynccp_plugin_tests")
RETRY = flyte.RetryStrategy(count=3, backoff=flyte.Backoff(base=timedelta(0)))

#: What each attempt saw: (task, where it resumed, asynccp.current()'s location).
SEEN: list[tuple[str, int, str]] = []


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    SEEN.clear()


@pytest.fixture(scope="module", autouse=True)
def _flyte_init() -> None:
    flyte.init()


def plan_step(plan: str, name: str) -> str:
    """This attempt's part of ``plan`` ("5,start,-": attempt 0 fails at iteration 5,
    attempt 1 fails before saving, attempt 2 runs to the end; "corrupt": flip the bytes
    of the previous attempt's newest checkpoint first, then run to the end)."""
    done = sum(1 for task, _, _ in SEEN if task == name)
    return plan.split(",")[done]


def corrupt_newest(location: str) -> None:
    """Flip the bytes of the newest committed checkpoint at ``location`` (an earlier
    attempt's, flushed when it ended; a counter is tiny: inside its record)."""
    edit_newest(Path(location), "payload", lambda data: bytes(b ^ 0xFF for b in data))


# keep=None: the tests look at every step the attempts committed (the default keeps 3).
@asynccp.flyte.checkpointed(keep=None)
@env.task(retries=RETRY)
async def acounter(n: int, plan: str) -> int:
    """Counts to ``n`` through ``flyte.ctx().checkpoint``; returns where it resumed."""
    cp = flyte.ctx().checkpoint
    step = plan_step(plan, "acounter")
    if step == "corrupt":
        corrupt_newest(SEEN[-1][2])
    loaded = await cp.load()
    start = int(loaded.read_bytes()) if loaded else 0
    SEEN.append(("acounter", start, asynccp.current().location))
    if step == "start":
        raise asynccp.RecoverableError("this attempt dies before it saves anything")
    for i in range(start, n):
        if step == str(i):
            raise RuntimeError(f"failed at iteration {i}")
        await cp.save(b"%d" % (i + 1))
    return start


@asynccp.flyte.checkpointed(keep=20)
@env.task(retries=RETRY)
def counter(n: int, plan: str) -> int:
    """The same as a ``def`` task, with the synchronous methods."""
    cp = flyte.ctx().checkpoint
    step = plan_step(plan, "counter")
    if step == "corrupt":
        corrupt_newest(SEEN[-1][2])
    loaded = cp.load_sync()
    start = int(loaded.read_bytes()) if loaded else 0
    SEEN.append(("counter", start, asynccp.current().location))
    if step == "start":
        raise RuntimeError("this attempt dies before it saves anything")
    for i in range(start, n):
        if step == str(i):
            raise RuntimeError(f"failed at iteration {i}")
        cp.save_sync(b"%d" % (i + 1))
    return start


COUNTERS = pytest.mark.parametrize("counter_task", [counter, acounter], ids=["def", "async_def"])


def run_local(task: Any, root: Path, *args: Any) -> Any:
    """Flyte 2's local run mode: Flyte runs the task, and retries it, in this process."""
    return (
        flyte.with_runcontext(mode="local", raw_data_path=str(root)).run(task, *args).outputs()[0]
    )


def committed(location: str | Path) -> list[tuple[int, bytes]]:
    """Every checkpoint committed at ``location``: (step, payload), oldest first."""

    async def read() -> list[tuple[int, bytes]]:
        async with asynccp.Checkpointer(location) as cp:
            return [(c.step, await c.read()) for c in await cp.list()]

    return anyio.run(read)


def pod_attempt(task: Any, root: Path, k: int, previous: int | None, **inputs: Any) -> Any:
    """Attempt ``k`` as a pod runs it: Flyte's per-attempt runner, with the attempt's own
    checkpoint path and the previous attempt's. Returns the output, or Flyte's error."""

    async def run() -> Any:
        args = await convert.convert_from_native_to_inputs(task.native_interface, **inputs)
        prev = None if previous is None else str(root / f"attempt-{previous}")
        out, err = await direct_dispatch(
            task,
            action=ActionID(name="a0", run_name="run"),
            raw_data_path=RawDataPath(path=str(root / "raw")),
            controller=None,  # type: ignore[arg-type]  # the task launches no sub-tasks
            version="v1",
            output_path=str(root / f"out-{k}"),
            run_base_dir=str(root / "base"),
            checkpoint_paths=CheckpointPaths(
                prev_checkpoint_path=prev, checkpoint_path=str(root / f"attempt-{k}")
            ),
            inputs=args,
        )
        if err is not None:
            return err
        return await convert.convert_outputs_to_native(task.native_interface, out)

    return asyncio.run(run())


def assert_retried_error(outcome: Any) -> None:
    """Flyte records the attempt's error as recoverable: it retries the task."""
    assert type(outcome).__name__ == "Error", outcome
    assert outcome.recoverable


# -- local run mode -----------------------------------------------------------------------


@COUNTERS
def test_local_attempt_saves_and_fails_then_the_next_resumes(
    counter_task: Any, tmp_path: Path
) -> None:
    assert run_local(counter_task, tmp_path, 10, "5,-") == 5
    starts = [start for _, start, _ in SEEN]
    assert starts == [0, 5]
    # Both attempts wrote to the task's own folder; everything either saved is committed.
    assert SEEN[0][2] == SEEN[1][2]
    assert committed(SEEN[0][2]) == [(s, b"%d" % (s + 1)) for s in range(10)]


@COUNTERS
def test_local_attempt_that_saved_nothing_is_crossed(counter_task: Any, tmp_path: Path) -> None:
    assert run_local(counter_task, tmp_path, 10, "5,start,-") == 5
    assert [start for _, start, _ in SEEN] == [0, 5, 5]


@COUNTERS
def test_local_corrupt_newest_checkpoint_is_skipped(counter_task: Any, tmp_path: Path) -> None:
    with pytest.warns(asynccp.CorruptCheckpointWarning, match="checkpoint 4 .* skipped"):
        assert run_local(counter_task, tmp_path, 10, "5,corrupt") == 4
    assert [start for _, start, _ in SEEN] == [0, 4]


@COUNTERS
def test_an_attempt_removes_its_folder_when_it_ends(
    counter_task: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder of each attempt's ``flyte.ctx().checkpoint`` (its ``path``, where the
    attempt restored the checkpoint it resumed from) goes when the attempt ends, a failed
    attempt's too: not when the garbage collector frees what the failure's traceback
    keeps in a reference cycle (here, with the collector off: never)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where flyte.Checkpoint makes it
    gc.disable()
    try:
        assert run_local(counter_task, tmp_path / "run", 10, "5,-") == 5
    finally:
        gc.enable()
    assert [start for _, start, _ in SEEN] == [0, 5]  # the second attempt restored step 4
    assert sorted(p.name for p in temp.iterdir() if p.name.startswith("flyte-cp-")) == []


def test_local_retries_run_out_with_the_tasks_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="dies before it saves anything"):
        run_local(counter, tmp_path, 10, "start,start,start,start")
    assert len(SEEN) == 4  # retries=3


# -- one local run, tasks with and without the plugin ---------------------------------------


@env.task
async def plain_saver(x: int) -> str:
    """Flyte's own ``flyte.Checkpoint``, no plugin: loads, then saves one blob."""
    cp = flyte.ctx().checkpoint
    loaded = await cp.load()
    await cp.save(b"plain %d" % x)
    return "" if loaded is None else loaded.read_text()


@asynccp.flyte.checkpointed
@env.task(retries=RETRY)
async def plugin_saver(x: int) -> str:
    """The plugin's checkpoint: saves, fails once, and the retry resumes from that save."""
    cp = flyte.ctx().checkpoint
    loaded = await cp.load()
    await cp.save(b"plugin %d" % x)
    if loaded is None:
        raise asynccp.RecoverableError("the first attempt fails after saving")
    return loaded.read_text()


@env.task
async def mixed(plugin_first: bool) -> list[str]:
    """Calls both kinds of task in one run, in the order asked."""
    if plugin_first:
        b = await plugin_saver(2)
        a = await plain_saver(1)
    else:
        a = await plain_saver(1)
        b = await plugin_saver(2)
    return [a, b]


@pytest.mark.parametrize("plugin_first", [True, False], ids=["plugin_first", "plain_first"])
def test_one_local_run_mixes_plugin_and_plain_checkpoint_tasks(
    tmp_path: Path, plugin_first: bool
) -> None:
    """Locally every task of a run is given ``<raw data path>/checkpoint``, where
    ``flyte.Checkpoint`` writes one object: the plugin's prefixes are beside it, so
    neither kind of task finds the other's in its way, whichever runs first."""
    assert run_local(mixed, tmp_path, plugin_first) == ["", "plugin 2"]
    assert (tmp_path / "checkpoint").read_bytes() == b"plain 1"  # Flyte's own object
    [prefix] = (tmp_path / "checkpoint-asynccp").iterdir()  # one action: plugin_saver
    assert committed(prefix) == [(0, b"plugin 2"), (1, b"plugin 2")]


# -- pod attempts: each attempt its own prefix ----------------------------------------------


@COUNTERS
def test_pod_attempt_saves_and_fails_then_the_next_resumes(
    counter_task: Any, tmp_path: Path
) -> None:
    assert_retried_error(pod_attempt(counter_task, tmp_path, 0, None, n=10, plan="5"))
    assert committed(tmp_path / "attempt-0") == [(s, b"%d" % (s + 1)) for s in range(5)]
    assert pod_attempt(counter_task, tmp_path, 1, 0, n=10, plan="5,-") == 5
    assert [(s, loc) for _, s, loc in SEEN] == [
        (0, str(tmp_path / "attempt-0")),
        (5, str(tmp_path / "attempt-1")),
    ]
    assert committed(tmp_path / "attempt-1")[0] == (5, b"6")


@COUNTERS
def test_pod_attempt_that_saved_nothing_does_not_cut_the_chain(
    counter_task: Any, tmp_path: Path
) -> None:
    plan = "5,start,-"
    assert_retried_error(pod_attempt(counter_task, tmp_path, 0, None, n=10, plan=plan))
    assert_retried_error(pod_attempt(counter_task, tmp_path, 1, 0, n=10, plan=plan))
    assert committed(tmp_path / "attempt-1") == []
    assert pod_attempt(counter_task, tmp_path, 2, 1, n=10, plan=plan) == 5
    assert [start for _, start, _ in SEEN] == [0, 5, 5]


@COUNTERS
def test_pod_corrupt_newest_checkpoint_is_skipped(counter_task: Any, tmp_path: Path) -> None:
    assert_retried_error(pod_attempt(counter_task, tmp_path, 0, None, n=10, plan="5"))
    with pytest.warns(asynccp.CorruptCheckpointWarning, match="checkpoint 4 .* skipped"):
        assert pod_attempt(counter_task, tmp_path, 1, 0, n=10, plan="5,corrupt") == 4


# -- the seed example ---------------------------------------------------------------------

RETRIES = 3


@asynccp.flyte.checkpointed
@env.task(retries=flyte.RetryStrategy(count=RETRIES, backoff=flyte.Backoff(base=timedelta(0))))
def use_checkpoint(n_iterations: int) -> int:
    """Flyte's ``use_checkpoint`` example on Flyte 2's checkpoint interface."""
    cp = flyte.ctx().checkpoint
    prev = cp.load_sync()
    start = 0
    if prev:
        start = int(prev.read_bytes().decode())
    SEEN.append(("seed", start, ""))
    failure_interval = n_iterations * 1.0 / RETRIES
    i = 0
    for i in range(start, n_iterations):
        if i > start and i % failure_interval == 0:
            raise RuntimeError(f"Failed at iteration {start}, failure_interval {failure_interval}")
        cp.save_sync(f"{i + 1}".encode())
    return i


def test_the_seed_example_retries_locally_and_returns_its_result(tmp_path: Path) -> None:
    assert run_local(use_checkpoint, tmp_path, 12) == 11
    assert [start for _, start, _ in SEEN] == [0, 4, 8]


# -- checkpoints written by flyte.Checkpoint ------------------------------------------------


@asynccp.flyte.checkpointed
@env.task(retries=RETRY)
async def resumes_flyte(tag: str) -> str:
    """Records what it loaded; the first attempt then saves a folder and fails."""
    cp = flyte.ctx().checkpoint
    loaded = await cp.load()
    if loaded is None:
        seen = "nothing"
    elif loaded.is_dir():
        files = sorted(p for p in loaded.rglob("*") if p.is_file())
        seen = "tree:" + ",".join(f"{p.relative_to(loaded)}={p.read_text()}" for p in files)
    else:
        seen = "blob:" + loaded.read_text()
    first = not SEEN
    SEEN.append(("resumes_flyte", int(cp.prev_exists()), seen))
    if first:
        folder = Path(flyte.ctx().raw_data_path.path) / f"state-{tag}"
        (folder / "sub").mkdir(parents=True)
        (folder / "x.txt").write_text("asynccp")
        (folder / "sub" / "y.txt").write_text("too")
        await cp.save(folder)
        raise RuntimeError("the first attempt fails after saving")
    return seen


def flyte_checkpoint(dest: Path, data: Any) -> None:
    """Write a checkpoint with Flyte's own ``flyte.Checkpoint`` at ``dest``."""
    flyte.Checkpoint(str(dest)).save_sync(data)


ASYNCCP_TREE = "tree:sub/y.txt=too,x.txt=asynccp"


def test_a_blob_written_by_flyte_checkpoint_is_loaded(tmp_path: Path) -> None:
    # Local runs name <raw data path>/prev_checkpoint as every attempt's previous one.
    flyte_checkpoint(tmp_path / "prev_checkpoint", b"41")
    assert run_local(resumes_flyte, tmp_path, "blob") == ASYNCCP_TREE
    # Attempt 0 loaded Flyte's blob; attempt 1 asynccp's own checkpoint of attempt 0.
    assert [(flag, seen) for _, flag, seen in SEEN] == [(1, "blob:41"), (1, ASYNCCP_TREE)]


def test_a_tarred_directory_written_by_flyte_checkpoint_is_loaded(tmp_path: Path) -> None:
    src = tmp_path / "flyte-state"
    (src / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("from flyte")
    (src / "deep" / "b.txt").write_text("nested")
    flyte_checkpoint(tmp_path / "attempt-0", src)
    assert tarfile.is_tarfile(tmp_path / "attempt-0")  # Flyte's own format: one tarball
    assert_retried_error(pod_attempt(resumes_flyte, tmp_path, 1, 0, tag="tar"))
    assert pod_attempt(resumes_flyte, tmp_path, 2, 1, tag="tar") == ASYNCCP_TREE
    assert [seen for _, _, seen in SEEN] == [
        "tree:a.txt=from flyte,deep/b.txt=nested",
        ASYNCCP_TREE,
    ]


def test_nothing_to_load(tmp_path: Path) -> None:
    assert_retried_error(pod_attempt(resumes_flyte, tmp_path, 0, None, tag="none"))
    assert SEEN == [("resumes_flyte", 0, "nothing")]


# -- the decorator --------------------------------------------------------------------------


def test_the_decorator_composes_with_env_task() -> None:
    # It returns the task itself: still the environment's, same name and signature.
    assert env.tasks[counter.name] is counter
    assert counter.name.endswith("counter")
    assert list(counter.native_interface.inputs) == ["n", "plan"]
    assert counter.func.__wrapped__.__name__ == "counter"
    # Called as a plain function, outside Flyte, the body runs as it is.
    assert doubles(4) == 8


@asynccp.flyte.checkpointed(keep=1)
@env.task
def doubles(x: int) -> int:
    return 2 * x


def test_the_decorator_goes_above_env_task() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"goes above @env\.task"):
        asynccp.flyte.checkpointed(plain)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="already"):
        asynccp.flyte.checkpointed(counter)
    with pytest.raises(ValueError, match="keep"):
        asynccp.flyte.checkpointed(keep=0)


def test_a_missing_extra_is_a_one_line_error_naming_it() -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['flyte'] = None; import asynccp.flyte"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: asynccp.flyte needs flyte 2")
    assert "pip install 'asynccp[flyte]'" in last
