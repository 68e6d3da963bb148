"""Small checkpoints saved back to back commit as a group, on every store.

On a durable local directory a group writes every payload and record, makes them
durable in one journal commit, links the records in save order and makes the links
durable with one fsync; on any other store it puts every payload, then creates every
record in save order, in one worker-thread trip (see
``asynccp._write._group.commit_group``). Tiny members have no payload: their bytes are
inside their records. These tests run it on real stores: the records it creates, a
record in its way (another writer's, or an invalid one), what it leaves behind, and
the pipeline forming groups from saves that queue up.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from _sites import Site

import asynccp
from asynccp import Checkpointer
from asynccp._layout import data_dir, manifest_key
from asynccp._store import LocalDir, Store, resolve
from asynccp._write import _pipeline
from asynccp._write._commit import CommitContext, Committed, Item
from asynccp._write._group import commit_group
from asynccp._write._stager import StagedFile
from asynccp.errors import StepAlreadyCommittedError

WRITER = "feedfacecafe"


def item(step: int, body: bytes) -> Item:
    return Item(
        step, [StagedFile("data", len(body), data=body)], {"n": step}, datetime.now(timezone.utc)
    )


def body(step: int) -> bytes:
    return step.to_bytes(4, "little") * 20_000


def tiny(step: int) -> bytes:
    return b"%016d" % step


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".asynccp-tmp")]


def context() -> CommitContext:
    return CommitContext(WRITER, 0, anyio.CapacityLimiter(4))


async def group(root: Path, steps: list[int], make: Any = body) -> list[Any]:
    store = LocalDir(root)
    await anyio.to_thread.run_sync(store.open)
    return await commit_group(store, [item(s, make(s)) for s in steps], context())


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


async def test_tiny_members_have_no_payload_object(tmp_path: Path) -> None:
    """A group of tiny checkpoints on a durable directory: each is its record alone (no
    payload folder), and reads back whole and verified."""
    root = tmp_path / "loc"
    out = await group(root, [1, 2, 3], tiny)
    assert [o.key for o in out] == [manifest_key(s) for s in (1, 2, 3)]
    assert all(o.manifest.has_inline for o in out)
    assert not (root / "data").exists() or list((root / "data").iterdir()) == []
    assert leftovers(root) == []
    async with Checkpointer(root) as cp:
        for c in await cp.list():
            await c.verify()
            assert await c.read() == tiny(c.step)


async def test_a_group_on_every_store_creates_every_record_in_order(any_site: Site) -> None:
    """On any store (memory, S3, a local directory) a group of small and tiny checkpoints
    commits each at its first revision; another writer's record in the way sends that
    step and the ones after it one by one (refused, then committed)."""
    async with Checkpointer(any_site.make_location()) as other:
        await (await other.save(4, b"theirs"))
    store: Store = resolve(any_site.make_location())
    items = [item(s, body(s) if s % 2 else tiny(s)) for s in range(1, 7)]
    out = await commit_group(store, items, context())
    assert [type(o) for o in out] == [Committed] * 3 + [StepAlreadyCommittedError] + [Committed] * 2
    assert [o.key for o in out if isinstance(o, Committed)] == [
        manifest_key(s) for s in (1, 2, 3, 5, 6)
    ]
    keys = any_site.raw.keys("data/")
    assert all(k.startswith(tuple(data_dir(s, WRITER) for s in (1, 3, 5))) for k in keys)
    async with Checkpointer(any_site.make_location()) as cp:
        assert [c.step for c in await cp.list()] == [1, 2, 3, 4, 5, 6]
        for c in await cp.list():
            expected = b"theirs" if c.step == 4 else body(c.step) if c.step % 2 else tiny(c.step)
            assert await c.read() == expected


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
async def test_saves_that_queue_up_commit_in_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """Forty small saves back to back: every handle resolves to its step, in order, and
    some commit in groups (the real commit_group, counted) whether or not the directory
    is durable: a group shares worker-thread trips, and on a durable one its flushes."""
    sizes: list[int] = []
    real = _pipeline.commit_group

    async def counted(store: Any, items: Any, ctx: Any) -> Any:
        sizes.append(len(items))
        return await real(store, items, ctx)

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
    assert sum(sizes) > 0 and all(n >= 2 for n in sizes)
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
