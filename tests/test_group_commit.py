"""Small checkpoints saved back to back on a durable local directory commit as a group.

A group writes every payload and record, makes them durable in one journal commit,
links the records in save order and makes the links durable with one fsync (see
``asynccp._write._group.commit_group``). These tests run it on a real directory: the
records it links, a record in its way (another writer's, or an invalid one), what it
leaves behind, and the pipeline forming groups from saves that queue up.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

import asynccp
from asynccp import Checkpointer
from asynccp._layout import manifest_key
from asynccp._store import LocalDir
from asynccp._write import _pipeline
from asynccp._write._commit import Committed
from asynccp._write._group import GroupItem, commit_group
from asynccp._write._stager import StagedFile
from asynccp.errors import StepAlreadyCommittedError

WRITER = "feedfacecafe"


def item(step: int, body: bytes) -> GroupItem:
    return GroupItem(
        step, StagedFile("data", len(body), data=body), {"n": step}, datetime.now(timezone.utc)
    )


def body(step: int) -> bytes:
    return step.to_bytes(4, "little") * 20_000


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".asynccp-tmp")]


async def group(root: Path, steps: list[int]) -> list[Any]:
    store = LocalDir(root)
    await anyio.to_thread.run_sync(store.open)
    return await commit_group(
        store,
        [item(s, body(s)) for s in steps],
        writer=WRITER,
        attempt=0,
        limiter=anyio.CapacityLimiter(4),
    )


async def test_a_group_links_every_record_and_each_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "loc"
    out = await group(root, [1, 2, 3])
    assert [type(o) for o in out] == [Committed] * 3
    assert [o.key for o in out] == [manifest_key(s) for s in (1, 2, 3)]
    assert leftovers(root) == []
    async with Checkpointer(root) as cp:
        found = await cp.list()
        assert [c.step for c in found] == [1, 2, 3]
        for c in found:
            assert c.writer == WRITER and c.metadata == {"n": c.step}
            await c.verify()
            assert await c.read() == body(c.step)


async def test_a_record_in_the_way_is_judged_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Step 2 holds another writer's good checkpoint, step 3 an invalid record: the
    group links step 1, then commits the rest one by one — 2 is refused, 3 replaces
    the invalid record at its next revision, 4 commits."""
    root = tmp_path / "loc"
    async with Checkpointer(root) as other:
        await (await other.save(2, b"theirs"))
    (root / manifest_key(3)).write_bytes(b"{ not json")
    out = await group(root, [1, 2, 3, 4])
    assert "step 3" in caplog.text and "replacing it" in caplog.text
    assert isinstance(out[0], Committed) and out[0].key == manifest_key(1)
    assert isinstance(out[1], StepAlreadyCommittedError)
    assert isinstance(out[2], Committed) and out[2].key == manifest_key(3, 1)
    assert isinstance(out[3], Committed) and out[3].key == manifest_key(4)
    assert leftovers(root) == []
    tombstone = json.loads((root / manifest_key(3)).read_text())
    assert tombstone["tombstone"] is True and tombstone["replaced_by"] == manifest_key(3, 1)
    assert (root / tombstone["moved_to"]).read_bytes() == b"{ not json"
    async with Checkpointer(root) as cp:
        assert await (await cp.get(2)).read() == b"theirs"
        assert await (await cp.get(3)).read() == body(3)
        assert [c.step for c in await cp.list()] == [1, 2, 3, 4]


async def test_the_first_record_in_the_way_sends_the_whole_group_one_by_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "loc"
    async with Checkpointer(root) as other:
        await (await other.save(5, b"theirs"))
    out = await group(root, [5, 6])
    assert isinstance(out[0], StepAlreadyCommittedError)
    assert isinstance(out[1], Committed) and out[1].key == manifest_key(6)
    assert leftovers(root) == []


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
async def test_saves_that_queue_up_commit_in_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """Forty small saves back to back: every handle resolves to its step, in order; on
    a durable directory some commit in groups (the real commit_group, counted), on a
    non-durable one none does (nothing to share)."""
    sizes: list[int] = []
    real = _pipeline.commit_group

    async def counted(store: Any, items: Any, **kw: Any) -> Any:
        sizes.append(len(items))
        return await real(store, items, **kw)

    monkeypatch.setattr(_pipeline, "commit_group", counted)
    root = tmp_path / "loc"
    async with Checkpointer(
        root,
        limits=asynccp.Limits(max_pending=8),
        store=asynccp.StoreOptions(durable=durable),
        keep=5,
    ) as cp:
        handles = [await cp.save(s, body(s)) for s in range(40)]
        done = [await h for h in handles]
    assert [c.step for c in done] == list(range(40))
    assert (sum(sizes) > 0) is durable and all(n >= 2 for n in sizes)
    async with Checkpointer(root) as cp:
        assert [c.step for c in await cp.list()] == list(range(35, 40))
        for c in await cp.list():
            assert await c.read() == body(c.step)
    assert leftovers(root) == []


async def test_mixed_sizes_keep_their_order(tmp_path: Path) -> None:
    """Small checkpoints (grouped) and larger ones (alone) interleaved commit in save
    order, each with its own bytes."""
    root = tmp_path / "loc"
    payloads = {s: os.urandom(5 << 20 if s % 5 == 0 else 3000) for s in range(20)}
    async with Checkpointer(
        root, limits=asynccp.Limits(max_pending=6, max_pending_bytes=64 << 20)
    ) as cp:
        handles = [await cp.save(s, payloads[s]) for s in range(20)]
        done = [await h for h in handles]
        assert [c.step for c in done] == list(range(20))
        for c in done:
            assert await c.read() == payloads[c.step]
