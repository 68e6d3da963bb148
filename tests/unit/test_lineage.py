"""Unit tests of ``asynccp._lineage``: the attempt record, the chain of prefixes an
attempt searches, and resuming from the newest valid checkpoint along it.

Every attempt's prefix is a real local folder; earlier attempts are real Checkpointers
that saved there, and damage is bytes flipped on disk.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from pathlib import Path

import anyio
import pytest

import asynccp
from asynccp import Checkpoint, Checkpointer, StoreOptions
from asynccp._layout import data_dir, manifest_key
from asynccp._lineage import (
    RECORD_NAME,
    AttemptRecord,
    Lineage,
    LineageReader,
    load_latest,
    read_record,
    write_record,
)
from asynccp.errors import (
    CheckpointClosedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def record(prefix: Path | str, previous: Path | str | None, **kw: object) -> AttemptRecord:
    fields: dict[str, object] = {
        "resume_from": None,
        "writer": "w0",
        "created_at": NOW,
        **kw,
    }
    return AttemptRecord(
        str(prefix),
        None if previous is None else str(previous),
        fields["resume_from"],  # type: ignore[arg-type]
        fields["writer"],  # type: ignore[arg-type]
        fields["created_at"],  # type: ignore[arg-type]
    )


async def earlier_attempt(
    prefix: Path, previous: Path | None, steps: dict[int, bytes] | None = None
) -> str:
    """An earlier attempt: its record, then its checkpoints; returns its writer id."""
    async with Checkpointer(prefix, store=asynccp.StoreOptions(durable=False)) as cp:
        await write_record(record(prefix, previous, writer=cp.writer_id), StoreOptions())
        for step, data in (steps or {}).items():
            await cp.save(step, data)
    return cp.writer_id


def damage(prefix: Path, step: int, writer: str) -> None:
    """Flip a byte of every file of a checkpoint (its size stays: only a read finds it):
    its payload objects, or the bytes inside a tiny checkpoint's record."""
    folder = prefix / data_dir(step, writer)
    if not folder.exists():  # tiny: every file is inside the record
        record = prefix / manifest_key(step)
        doc = json.loads(record.read_bytes())
        for info in doc["files"].values():
            raw = bytearray(base64.b64decode(info["inline"]))
            raw[0] ^= 0xFF
            info["inline"] = base64.b64encode(bytes(raw)).decode()
        record.write_text(json.dumps(doc))
        return
    for f in folder.iterdir():
        raw = bytearray(f.read_bytes())
        raw[0] ^= 0xFF
        f.write_bytes(bytes(raw))


# -- the attempt record ---------------------------------------------------------------


def test_record_round_trips() -> None:
    for rec in (
        record("/a", None),
        record("s3://b/attempt-2", "s3://b/attempt-1", resume_from=("s3://b/attempt-1", 7)),
        # step -1: the framework's own checkpoint at that prefix (asynccp._foreign)
        record("s3://b/attempt-2", "s3://b/attempt-1", resume_from=("s3://b/attempt-1", -1)),
    ):
        assert AttemptRecord.decode(rec.encode(), "here") == rec


def valid_doc() -> dict[str, object]:
    return json.loads(record("/p", "/q", resume_from=("/q", 3)).encode())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "unknown format 2"),
        ({"format": None}, "unknown format None"),
        ({"previous": ""}, "previous must be a prefix or null"),
        ({"previous": 5}, "previous must be a prefix or null"),
        ({"resume_from": {"prefix": "/q", "step": -2}}, "bad resume_from"),
        ({"resume_from": {"prefix": "/q", "step": "3"}}, "bad resume_from"),
        ({"resume_from": {"prefix": 1, "step": 3}}, "bad resume_from"),
        ({"resume_from": {"step": 3}}, "'prefix'"),
        ({"resume_from": [1, 2]}, ""),
        ({"prefix": None}, "prefix and writer must be strings"),
        ({"writer": 3}, "prefix and writer must be strings"),
        ({"created_at": "yesterday"}, "isoformat"),
        ({"created_at": 17}, ""),
    ],
)
def test_record_decode_refuses_a_bad_field(change: dict[str, object], message: str) -> None:
    doc = {**valid_doc(), **change}
    with pytest.raises(CorruptCheckpointError, match="attempt record /p/x is not valid") as e:
        AttemptRecord.decode(json.dumps(doc).encode(), "/p/x")
    assert message in str(e.value)


@pytest.mark.parametrize("key", ["previous", "resume_from", "writer", "created_at", "prefix"])
def test_record_decode_refuses_a_missing_field(key: str) -> None:
    doc = valid_doc()
    del doc[key]
    with pytest.raises(CorruptCheckpointError, match=repr(key)):
        AttemptRecord.decode(json.dumps(doc).encode(), "w")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b"null"])
def test_record_decode_refuses_what_is_no_record(raw: bytes) -> None:
    with pytest.raises(CorruptCheckpointError, match="is not valid"):
        AttemptRecord.decode(raw, "w")


async def test_write_and_read_a_record(tmp_path: Path) -> None:
    prefix = tmp_path / "attempt-1"
    assert await read_record(str(prefix), StoreOptions()) is None  # no folder at all
    prefix.mkdir()
    assert await read_record(str(prefix), StoreOptions()) is None  # a folder without a record
    first = record(prefix, None)
    await write_record(first, StoreOptions())
    assert (prefix / RECORD_NAME).is_file()
    assert await read_record(str(prefix), StoreOptions()) == first
    second = record(prefix, tmp_path / "attempt-0", resume_from=(str(tmp_path / "x"), 2))
    await write_record(second, StoreOptions())  # overwrites
    assert await read_record(str(prefix), StoreOptions()) == second


async def test_read_record_where_another_tool_wrote_a_file(tmp_path: Path) -> None:
    blob = tmp_path / "checkpoint"  # e.g. flyte.Checkpoint writes a file at the prefix
    blob.write_bytes(b"not asynccp")
    assert await read_record(str(blob), StoreOptions()) is None


async def test_read_record_that_does_not_parse(tmp_path: Path) -> None:
    (tmp_path / RECORD_NAME).write_bytes(b"{garbage")
    with pytest.raises(CorruptCheckpointError, match=f"{tmp_path}/{RECORD_NAME} is not valid"):
        await read_record(str(tmp_path), StoreOptions())


async def test_a_memory_prefix_holds_no_record(tmp_path: Path) -> None:
    """A memory:// prefix is a store of its own each time it is resolved: nothing there."""
    assert await read_record("memory://attempt-1", StoreOptions()) is None


# -- the chain of prefixes ----------------------------------------------------------------


async def open_lineage(
    stack: AsyncExitStack, own: Path, previous: Path | str | None
) -> tuple[Checkpointer, Lineage]:
    cp = await stack.enter_async_context(
        Checkpointer(own, store=asynccp.StoreOptions(durable=False))
    )
    prev = None if previous is None else str(previous)
    return cp, await Lineage.open(cp, str(own), prev, StoreOptions())


async def test_the_chain_is_followed_through_attempts_that_saved_nothing(tmp_path: Path) -> None:
    a, b, c, own = (tmp_path / n for n in ("a", "b", "c", "own"))
    await earlier_attempt(a, None, {1: b"a1", 2: b"a2"})
    await earlier_attempt(b, a)  # died before it saved
    await earlier_attempt(c, b)  # this one too
    async with AsyncExitStack() as stack:
        cp, lineage = await open_lineage(stack, own, c)
        assert lineage.prefixes == [str(own), str(c), str(b), str(a)]
        assert [p for p, _ in lineage.sources()] == lineage.prefixes
        assert lineage.readers()[0] is cp._own_reader()
        found = await lineage.newest_valid()
        assert found is not None and found[0] == str(a) and found[1].step == 2
        assert await lineage.newest_step() == 2


async def test_no_previous_prefix_is_a_lineage_of_one(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, tmp_path / "own", None)
        assert lineage.prefixes == [str(tmp_path / "own")]
        assert await lineage.newest_valid() is None
        assert await lineage.newest_step() is None
        assert await lineage.list() == []


async def test_a_prefix_without_a_record_ends_the_chain(tmp_path: Path) -> None:
    a, b, own = tmp_path / "a", tmp_path / "b", tmp_path / "own"
    await earlier_attempt(a, None, {1: b"a1"})
    async with Checkpointer(
        b, store=asynccp.StoreOptions(durable=False)
    ) as cp:  # saved, wrote no record (older tool)
        await cp.save(5, b"b5")
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, b)
        assert lineage.prefixes == [str(own), str(b)]  # b is searched, a is not reachable
        assert (await lineage.latest()).step == 5  # type: ignore[union-attr]


async def test_a_chain_that_loops_is_followed_once(tmp_path: Path) -> None:
    a, b, own = tmp_path / "a", tmp_path / "b", tmp_path / "own"
    await earlier_attempt(a, b)
    await earlier_attempt(b, a)
    own.mkdir()
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, b)
        assert lineage.prefixes == [str(own), str(b), str(a)]


async def test_a_chain_back_to_the_own_prefix_stops_there(tmp_path: Path) -> None:
    a, own = tmp_path / "a", tmp_path / "own"
    await earlier_attempt(a, Path(f"{own}/"))  # the same prefix, spelled with a slash
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, a)
        assert lineage.prefixes == [str(own), str(a)]


async def test_a_corrupt_record_is_searched_but_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, own = tmp_path / "a", tmp_path / "b", tmp_path / "own"
    await earlier_attempt(a, None, {1: b"a1"})
    await earlier_attempt(b, a, {0: b"b0"})
    (b / RECORD_NAME).write_bytes(b"{not json")
    async with AsyncExitStack() as stack:
        with caplog.at_level(logging.WARNING, logger="asynccp"):
            _, lineage = await open_lineage(stack, own, b)
        assert lineage.prefixes == [str(own), str(b)]
        assert any("not following it further back" in r.getMessage() for r in caplog.records)
        assert (await lineage.latest()).step == 0  # type: ignore[union-attr]


async def test_a_file_at_an_earlier_prefix_has_no_reader(tmp_path: Path) -> None:
    blob, own = tmp_path / "blob", tmp_path / "own"
    blob.write_bytes(b"written by another tool")
    async with AsyncExitStack() as stack:
        cp, lineage = await open_lineage(stack, own, blob)
        assert lineage.prefixes == [str(own), str(blob)]  # searched (a fallback may read it)
        assert lineage.readers() == [cp._own_reader()]  # but no asynccp reader on it


# -- reading along the lineage ------------------------------------------------------------


async def test_the_own_prefix_wins_over_a_higher_step_earlier(tmp_path: Path) -> None:
    a, own = tmp_path / "a", tmp_path / "own"
    await earlier_attempt(a, None, {10: b"a10"})
    async with AsyncExitStack() as stack:
        cp, lineage = await open_lineage(stack, own, a)
        await (await cp.save(3, b"own3")).wait()
        found = await lineage.newest_valid()
        assert found is not None and found[0] == str(own) and found[1].step == 3
        assert await lineage.newest_step() == 10  # the highest anywhere: what write() follows


async def test_list_is_oldest_attempt_first_and_get_prefers_the_newest(tmp_path: Path) -> None:
    a, b, own = tmp_path / "a", tmp_path / "b", tmp_path / "own"
    await earlier_attempt(a, None, {1: b"a1", 2: b"a2"})
    await earlier_attempt(b, a, {2: b"b2", 3: b"b3"})
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, b)
        assert [(c.step, await c.read()) for c in await lineage.list()] == [
            (1, b"a1"),
            (2, b"a2"),
            (2, b"b2"),
            (3, b"b3"),
        ]
        assert await (await lineage.get(2)).read() == b"b2"
        assert await (await lineage.get(1)).read() == b"a1"
        with pytest.raises(CheckpointNotFoundError, match="no checkpoint committed at step 9 in"):
            await lineage.get(9)


async def read_data(ckpt: Checkpoint) -> bytes:
    return await ckpt.read()


async def test_load_latest_skips_what_fails_verification_across_prefixes(tmp_path: Path) -> None:
    a, b, own = tmp_path / "a", tmp_path / "b", tmp_path / "own"
    await earlier_attempt(a, None, {1: b"a1", 2: b"a2"})
    wb = await earlier_attempt(b, a, {3: b"b3", 4: b"b4"})
    damage(b, 4, wb)
    damage(b, 3, wb)
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, b)
        assert (await lineage.latest()).step == 4  # type: ignore[union-attr]  # no reads
        with pytest.warns(CorruptCheckpointWarning) as warned:
            found = await lineage.load_latest(read_data)
        assert found is not None
        ckpt, data = found
        assert ckpt is not None and (ckpt.step, data) == (2, b"a2")
        skipped = sorted(str(w.message) for w in warned)
        assert len(skipped) == 2
        assert all("failed verification" in m or "skipped" in m for m in skipped)


async def test_load_latest_with_nothing_anywhere(tmp_path: Path) -> None:
    a, own = tmp_path / "a", tmp_path / "own"
    await earlier_attempt(a, None)
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, a)
        assert await lineage.load_latest(read_data) is None


async def test_load_latest_falls_back_per_earlier_prefix_in_order(tmp_path: Path) -> None:
    a, b, blob, own = (tmp_path / n for n in ("a", "b", "blob", "own"))
    blob.write_bytes(b"another tool's checkpoint")
    await earlier_attempt(a, blob, {1: b"a1"})
    await earlier_attempt(b, a)
    asked: list[str] = []

    async def fallback(prefix: str) -> bytes | None:
        asked.append(prefix)
        path = anyio.Path(prefix)
        return await path.read_bytes() if await path.is_file() else None

    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, own, b)
        assert lineage.prefixes == [str(own), str(b), str(a), str(blob)]
        found = await lineage.load_latest(read_data, fallback=fallback)
        assert found is not None and found[1] == b"a1"
        assert asked == [str(b)]  # a's checkpoint came first: no fallback asked there
        found = await lineage.load_latest(lambda c: fallback("nowhere"), fallback=fallback)
        # a loader that returns None is still a result: a1's loader "succeeded"
        assert found is not None and found[0] is not None

        damage(a, 1, (await lineage.get(1)).writer)
        asked.clear()
        with pytest.warns(CorruptCheckpointWarning):
            found = await lineage.load_latest(read_data, fallback=fallback)
        assert found == (None, b"another tool's checkpoint")
        assert asked == [str(b), str(a), str(blob)]


async def test_load_latest_excluding_a_writer(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as first:
        await first.save(1, b"first-1")
    async with Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as second:
        await (await second.save(2, b"second-2")).wait()
        await (await second.save(3, b"second-3")).wait()
        reader = second._own_reader()
        found = await load_latest(reader, read_data, exclude_writer=second.writer_id)
        assert found is not None and (found[0].step, found[1]) == (1, b"first-1")
        found = await load_latest(reader, read_data)
        assert found is not None and found[1] == b"second-3"
        other = await load_latest(reader, read_data, exclude_writer=first.writer_id)
        assert other is not None and (other[0].step, other[1]) == (3, b"second-3")


async def test_load_latest_excluding_a_writer_skips_damage_and_warns(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as first:
        for step in (1, 2, 3):
            await first.save(step, b"v%d" % step)
    damage(tmp_path, 3, first.writer_id)
    async with Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as reader:
        with pytest.warns(CorruptCheckpointWarning, match="checkpoint 3 .* was skipped"):
            found = await load_latest(
                reader._own_reader(), read_data, exclude_writer="someone-else"
            )
    assert found is not None and (found[0].step, found[1]) == (2, b"v2")


# -- the attempt's Checkpointer, reading through a LineageReader -----------------------------


async def test_attempt_checkpointer_reads_along_the_lineage_and_writes_after_it(
    tmp_path: Path,
) -> None:
    a, own = tmp_path / "a", tmp_path / "own"
    await earlier_attempt(a, None, {4: b"a4"})
    async with AsyncExitStack() as stack:
        cp, lineage = await open_lineage(stack, own, a)
        reader = LineageReader(lineage, (await lineage.newest_step() or -1) + 1)
        assert reader.lineage is lineage
        with cp._read_through(reader) as view:
            assert view is cp and isinstance(view, Checkpointer)  # the same Checkpointer
            assert await view.prev_exists()
            assert await view.read() == b"a4"
            assert (await view.latest()).step == 4  # type: ignore[union-attr]
            handle = await view.write(b"own5")
            await handle.wait()
            assert handle.step == 5
            assert [c.step for c in await cp._own_reader().list()] == [5]  # its own prefix
            assert await view.read() == b"own5"
            assert [c.step for c in await view.list()] == [4, 5]
            await view.save(9, b"own9")  # a save with its own step moves the numbering on
            assert reader.next_step() == 10
            dest = tmp_path / "restored"
            await view.flush()
            restored = await view.restore(dest)
            assert restored is not None and (await (await view.get(9)).read()) == b"own9"
            assert (await view.get(4)).step == 4
        # after the block it reads its own location again
        assert [c.step for c in await cp.list()] == [5, 9]
        assert (await cp.load_latest(read_data)) is not None
        with pytest.raises(CheckpointNotFoundError):
            await cp.get(4)


async def test_attempt_checkpointer_refuses_misuse(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        cp, lineage = await open_lineage(stack, tmp_path / "own", None)
        with cp._read_through(LineageReader(lineage, 0)) as view:
            with pytest.raises(CheckpointClosedError, match="already open"):
                async with view:
                    pass
            with pytest.raises(TypeError, match="write\\(\\) takes bytes, got str"):
                await view.write("text")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="dest_dir must be a path, got int"):
                await view.restore(3)  # type: ignore[arg-type]
            assert "reading <LineageReader of 0 earlier prefix(es)>" in repr(view)
            assert not await view.prev_exists()
            assert await view.read() is None
        assert "reading" not in repr(cp)


def test_lineage_reader_hands_out_steps_thread_safely(tmp_path: Path) -> None:
    reader = LineageReader(None, 7)  # type: ignore[arg-type]
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [reader.next_step() for _ in range(500)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(7, 7 + 2000))
