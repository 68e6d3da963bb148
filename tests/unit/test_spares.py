"""asynccp/_store/_spares.py: a writer's deleted records written over by its next ones."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

import asynccp
from asynccp._layout import MANIFESTS, TMP_SUFFIX, manifest_key
from asynccp._store import LocalDir
from asynccp._store._spares import SPARES_MAX, Spares, write_over


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TMP_SUFFIX)]


def records(root: Path) -> dict[str, int]:
    """Each record's name and inode number (retention may delete some meanwhile)."""
    found = {}
    for p in (root / MANIFESTS).glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            found[p.name] = p.stat().st_ino
    return found


async def test_a_loop_of_tiny_saves_writes_its_records_over_the_deleted_ones(
    tmp_path: Path,
) -> None:
    root = tmp_path / "loc"
    seen: set[int] = set()
    reused = 0
    async with asynccp.Checkpointer(root, keep=3) as cp:
        for step in range(300):
            await (await cp.save(step, b"%016d" % step))
            now = records(root)
            reused += now[f"{step:020d}.json"] in seen
            seen |= set(now.values())
        assert len(records(root)) <= 3 + 64  # retention still deletes (in rounds)
    assert reused > 100  # files written over, not created
    assert temporaries(root) == []  # the spares go with the writer
    async with asynccp.Checkpointer(root) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == 299
        assert await latest.read("data") == b"%016d" % 299


async def test_durable_groups_write_over_spares_and_read_back(tmp_path: Path) -> None:
    root = tmp_path / "loc"
    seen: set[int] = set()
    reused = 0
    async with asynccp.Checkpointer(root, keep=2) as cp:  # durable: groups of 4
        for first in range(0, 200, 4):
            handles = [await cp.save(step, b"x" * (step % 7)) for step in range(first, first + 4)]
            for h in handles:
                await h
            now = records(root)
            # (the two newest: keep=2 holds them while retention runs)
            reused += sum(now[f"{s:020d}.json"] in seen for s in (first + 2, first + 3))
            seen |= set(now.values())
    assert reused > 25
    async with asynccp.Checkpointer(root) as cp:
        kept = await cp.list()
        assert [c.step for c in kept][-2:] == [198, 199]
        for c in kept:
            await c.verify()
            assert await c.read("data") == b"x" * (c.step % 7)
    assert temporaries(root) == []


@pytest.mark.parametrize("size", [64 << 10, 5 << 20], ids=["grouped", "alone"])
async def test_records_of_checkpoints_with_payload_files_take_spares_too(
    tmp_path: Path, size: int
) -> None:
    """A record that does not hold its bytes (a payload file beside it: written in a
    group below 4 MiB, alone above) is prepared in a spare as well, not a new file."""
    root = tmp_path / "loc"
    seen: set[int] = set()
    reused = 0
    async with asynccp.Checkpointer(root, keep=2) as cp:
        for step in range(40):
            await (await cp.save(step, bytearray([step]) * size))
            now = records(root)
            reused += now[f"{step:020d}.json"] in seen
            seen |= set(now.values())
    assert reused > 10
    async with asynccp.Checkpointer(root) as cp:
        kept = await cp.list()
        assert [c.step for c in kept] == [38, 39]
        for c in kept:
            await c.verify()
            assert await c.read("data") == bytes([c.step]) * size
    assert temporaries(root) == []


def test_a_store_no_writer_turned_on_deletes(tmp_path: Path) -> None:
    store = LocalDir(tmp_path)
    store.open()
    store.create(manifest_key(1), b"{}")
    store.delete([manifest_key(1)])
    assert not (tmp_path / manifest_key(1)).exists()
    assert temporaries(tmp_path) == []


def test_only_record_folders_keep_spares_and_payload_folders_go(tmp_path: Path) -> None:
    store = LocalDir(tmp_path)
    store.open()
    store.recycle_records(True)
    store.put("data/00000000000000000001-w/f", b"payload")
    store.create(manifest_key(1), b"{}")
    store.delete([manifest_key(1)])
    store.delete(["data/00000000000000000001-w/f"])
    assert not (tmp_path / "data" / "00000000000000000001-w").exists()  # pruned
    [spare] = temporaries(tmp_path)
    assert spare.parent == tmp_path / "manifests"
    store.recycle_records(False)
    assert temporaries(tmp_path) == []


def test_a_spare_collected_meanwhile_is_replaced_by_a_new_file(tmp_path: Path) -> None:
    store = LocalDir(tmp_path)
    store.open()
    store.recycle_records(True)
    store.create(manifest_key(1), b'{"one": 1}')
    store.delete([manifest_key(1)])
    for spare in temporaries(tmp_path):  # what the orphan collector does to stale ones
        spare.unlink()
    store.create(manifest_key(2), b'{"two": 2}')
    assert (tmp_path / manifest_key(2)).read_bytes() == b'{"two": 2}'
    assert temporaries(tmp_path) == []


def test_a_record_written_over_a_longer_one_holds_only_its_bytes(tmp_path: Path) -> None:
    store = LocalDir(tmp_path)
    store.open()
    store.recycle_records(True)
    store.create(manifest_key(1), b"x" * 500)
    store.delete([manifest_key(1)])
    [spare] = temporaries(tmp_path)
    inode = spare.stat().st_ino
    store.create(manifest_key(2), b"short")
    assert (tmp_path / manifest_key(2)).stat().st_ino == inode  # the spare, written over
    assert (tmp_path / manifest_key(2)).read_bytes() == b"short"
    assert temporaries(tmp_path) == []  # the one spare was used


def test_the_pool_is_bounded_and_skips_temporary_files(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    spares = Spares()
    spares.enabled = True
    spares.used(os.fspath(folder))
    names = [folder / f"{n:020d}.json" for n in range(SPARES_MAX + 3)]
    for path in names:
        path.write_bytes(b"{}")
    kept = [spares.retire(os.fspath(p)) for p in names]
    assert kept == [True] * SPARES_MAX + [False] * 3
    tmp = folder / f".x{TMP_SUFFIX}"
    tmp.write_bytes(b"")
    assert spares.retire(os.fspath(tmp)) is False
    claimed = spares.claim(os.fspath(folder))
    assert claimed is not None
    path, fd = claimed
    try:
        write_over(fd, b"new")
    finally:
        os.close(fd)
    assert Path(path).read_bytes() == b"new"
    assert spares.claim(os.fspath(tmp_path)) is None  # another folder has none
    spares.drop()
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([Path(path).name, tmp.name, *(p.name for p in names[SPARES_MAX:])])
