"""Names and store states that used to break reads: each is now saved and read back, or
refused up front, or skipped with a fallback — never a crash half-way through a restore.

* names obstore's local store refuses (``shard#1``: a ``#`` and digits at the end; a last
  segment ending in a letter and ``:``) round-trip on a local directory, memory and S3;
* a lone surrogate cannot be saved, and a manifest naming one is invalid;
* a stray file (or folder) whose name is not UTF-8 is skipped by listings, with a warning;
* a name segment over 255 bytes cannot be saved, and a manifest naming one is invalid; a
  name the destination cannot hold is a ``CheckpointError`` naming it, not a raw OSError;
* a folder where a payload file should be is corruption (readers fall back);
* a download never follows a symbolic link inside its destination.

The hostile states are made directly on the disk or the store, bypassing asynccp.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio.to_thread
import obstore
import pytest
from _sites import Site
from obstore.store import LocalStore

from asynccp import (
    Checkpointer,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    DestinationExistsError,
    InvalidNameError,
)
from asynccp._layout import data_dir
from asynccp._manifest import INLINE_MAX, Manifest
from asynccp._store import resolve

#: Names obstore's LocalStore refuses to read (and its listing drops), all valid here.
LOCAL_STORE_REFUSES = ["shard#1", "d#2/x#03", "#7", "ab:", "x/C:", "w|"]
#: Other names that are easy to get wrong when turned into keys, URLs or paths.
AWKWARD = ["a#b", "a?b=c&d", "50%", "%41", "a%2Fb", "sp ace", "tab\u00a0nbsp", "ü/ñ", "a+b", "x:y"]


def manifest_key(step: int) -> str:
    return f"manifests/{step:020d}.json"


def stored(data: bytes) -> bytes:
    """``data`` repeated past what a record holds: a payload object under its name (the
    names these tests are about are keys in the store only then)."""
    return data * (INLINE_MAX // len(data) + 1)


async def commit(location: Any, payloads: dict[int, Any], **options: Any) -> None:
    async with Checkpointer(location, **options) as cp:
        for step, payload in payloads.items():
            await (await cp.save(step, payload))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynccp", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (links not followed) with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


# -- names obstore's local store refuses ------------------------------------------------


async def test_names_local_store_refuses_round_trip(any_site: Site, tmp_path: Path) -> None:
    names = LOCAL_STORE_REFUSES + AWKWARD
    payload = {n: stored(f"bytes of {n}".encode()) for n in names}
    await commit(any_site.make_location(), {1: payload, 2: {"shard#2": stored(b"two")}}, keep=2)
    async with Checkpointer(any_site.make_location(), keep=1) as cp:
        ckpt = await cp.get(1)
        assert set(ckpt.files) == set(names)
        latest = await cp.latest()
        assert latest is not None and latest.step == 2
        for name in names:
            assert await ckpt.read(name) == payload[name]
        assert await ckpt.read_all() == payload
        await ckpt.verify()
        out = await ckpt.download(tmp_path / "dest")
        assert tree(out) == payload
        assert await cp.read() == stored(b"two")
        # Retention deletes such names too, and leaves no payload of step 1 behind.
        await (await cp.save(3, {"shard#3": stored(b"three")}))
    async with Checkpointer(any_site.make_location()) as cp:
        assert [c.step for c in await cp.list()] == [3]
    left = any_site.raw.keys("data/")
    assert len(left) == 1 and left[0].endswith("/shard#3"), left


async def test_cli_verifies_and_restores_names_local_store_refuses(tmp_path: Path) -> None:
    root, dest = tmp_path / "store", tmp_path / "dest"
    payload = {n: n.encode() for n in LOCAL_STORE_REFUSES}
    await commit(root, {5: payload})
    verify = await anyio.to_thread.run_sync(cli, "verify", str(root))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "1 of 1 checkpoint(s) verified" in verify.stdout
    restore = await anyio.to_thread.run_sync(cli, "restore", str(root), str(dest))
    assert restore.returncode == 0, restore.stderr
    assert tree(dest) == payload


def test_local_listing_matches_obstore_on_ordinary_names(tmp_path: Path) -> None:
    """The local listing reports what obstore's did: relative keys, sizes, UTC mtimes."""
    root = tmp_path / "store"
    for key, size in {"manifests/a.json": 3, "data/x/y/z.bin": 10, "data/x/w": 0}.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"x" * size)
    (root / "data/x/link").symlink_to(root / "data/x/w")  # a link to a file: listed
    (root / "data/x/dangling").symlink_to(root / "nowhere")  # a dangling link: skipped
    (root / "data/x/y/empty").mkdir()  # an empty folder: nothing
    loc = resolve(root)
    loc.open()
    theirs = {
        (m["path"], int(m["size"]), m["last_modified"])
        for b in obstore.list(LocalStore(root), prefix="data")
        for m in b
    }
    ours = loc.list_objects("data/")
    assert {(o.key, o.size, o.last_modified) for o in ours} == theirs
    assert {o.key for o in ours} == {"data/x/y/z.bin", "data/x/w", "data/x/link"}
    assert all(o.last_modified.tzinfo is not None for o in ours)
    assert all(o.last_modified.utcoffset() == timedelta(0) for o in ours)
    assert abs(datetime.now(timezone.utc) - ours[0].last_modified) < timedelta(days=1)
    assert loc.list_objects("nothing/here/") == []
    assert {o.key for o in loc.list_objects("")} == {o.key for o in ours} | {"manifests/a.json"}


# -- lone surrogates --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\ud800", "a/\udcff.bin", "x\udfff"])
async def test_save_refuses_lone_surrogate(any_site: Site, name: str) -> None:
    async with Checkpointer(any_site.make_location()) as cp:
        with pytest.raises(InvalidNameError, match="UTF-8"):
            await cp.save(1, {name: b"x", "ok": b"y"})
        assert cp.stats.saves == 0
        await (await cp.save(1, {"ok": stored(b"y")}))
    assert any_site.raw.keys("data/") and all(k.endswith("/ok") for k in any_site.raw.keys("data/"))


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"a\ud800": 1}, r"the key 'a\\ud800' of metadata"),
        ({"note": "b\udc80"}, r"metadata\['note'\] \('b\\udc80'\)"),
        ({"runs": [{"x\udfff": 2}]}, r"the key 'x\\udfff' of metadata\['runs'\]\[0\]"),
    ],
)
async def test_metadata_with_a_lone_surrogate_is_refused_at_save(
    tmp_path: Path, metadata: dict[str, Any], named: str
) -> None:
    """A lone surrogate in a metadata key or value (text decoded with
    'surrogateescape') is a ValueError at save() naming where it is; nothing is staged,
    and the step stays free."""
    async with Checkpointer(tmp_path / "store") as cp:
        with pytest.raises(ValueError, match=named) as info:
            await cp.save(1, b"x", metadata=metadata)
        assert "not valid Unicode" in str(info.value)
        assert cp.stats.saves == 0
        await (await cp.save(1, b"x", metadata={"ok": True}))


async def test_save_refuses_folder_with_undecodable_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "payload"
    folder.mkdir()
    (folder / "good").write_bytes(b"good")
    (folder / os.fsdecode(b"bad\xff")).write_bytes(b"bad")  # a name that is not UTF-8
    async with Checkpointer(tmp_path / "store") as cp:
        with pytest.raises(InvalidNameError, match="UTF-8"):
            await cp.save(1, folder)
    assert not any((tmp_path / "store" / "data").iterdir())


def test_manifest_decode_refuses_lone_surrogate() -> None:
    doc = {
        "format": 1,
        "step": 2,
        "writer": "abc",
        "attempt": 0,
        "created_at": "2024-01-01T00:00:00+00:00",
        "data": "data/00000000000000000002-abc",
        "metadata": {},
        "files": {"PLACEHOLDER": {"size": 1, "crc32c": "00000000"}},
    }
    raw = json.dumps(doc).replace("PLACEHOLDER", "\\ud800").encode()
    with pytest.raises(CorruptCheckpointError, match="UTF-8"):
        Manifest.decode(raw, key=manifest_key(2))


async def test_manifest_naming_lone_surrogate_is_skipped(any_site: Site, tmp_path: Path) -> None:
    await commit(any_site.make_location(), {1: b"one", 2: b"two"})
    raw = any_site.raw.get(manifest_key(2))
    assert b'"data":{' in raw  # the file's entry, to be renamed
    any_site.raw.put(manifest_key(2), raw.replace(b'"data":{', b'"\\ud800":{'))
    surrogate = r"checkpoint 2\b.*is not valid UTF-8"
    with pytest.warns(CorruptCheckpointWarning, match=surrogate):  # opening: the floor
        async with Checkpointer(any_site.make_location()) as cp:
            with pytest.warns(CorruptCheckpointWarning, match=surrogate):
                latest = await cp.latest()
            assert latest is not None and latest.step == 1
            with pytest.warns(CorruptCheckpointWarning, match=surrogate):
                assert await cp.read() == b"one"
            with pytest.warns(CorruptCheckpointWarning, match=surrogate):
                out = await cp.restore(tmp_path / "dest")
            assert out is not None and tree(out) == {"data": b"one"}
    if any_site.kind == "local":
        root = str(any_site.make_location())
        show = await anyio.to_thread.run_sync(cli, "show", root, "2")
        assert show.returncode == 1 and "invalid manifest" in show.stderr, show.stderr
        assert "Traceback" not in show.stderr
        verify = await anyio.to_thread.run_sync(cli, "verify", root)
        assert verify.returncode == 1 and "1 of 2 checkpoint(s) verified" in verify.stdout
        restore = await anyio.to_thread.run_sync(cli, "restore", root, str(tmp_path / "d2"))
        assert restore.returncode == 0, restore.stderr
        assert "restored step 1" in restore.stdout


# -- names that are not UTF-8 -----------------------------------------------------------


def _stray(folder: Path, name: bytes, *, is_dir: bool = False) -> None:
    path = os.path.join(os.fsencode(folder), name)
    if is_dir:
        os.mkdir(path)
        path = os.path.join(path, b"inside")
    with open(path, "wb") as f:
        f.write(b"stray")


@pytest.mark.parametrize("where", ["payload", "manifests"])
@pytest.mark.parametrize("is_dir", [False, True], ids=["file", "folder"])
async def test_undecodable_stray_name_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str, is_dir: bool
) -> None:
    root = tmp_path / "store"
    await commit(root, {1: stored(b"one"), 2: stored(b"two")})
    async with Checkpointer(root) as cp:
        folder = (
            root / data_dir(2, (await cp.get(2)).writer)
            if where == "payload"
            else root / "manifests"
        )
    _stray(folder, b"\xff\xfe.json", is_dir=is_dir)
    caplog.set_level(logging.WARNING, logger="asynccp")
    async with Checkpointer(root) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == 2
        assert await cp.read() == stored(b"two")
        assert [c.step for c in await cp.list()] == [1, 2]
        out = await cp.restore(tmp_path / "dest")
        assert out is not None and tree(out) == {"data": stored(b"two")}
        await (await cp.save(3, b"three"))
    warned = [r for r in caplog.records if r.name == "asynccp" and "UTF-8" in r.getMessage()]
    assert warned, caplog.text
    assert "\\xff\\xfe.json" in warned[0].getMessage()


# -- names too long for a local file system ---------------------------------------------


@pytest.mark.parametrize(
    "name", ["x" * 256, "é" * 128, "ok/" + "y" * 300 + "/z"], ids=["256-ascii", "256-bytes", "mid"]
)
async def test_save_refuses_a_segment_over_255_bytes(any_site: Site, name: str) -> None:
    async with Checkpointer(any_site.make_location()) as cp:
        with pytest.raises(InvalidNameError, match="255 bytes"):
            await cp.save(1, {name: b"x"})
        assert cp.stats.saves == 0


async def test_255_byte_segments_round_trip(any_site: Site, tmp_path: Path) -> None:
    names = ["a" * 255, "é" * 127 + "b", "d/" + "ü" * 127 + "c"]
    payload = {n: n.encode()[:20] for n in names}
    await commit(any_site.make_location(), {1: payload})
    async with Checkpointer(any_site.make_location()) as cp:
        out = await cp.restore(tmp_path / "dest")
    assert out is not None and tree(out) == payload


async def test_manifest_naming_a_300_byte_segment_is_skipped(
    any_site: Site, tmp_path: Path
) -> None:
    long = "w" * 300
    await commit(any_site.make_location(), {1: {"w": b"one"}, 2: {"w": b"two"}})
    async with Checkpointer(any_site.make_location()) as cp:
        folder = data_dir(2, (await cp.get(2)).writer)
    if any_site.kind != "local":  # a local disk cannot even hold such a file
        any_site.raw.put(f"{folder}/{long}", b"two")
        any_site.raw.delete(f"{folder}/w")
    raw = any_site.raw.get(manifest_key(2))
    assert b'"w":{' in raw  # the file's entry, to be renamed
    any_site.raw.put(manifest_key(2), raw.replace(b'"w":{', f'"{long}":{{'.encode()))
    with pytest.raises(CorruptCheckpointError, match="255 bytes"):
        Manifest.decode(any_site.raw.get(manifest_key(2)), key=manifest_key(2))
    too_long = r"checkpoint 2\b.*longer than 255 bytes"
    with pytest.warns(CorruptCheckpointWarning, match=too_long):  # opening: the floor
        async with Checkpointer(any_site.make_location()) as cp:
            with pytest.warns(CorruptCheckpointWarning, match=too_long):
                latest = await cp.latest()
            assert latest is not None and latest.step == 1
            with pytest.warns(CorruptCheckpointWarning, match=too_long):
                out = await cp.restore(tmp_path / "dest")
    assert out is not None and tree(out) == {"w": b"one"}


async def test_destination_path_too_long_is_a_checkpoint_error_naming_the_file(
    tmp_path: Path,
) -> None:
    # Every segment is short enough, but under this deep destination the whole path
    # passes the system's limit (4096 bytes on Linux).
    name = "/".join(c * 250 for c in "abcd")
    root = tmp_path / "store"
    await commit(root, {1: {"small": b"s"}, 2: {name: b"deep", "small": b"s2"}})
    dest = tmp_path
    while len(os.fsencode(dest)) < 4096 - 1024 + 10:
        dest = dest / ("d" * 200)
    dest.mkdir(parents=True)
    async with Checkpointer(root) as cp:
        with pytest.raises(CheckpointError, match="aaaa") as info:
            await cp.restore(dest)
    assert not isinstance(info.value, CorruptCheckpointError)  # no fallback to step 1
    assert isinstance(info.value.__cause__, OSError)
    assert "too long" in str(info.value)
    assert os.listdir(dest) == []


# -- a folder where a payload file should be --------------------------------------------


async def test_folder_in_place_of_a_payload_file_is_corruption(
    any_site: Site, tmp_path: Path
) -> None:
    one, two = stored(b"one"), stored(b"two")
    await commit(any_site.make_location(), {1: {"weights": one}, 2: {"weights": two}})
    async with Checkpointer(any_site.make_location()) as cp:
        folder = data_dir(2, (await cp.get(2)).writer)
    any_site.raw.delete(f"{folder}/weights")
    any_site.raw.put(f"{folder}/weights/shard", b"two")  # "weights" is now a folder (a key prefix)
    incomplete = r"checkpoint 2\b.*payload objects .* missing or truncated"
    with pytest.warns(CorruptCheckpointWarning, match=incomplete):  # opening: the floor
        async with Checkpointer(any_site.make_location()) as cp:
            two = await cp.get(2)
            missing = "is a folder, not a file" if any_site.kind == "local" else "is missing"
            with pytest.raises(CorruptCheckpointError, match=f"weights {missing}"):
                await two.read("weights")
            with pytest.raises(CorruptCheckpointError, match="weights"):
                await two.read_all()
            with pytest.raises(CorruptCheckpointError, match="weights"):
                await two.verify()
            with pytest.raises(CorruptCheckpointError, match="weights"):
                await two.download(tmp_path / "dest2")
            with pytest.warns(CorruptCheckpointWarning, match=incomplete):
                latest = await cp.latest()
            assert latest is not None and latest.step == 1
            with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint 2\b"):
                assert await cp.read() == one
            with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint 2\b"):
                out = await cp.restore(tmp_path / "dest")
    assert out is not None and tree(out) == {"weights": one}
    # A folder in place of a manifest is no manifest, as on an object store.
    any_site.raw.delete(manifest_key(2))
    any_site.raw.put(manifest_key(2) + "/x", b"{}")
    async with Checkpointer(any_site.make_location()) as cp:
        with pytest.raises(CheckpointNotFoundError):
            await cp.get(2)
        latest = await cp.latest()
        assert latest is not None and latest.step == 1


# -- symbolic links inside the destination ----------------------------------------------


async def test_download_refuses_a_link_inside_dest_as_a_folder(tmp_path: Path) -> None:
    root, dest, elsewhere = tmp_path / "store", tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_bytes(b"mine")
    dest.mkdir()
    (dest / "model").symlink_to(elsewhere)
    await commit(root, {1: {"a.bin": b"A", "model/w.bin": b"W", "z.bin": b"Z"}})
    async with Checkpointer(root) as cp:
        ckpt = await cp.get(1)
        with pytest.raises(CheckpointError, match="symbolic link") as info:
            await ckpt.download(dest)
        assert not isinstance(info.value, CorruptCheckpointError)
        assert str(dest / "model") in str(info.value)
        with pytest.raises(CheckpointError, match="symbolic link"):
            await cp.restore(dest)  # not a corrupt checkpoint: no fallback, no None
    assert tree(elsewhere) == {"keep.txt": b"mine"}, "wrote through the link"
    assert sorted(os.listdir(dest)) == ["model"], "half-moved, or left its download folder"
    assert os.readlink(dest / "model") == str(elsewhere)


async def test_download_replaces_a_link_in_place_of_a_file(tmp_path: Path) -> None:
    root, dest, elsewhere = tmp_path / "store", tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.bin").write_bytes(b"theirs")
    (dest / "sub").mkdir(parents=True)
    (dest / "w.bin").symlink_to(elsewhere / "target.bin")
    (dest / "sub" / "v.bin").symlink_to(elsewhere / "target.bin")
    (dest / "gone.bin").symlink_to(tmp_path / "nowhere")  # dangling
    await commit(root, {1: {"w.bin": b"W", "sub/v.bin": b"V", "gone.bin": b"G"}})
    async with Checkpointer(root) as cp:
        out = await cp.restore(dest, overwrite=True)  # links replace, never followed
    assert out == dest
    assert tree(dest) == {"w.bin": b"W", "sub/v.bin": b"V", "gone.bin": b"G"}
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert tree(elsewhere) == {"target.bin": b"theirs"}
    assert not (tmp_path / "nowhere").exists()


async def test_dest_itself_may_be_a_link(tmp_path: Path) -> None:
    root, real = tmp_path / "store", tmp_path / "real"
    real.mkdir()
    (tmp_path / "dest").symlink_to(real)
    await commit(root, {1: {"m/w.bin": b"W"}})
    async with Checkpointer(root) as cp:
        out = await cp.restore(tmp_path / "dest")
    assert out == tmp_path / "dest"
    assert tree(real) == {"m/w.bin": b"W"}


async def test_link_planted_during_the_download_is_refused(tmp_path: Path) -> None:
    """The destination is checked again before the move: it may change meanwhile."""
    root, dest, elsewhere = tmp_path / "store", tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    a, w = stored(b"A"), stored(b"W")
    await commit(root, {1: {"a.bin": a, "model/w.bin": w}})
    async with Checkpointer(root) as cp:
        ckpt = await cp.get(1)
        # The payload object becomes a named pipe: the download's read of it waits for
        # a writer, and the writer's open returns once the download is reading.
        pipe = root / data_dir(ckpt.step, ckpt.writer) / "a.bin"
        pipe.unlink()
        os.mkfifo(pipe)

        def feed() -> None:
            with open(pipe, "wb") as f:  # returns once the download opened the pipe
                (dest / "model").symlink_to(elsewhere)
                f.write(a)

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, feed)
            try:
                with pytest.raises(CheckpointError, match="symbolic link"):
                    await ckpt.download(dest)
            finally:  # never leave the feeder blocked on the pipe
                os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))
    assert os.listdir(elsewhere) == []
    assert sorted(os.listdir(dest)) == ["model"]


def test_which_destination_errors_name_the_file() -> None:
    """Name trouble becomes a CheckpointError naming the file; the destination's own
    trouble (full, read-only, not permitted) stays the OSError it is."""
    from asynccp._dest import unwritable

    dest = Path("/some/dest")
    for code in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EEXIST, errno.EISDIR):
        err = unwritable(3, "model/w.bin", dest, OSError(code, os.strerror(code)))
        assert isinstance(err, CheckpointError) and not isinstance(err, CorruptCheckpointError)
        assert "'model/w.bin'" in str(err) and "/some/dest" in str(err)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO):
        original = OSError(code, os.strerror(code))
        assert unwritable(3, "model/w.bin", dest, original) is original


@pytest.mark.parametrize("how", ["restore", "download"])
async def test_existing_files_are_replaced_only_with_overwrite(tmp_path: Path, how: str) -> None:
    """restore(dest) and download(dest) once replaced the caller's files silently: a
    file (or a link) where the checkpoint's goes is a DestinationExistsError (a
    CheckpointError and a FileExistsError) naming it and overwrite=True, raised before
    anything is written; files that do not clash stay; overwrite=True replaces."""
    root, dest = tmp_path / "store", tmp_path / "dest"
    (dest / "m").mkdir(parents=True)
    (dest / "m" / "w.bin").write_bytes(b"mine")
    (dest / "keep.txt").write_bytes(b"kept")
    before = tree(dest)
    await commit(root, {1: {"a.bin": b"A", "m/w.bin": b"W"}})
    async with Checkpointer(root) as cp:
        ckpt = await cp.get(1)

        async def get(**kw: Any) -> Any:
            return await (cp.restore(dest, **kw) if how == "restore" else ckpt.download(dest, **kw))

        with pytest.raises(DestinationExistsError) as info:
            await get()
        assert isinstance(info.value, CheckpointError) and isinstance(info.value, FileExistsError)
        assert str(dest / "m" / "w.bin") in str(info.value) and "overwrite=True" in str(info.value)
        assert info.value.filename == str(dest / "m" / "w.bin")
        assert tree(dest) == before and not [n for n in os.listdir(dest) if n.startswith(".")]
        (dest / "m" / "w.bin").unlink()
        (dest / "m" / "w.bin").symlink_to(dest / "keep.txt")  # a link is in the way too
        with pytest.raises(DestinationExistsError):
            await get()
        with pytest.raises(TypeError, match="overwrite must be a bool"):
            await get(overwrite="yes")
        assert await get(overwrite=True) == dest
    assert tree(dest) == {"a.bin": b"A", "m/w.bin": b"W", "keep.txt": b"kept"}
    empty = tmp_path / "empty"
    empty.mkdir()
    async with Checkpointer(root) as cp:
        assert await cp.restore(empty) == empty
    assert tree(empty) == {"a.bin": b"A", "m/w.bin": b"W"}


def test_a_file_that_appears_during_the_download_is_not_replaced(tmp_path: Path) -> None:
    """The check before the download is repeated by the move, which links each file
    into place (never replacing): a file the caller wrote meanwhile stays."""
    from asynccp._dest import make_tmp, move_into_place

    dest, tmp = make_tmp(str(tmp_path / "dest"), ["w.bin"], 1)
    (tmp / "w.bin").write_bytes(b"checkpoint")
    (dest / "w.bin").write_bytes(b"written meanwhile")
    with pytest.raises(DestinationExistsError, match="overwrite=True"):
        move_into_place(tmp, dest, ["w.bin"], 1)
    assert (dest / "w.bin").read_bytes() == b"written meanwhile"


@pytest.mark.parametrize("conflict", ["file-for-folder", "folder-for-file"])
async def test_dest_conflicts_fail_before_anything_moves(tmp_path: Path, conflict: str) -> None:
    root, dest = tmp_path / "store", tmp_path / "dest"
    dest.mkdir()
    if conflict == "file-for-folder":
        (dest / "m").write_bytes(b"a file named like the checkpoint's folder")
    else:
        (dest / "m" / "w.bin").mkdir(parents=True)
    before = tree(dest)
    await commit(root, {1: {"a.bin": b"A", "m/w.bin": b"W", "z.bin": b"Z"}})
    async with Checkpointer(root) as cp:
        ckpt = await cp.get(1)
        with pytest.raises(CheckpointError, match=re.escape(str(dest / "m"))) as info:
            await ckpt.download(dest)
    assert not isinstance(info.value, CorruptCheckpointError)
    assert tree(dest) == before
    assert not [n for n in os.listdir(dest) if n.startswith(".asynccp")]


def test_names_found_valid_are_remembered_and_bad_ones_refused_every_time() -> None:
    """A loop saves the same names save after save: each name, and each list of names,
    is checked once. A bad name or list is refused every time, whatever came before."""
    from asynccp._names import check_names, validate_name

    for _ in range(2):
        assert validate_name("model/w.bin") == "model/w.bin"
        check_names(["model/w.bin", "state.json"])
        with pytest.raises(InvalidNameError, match="escape"):
            validate_name("../w.bin")
        with pytest.raises(InvalidNameError, match="both a file and the folder"):
            check_names(["model", "model/w.bin"])
        with pytest.raises(InvalidNameError, match="duplicate"):
            check_names(["model/w.bin", "state.json", "model/w.bin"])
