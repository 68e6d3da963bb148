"""flytekit's checkpoint behaviours, against flytekit's own checkpoint and the plugin's.

Each behaviour of flytekit's ``SyncCheckpoint`` (from flytekit's unit tests and its
source: read on empty, write bytes, save a reader / a file / a folder, restore twice,
no previous prefix, a missing or empty one, the "exactly one checkpoint" rule) runs as
a real task attempt, the way a Flyte pod runs one (``setup_execution`` with the
attempt's checkpoint path and the previous attempt's, then ``dispatch_execute``), once
as a plain flytekit task (``current_context().checkpoint`` is flytekit's
``SyncCheckpoint``) and once with ``asynccp.flytekit`` (the plugin's
``AsyncCheckpoint``). Where the two differ on purpose, the test says so and checks each
side (docs/flyte.md, "flytekit: what is drop-in").

Then whole attempt chains through ``pyflyte-execute`` (slow): an attempt without the
plugin followed by one with it, and a chain across an attempt that never started.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "flytekit", reason="the flytekit extra is not installed (pip install 'asynccp[flytekit]')"
)

from flyteidl.core import errors_pb2, literals_pb2
from flytekit import current_context, task
from flytekit.bin.entrypoint import setup_execution
from flytekit.core import utils
from flytekit.core.checkpointer import SyncCheckpoint
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.exceptions.user import FlyteRecoverableException, FlyteUserRuntimeException

import asynccp
from asynccp._propeller import shard_of
from asynccp.flytekit import AsyncCheckpoint, Checkpointing

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"

# -- a task attempt, with or without the plugin ------------------------------------------

#: The behaviour the next attempt runs: ``(checkpoint, scratch folder) -> JSON value``.
BODY: list[Callable[[Any, Path], Any]] = []


def run_body() -> str:
    cp = current_context().checkpoint
    scratch = Path(current_context().working_directory) / "scratch"
    scratch.mkdir(exist_ok=True)
    return json.dumps(BODY[0](cp, scratch))


@task
def plain(step: int) -> str:
    """flytekit without the plugin: ``current_context().checkpoint`` is its own."""
    assert isinstance(current_context().checkpoint, SyncCheckpoint)
    return run_body()


@task(task_config=Checkpointing(backoff=0))
def plugged(step: int) -> str:
    """The same with asynccp.flytekit."""
    assert isinstance(current_context().checkpoint, AsyncCheckpoint)
    return run_body()


TASKS = {"flytekit": plain, "asynccp": plugged}
KINDS = pytest.mark.parametrize("kind", list(TASKS))


def attempt(
    kind: str, body: Callable[[Any, Path], Any], dest: Path, prev: Path | str | None
) -> Any:
    """One attempt of the ``kind`` task, as a pod runs it: ``body``'s value (an error
    it raised comes back as ``["raised", type name, message]``)."""

    def guarded(cp: Any, scratch: Path) -> Any:
        try:
            return body(cp, scratch)
        except Exception as e:
            return ["raised", type(e).__name__, str(e)]

    BODY[:] = [guarded]
    with setup_execution(
        raw_output_data_prefix=str(dest.parent / "raw"),
        checkpoint_path=str(dest),
        prev_checkpoint=None if prev is None else str(prev),
    ) as ctx:
        literals = TypeEngine.dict_to_literal_map(ctx, {"step": 0}, {"step": int})
        out = TASKS[kind].dispatch_execute(ctx, literals)
    return json.loads(out.literals["o0"].scalar.primitive.string_value)


def tree(folder: str | Path | None) -> dict[str, str] | None:
    """The files under ``folder`` by relative name, with their text (None: no folder)."""
    if folder is None:
        return None
    root = Path(folder)
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """``folder`` and every entry under it with its size, modification time and bytes
    (files). A folder's time changes when an entry is made in it, even one deleted
    since (a lease the attempt held while it ran)."""
    out = {}
    for p in [folder, *sorted(folder.rglob("*"))]:
        st = p.lstat()
        out[p.relative_to(folder).as_posix()] = (
            st.st_size if p.is_file() else -1,
            st.st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
    return out


# -- what an attempt writes, and the next one restores --------------------------------------


def write_bytes(cp: Any, scratch: Path) -> None:
    cp.write(b"first")
    cp.write(b"bytes")  # overwrites (flytekit) / a newer step (asynccp): the last one counts


def save_reader(cp: Any, scratch: Path) -> None:
    (scratch / "test").write_bytes(b"blah")
    with (scratch / "test").open("rb") as f:
        cp.save(f)


def save_file(cp: Any, scratch: Path) -> None:
    (scratch / "test").write_bytes(b"blah")
    cp.save(scratch / "test")
    cp.save(str(scratch / "test"))  # str or Path alike


def save_folder(cp: Any, scratch: Path) -> None:
    (scratch / "state" / "sub").mkdir(parents=True)
    (scratch / "state" / "a.txt").write_text("one")
    (scratch / "state" / "sub" / "b.txt").write_text("two")
    cp.save(scratch / "state")


def inline_bytes(record: str, name: str) -> bytes:
    """The bytes of file ``name`` held inside an asynccp record's text."""
    return base64.b64decode(json.loads(record)["files"][name]["inline"])


def resume(cp: Any, scratch: Path) -> dict[str, Any]:
    """What a next attempt sees: prev_exists, read(), restore()'s folder; and that its
    own write does not change what it reads (the previous attempt's checkpoint)."""
    out: dict[str, Any] = {"prev_exists": cp.prev_exists()}
    try:
        data = cp.read()
        out["read"] = None if data is None else data.decode()
    except ValueError as e:
        out["read"] = ["raised", str(e)]
    out["restore"] = tree(cp.restore())
    cp.write(b"this attempt's own")
    again = cp.read() if not isinstance(out["read"], list) else out["read"]
    out["read again"] = again.decode() if isinstance(again, bytes) else again
    return out


WRITTEN = {
    "write": (write_bytes, {"_dst_cp": "bytes"}, "bytes"),
    "save reader": (save_reader, {"_dst_cp": "blah"}, "blah"),
    "save file": (save_file, {"test": "blah"}, "blah"),
    "save folder": (
        save_folder,
        {"a.txt": "one", "sub/b.txt": "two"},
        ["raised", "Expected exactly one checkpoint - found 2"],
    ),
}
#: (the kind that writes, the kind that reads the next attempt): the same kind, and
#: flytekit's data read by the plugin (a team switching it on). The plugin's data read
#: by plain flytekit is the documented exception (test below).
PAIRS = [("flytekit", "flytekit"), ("asynccp", "asynccp"), ("flytekit", "asynccp")]


@pytest.mark.parametrize("what", list(WRITTEN))
@pytest.mark.parametrize(("writer", "reader"), PAIRS, ids=["-".join(p) for p in PAIRS])
def test_what_one_attempt_saves_the_next_restores_alike(
    what: str, writer: str, reader: str, tmp_path: Path
) -> None:
    save, files, read = WRITTEN[what]
    assert attempt(writer, save, tmp_path / "a0", None) is None
    seen = attempt(reader, resume, tmp_path / "a1", tmp_path / "a0")
    assert seen == {
        "prev_exists": True,
        "read": read,
        "restore": files,
        "read again": read,
    }


def test_flytekit_without_the_plugin_cannot_read_the_plugins_prefix(tmp_path: Path) -> None:
    """The documented exception: a plain SyncCheckpoint given a prefix the plugin wrote
    finds asynccp's layout there, not one file (switching the plugin off mid-run)."""
    attempt("asynccp", write_bytes, tmp_path / "a0", None)
    seen = attempt("flytekit", resume, tmp_path / "a1", tmp_path / "a0")
    assert seen["prev_exists"] is True
    assert seen["read"][0] == "raised"
    assert seen["read"][1].startswith("Expected exactly one checkpoint - found ")
    # restore() downloads the layout: the newest write is inside the newest record (a
    # few bytes live in their record, not in a payload object).
    restored = seen["restore"]
    assert "asynccp-attempt.json" in restored
    newest = max(name for name in restored if name.startswith("manifests/"))
    assert inline_bytes(restored[newest], "_dst_cp") == b"bytes"


@KINDS
def test_saves_of_different_files_accumulate_only_in_flytekit(kind: str, tmp_path: Path) -> None:
    """flytekit's saves land side by side in one prefix; each of the plugin's is a whole
    checkpoint, and the next attempt restores the newest."""

    def two_files(cp: Any, scratch: Path) -> None:
        for name in ("prev", "prev2"):
            (scratch / name).write_bytes(b"prev-bytes")
            cp.save(scratch / name)

    attempt(kind, two_files, tmp_path / "a0", None)
    seen = attempt(kind, resume, tmp_path / "a1", tmp_path / "a0")
    if kind == "flytekit":
        assert seen["restore"] == {"prev": "prev-bytes", "prev2": "prev-bytes"}
        assert seen["read"] == ["raised", "Expected exactly one checkpoint - found 2"]
    else:
        assert seen["restore"] == {"prev2": "prev-bytes"}
        assert seen["read"] == "prev-bytes"


# -- one attempt's calls -------------------------------------------------------------------


def empty_checks(cp: Any, scratch: Path) -> dict[str, Any]:
    restored = cp.restore()
    return {
        "prev_exists": cp.prev_exists(),
        "read": cp.read(),
        "restore": None if restored is None else str(restored),
    }


@KINDS
@pytest.mark.parametrize("prev", [None, ""], ids=["None", "empty-string"])
def test_no_previous_prefix_reads_nothing(kind: str, prev: str | None, tmp_path: Path) -> None:
    seen = attempt(kind, empty_checks, tmp_path / "a0", prev)
    assert seen == {"prev_exists": False, "read": None, "restore": None}


@KINDS
def test_a_missing_previous_prefix(kind: str, tmp_path: Path) -> None:
    """flytekit raises FlyteDataNotFoundException from restore() and read(); the plugin
    reads "nothing saved before" (on an object store a previous attempt that saved
    nothing leaves no prefix at all, and the attempts before it count)."""

    def checks(cp: Any, scratch: Path) -> list[Any]:
        out: list[Any] = [cp.prev_exists()]
        for call in (cp.restore, cp.read):
            try:
                out.append(call())
            except Exception as e:
                out.append(type(e).__name__)
        return out

    seen = attempt(kind, checks, tmp_path / "a1", tmp_path / "missing")
    if kind == "flytekit":
        assert seen == [True, "FlyteDataNotFoundException", "FlyteDataNotFoundException"]
    else:
        assert seen == [False, None, None]


@KINDS
def test_an_empty_previous_prefix(kind: str, tmp_path: Path) -> None:
    """flytekit's prev_exists() says a prefix was given, and restore() an empty folder;
    the plugin's, that there is nothing to resume from. read() is None in both."""
    (tmp_path / "a0").mkdir()
    seen = attempt(kind, empty_checks, tmp_path / "a1", tmp_path / "a0")
    assert seen["read"] is None
    if kind == "flytekit":
        assert seen["prev_exists"] is True and tree(seen["restore"]) == {}
    else:
        assert seen == {"prev_exists": False, "read": None, "restore": None}


@KINDS
def test_read_on_an_empty_attempt_and_a_write_goes_to_its_own_prefix(
    kind: str, tmp_path: Path
) -> None:
    def checks(cp: Any, scratch: Path) -> list[Any]:
        before = [cp.read(), cp.restore()]
        cp.write(b"bytes")
        return [*before, cp.read()]

    assert attempt(kind, checks, tmp_path / "a0", None) == [None, None, None]
    if kind == "flytekit":
        assert (tmp_path / "a0" / SyncCheckpoint.TMP_DST_PATH).read_bytes() == b"bytes"
    else:  # the attempt's end flushed it, under the same name (inside its record)
        (record,) = (tmp_path / "a0" / "manifests").glob("*.json")
        assert inline_bytes(record.read_text(), "_dst_cp") == b"bytes"


@KINDS
def test_save_refuses_what_is_neither_a_path_nor_a_reader(kind: str, tmp_path: Path) -> None:
    def checks(cp: Any, scratch: Path) -> Any:
        cp.save(SyncCheckpoint)
        return "saved"

    seen = attempt(kind, checks, tmp_path / "a0", None)
    assert seen[:2] == ["raised", "ValueError"]
    assert "Only a valid path or IOBase type (reader) should be provided" in seen[2]


@KINDS
def test_restore_twice_returns_the_first_folder(kind: str, tmp_path: Path) -> None:
    attempt(kind, write_bytes, tmp_path / "a0", None)

    def checks(cp: Any, scratch: Path) -> list[Any]:
        user_dest = scratch / "user_dest"
        try:
            cp.restore(user_dest)
            out: list[Any] = ["restored into a missing folder"]
        except ValueError as e:
            out = [str(e)]
        user_dest.mkdir()
        first = cp.restore(user_dest)
        out += [first == user_dest, cp.restore(scratch / "other_path") == user_dest]
        out += [cp.read(), tree(first)]
        return [o.decode() if isinstance(o, bytes) else o for o in out]

    assert attempt(kind, checks, tmp_path / "a1", tmp_path / "a0") == [
        "Checkpoints can be restored to a directory only.",
        True,
        True,
        "bytes",
        {"_dst_cp": "bytes"},
    ]


@KINDS
def test_restore_to_the_default_folder_after_read(kind: str, tmp_path: Path) -> None:
    attempt(kind, write_bytes, tmp_path / "a0", None)

    def checks(cp: Any, scratch: Path) -> list[Any]:
        data = cp.read()
        first = cp.restore()
        return [data.decode(), first is not None and first == cp.restore(), tree(first)]

    seen = attempt(kind, checks, tmp_path / "a1", tmp_path / "a0")
    assert seen == ["bytes", True, {"_dst_cp": "bytes"}]


@KINDS
def test_read_needs_exactly_one_file(kind: str, tmp_path: Path) -> None:
    """A previous prefix holding two files flytekit wrote: read() refuses, both ways."""
    (tmp_path / "a0").mkdir()
    for name in ("prev", "prev2"):
        (tmp_path / "a0" / name).write_bytes(b"prev-bytes")
    seen = attempt(kind, resume, tmp_path / "a1", tmp_path / "a0")
    assert seen["read"] == ["raised", "Expected exactly one checkpoint - found 2"]
    assert seen["restore"] == {"prev": "prev-bytes", "prev2": "prev-bytes"}


# -- the plugin reads flytekit's data, and writes nothing where it reads ---------------------


@task(task_config=Checkpointing(backoff=0))
async def current_reads(step: int) -> str:
    """asynccp.current()'s own reads, from an ``async def`` task with the plugin."""
    cp = asynccp.current()
    latest = await cp.latest()
    assert latest is not None
    found = await cp.load_latest(lambda c: c.read())
    assert found is not None
    listed = [c.step for c in await cp.list()]  # (before the write: it may commit at once)
    handle = await cp.write(b"next")
    return json.dumps(
        {
            "latest": [latest.step, dict(latest.metadata), sorted(latest.files)],
            "load_latest": [found[0].step, found[1].decode()],
            "list": listed,
            "wrote": handle.step,
        }
    )


def test_flytekit_data_is_the_oldest_resume_point_for_asynccp_current(tmp_path: Path) -> None:
    """asynccp.current() sees flytekit's checkpoint too: at step -1, resumed from when
    nothing newer is there, and numbered after (the attempt's own saves start at 0)."""
    attempt("flytekit", write_bytes, tmp_path / "a0", None)
    with setup_execution(
        raw_output_data_prefix=str(tmp_path / "raw"),
        checkpoint_path=str(tmp_path / "a1"),
        prev_checkpoint=str(tmp_path / "a0"),
    ) as ctx:
        literals = TypeEngine.dict_to_literal_map(ctx, {"step": 0}, {"step": int})
        out = current_reads.dispatch_execute(ctx, literals)
    assert json.loads(out.literals["o0"].scalar.primitive.string_value) == {
        "latest": [-1, {"foreign": "flytekit"}, ["_dst_cp"]],
        "load_latest": [-1, "bytes"],
        "list": [-1],
        "wrote": 0,
    }
    record = json.loads((tmp_path / "a1" / "asynccp-attempt.json").read_text())
    assert record["resume_from"] == {"prefix": str(tmp_path / "a0"), "step": -1}


def test_nothing_is_written_into_earlier_prefixes(tmp_path: Path) -> None:
    """Three attempts: flytekit's own, then two with the plugin. The earlier prefixes
    are read, never written: not a lease, not a folder, not a changed time."""
    attempt("flytekit", write_bytes, tmp_path / "a0", None)
    before0 = snapshot(tmp_path / "a0")
    assert attempt("asynccp", resume, tmp_path / "a1", tmp_path / "a0")["read"] == "bytes"
    assert snapshot(tmp_path / "a0") == before0
    before1 = snapshot(tmp_path / "a1")
    seen = attempt("asynccp", resume, tmp_path / "a2", tmp_path / "a1")
    assert seen["read"] == "this attempt's own"  # attempt 1's newest
    assert snapshot(tmp_path / "a0") == before0
    assert snapshot(tmp_path / "a1") == before1
    # flytekit's own reader of that prefix still finds its one file
    assert attempt("flytekit", resume, tmp_path / "b1", tmp_path / "a0")["read"] == "bytes"


# -- real pods: pyflyte-execute, Flyte's task entry point -----------------------------------


def flyte_prefix(root: Path, attempt: int, execution: str = "abc123def456-n0") -> Path:
    """Attempt ``attempt``'s checkpoint prefix as flytepropeller lays it out:
    ``<raw>/<shard>/<execution>-<node>-<attempt>/_flytecheckpoints``."""
    unique_id = f"{execution}-{attempt}"
    return root / "raw" / shard_of(unique_id) / unique_id / "_flytecheckpoints"


def pyflyte_execute(
    root: Path,
    name: str,
    task_name: str,
    prefix: Path | str,
    prev: Path | str | None,
    env: dict[str, str] | None = None,
    **inputs: int,
) -> int | str:
    """One pod: ``pyflyte-execute`` of ``tests/scripts/flytekit_tasks.<task_name>`` with
    this checkpoint prefix and the previous one. The task's output (an int), or the
    kind of the error document it left (``"RECOVERABLE"``...)."""
    ctx = FlyteContextManager.current_context()
    literals = TypeEngine.dict_to_literal_map(ctx, inputs, {k: int for k in inputs})
    inputs_pb = root / f"{name}-inputs.pb"
    utils.write_proto_to_file(literals.to_flyte_idl(), str(inputs_pb))
    out = root / f"{name}-out"
    args = [
        str(Path(sys.executable).parent / "pyflyte-execute"),
        "--inputs", str(inputs_pb),
        "--output-prefix", str(out),
        "--raw-output-data-prefix", str(root / "raw"),
        "--checkpoint-path", str(prefix),
        *(["--prev-checkpoint", str(prev)] if prev is not None else []),
        "--resolver", "flytekit.core.python_auto_container.default_task_resolver",
        "--", "task-module", "flytekit_tasks", "task-name", task_name,
    ]  # fmt: skip
    path = os.pathsep.join([str(ROOT), str(SCRIPTS), os.environ.get("PYTHONPATH", "")])
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": path}
    proc = subprocess.run(args, cwd=root, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if (out / "error.pb").exists():
        doc = errors_pb2.ErrorDocument()
        doc.ParseFromString((out / "error.pb").read_bytes())
        return errors_pb2.ContainerError.Kind.Name(doc.error.kind)
    outputs = literals_pb2.LiteralMap()
    outputs.ParseFromString((out / "outputs.pb").read_bytes())
    return outputs.literals["o0"].scalar.primitive.integer


@pytest.mark.slow
def test_a_pod_with_the_plugin_resumes_from_a_pod_without_it(tmp_path: Path) -> None:
    """Attempt 0 runs the task without the plugin (flytekit's SyncCheckpoint writes
    ``_dst_cp``); attempt 1, with the plugin, resumes from its data and leaves it as it
    was."""
    a0, a1 = flyte_prefix(tmp_path, 0), flyte_prefix(tmp_path, 1)
    outcome = pyflyte_execute(tmp_path, "a0", "plain_counter", a0, None, n=10, fail_at=5)
    assert outcome == "RECOVERABLE"
    assert (a0 / "_dst_cp").read_bytes() == b"5"
    before = snapshot(a0)
    assert pyflyte_execute(tmp_path, "a1", "counter", a1, a0, n=10, fail_at=-1) == 5
    assert snapshot(a0) == before
    record = json.loads((a1 / "asynccp-attempt.json").read_text())
    assert record["resume_from"] == {"prefix": str(a0), "step": -1}
    # its own steps start at 0, and the default keeps the newest 3 of its 5 writes
    manifests = sorted(p.name for p in (a1 / "manifests").iterdir())
    assert manifests == [f"{s:020d}.json" for s in (2, 3, 4)]


@pytest.mark.slow
@pytest.mark.parametrize("first", ["plain_counter", "counter"], ids=["flytekit", "asynccp"])
def test_the_chain_crosses_an_attempt_that_never_started(first: str, tmp_path: Path) -> None:
    """Attempt 1's pod never ran Python (lost at start-up, killed at import): its prefix
    does not exist and holds no record. Attempt 2, told only attempt 1's prefix, finds
    attempt 0's by Flyte's own naming of attempt prefixes, and resumes from it."""
    a0, a1, a2 = (flyte_prefix(tmp_path, k) for k in range(3))
    assert pyflyte_execute(tmp_path, "a0", first, a0, None, n=10, fail_at=5) == "RECOVERABLE"
    assert not a1.exists()
    before = snapshot(a0)
    assert pyflyte_execute(tmp_path, "a2", "counter", a2, a1, n=10, fail_at=-1) == 5
    assert snapshot(a0) == before
    assert not a1.exists()  # read, not made
    record = json.loads((a2 / "asynccp-attempt.json").read_text())
    assert record["previous"] == str(a1)
    assert record["resume_from"]["prefix"] == str(a0)


# -- storage, and what the messages say ----------------------------------------------------


@task(task_config=Checkpointing(backoff=0, keep=None))
def plugged_keep_all(step: int) -> str:
    return run_body()


TASKS["asynccp keep=None"] = plugged_keep_all


@pytest.mark.parametrize(("kind", "kept"), [("asynccp", 3), ("asynccp keep=None", 50)])
def test_storage_is_bounded_by_default(kind: str, kept: int, tmp_path: Path) -> None:
    """flytekit's write() overwrites one object; the plugin keeps the newest 3 steps
    unless told otherwise (keep=None: all)."""

    def fifty(cp: Any, scratch: Path) -> None:
        for i in range(50):
            cp.write(b"%d" % i)

    attempt(kind, fifty, tmp_path / "a0", None)
    steps = sorted(int(p.name[:20]) for p in (tmp_path / "a0" / "manifests").iterdir())
    assert steps == list(range(50 - kept, 50))
    # A few bytes each: in their records, no payload objects.
    assert [p for p in (tmp_path / "a0").glob("data/**/*") if p.is_file()] == []
    assert attempt(kind, resume, tmp_path / "a1", tmp_path / "a0")["read"] == "49"


@task(retries=1, task_config=Checkpointing(backoff=0))
def fails_every_time(n: int) -> int:
    current_context().checkpoint.write(b"%d" % n)
    if n:
        raise FlyteRecoverableException("not this time")
    return n


def test_a_local_run_says_what_resumes_from_it() -> None:
    """Run locally, a new run gets a new sandbox: the message says so, instead of
    pointing at the sandbox to "run it again" on. And the task's error is the error,
    with nothing of the plugin's own machinery as its context."""
    with pytest.raises(asynccp.RetriesExhausted) as info:
        fails_every_time(n=1)
    message = str(info.value)
    assert "failed 2 time(s)" in message
    assert "starts in a new sandbox, so running it again starts from scratch" in message
    assert "run again to resume" not in message
    cause = info.value.__cause__
    assert isinstance(cause, FlyteRecoverableException)
    chain = []
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert [type(e).__name__ for e in chain] == ["FlyteRecoverableException"]


def test_a_pods_error_has_no_stray_context(tmp_path: Path) -> None:
    """The error flytekit records for a pod is the body's, with no other exception
    (an event-loop probe, say) as its context."""

    def fails(cp: Any, scratch: Path) -> None:
        cp.write(b"1")
        raise KeyError("the body's own")

    BODY[:] = [fails]
    with setup_execution(
        raw_output_data_prefix=str(tmp_path / "raw"), checkpoint_path=str(tmp_path / "a0")
    ) as ctx:
        literals = TypeEngine.dict_to_literal_map(ctx, {"step": 0}, {"step": int})
        with pytest.raises(FlyteUserRuntimeException) as info:
            plugged.dispatch_execute(ctx, literals)
    error = info.value.value
    assert isinstance(error, KeyError)
    assert error.__context__ is None and error.__cause__ is None


@pytest.mark.slow
def test_on_an_object_store_an_attempt_that_saved_nothing_leaves_no_prefix(
    moto_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    """Why a missing previous prefix is "nothing saved" for the plugin: in a bucket it is
    what every attempt that saved nothing leaves, and flytekit's own read() then fails
    the next attempt. Pods on a (moto) bucket, told that attempt 0 ran and saved nothing."""
    credentials = {"ACCESS_KEY_ID": "testing", "SECRET_ACCESS_KEY": "testing"}
    env = {
        "FLYTE_AWS_ENDPOINT": moto_server,  # flytekit's file access
        **{f"FLYTE_AWS_{k}": v for k, v in credentials.items()},
        "AWS_ENDPOINT_URL": moto_server,  # asynccp's (obstore's)
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        **{f"AWS_{k}": v for k, v in credentials.items()},
    }
    seen = {
        task_name: pyflyte_execute(
            tmp_path,
            task_name,
            task_name,
            f"s3://{s3_bucket}/{task_name}/1",
            f"s3://{s3_bucket}/{task_name}/0",
            env=env,
            n=3,
            fail_at=-1,
        )
        for task_name in ("plain_counter", "counter")
    }
    # flytekit's FlyteDataNotFoundException is a user error Flyte does not retry.
    assert seen == {"plain_counter": "NON_RECOVERABLE", "counter": 0}
    doc = errors_pb2.ErrorDocument()
    doc.ParseFromString((tmp_path / "plain_counter-out" / "error.pb").read_bytes())
    assert "File not found" in doc.error.message
