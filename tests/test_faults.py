"""Failure behaviour of asynccp against real stores, with faults injected at real boundaries.

Stores that fail (a missing bucket, a server answering 503 or dropping connections,
through the fault proxy), transient faults that must be retried, a body that raises
while saves are pending, payload objects truncated, deleted or bit-flipped in storage,
manifests edited to escape the restore folder or to be garbage, two writers racing for
one step, and a checkpointer cancelled (or timed out) during its exit flush.

Nothing here patches asynccp or obstore: the store is moto's real HTTP server (directly
or through :class:`FaultProxy`), or a local directory whose files the test damages.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import obstore
import obstore.exceptions
import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, make_s3_store
from _proxy import FailMode, FaultProxy, HoldingProxy
from _sites import Raw, Site
from obstore.store import S3Store

import asynccp
from asynccp import (
    Checkpoint,
    Checkpointer,
    CommitUnknownError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    FlushTimeoutError,
    StepAlreadyCommittedError,
    StoreError,
    UploadError,
)
from asynccp._layout import data_dir, manifest_key, payload_key

if TYPE_CHECKING:
    from obstore.store import RetryConfig

MiB = 1 << 20

#: Give up quickly on a store that is down: 3 tries within a few tens of milliseconds.
FAIL_FAST: RetryConfig = {
    "max_retries": 2,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=50),
    },
    "retry_timeout": timedelta(seconds=5),
}
#: Enough retries to ride out a couple of failed connections.
RETRY_A_FEW: RetryConfig = {
    "max_retries": 5,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=50),
    },
    "retry_timeout": timedelta(seconds=10),
}


def blob(step: int, size: int, salt: str = "") -> bytes:
    """Deterministic pseudo-random bytes for ``step`` (so every payload is distinct)."""
    return random.Random(f"{salt}/{step}/{size}").randbytes(size)


def data_key(step: int, writer: str, name: str = "data") -> str:
    """Key of a payload object (the layout of asynccp/_layout.py)."""
    return payload_key(data_dir(step, writer), name)


def assert_chained_to_obstore(err: BaseException) -> None:
    """``err`` is asynccp's UploadError whose ``__cause__`` is the error obstore raised."""
    assert isinstance(err, UploadError), repr(err)
    assert isinstance(err, asynccp.CheckpointError)
    cause = err.__cause__
    # obstore raises its own exception classes, except that a 404 maps to FileNotFoundError
    assert isinstance(cause, (obstore.exceptions.BaseError, FileNotFoundError)), repr(cause)


# -- 1. a store that fails -------------------------------------------------------------


@dataclass
class FailingStore:
    """A store that fails every write, and a way to see (through a working path) what landed."""

    store: S3Store
    reader: S3Store | None  # the same bucket without the fault; None if there is no bucket
    cause_text: str  # what obstore's error says


@pytest.fixture(params=["missing-bucket", "503", "drop"])
def failing_store(request: pytest.FixtureRequest, moto_server: str) -> Iterator[FailingStore]:
    if request.param == "missing-bucket":
        bucket = f"asynccp-missing-{uuid.uuid4().hex[:12]}"
        yield FailingStore(
            make_s3_store(moto_server, bucket, retry_config=FAIL_FAST), None, "NoSuchBucket"
        )
        return
    proxy: FaultProxy = request.getfixturevalue("fault_proxy")
    bucket = request.getfixturevalue("s3_bucket")
    proxy.set_mode(request.param)
    text = "503 Service Unavailable" if request.param == "503" else "error sending request"
    yield FailingStore(
        make_s3_store(proxy.url, bucket, retry_config=FAIL_FAST),
        make_s3_store(moto_server, bucket),
        text,
    )
    assert proxy.failures >= 1, "the proxy never failed a request: the test did not test"


def assert_nothing_committed(fs: FailingStore) -> None:
    if fs.reader is not None:  # read the bucket through a working path
        raw = Raw(store=fs.reader)
        assert raw.keys("manifests/") == []
        assert raw.keys("data/") == []


async def test_failing_store_handle_then_next_save_raise(failing_store: FailingStore) -> None:
    async with Checkpointer(failing_store.store) as cp:
        h = await cp.save(0, {"a": b"a" * 1000, "b/c": b"c" * 100})
        with pytest.raises(UploadError) as by_handle:
            await h
        assert_chained_to_obstore(by_handle.value)
        assert failing_store.cause_text in str(by_handle.value.__cause__)
        assert "step 0" in str(by_handle.value)
        # the failure reaches the main line at the next save(), which stages nothing
        with pytest.raises(UploadError) as by_save:
            await cp.save(1, b"next")
        assert by_save.value is by_handle.value
        assert cp.stats.failed == 1 and cp.stats.committed == 0
    # delivered once: the exit has nothing left to raise
    assert cp.stats.saves == 1
    assert_nothing_committed(failing_store)


async def test_failing_store_exit_raises(failing_store: FailingStore) -> None:
    with pytest.raises(UploadError) as by_exit:
        async with Checkpointer(failing_store.store) as cp:
            h = await cp.save(0, b"x" * 5000)
    assert_chained_to_obstore(by_exit.value)
    assert failing_store.cause_text in str(by_exit.value.__cause__)
    assert h.done() and h.exception() is by_exit.value
    with pytest.raises(UploadError):
        await h
    assert cp.stats.failed == 1 and cp.stats.committed == 0
    assert_nothing_committed(failing_store)


def _steps_named(error: BaseException) -> list[int]:
    """The steps an error and its notes name, in the order they name them."""
    text = " ".join([str(error), *getattr(error, "__notes__", [])])
    return [int(s) for s in re.findall(r"step (\d+)", text)]


async def test_failures_are_reported_earliest_step_first(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """Several checkpoints failing: save(), flush() and the exit raise the earliest
    step's failure first. Step 1's upload is held by the network while step 2's fails
    (503): the next save() does not report step 2 ahead of step 1, still to come; once
    the network gives up on step 1 too, the exit raises step 1's failure, the later
    ones as notes, in step order."""
    store = S3Store(
        s3_bucket,
        config={
            "endpoint": fault_proxy.url,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "region": REGION,
        },
        # a new connection per request: the proxy's mode applies to each one
        client_options={"allow_http": True, "pool_max_idle_per_host": "0"},
        retry_config={"max_retries": 0},
    )
    with pytest.raises(UploadError) as at_exit:
        async with Checkpointer(
            store, limits=asynccp.Limits(max_pending=8), store=asynccp.StoreOptions(io_attempts=1)
        ) as cp:
            fault_proxy.hold_requests(rb"^PUT \S*/data/" + f"{1:020d}".encode())
            # (payload objects: larger than a record holds)
            one = await cp.save(1, b"one" * 2000)
            await anyio.to_thread.run_sync(fault_proxy.wait_held)
            fault_proxy.set_mode("503", cut_active=False)
            two = await cp.save(2, b"two" * 2000)
            with pytest.raises(UploadError, match="step 2"):
                await two
            three = await cp.save(3, b"three" * 2000)  # step 1 still pending: nothing to report
            fault_proxy.cut_active()  # the network drops step 1's upload
            fault_proxy.release()
            with pytest.raises(UploadError, match="step 1"):
                await one
            with pytest.raises(UploadError, match="step 3"):
                await three
    assert at_exit.value is one.exception()
    assert _steps_named(at_exit.value) == [1, 2, 3]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real disk that fills up (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def test_a_full_disk_reports_the_earliest_failed_step_first(small_disk: Path) -> None:
    """Disk full (ENOSPC) for several queued checkpoints: the exit raises the earliest
    step that failed, every later failure a note on it, in step order."""
    payloads = {step: bytes([step]) * 300_000 for step in range(1, 12)}
    with pytest.raises(UploadError) as at_exit:
        async with Checkpointer(small_disk / "loc", limits=asynccp.Limits(max_pending=16)) as cp:
            handles = [await cp.save(step, data) for step, data in payloads.items()]
    failed = [h.step for h in handles if h.exception() is not None]
    assert len(failed) >= 2, "premise: several checkpoints failed"
    assert at_exit.value is handles[failed[0] - 1].exception()
    assert "No space left" in repr(at_exit.value.__cause__) or "ENOSPC" in str(at_exit.value)
    assert _steps_named(at_exit.value) == failed


@pytest.mark.slow
async def test_failing_store_read_side_raises_not_none(failing_store: FailingStore) -> None:
    """A store that cannot be read must not look like "no checkpoint yet" (start from zero)."""
    async with Checkpointer(failing_store.store) as cp:
        with pytest.raises(StoreError) as ei:
            await cp.latest()
        assert ei.value.__cause__ is not None
        with pytest.raises(StoreError):
            await cp.prev_exists()
        with pytest.raises(StoreError):
            await cp.read()
        with pytest.raises(StoreError):  # not "no checkpoint at step 0"
            await cp.get(0)


# -- 2. transient errors are retried ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["503", "drop"])
async def test_transient_faults_are_retried(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str, mode: FailMode
) -> None:
    """Two failed connections before a save are ridden out, every time (many rounds).

    Each round cuts the client's pooled connections and fails the next two new ones,
    so both a stale pooled connection and a fresh one meet the fault.
    """
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=RETRY_A_FEW)
    # obstore mishandles a dropped connection only now and then (~2% of rounds: it gives
    # up without retrying, or its retries fail inside the client without reconnecting),
    # so the "drop" case needs many rounds to catch a core that relies on obstore alone
    rounds = 250 if mode == "drop" else 20
    sizes = dict.fromkeys(range(rounds), 1000)
    sizes[rounds] = 2 * MiB
    sizes[rounds + 1] = 11 * MiB  # a multipart upload (chunk_size is 8 MiB)
    async with Checkpointer(store) as cp:
        for step, size in sizes.items():
            fault_proxy.reset_counts()
            fault_proxy.fail_next(2, mode)
            h = await cp.save(step, blob(step, size))
            try:
                ckpt = await h
            except UploadError as e:
                first_line = str(e).splitlines()[0]
                pytest.fail(
                    f"round {step}: a transient {mode!r} fault was not retried: {first_line}"
                )
            assert ckpt.step == step
            assert fault_proxy.failures == 2, "the faults were not hit"
            assert fault_proxy.pending_failures == 0
            assert fault_proxy.connections >= 3  # two failed connections, then retried ones
        assert cp.stats.failed == 0 and cp.stats.committed == len(sizes)
    # read back through a path without the proxy
    async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:
        found = await reader.list()
        assert [c.step for c in found] == list(sizes)
        for c in found:
            await c.verify()
            assert await c.read() == blob(c.step, sizes[c.step])


# -- 3. the body raises: pending saves are flushed, then the exception propagates -------


class BodyError(Exception):
    """What the body of the `async with` raises in these tests."""


async def test_body_exception_flushes_pending_then_propagates_unchanged(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket)
    steps = range(10)
    boom = BodyError("the job failed")
    handles = []
    with pytest.raises(BodyError) as ei:
        async with Checkpointer(
            store, limits=asynccp.Limits(max_pending=64, max_pending_bytes=1 << 31)
        ) as cp:
            for step in steps:
                handles.append(await cp.save(step, blob(step, 3 * MiB), metadata={"s": step}))
            # premise: the uploads are still going when the body raises
            assert cp.stats.queue_depth > 0, "uploads finished too fast for this test"
            raise boom
    assert ei.value is boom and type(ei.value) is BodyError
    assert not getattr(boom, "__notes__", None), "a successful flush must not annotate"
    assert all(h.done() and h.exception() is None for h in handles)
    assert cp.stats.committed == len(steps)
    async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:
        found = await reader.list()
        assert [c.step for c in found] == list(steps)
        for c in found:
            assert c.metadata == {"s": c.step}
            assert await c.read() == blob(c.step, 3 * MiB)


@pytest.mark.parametrize(
    ("payload", "error"),
    [(b"lost" * 2000, UploadError), (b"lost", CommitUnknownError)],
    ids=["stored", "inline"],
)
async def test_body_exception_with_failed_flush_gets_notes(
    fault_proxy: FaultProxy, s3_bucket: str, payload: bytes, error: type[UploadError]
) -> None:
    """The failed flush is a note on the body's exception. A payload object that cannot
    be put: the checkpoint did not upload. A tiny checkpoint's first request is the
    create of its record: when it fails and the store cannot be asked, whether it
    landed is unknown."""
    fault_proxy.set_mode("503")
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAIL_FAST)
    boom = BodyError("the job failed")
    with pytest.raises(BodyError) as ei:
        async with Checkpointer(store) as cp:
            h = await cp.save(0, payload)
            raise boom
    assert ei.value is boom
    notes = getattr(boom, "__notes__", [])
    assert any(f"{error.__name__}:" in n for n in notes), notes
    assert type(h.exception()) is error


# -- 4. payload objects truncated, missing, or flipped in storage ----------------------


async def save_steps(location: Any, payloads: dict[int, Any]) -> str:
    """Commit ``payloads`` (step -> payload) with a fresh checkpointer; return its writer id."""
    async with Checkpointer(location) as cp:
        for step, payload in payloads.items():
            await cp.save(step, payload)
    return cp.writer_id


@pytest.mark.parametrize("damage", ["truncate", "delete", "extend"])
async def test_latest_skips_incomplete_payload(site: Site, damage: str) -> None:
    payloads = {1: blob(1, 300_000), 2: blob(2, 300_000)}
    writer = await save_steps(site.make_location(), payloads)
    key = data_key(2, writer)
    if damage == "truncate":
        site.raw.put(key, payloads[2][:1000])
    elif damage == "delete":
        site.raw.delete(key)
    else:
        site.raw.put(key, payloads[2] + b"tail")
    incomplete = r"checkpoint 2\b.*payload objects .* missing or truncated"
    with pytest.warns(CorruptCheckpointWarning, match=incomplete):  # opening: the floor
        async with Checkpointer(site.make_location()) as cp:
            with pytest.warns(CorruptCheckpointWarning, match=incomplete):
                latest = await cp.latest()
            assert latest is not None and latest.step == 1
            assert await latest.read() == payloads[1]
            assert [c.step for c in await cp.list()] == [1, 2]  # still committed, incomplete
            with pytest.warns(CorruptCheckpointWarning, match=incomplete):
                assert await cp.read() == payloads[1]


async def test_flipped_byte_is_detected_and_restore_falls_back(site: Site, tmp_path: Path) -> None:
    payloads = {1: blob(1, 200_000), 2: blob(2, 200_000)}
    writer = await save_steps(site.make_location(), payloads)
    key = data_key(2, writer)
    damaged = bytearray(site.raw.get(key))
    damaged[123_456] ^= 0x01
    site.raw.put(key, bytes(damaged))
    async with Checkpointer(site.make_location()) as cp:
        ckpt = await cp.get(2)
        latest = await cp.latest()  # sizes are right: the cheap check cannot see a flip
        assert latest is not None and latest.step == 2
        with pytest.raises(CorruptCheckpointError, match="checksum"):
            await ckpt.read()
        with pytest.raises(CorruptCheckpointError):
            await ckpt.verify()
        with pytest.raises(CorruptCheckpointError, match="checksum"):  # not a group
            await ckpt.read_all()
        with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint 2\b"):
            assert await cp.read() == payloads[1]
        with pytest.raises(CorruptCheckpointError):
            await ckpt.download(tmp_path / "direct")
        assert not [p for p in (tmp_path / "direct").rglob("*") if p.is_file()]
        with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint 2\b"):
            out = await cp.restore(tmp_path / "dest")
        assert out is not None
        assert (out / "data").read_bytes() == payloads[1]
        await (await cp.get(1)).verify()


async def test_restore_of_multi_file_checkpoint_falls_back_whole(
    site: Site, tmp_path: Path
) -> None:
    """A corrupt newest checkpoint leaves none of its files in the destination."""
    one = {"model.bin": blob(1, 100_000, "m"), "opt/state.bin": blob(1, 50_000, "o")}
    two = {
        "model.bin": blob(2, 100_000, "m"),
        "opt/state.bin": blob(2, 50_000, "o"),
        "extra.bin": blob(2, 10_000, "e"),
    }
    writer = await save_steps(site.make_location(), {1: one, 2: two})
    key = data_key(2, writer, "opt/state.bin")
    damaged = bytearray(site.raw.get(key))
    damaged[-1] ^= 0x80
    site.raw.put(key, bytes(damaged))
    dest = tmp_path / "dest"
    async with Checkpointer(site.make_location()) as cp:
        with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint 2\b"):
            out = await cp.restore(dest)
    assert out is not None
    restored = {
        p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
    }
    assert restored == one  # step 1 whole, nothing of step 2 (no extra.bin, no tmp files)


# -- 5. manifests edited to escape the destination, or to be garbage --------------------


def snapshot_tree(root: Path, skip: tuple[Path, ...]) -> dict[str, bytes]:
    """Every file under ``root`` (outside ``skip``) with its content."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not any(p == s or s in p.parents for s in skip):
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def plant_escaped_object(store_root: Path, folder: str, name: str, data: bytes) -> None:
    """Put ``data`` where ``folder/name`` would resolve in the store, if that is a free spot.

    Then only name validation stands between the edited manifest and a successful
    (escaping) restore.
    """
    escaped = Path(os.path.normpath(store_root / folder / name.lstrip("/")))
    if store_root in escaped.parents and not escaped.exists():
        escaped.parent.mkdir(parents=True, exist_ok=True)
        escaped.write_bytes(data)


@pytest.mark.parametrize("bad_name", ["../../x", "a/../../x", "..", "ABSOLUTE", "a/./b", "a//b"])
async def test_manifest_naming_escape_is_refused(tmp_path: Path, bad_name: str) -> None:
    work = tmp_path / "work"
    store_root = work / "store"
    dest = work / "restore" / "dest"
    if bad_name == "ABSOLUTE":
        bad_name = str(work / "restore" / "abs-x")
    p1, p2 = blob(1, 5000), blob(2, 5000)
    await save_steps(store_root, {1: p1, 2: p2})
    path = store_root / manifest_key(2)
    doc = json.loads(path.read_text())
    doc["files"] = {bad_name: doc["files"]["data"]}  # right size and checksum for p2
    path.write_text(json.dumps(doc))
    plant_escaped_object(store_root, doc["data"], bad_name, p2)
    before = snapshot_tree(tmp_path, skip=(store_root, dest))
    invalid = r"checkpoint 2\b.*invalid manifest"
    with pytest.warns(CorruptCheckpointWarning, match=invalid):  # opening: the floor
        async with Checkpointer(store_root) as cp:
            with pytest.raises(CorruptCheckpointError, match="invalid manifest"):
                await cp.get(2)
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                latest = await cp.latest()
            assert latest is not None and latest.step == 1
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                assert [c.step for c in await cp.list()] == [1]
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                out = await cp.restore(dest)
            # a later step can still be saved after the bad one
            await (await cp.save(3, b"after"))
    assert out == dest
    assert snapshot_tree(dest, skip=()) == {"data": p1}
    assert snapshot_tree(tmp_path, skip=(store_root, dest)) == before, "wrote outside dest"


def _edit(fn: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    def apply(raw: bytes) -> bytes:
        doc = json.loads(raw)
        fn(doc)
        return json.dumps(doc).encode()

    return apply


def _file_info(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["files"]["data"]  # type: ignore[no-any-return]


BAD_MANIFESTS: dict[str, Callable[[bytes], bytes]] = {
    "not-json": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "not-utf8": lambda raw: b"\xff\xfe\x00garbage",
    "json-list": lambda raw: b"[1, 2, 3]",
    "json-null": lambda raw: b"null",
    "deeply-nested": lambda raw: b"[" * 100_000 + b"]" * 100_000,
    "format-99": _edit(lambda d: d.update(format=99)),
    "missing-format": _edit(lambda d: d.pop("format")),
    "missing-files": _edit(lambda d: d.pop("files")),
    "missing-step": _edit(lambda d: d.pop("step")),
    "missing-writer": _edit(lambda d: d.pop("writer")),
    "missing-created-at": _edit(lambda d: d.pop("created_at")),
    "step-string": _edit(lambda d: d.update(step="2")),
    "step-mismatch": _edit(lambda d: d.update(step=1)),
    "files-list": _edit(lambda d: d.update(files=[])),
    "file-entry-string": _edit(lambda d: d["files"].update(data="oops")),
    "size-string": _edit(lambda d: _file_info(d).update(size="5000")),
    "size-negative": _edit(lambda d: _file_info(d).update(size=-1)),
    "size-float": _edit(lambda d: _file_info(d).update(size=5000.0)),
    "size-bool": _edit(lambda d: _file_info(d).update(size=True)),
    "size-huge": _edit(lambda d: _file_info(d).update(size=10**40)),
    "size-missing": _edit(lambda d: _file_info(d).pop("size")),
    "crc-not-hex": _edit(lambda d: _file_info(d).update(crc32c="zzzzzzzz")),
    "crc-int": _edit(lambda d: _file_info(d).update(crc32c=12345)),
    "metadata-list": _edit(lambda d: d.update(metadata=[1])),
    "created-at-number": _edit(lambda d: d.update(created_at=12345)),
    "writer-escape": _edit(lambda d: d.update(writer="../x")),
    "data-other-folder": _edit(lambda d: d.update(data="data/" + "0" * 19 + "1-aaaa")),
}


@pytest.mark.parametrize("edit", list(BAD_MANIFESTS), ids=list(BAD_MANIFESTS))
async def test_malformed_manifest_is_an_error_not_a_crash(tmp_path: Path, edit: str) -> None:
    root = tmp_path / "store"
    p1, p2 = blob(1, 5000), blob(2, 5000)
    await save_steps(root, {1: p1, 2: p2})
    path = root / manifest_key(2)
    path.write_bytes(BAD_MANIFESTS[edit](path.read_bytes()))
    invalid = r"checkpoint 2\b.*invalid manifest"
    with pytest.warns(CorruptCheckpointWarning, match=invalid):  # opening: the floor
        async with Checkpointer(root) as cp:
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                latest = await cp.latest()
            assert latest is not None and latest.step == 1
            with pytest.raises(CorruptCheckpointError):
                await cp.get(2)
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                assert [c.step for c in await cp.list()] == [1]
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                assert await cp.read() == p1
            with pytest.warns(CorruptCheckpointWarning, match=invalid):
                out = await cp.restore(tmp_path / "dest")
            assert out is not None and (out / "data").read_bytes() == p1


# -- 6. two writers, one winner --------------------------------------------------------


async def _race_writer(
    cp: Checkpointer,
    step: int,
    payload: dict[str, bytes],
    ready: anyio.Event,
    go: anyio.Event,
    outcome: dict[str, Any],
) -> None:
    """One writer of the race: open, wait for the start signal, save ``step``, await it."""
    try:
        async with cp:
            ready.set()
            await go.wait()
            h = await cp.save(step, payload)
            try:
                outcome["result"] = await h
            except StepAlreadyCommittedError as e:
                outcome["result"] = e
    except StepAlreadyCommittedError as e:
        outcome["exit_error"] = e


async def test_two_writers_same_step_one_winner(site: Site) -> None:
    rounds = 10
    for step in range(rounds):
        writers = [Checkpointer(site.make_location()) for _ in range(2)]
        payloads = [
            {
                "model.bin": blob(step, 200_000, f"model-{i}"),
                "opt/state.bin": blob(step, 50_000, f"opt-{i}"),
                "tag": f"writer {i}".encode(),
            }
            for i in range(2)
        ]
        outcomes: list[dict[str, Any]] = [{}, {}]
        ready = [anyio.Event(), anyio.Event()]
        go = anyio.Event()
        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(
                    _race_writer, writers[i], step, payloads[i], ready[i], go, outcomes[i]
                )
            for event in ready:  # both open before either saves
                await event.wait()
            go.set()

        results = [o.get("result") for o in outcomes]
        winners = [i for i in range(2) if isinstance(results[i], Checkpoint)]
        losers = [i for i in range(2) if isinstance(results[i], StepAlreadyCommittedError)]
        assert len(winners) == 1 and len(losers) == 1, results
        (w,), (lo,) = winners, losers
        err = results[lo]
        assert "already committed" in str(err) and f"step {step}" in str(err)
        assert "exit_error" not in outcomes[w]
        # the failure also reaches the loser's main line, at its exit
        assert isinstance(outcomes[lo].get("exit_error"), StepAlreadyCommittedError)
        async with Checkpointer(site.make_location()) as reader:
            ckpt = await reader.get(step)
            assert ckpt.writer == writers[w].writer_id
            got = {name: await ckpt.read(name) for name in ckpt.files}
        assert got == payloads[w], "committed data is not entirely the winner's"
        loser_folder = f"data/{step:020d}-{writers[lo].writer_id}/"
        assert site.raw.keys(loser_folder) == [], "the loser's payload was not cleaned up"
        if site.raw.root is not None:
            assert not (site.raw.root / loser_folder).exists()
    committed = [int(k[len("manifests/") :][:20]) for k in site.raw.keys("manifests/")]
    assert committed == list(range(rounds))


# -- cancellation and the bounded exit flush --------------------------------------------


async def test_cancelling_the_holder_flushes_what_was_staged(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket)
    steps = range(6)
    handles: list[asynccp.SaveHandle] = []
    staged = anyio.Event()
    holder_scope = anyio.CancelScope()
    opened: list[Checkpointer] = []

    async def holder() -> None:
        with holder_scope:
            async with Checkpointer(store, limits=asynccp.Limits(max_pending=16)) as cp:
                opened.append(cp)
                for step in steps:
                    handles.append(await cp.save(step, blob(step, 2 * MiB)))
                staged.set()
                await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await staged.wait()
        assert opened[0].stats.queue_depth > 0, "premise: uploads still pending at cancel"
        holder_scope.cancel()
    assert holder_scope.cancelled_caught
    assert all(h.done() and h.exception() is None for h in handles)
    await assert_only_complete_checkpoints(make_s3_store(moto_server, s3_bucket), list(steps))


async def test_cancel_during_blocked_save_commits_exactly_the_staged_steps(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket)
    returned: list[asynccp.SaveHandle] = []
    three = anyio.Event()
    holder_scope = anyio.CancelScope()

    async def holder() -> None:
        with holder_scope:
            async with Checkpointer(store, limits=asynccp.Limits(max_pending=1)) as cp:
                for step in itertools.count():  # saves block: one slot, slow uploads
                    returned.append(await cp.save(step, blob(step, MiB)))
                    if len(returned) == 3:
                        three.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await three.wait()
        holder_scope.cancel()
    assert holder_scope.cancelled_caught
    assert len(returned) >= 3
    assert all(h.done() and h.exception() is None for h in returned)
    # a save that returned a handle commits; the cancelled save never does
    await assert_only_complete_checkpoints(
        make_s3_store(moto_server, s3_bucket), [h.step for h in returned]
    )


@pytest.mark.parametrize("hold", ["payload", "manifest"])
async def test_flush_timeout_abandons_pending_and_reports(
    moto_server: str, s3_bucket: str, hold: str
) -> None:
    """The exit flush gives up after flush_timeout; abandoned work never half-commits.

    Step 0 commits; then step 1's payload PUT (or its manifest PUT) is held back by the
    network, so the flush times out with step 1 in flight and steps 2.. staged. After
    the exit, the held request is let through (as a slow network eventually would): the
    store must still hold only complete checkpoints, and the next attempt must be able
    to resume.
    """
    step1 = f"{1:020d}".encode()
    match = b"PUT /" + s3_bucket.encode() + (b"/data/" if hold == "payload" else b"/manifests/")
    with HoldingProxy(moto_server, match + step1) as proxy:
        store = make_s3_store(proxy.url, s3_bucket)
        with pytest.raises(asynccp.CheckpointError) as ei:
            async with Checkpointer(
                store, limits=asynccp.Limits(max_pending=16), flush_timeout=0.2
            ) as cp:
                # (payload objects: larger than a record holds)
                first = await (await cp.save(0, blob(0, 5000)))
                handles = [await cp.save(step, blob(step, 5000)) for step in range(1, 6)]
        assert proxy.held.is_set(), "premise: step 1's request was held during the flush"
        exit_error = ei.value
        mentioned = [repr(exit_error), *getattr(exit_error, "__notes__", [])]
        assert isinstance(exit_error, FlushTimeoutError) or any(
            "FlushTimeoutError" in n for n in mentioned
        ), mentioned
        assert first.step == 0
        assert all(h.done() for h in handles)
        assert all(isinstance(h.exception(), FlushTimeoutError) for h in handles), [
            h.exception() for h in handles
        ]
        # the slow network delivers the held request after all
        proxy.release()
        assert await anyio.to_thread.run_sync(proxy.answered.wait, 10.0)
    async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:
        found = await reader.list()
        steps = [c.step for c in found]
        assert steps in ([0], [0, 1]), steps  # staged-only steps 2.. never commit
        for c in found:  # no half-checkpoint: whatever is committed is complete
            await c.verify()
            assert await c.read() == blob(c.step, 5000)
        # and the next attempt resumes after the latest checkpoint
        latest = await reader.latest()
        assert latest is not None
        assert latest.step == steps[-1]
        nxt = await (await reader.save(latest.step + 1, b"resumed"))
        assert nxt.step == latest.step + 1


async def assert_only_complete_checkpoints(reader_store: S3Store, steps: list[int]) -> None:
    """Exactly ``steps`` are committed, each complete and verified, and no stray payload."""
    async with Checkpointer(reader_store) as reader:
        found = await reader.list()
        assert [c.step for c in found] == steps
        for c in found:
            await c.verify()
            assert await c.read() == blob(c.step, c.size)
        folders = {f"data/{c.step:020d}-{c.writer}/" for c in found}
    keys = Raw(store=reader_store).keys("data/")
    stray = [k for k in keys if "/".join(k.split("/")[:2]) + "/" not in folders]
    assert stray == [], "payload objects of uncommitted checkpoints were left behind"


# -- the exit flush is bounded, and its errors survive a cancellation --------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelled_holder_carries_flush_errors_as_notes(tmp_path: Path, backend: str) -> None:
    """The exception that leaves a cancelled block names what the flush abandoned.

    (asyncio re-raises a pending cancellation as a new exception after the exit:
    the notes must be on that one.)
    """
    caught: list[BaseException] = []

    async def main() -> None:
        with anyio.CancelScope() as outer:
            try:
                async with Checkpointer(tmp_path / backend, flush_timeout=0.001) as cp:
                    for step in range(4):
                        await cp.save(step, bytes(32 * MiB))
                    outer.cancel()
                    await anyio.sleep_forever()
            except BaseException as e:
                caught.append(e)
                raise

    anyio.run(main, backend=backend)
    assert len(caught) == 1
    notes = getattr(caught[0], "__notes__", [])
    assert any("FlushTimeoutError" in n for n in notes), notes


async def test_exit_is_bounded_when_the_store_hangs_after_a_commit(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """A store that stops answering cannot hold the exit past flush_timeout.

    The store client would retry for 6 s; retention and orphan collection run after
    the first commit and meet the dead store too. The exit must still end soon after
    flush_timeout (0.5 s): a liveness bound with a wide margin, not a speed measurement.
    """
    patient = {
        "max_retries": 1000,
        "backoff": {
            "init_backoff": timedelta(milliseconds=50),
            "max_backoff": timedelta(seconds=1),
        },
        "retry_timeout": timedelta(seconds=6),
    }
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=patient)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        with pytest.raises(FlushTimeoutError):
            async with Checkpointer(
                store, retention=asynccp.Retention(orphan_grace=0), keep=1, flush_timeout=0.5
            ) as cp:
                await (await cp.save(0, b"committed"))
                fault_proxy.set_mode("503")  # housekeeping after that commit may meet it too
                stuck = await cp.save(1, b"never" * 2000)  # (its payload put hangs)
        with pytest.raises(FlushTimeoutError):
            await stuck
    fault_proxy.set_mode("pass")
    async with Checkpointer(store) as reader:
        latest = await reader.latest()
        assert latest is not None and latest.step == 0
