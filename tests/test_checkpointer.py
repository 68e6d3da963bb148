"""Checkpointer semantics on every kind of store: local files, memory, and S3 (moto)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from _sites import Site
from obstore.store import MemoryStore

import asynccp
from asynccp import Checkpointer
from asynccp._manifest import INLINE_MAX
from asynccp._write import FlushResult


@pytest.fixture
def location(any_site: Site) -> Any:
    """Something to pass as a Checkpointer location; reusable by a second checkpointer."""
    return any_site.make_location()


async def test_save_commit_and_resume(location: Any) -> None:
    async with Checkpointer(location) as cp:
        assert await cp.latest() is None
        assert not await cp.prev_exists()
        handles = [await cp.save(s, f"state {s}".encode(), metadata={"s": s}) for s in range(5)]
    # leaving the block flushed: every handle is resolved and committed
    assert all(h.done() for h in handles)
    committed = [await h for h in handles]
    assert [c.step for c in committed] == list(range(5))

    async with Checkpointer(location) as cp2:
        prev = await cp2.latest()
        assert prev is not None and prev.step == 4
        assert prev.metadata == {"s": 4}
        assert await prev.read() == b"state 4"
        assert [c.step for c in await cp2.list()] == [0, 1, 2, 3, 4]
        assert await (await cp2.get(2)).read("data") == b"state 2"
        assert await cp2.prev_exists()
        await cp2.save(prev.step + 1, b"more")
    async with Checkpointer(location) as cp3:
        latest = await cp3.latest()
        assert latest is not None and latest.step == 5 and latest.writer != prev.writer


async def test_payload_kinds_round_trip(location: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(3000))
    single = tmp_path / "single.bin"
    single.write_bytes(b"one file")
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    async with Checkpointer(location) as cp:
        h1 = await cp.save(1, {"weights": arr, "note": "hi", "raw": bytearray(b"ba"), "tree": src})
        h2 = await cp.save(2, single)
        h3 = await cp.save(3, memoryview(b"mv"))
        h4 = await cp.save(4, src)
        c1, c2, c3, c4 = await h1, await h2, await h3, await h4
    assert sorted(c1.files) == ["note", "raw", "tree/a.txt", "tree/sub/b.bin", "weights"]
    assert np.array_equal(np.frombuffer(await c1.read("weights")).reshape(3, 4), arr)
    assert await c1.read("note") == b"hi"
    assert await c1.read("tree/sub/b.bin") == (src / "sub" / "b.bin").read_bytes()
    assert list(c2.files) == ["single.bin"] and await c2.read() == b"one file"
    assert await c3.read() == b"mv"
    everything = await c1.read_all()
    assert list(everything) == list(c1.files)
    assert everything["note"] == b"hi" and everything["raw"] == b"ba"
    out = await c4.download(tmp_path / "restored")
    assert (out / "a.txt").read_bytes() == b"alpha"
    assert (out / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".asynccp")]


async def test_snapshot_lets_caller_reuse_buffers_and_files(tmp_path: Path) -> None:
    buf = bytearray(b"A" * 1000)
    arr = np.zeros(1 << 18, dtype=np.uint8)  # 256 KiB
    big = bytearray(b"B" * (6 << 20))  # copied off the loop
    frozen = np.full(5 << 20, 5, dtype=np.uint8)  # read-only: copied in slices
    frozen.flags.writeable = False
    f = tmp_path / "f.bin"
    f.write_bytes(b"before")
    store = MemoryStore()
    async with Checkpointer(store, limits=asynccp.Limits(max_pending=10)) as cp:
        h = await cp.save(0, {"buf": buf, "arr": arr, "big": big, "frozen": frozen, "file": f})
        buf[:] = b"Z" * 1000
        arr[:] = 7
        big[:10] = b"0123456789"
        f.write_bytes(b"after, and longer")
        c = await h
    assert await c.read("buf") == b"A" * 1000
    assert await c.read("arr") == bytes(1 << 18)
    assert await c.read("big") == b"B" * (6 << 20)
    assert await c.read("frozen") == b"\x05" * (5 << 20)
    assert await c.read("file") == b"before"


async def test_reused_staging_buffers_never_mix_checkpoints(tmp_path: Path) -> None:
    """Same-sized saves reuse staging memory; each checkpoint still holds its own bytes."""
    state = bytearray(5 << 20)
    async with Checkpointer(
        tmp_path, limits=asynccp.Limits(max_pending=2, max_pending_bytes=16 << 20)
    ) as cp:
        handles = []
        for step in range(8):
            state[:] = bytes([step]) * len(state)
            handles.append(await cp.save(step, state))
            if step % 3 == 0:
                await handles[-1]  # some saves find a returned buffer, some do not
        committed = [await h for h in handles]
    for step, ckpt in enumerate(committed):
        assert await ckpt.read() == bytes([step]) * len(state)


async def test_steps_must_grow_and_committed_steps_are_not_overwritten(tmp_path: Path) -> None:
    loc = tmp_path / "loc"
    async with Checkpointer(loc) as cp:
        await cp.save(5, b"five")
        with pytest.raises(asynccp.StepOrderError, match="steps must grow"):
            await cp.save(5, b"again")
        with pytest.raises(asynccp.StepOrderError):
            await cp.save(3, b"older")
    # a second writer knows the location's newest valid step from its open: refused at once
    async with Checkpointer(loc) as cp2:
        with pytest.raises(asynccp.StepOrderError, match="newest valid checkpoint, step 5"):
            await cp2.save(5, b"overwrite")
        with pytest.raises(asynccp.StepOrderError):
            await cp2.save(2, b"older")
    # one that opened before another writer committed finds out at commit time; nothing
    # of it is written
    async with Checkpointer(loc) as cp3:
        await cp3.latest()  # its view: step 5 is the newest
        async with Checkpointer(loc) as other:
            await (await other.save(6, b"six"))
        h = await cp3.save(6, b"overwrite")
        with pytest.raises(asynccp.StepAlreadyCommittedError, match="already committed"):
            await h
        with pytest.raises(asynccp.StepAlreadyCommittedError):
            await cp3.save(7, b"next")  # the failure is delivered to the main line once
        writer = cp3.writer_id
    assert not list((loc / "data").glob(f"*-{writer}"))
    async with Checkpointer(loc) as cp4:
        assert await (await cp4.get(5)).read() == b"five"
        assert await (await cp4.get(6)).read() == b"six"


@pytest.mark.parametrize(
    ("step", "error"),
    [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError), (10**20, ValueError)],
)
async def test_bad_steps_are_rejected_and_nothing_is_written(
    tmp_path: Path, step: Any, error: type[Exception]
) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        with pytest.raises(error):
            await cp.save(step, b"x")
    assert not list((tmp_path / "loc").rglob("*.json"))


@pytest.mark.parametrize(
    "payload",
    [
        {"../escape": b"x"},
        {"/abs": b"x"},
        {"a//b": b"x"},
        {"": b"x"},
        {"a/./b": b"x"},
        {"a/": b"x"},
        {"back\\slash": b"x"},
        {"a": b"x", "a/b": b"y"},
    ],
)
async def test_unsafe_names_are_rejected(tmp_path: Path, payload: dict[str, bytes]) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        with pytest.raises(asynccp.InvalidNameError):
            await cp.save(0, payload)
        assert cp.stats.saves == 0
    assert not list((tmp_path / "loc").rglob("*.json"))


async def test_bad_payloads_are_rejected(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        with pytest.raises(TypeError, match="unsupported payload type"):
            await cp.save(0, 42)
        with pytest.raises(TypeError, match="unsupported payload type"):
            await cp.save(0, {"x": object()})

        class Tensor:  # looks like a torch tensor: no buffer protocol, a .numpy()
            def numpy(self) -> Any:
                return np.zeros(3)

        with pytest.raises(TypeError, match=r"asynccp\.State"):
            await cp.save(0, Tensor())
        with pytest.raises(FileNotFoundError, match="does not exist"):
            await cp.save(0, tmp_path / "missing.bin")
        with pytest.raises(TypeError, match="not C-contiguous"):
            await cp.save(0, np.arange(10)[::2])
        with pytest.raises(TypeError, match="JSON"):
            await cp.save(0, b"x", metadata={"f": object()})
        with pytest.raises(TypeError, match="mapping"):
            await cp.save(0, b"x", metadata=[1, 2])
        with pytest.raises(TypeError, match="write\\(\\) takes bytes"):
            await cp.write("text")  # type: ignore[arg-type]
        assert cp.stats.saves == 0
    assert not list((tmp_path / "loc").rglob("*.json"))
    assert not list((tmp_path / "loc").rglob("data/*"))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limits": asynccp.Limits}, TypeError),  # the class, not a value
        ({"limits": {"max_pending": 4}}, TypeError),
        ({"policy": "newest"}, ValueError),
        ({"keep": -1}, ValueError),
        ({"keep": 0}, ValueError),
        ({"keep": 2, "retention": asynccp.Retention(keep=3)}, ValueError),  # they disagree
        ({"policy": "block", "limits": asynccp.Limits(policy="latest")}, ValueError),
        ({"flush_timeout": -1}, ValueError),
        ({"store": asynccp.StoreOptions(prefix="x")}, TypeError),  # store objects only
        ({"sharding": (0, 2)}, TypeError),
        ({"attempt": -1}, ValueError),
    ],
)
def test_bad_options_are_rejected(tmp_path: Path, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        Checkpointer(tmp_path, **kwargs)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: asynccp.Limits(max_pending=0), ValueError, "max_pending"),
        (lambda: asynccp.Limits(max_pending="4"), TypeError, "max_pending"),
        (lambda: asynccp.Limits(max_pending_bytes=-1), ValueError, "max_pending_bytes"),
        (lambda: asynccp.Limits(policy="newest"), ValueError, "policy"),
        (lambda: asynccp.Retention(keep_every=0), ValueError, "keep_every"),
        (lambda: asynccp.Retention(orphan_grace=-1), ValueError, "orphan_grace"),
        (lambda: asynccp.StoreOptions(durable="yes"), TypeError, "durable"),
        (lambda: asynccp.StoreOptions(chunk_size=1024), ValueError, "5 MiB"),
        (lambda: asynccp.StoreOptions(obstore=[("region", "x")]), TypeError, "mapping"),
        (lambda: asynccp.Sharding(shard=2, shards=2, generation="g"), ValueError, "shard"),
    ],
)
def test_bad_option_values_are_rejected_when_made(
    make: Callable[[], object], error: type[Exception], match: str
) -> None:
    """A setting is checked where it is written, before any checkpointer sees it."""
    with pytest.raises(error, match=match):
        make()


def test_options_are_values_shared_by_every_entry_point(tmp_path: Path) -> None:
    """One Limits made once goes to a Checkpointer, supervise and lifespan alike; the
    shortcuts fold into the values (one code path)."""
    limits = asynccp.Limits(max_pending=2)
    cp = Checkpointer(tmp_path, limits=limits, keep=3, policy="latest")
    assert cp.options.limits == asynccp.Limits(max_pending=2, policy="latest")
    assert cp.options.retention == asynccp.Retention(keep=3)
    with pytest.raises(TypeError, match=r"did you mean 'keep'"):
        asynccp.lifespan(tmp_path, restore=dict, initial=dict, dump=str, every=1, kep=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "location", ["ftp://host/x", "", 42, "memory://a/../b"], ids=["scheme", "empty", "int", "dots"]
)
def test_bad_locations_are_rejected(location: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        Checkpointer(location)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"allow_http": True}, TypeError, "client_options"),  # obstore would panic
        ({"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
def test_bad_store_options_are_clear_errors(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Checkpointer("s3://bucket/prefix", store=asynccp.StoreOptions(obstore=options))
    with pytest.raises(TypeError, match="does not apply"):  # a path takes none
        Checkpointer("relative/path", store=asynccp.StoreOptions(obstore=options))


async def test_closed_checkpointer_refuses_work(tmp_path: Path) -> None:
    cp = Checkpointer(tmp_path)
    with pytest.raises(asynccp.CheckpointClosedError):
        await cp.save(0, b"x")
    async with cp:
        pass
    with pytest.raises(asynccp.CheckpointClosedError):
        await cp.save(0, b"x")
    with pytest.raises(asynccp.CheckpointClosedError):
        async with cp:
            pass


async def test_reads_before_the_block_say_to_use_it_and_work_after_it(tmp_path: Path) -> None:
    """A read before ``async with`` names the fix (not a store error); after the block,
    reads keep working (a supervisor reads the newest step once an attempt closed)."""
    cp = Checkpointer(tmp_path / "loc")
    reads = [cp.latest, cp.list, cp.read, cp.prev_exists, lambda: cp.get(0)]
    for read in reads:
        with pytest.raises(asynccp.CheckpointClosedError, match="inside `async with"):
            await read()
    async with cp:
        await (await cp.save(0, b"zero"))
    latest = await cp.latest()
    assert latest is not None and latest.step == 0
    assert [c.step for c in await cp.list()] == [0]
    assert await cp.read() == b"zero" and await cp.prev_exists()
    assert await (await cp.get(0)).read() == b"zero"


@pytest.mark.parametrize(
    ("kwargs", "suggestion"),
    [
        ({"kep": 3}, "keep"),
        ({"limit": asynccp.Limits()}, "limits"),
        ({"flush_timout": 1}, "flush_timeout"),
    ],
)
@pytest.mark.parametrize("where", ["local", "memory", "s3-url", "store"])
def test_unknown_keyword_is_reported_with_the_closest_name(
    tmp_path: Path, kwargs: dict[str, Any], suggestion: str, where: str
) -> None:
    """A misspelt option is an unknown keyword argument (not a store option that "does
    not apply to local paths"), whatever the location."""
    location: Any = {
        "local": tmp_path,
        "memory": "memory://x",
        "s3-url": "s3://bucket/prefix",
        "store": MemoryStore(),
    }[where]
    with pytest.raises(TypeError, match="unexpected keyword argument") as ei:
        Checkpointer(location, **kwargs)
    assert f"did you mean {suggestion!r}?" in str(ei.value)


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"max_pending": 2}, "limits=asynccp.Limits(max_pending=...)"),
        ({"durable": False}, "store=asynccp.StoreOptions(durable=...)"),
        ({"orphan_grace": 0}, "retention=asynccp.Retention(orphan_grace=...)"),
        ({"shard": 0}, "sharding=asynccp.Sharding(shard=...)"),
    ],
)
def test_a_keyword_of_an_earlier_release_names_the_value_that_holds_it(
    tmp_path: Path, kwargs: dict[str, Any], value: str
) -> None:
    with pytest.raises(TypeError, match="takes no") as ei:
        Checkpointer(tmp_path, **kwargs)
    assert value in str(ei.value)
    with pytest.raises(TypeError, match="takes no"):
        asynccp.lifespan(tmp_path, restore=dict, initial=dict, dump=str, every=1, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limits": {"max_pending": "4"}}, TypeError),
        ({"keep": "4"}, TypeError),
        ({"keep": 0}, ValueError),
        ({"store": "durable"}, TypeError),
        ({"flush_timeout": "10"}, TypeError),
        ({"flush_timeout": float("nan")}, ValueError),
        ({"attempt": True}, TypeError),
        ({"policy": 3}, TypeError),
        ({"staging_dir": 3}, TypeError),
    ],
)
def test_one_error_style_wrong_type_is_type_error_bad_value_is_value_error(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error) as ei:
        Checkpointer(tmp_path, **kwargs)
    assert type(ei.value) is error  # not a subclass doing double duty
    assert next(iter(kwargs)) in str(ei.value)  # the message names the argument


@pytest.mark.parametrize(
    ("make", "error", "name"),
    [
        (lambda: asynccp.Limits(max_pending="4"), TypeError, "max_pending"),
        (lambda: asynccp.Limits(max_pending=0), ValueError, "max_pending"),
        (lambda: asynccp.StoreOptions(chunk_size="8MiB"), TypeError, "chunk_size"),
        (lambda: asynccp.StoreOptions(chunk_size=1 << 20), ValueError, "chunk_size"),
        (lambda: asynccp.Retention(orphan_grace=-1), ValueError, "orphan_grace"),
        (lambda: asynccp.StoreOptions(io_attempts=True), TypeError, "io_attempts"),
        (lambda: asynccp.Limits(policy=3), TypeError, "policy"),
    ],
)
def test_option_values_keep_the_one_error_style(
    make: Callable[[], object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error) as ei:
        make()
    assert type(ei.value) is error and name in str(ei.value)


async def test_block_policy_applies_backpressure_on_count_and_bytes() -> None:
    store = MemoryStore()
    async with Checkpointer(
        store, limits=asynccp.Limits(max_pending=2, max_pending_bytes=1 << 20)
    ) as cp:
        for step in range(20):
            await cp.save(step, os.urandom(300_000))
            # never more staged than the bounds (one oversize save is the only exception)
            assert cp.stats.queue_depth <= 2
            assert cp.stats.queue_bytes <= 1 << 20
    assert cp.stats.committed == 20 and cp.stats.superseded == 0


async def test_oversized_checkpoint_is_accepted_alone() -> None:
    async with Checkpointer(MemoryStore(), limits=asynccp.Limits(max_pending_bytes=1000)) as cp:
        await cp.save(0, b"a" * 10)
        h = await cp.save(1, b"b" * 5000)  # waits for an empty queue, then goes alone
        assert cp.stats.queue_depth == 1
        assert (await h).size == 5000


async def test_latest_policy_supersedes_oldest_waiting(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path, limits=asynccp.Limits(max_pending=2), policy="latest") as cp:
        handles = [await cp.save(s, s.to_bytes(16, "big")) for s in range(200)]
        assert cp.stats.queue_depth <= 2
    superseded = [h for h in handles if h.superseded]
    committed = [h for h in handles if not h.superseded]
    assert superseded, "200 back-to-back saves into a 2-slot queue must supersede some"
    assert committed[-1].step == 199  # the newest always wins
    with pytest.raises(asynccp.SupersededError):
        await superseded[0]
    assert cp.stats.superseded == len(superseded)
    assert cp.stats.committed == len(committed)
    async with Checkpointer(tmp_path) as cp2:
        steps = [c.step for c in await cp2.list()]
    assert steps == [h.step for h in committed]  # committed in save order, none lost


async def test_retention_keeps_newest_and_milestones(location: Any) -> None:
    async with Checkpointer(
        location,
        limits=asynccp.Limits(max_pending=1),
        retention=asynccp.Retention(keep_every=5),
        keep=2,
    ) as cp:
        for step in range(12):  # (larger than a record holds: payload objects)
            await (await cp.save(step, {"a": b"x" * (INLINE_MAX + step), "b/c": b"y"}))
    async with Checkpointer(location) as cp2:
        assert [c.step for c in await cp2.list()] == [0, 5, 10, 11]
        # no payload of a deleted checkpoint remains
        kept = {c.writer for c in await cp2.list()}
        assert len(kept) == 1
    if isinstance(location, Path):
        folders = sorted(p.name[:20] for p in (location / "data").iterdir())
        assert [int(f) for f in folders] == [0, 5, 10, 11]


async def test_orphaned_payload_is_collected(tmp_path: Path) -> None:
    loc = tmp_path / "loc"
    orphan = loc / "data" / f"{3:020d}-deadbeef"
    orphan.mkdir(parents=True)
    (orphan / "data").write_bytes(b"crashed writer")
    fresh = loc / "data" / f"{9:020d}-cafe"
    fresh.mkdir(parents=True)
    (fresh / "data").write_bytes(b"another writer, still uploading")
    os.utime(orphan / "data", (0, 0))  # long ago
    async with Checkpointer(loc, retention=asynccp.Retention(orphan_grace=600)) as cp:
        await (await cp.save(4, b"real"))
    assert not orphan.exists()
    assert fresh.exists()  # younger than the grace period: left alone


async def test_stats_and_handles(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path) as cp:
        h = await cp.save(0, b"12345")
        assert repr(h).startswith("<SaveHandle step=0")
        ckpt = await h
        assert h.done() and h.exception() is None and not h.superseded
        stats = cp.stats
    assert stats.saves == 1 and stats.committed == 1 and stats.failed == 0
    assert stats.bytes_saved == stats.bytes_committed == 5
    assert stats.last_committed_step == 0 and stats.queue_depth == 0
    assert stats.stall_seconds >= stats.max_stall_seconds > 0
    assert ckpt.files["data"].checksum.startswith("crc32c:")


async def test_flyte_style_write_read_restore(tmp_path: Path) -> None:
    loc = tmp_path / "loc"
    async with Checkpointer(loc) as cp:
        assert await cp.read() is None
        assert await cp.restore(tmp_path / "none") is None
        await cp.write(b"1")
        await cp.write(b"2")
        await cp.flush()
        assert await cp.read() == b"2"
    async with Checkpointer(loc) as cp:
        h = await cp.write(b"3")  # continues after the committed steps
        assert h.step == 2
        await cp.save(3, {"x": b"1", "y": b"2"})
        await cp.flush()
        with pytest.raises(asynccp.CheckpointError, match="holds 2 files"):
            await cp.read()
        out = await cp.restore(tmp_path / "dest")
        assert out is not None
        assert sorted(p.name for p in out.iterdir()) == ["x", "y"]


async def test_get_missing_step_and_file(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path) as cp:
        with pytest.raises(asynccp.CheckpointNotFoundError):
            await cp.get(7)
        c = await (await cp.save(1, b"x"))
        with pytest.raises(asynccp.CheckpointNotFoundError, match="no file 'nope'"):
            await c.read("nope")
        with pytest.raises(ValueError):
            await cp.get(-1)


async def test_manifest_format_on_disk(tmp_path: Path) -> None:
    body = b"abc" * 2000  # larger than a record holds: a payload object
    async with Checkpointer(tmp_path, attempt=2) as cp:
        await cp.save(7, {"w": body}, metadata={"loss": 0.5})
        await cp.save(8, {"w": b"abc"})  # tiny: inside its record
    doc = json.loads((tmp_path / "manifests" / f"{7:020d}.json").read_text())
    assert doc["format"] == 1 and doc["step"] == 7 and doc["attempt"] == 2
    assert doc["data"] == f"data/{7:020d}-{cp.writer_id}"
    assert doc["files"] == {"w": {"size": 6000, "crc32c": f"{crc32c.crc32c(body):08x}"}}
    assert doc["metadata"] == {"loss": 0.5}
    # payload objects hold the caller's bytes unchanged
    assert (tmp_path / doc["data"] / "w").read_bytes() == body
    doc = json.loads((tmp_path / "manifests" / f"{8:020d}.json").read_text())
    assert doc["format"] == 3 and doc["data"] == f"data/{8:020d}-{cp.writer_id}"
    assert doc["files"] == {"w": {"size": 3, "crc32c": "364b3fb7", "inline": "YWJj"}}
    assert not (tmp_path / doc["data"]).exists()  # no payload object: one create


@pytest.mark.parametrize("step", [np.int64(3), np.int32(3), np.uint8(3), np.intp(3)])
async def test_a_numpy_integer_step_is_a_step(tmp_path: Path, step: Any) -> None:
    """Numerical code counts steps in numpy integers: save(), get() take them and
    record a plain int."""
    async with Checkpointer(tmp_path) as cp:
        saved = await (await cp.save(step, b"x"))
        assert saved.step == 3 and type(saved.step) is int
        assert (await cp.get(step)).step == 3
    doc = json.loads((tmp_path / "manifests" / f"{3:020d}.json").read_text())
    assert doc["step"] == 3


@pytest.mark.parametrize("step", [np.bool_(True), np.float64(3.0), np.int64(-1)])
async def test_a_numpy_step_that_is_no_step_is_refused(tmp_path: Path, step: Any) -> None:
    async with Checkpointer(tmp_path) as cp:
        with pytest.raises((TypeError, ValueError), match="step must be an int"):
            await cp.save(step, b"x")


async def test_metadata_from_numerical_code_is_kept_and_read_back(tmp_path: Path) -> None:
    """numpy scalars and NaN/inf in metadata: a diverging run (loss = nan) saves, and
    reads back what it saved — numpy scalars as Python numbers, NaN as NaN — while the
    record stays standard JSON (NaN as {"$float": "nan"})."""
    meta = {
        "loss": np.float32(math.nan),
        "grad": math.inf,
        "low": -math.inf,
        "lr": np.float32(0.5),
        "seen": np.int64(7),
        "done": np.bool_(False),
        "hist": [np.float64(1.5), np.float16(math.nan), {"n": np.uint16(2)}],
    }
    async with Checkpointer(tmp_path) as cp:
        handle = await cp.save(1, b"x", metadata=meta)
        committed = await handle
    raw = (tmp_path / "manifests" / f"{1:020d}.json").read_text()
    doc = json.loads(raw, parse_constant=lambda c: pytest.fail(f"not standard JSON: {c}"))
    assert doc["metadata"]["loss"] == {"$float": "nan"}
    assert doc["metadata"]["grad"] == {"$float": "inf"}
    assert doc["metadata"]["low"] == {"$float": "-inf"}
    async with Checkpointer(tmp_path) as cp:
        loaded = await cp.get(1)
    for back in (committed.metadata, loaded.metadata):
        assert math.isnan(back["loss"]) and type(back["loss"]) is float
        assert back["grad"] == math.inf and back["low"] == -math.inf
        assert back["lr"] == 0.5 and type(back["lr"]) is float
        assert back["seen"] == 7 and type(back["seen"]) is int
        assert back["done"] is False
        assert back["hist"][0] == 1.5 and type(back["hist"][0]) is float
        assert math.isnan(back["hist"][1]) and back["hist"][2] == {"n": 2}


async def test_metadata_that_would_not_read_back_is_refused_at_save(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path) as cp:
        with pytest.raises(ValueError, match=r"\$float"):
            await cp.save(1, b"x", metadata={"x": {"$float": "nan"}})
        with pytest.raises(TypeError, match=r"metadata\['a'\]\[0\] is a complex"):
            await cp.save(1, b"x", metadata={"a": [np.complex64(1)]})
        assert cp.stats.saves == 0


async def test_url_locations(tmp_path: Path, moto_server: str, s3_bucket: str) -> None:
    async with Checkpointer(f"file://{tmp_path}/viaurl") as cp:
        await cp.save(0, b"u")
    assert (tmp_path / "viaurl" / "manifests").is_dir()
    async with Checkpointer("memory://scratch") as cp:
        await (await cp.save(0, b"m"))
        assert (await cp.latest()).step == 0  # type: ignore[union-attr]
    opts = {
        "endpoint": moto_server,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "region": "us-east-1",
    }
    url = f"s3://{s3_bucket}/runs/7"
    async with Checkpointer(
        url,
        store=asynccp.StoreOptions(
            obstore={"config": opts, "client_options": {"allow_http": True}}
        ),
    ) as cp:
        await cp.save(3, b"s3")
    async with Checkpointer(
        url,
        store=asynccp.StoreOptions(
            obstore={"config": opts, "client_options": {"allow_http": True}}
        ),
    ) as cp:
        c = await cp.latest()
        assert c is not None and c.step == 3 and await c.read() == b"s3"
    # the prefix in the URL is honoured: the objects live under runs/7/
    direct = make_s3_store(moto_server, s3_bucket, prefix="runs/7")
    async with Checkpointer(direct) as cp:
        assert (await cp.latest()).step == 3  # type: ignore[union-attr]


async def test_large_file_multipart_on_s3(s3_store: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(12 << 20)  # > chunk_size: multipart
    big.write_bytes(data)
    async with Checkpointer(s3_store, store=asynccp.StoreOptions(chunk_size=5 << 20)) as cp:
        c = await (await cp.save(0, {"big": big, "buf": data}))
    assert c.files["big"].size == len(data)
    assert await c.read("big") == data
    out = await c.download(tmp_path / "out")
    assert (out / "buf").read_bytes() == data


async def test_non_durable_local_writes_same_layout(tmp_path: Path) -> None:
    """durable=False skips fsyncs only: same files, same atomic create, no temp files left."""
    src = tmp_path / "f.bin"
    src.write_bytes(b"file payload")
    async with Checkpointer(tmp_path / "loc", store=asynccp.StoreOptions(durable=False)) as cp:
        await cp.save(0, {"a": b"x" * 10, "f": src, "big": bytearray(5 << 20)})
    async with Checkpointer(tmp_path / "loc", store=asynccp.StoreOptions(durable=False)) as cp:
        c = await cp.latest()
        assert c is not None and await c.read("f") == b"file payload"
        await c.verify()
    with pytest.raises(asynccp.StepOrderError):
        async with Checkpointer(tmp_path / "loc", store=asynccp.StoreOptions(durable=False)) as cp2:
            await (await cp2.save(0, b"again"))  # step 0 is committed and valid
    assert not [p for p in (tmp_path / "loc").rglob("*") if p.name.endswith(".asynccp-tmp")]


@pytest.mark.parametrize("kind", ["bytes", "file"])
async def test_orphan_collection_never_takes_the_collectors_own_uploads(
    tmp_path: Path, kind: str
) -> None:
    """With orphan_grace=0, collection runs right after the first commit, while the next
    checkpoints' payloads upload (commits are pipelined): it must leave those alone."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 << 20))
    async with Checkpointer(
        tmp_path / "loc",
        limits=asynccp.Limits(max_pending=8),
        retention=asynccp.Retention(orphan_grace=0),
    ) as cp:
        handles = [
            await cp.save(step, src if kind == "file" else os.urandom(2 << 20)) for step in range(8)
        ]
        committed = [await h for h in handles]  # every one committed...
    async with Checkpointer(tmp_path / "loc") as reader:
        latest = await reader.latest()
        assert latest is not None and latest.step == 7  # ...and is complete
        for ckpt in committed:
            await ckpt.verify()


async def test_superseded_file_payloads_leave_no_staged_copies(
    tmp_path: Path, fault_proxy: Any, s3_bucket: str
) -> None:
    """The store answers 503 (retried) while saves pile up, so some are superseded for sure;
    their staged copies are deleted (off the loop), the committed ones were uploaded."""
    from datetime import timedelta

    src = tmp_path / "state.bin"
    src.write_bytes(b"s" * 1000)
    staging = tmp_path / "staging"
    staging.mkdir()
    patient = {
        "max_retries": 1000,
        "backoff": {
            "init_backoff": timedelta(milliseconds=20),
            "max_backoff": timedelta(milliseconds=50),
        },
        "retry_timeout": timedelta(seconds=60),
    }
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=patient)  # type: ignore[arg-type]
    async with Checkpointer(
        store, limits=asynccp.Limits(max_pending=3), policy="latest", staging_dir=staging
    ) as cp:
        await cp.latest()
        fault_proxy.set_mode("503")  # the first upload is held in obstore's retries
        handles = [await cp.save(step, src) for step in range(10)]
        assert any(h.superseded for h in handles)
        fault_proxy.set_mode("pass")
        await cp.flush()
        assert [p for p in staging.rglob("*") if p.is_file() and p.name != ".lock"] == []
    assert not list(staging.iterdir())  # the staging folder itself is gone


async def test_flush_within_a_deadline_returns_what_happened(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """The supervisor's flush: typed, bounded, and the exit after it keeps the deadline."""
    store = make_s3_store(fault_proxy.url, s3_bucket)
    async with Checkpointer(store, limits=asynccp.Limits(max_pending=8), flush_timeout=300) as cp:
        await (await cp.save(0, b"zero"))
        ok = await cp._flush_within(math.inf)
        assert ok == FlushResult(last_committed=0)
        fault_proxy.hold_requests(rb"^PUT \S*/data/")
        held = b"held" * INLINE_MAX  # a payload object (a tiny one has none to hold)
        handles = [await cp.save(step, held) for step in (1, 2, 3)]
        result = await cp._flush_within(0.3)
        assert result.timed_out and result.last_committed == 0
        # steps 1 to 3 were in flight (small ones commit as a group) or staged: all
        # three are abandoned, each named once
        assert result.abandoned == (1, 2, 3)
        assert [type(e) for e in result.errors] == [asynccp.FlushTimeoutError]
        with pytest.raises(asynccp.CheckpointClosedError, match="gave up"):
            await cp.save(4, b"more")
    # the exit had nothing left to report (the deadline had passed: it did not wait again)
    assert all(isinstance(h.exception(), asynccp.FlushTimeoutError) for h in handles)
    fault_proxy.release()
