"""The store seam (asynccp/_store): every store failure is a StoreError naming the key and
the location, whichever method hit it; giving up on work stops that work's calls only;
resolve() turns each kind of location into its store, and refuses what is not one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from obstore.store import LocalStore, MemoryStore

import asynccp
from asynccp import Checkpointer, StoreError
from asynccp._store import LocalDir, ObjectStore, resolve


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
        ckpt = await (await cp.save(1, b"hello"))
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
            kept = await (await cp.save(0, b"kept"))
            fault_proxy.hold_requests(rb"^PUT \S*/data/")
            await cp.save(1, b"stuck")
    fault_proxy.release()
    failures = fault_proxy.failures
    fault_proxy.fail_next(1, "503")
    assert await kept.read() == b"kept"  # retried past the 503
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
    assert (store.local_root is not None) == local
    assert store.description  # what messages name


def test_resolve_store_objects(tmp_path: Path) -> None:
    local = resolve(LocalStore(tmp_path), prefix="sub")
    assert isinstance(local, LocalDir) and local.local_root == tmp_path / "sub"
    memory = resolve(MemoryStore(), prefix="a/b")
    assert isinstance(memory, ObjectStore) and memory.prefix == "a/b/"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        resolve(MemoryStore(), prefix="a/../b")


@pytest.mark.parametrize("location", ["{tmp}", "memory://", "s3://bucket"])
def test_resolve_reports_an_unknown_keyword_as_such(tmp_path: Path, location: str) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'kep'; did you mean 'keep'"):
        resolve(location.format(tmp=tmp_path), caller="f()", known={"keep"}, kep=1)


def test_client_options_in_the_wrong_place_are_named(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="client_options"):
        resolve("s3://bucket", allow_http=True)
