"""The store seam (asynccp/_store): every store failure is a StoreError naming the key and
the location, whichever method hit it; giving up on work stops that work's calls only;
resolve() turns each kind of location into its store, and refuses what is not one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import obstore
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from obstore.exceptions import AlreadyExistsError
from obstore.store import LocalStore, MemoryStore

import asynccp
from asynccp import Checkpointer, StoreError
from asynccp import _catalog as catalog
from asynccp._layout import manifest_key
from asynccp._store import (
    DurableCommits,
    LocalDir,
    LocalFiles,
    ObjectInfo,
    ObjectStore,
    Store,
    StoreOptions,
    call,
    durable_commits,
    local_files,
    local_root,
    resolve,
)
from asynccp._write._commit import Committed, Item, commit
from asynccp._write._stager import StagedFile
from asynccp._write._turns import CommitContext
from asynccp.errors import ObjectExists


async def test_a_local_object_that_cannot_be_read_is_a_store_error_naming_it(
    tmp_path: Path,
) -> None:
    """A payload object the local file system refuses to open (here a socket in its
    place: ENXIO, which root gets too) is a StoreError from read(), verify() and
    download() alike, naming the key and the location — not corruption, not an OSError."""
    import socket
    import tempfile

    short = tempfile.TemporaryDirectory(prefix="acp-")  # a socket's path is short
    root = Path(short.name) / "s"
    async with Checkpointer(root) as cp:
        ckpt = await (await cp.save(1, b"hello" * 1000))  # (a payload object)
    key = f"data/{1:020d}-{ckpt.writer}/data"
    (root / key).unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / key))
        # opening finds the floor from sizes: the socket is no payload object of its size
        with pytest.warns(asynccp.CorruptCheckpointWarning, match=r"checkpoint 1\b.*missing"):
            async with Checkpointer(root) as cp:
                loaded = await cp.get(1)
                for read in (
                    loaded.read,
                    loaded.verify,
                    lambda: loaded.download(tmp_path / "out"),
                ):
                    with pytest.raises(StoreError) as ei:
                        await read()
                    assert not isinstance(ei.value, asynccp.CorruptCheckpointError)
                    assert key in str(ei.value) and str(root) in str(ei.value)
                    assert isinstance(ei.value.__cause__, OSError)
    short.cleanup()


async def test_a_checkpoint_read_after_another_flush_timed_out_still_retries(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """Giving up on pending work stops the calls of that work only: a Checkpoint that
    outlives its checkpointer still retries a transient failure afterwards."""
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config={"max_retries": 0})
    with pytest.raises(asynccp.FlushTimeoutError):
        async with Checkpointer(store, flush_timeout=0.5) as cp:
            kept = await (await cp.save(0, b"kept" * 2000))  # (payload objects: reads
            fault_proxy.hold_requests(rb"^PUT \S*/data/")  # and puts to the store)
            await cp.save(1, b"stuck" * 2000)
    fault_proxy.release()
    failures = fault_proxy.failures
    fault_proxy.fail_next(1, "503")
    assert await kept.read() == b"kept" * 2000  # retried past the 503
    assert fault_proxy.failures == failures + 1


@pytest.mark.parametrize(
    ("location", "kind", "local"),
    [
        ("{tmp}/a", LocalDir, True),
        ("file://{tmp}/b", LocalDir, True),
        ("memory://x/y", ObjectStore, False),
        ("s3://bucket/prefix", ObjectStore, False),
    ],
)
def test_resolve_gives_each_location_its_store(
    tmp_path: Path, location: str, kind: type, local: bool
) -> None:
    store = resolve(location.format(tmp=tmp_path))
    assert isinstance(store, kind)
    assert (local_root(store) is not None) == local
    assert store.description  # what messages name


def test_resolve_store_objects(tmp_path: Path) -> None:
    local = resolve(LocalStore(tmp_path), StoreOptions(prefix="sub"))
    assert isinstance(local, LocalDir) and local_root(local) == tmp_path / "sub"
    memory = resolve(MemoryStore(), StoreOptions(prefix="a/b"))
    assert isinstance(memory, ObjectStore) and memory.prefix == "a/b/"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        resolve(MemoryStore(), StoreOptions(prefix="a/../b"))
    with pytest.raises(TypeError, match="only applies when the location is an obstore store"):
        resolve(tmp_path, StoreOptions(prefix="sub"))


@pytest.mark.parametrize("location", ["{tmp}", "memory://", "file:///tmp"])
def test_obstore_options_where_they_cannot_apply_are_refused(tmp_path: Path, location: str) -> None:
    with pytest.raises(TypeError, match=r"'region'.*does not apply"):
        resolve(location.format(tmp=tmp_path), StoreOptions(obstore={"region": "x"}))


def test_obstore_options_obstore_does_not_know_are_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"'kep'.*does not know for s3://"):
        resolve("s3://bucket", StoreOptions(obstore={"kep": 1}))


def test_client_options_in_the_wrong_place_are_named(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="client_options"):
        resolve("s3://bucket", StoreOptions(obstore={"allow_http": True}))


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("s3:/x", "s3://bucket/prefix"),
        ("s3:x", "s3://bucket/prefix"),
        ("S3:/bucket/p", "s3://bucket/prefix"),
        ("s3:", "s3://bucket/prefix"),
        ("gs:/b", "gs://bucket/prefix"),
        ("az:c/p", "az://container/prefix"),
        ("abfs:/c", "abfs://container@"),
        ("https:/host/p", "https://host/path"),
        ("http:host", "http://host/path"),
        ("memory:/", "memory://"),
        ("file:relative", "file:///absolute/path"),
        ("file:/abs/path", "file:///absolute/path"),
    ],
)
def test_a_url_that_does_not_parse_is_refused_not_made_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str, expected: str
) -> None:
    """``Checkpointer("s3:/x")`` (one slash) once created the local folder ``./s3:/x``:
    a string starting with a known scheme but no ``://`` is a ValueError naming the
    expected form, and nothing is created."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="expected") as ei:
        Checkpointer(location)
    assert expected in str(ei.value) and repr(location) in str(ei.value)
    with pytest.raises(ValueError, match="expected"):
        resolve(location)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("location", ["./runs/a:b", "runs:2024", "a:b", "./s3:x", "C:"])
async def test_a_path_with_a_colon_elsewhere_stays_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    monkeypatch.chdir(tmp_path)
    store = resolve(location)
    assert isinstance(store, LocalDir) and local_root(store) == tmp_path / location
    async with Checkpointer(location) as cp:
        await (await cp.save(1, b"x"))
    assert (tmp_path / location / "manifests").is_dir()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here")
@pytest.mark.parametrize("location", ["/proc/asynccp-x", "/proc/self/asynccp-x"])
async def test_a_local_location_that_cannot_be_created_is_a_store_error(location: str) -> None:
    """``Checkpointer("/proc/x")`` raised a bare FileNotFoundError: every failure to
    prepare a local location is a StoreError (a CheckpointError) naming it and saying
    what to do, as EROFS and EPERM already were."""
    with pytest.raises(StoreError) as ei:
        async with Checkpointer(location):
            pass
    assert location in str(ei.value) and "writable" in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError)


async def test_a_local_location_under_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"mine")
    with pytest.raises(StoreError) as ei:
        async with Checkpointer(tmp_path / "file" / "runs"):
            pass
    assert str(tmp_path / "file" / "runs") in str(ei.value)
    assert (tmp_path / "file").read_bytes() == b"mine"


class ThinStore:
    """A third-party backend with only the members of the narrow ``Store`` protocol: a
    thin wrapper around obstore's MemoryStore, none of LocalDir's capabilities."""

    description = "thin://memory"

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.calls: set[str] = set()

    def open(self) -> None:
        self.calls.add("open")

    def put(self, key: str, source: Any, *, move: bool = False) -> None:
        self.calls.add("put")
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        obstore.put(self.store, key, data)

    def create(self, key: str, data: bytes) -> None:
        self.calls.add("create")
        try:
            obstore.put(self.store, key, data, mode="create")
        except AlreadyExistsError as e:
            raise ObjectExists(key) from e

    def get(self, key: str) -> bytes:
        return bytes(obstore.get(self.store, key).bytes())

    def get_buffer(self, key: str) -> Any:
        return obstore.get(self.store, key).bytes()

    def chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        return iter(obstore.get(self.store, key).stream(min_chunk_size=chunk_size or 1 << 20))

    def list_objects(self, folder: str) -> list[ObjectInfo]:
        return [
            ObjectInfo(m["path"], int(m["size"]), m["last_modified"])
            for batch in obstore.list(self.store, prefix=folder)
            for m in batch
        ]

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            obstore.delete(self.store, key)


async def test_a_store_with_only_the_narrow_protocol_commits_and_reads_back() -> None:
    """The seam is narrow: a store with only the Store protocol's nine members (no
    local fast paths) goes through the write path's commit, the catalog and verified
    reads — the commit is its create-if-absent, a second writer's commit of the same
    step is refused, and a damaged payload is found by verification."""
    store = ThinStore()
    assert not isinstance(store, (LocalFiles, DurableCommits)) and local_root(store) is None
    s: Store = store  # (mypy: it is a Store)
    limiter = anyio.CapacityLimiter(4)
    await call(s, s.open)

    async def save(step: int, files: list[StagedFile], writer: str = "aaaa") -> Committed:
        item = Item(step, files, {"step": step}, datetime.now(timezone.utc))
        return await commit(s, item, CommitContext(writer, 0, limiter))

    one = await save(1, [StagedFile("a", 5, data=b"hello")])  # tiny: inside its record
    assert store.calls == {"open", "create"}
    big = b"x" * (5 << 20)
    two = await save(2, [StagedFile("b", 3, data=b"abc"), StagedFile("c", len(big), data=big)])
    assert (one.key, two.key) == (manifest_key(1), manifest_key(2))
    assert store.calls == {"open", "put", "create"}

    with pytest.raises(asynccp.StepAlreadyCommittedError):
        await save(2, [StagedFile("d", 1, data=b"d")], writer="bbbb")

    newest = await catalog.latest(s)
    assert newest is not None and newest.step == 2 and newest.metadata == {"step": 2}
    assert await newest.read_all() == {"b": b"abc", "c": big}
    assert bytes(await newest._read_buffer("b")) == b"abc"  # no map: received, then copied
    assert [c.step for c in await catalog.list_checkpoints(s)] == [1, 2]

    obstore.put(store.store, f"data/{2:020d}-aaaa/b", b"abd")  # damaged in place
    with pytest.raises(asynccp.CorruptCheckpointError):
        await newest.verify()
    fallback = await catalog.latest(s, skip={(2, "aaaa")})
    assert fallback is not None and await fallback.read() == b"hello"


def test_the_local_directory_has_the_capabilities_and_an_object_store_none(
    tmp_path: Path,
) -> None:
    """The write path and readers find the local fast paths by capability, not class."""
    local = resolve(tmp_path)
    assert isinstance(local, LocalFiles) and isinstance(local, DurableCommits)
    memory = resolve("memory://x")
    assert not isinstance(memory, LocalFiles) and not isinstance(memory, DurableCommits)
    assert local_root(memory) is None
    assert durable_commits(local) is local and durable_commits(memory) is None
    assert local_files(local) is local and local_files(memory) is None


def test_deleting_the_last_objects_keeps_the_top_folders_open_made_durable(
    tmp_path: Path,
) -> None:
    """A durable write fsyncs folders up to the top ones, whose entries ``open()`` made
    durable once: deleting the last checkpoint (retention, ``gc``, the orphan collector)
    must not remove them, or the next write's folder would hang from an entry that
    never reached the disk. Folders below them go when they are empty."""
    store = LocalDir(tmp_path / "loc")
    store.open()
    keys = ["data/00000000000000000001-w/a/b", manifest_key(1)]
    for key in keys:
        store.put(key, b"x")
    store.delete(keys)
    assert sorted(p.name for p in store.root.iterdir()) == ["data", "manifests"]
    assert list((store.root / "data").iterdir()) == []
