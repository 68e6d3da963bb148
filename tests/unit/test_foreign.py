"""Unit tests of ``asynccp._foreign`` and of the lineage's read-only earlier prefixes.

A framework's own checkpoint (what flytekit's ``SyncCheckpoint`` writes: ``_dst_cp``,
files, folders) in an earlier attempt's prefix, read as one checkpoint at step -1;
earlier prefixes on a local disk and on a (moto) S3 bucket, listed before and after to
show that reading them writes nothing; and the chain carried past a prefix with no
record by Flyte's own naming of attempt prefixes.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY
from _sites import Raw, make_site

import asynccp
from asynccp import Checkpoint, Checkpointer, StoreOptions
from asynccp._foreign import FOREIGN_STEP, ForeignReader
from asynccp._lineage import AttemptRecord, Lineage, LineageReader, write_record
from asynccp._plugin import DEFAULT_KEEP, PluginOptions
from asynccp._propeller import previous_prefix, shard_of
from asynccp._store import resolve
from asynccp.errors import CheckpointNotFoundError, CorruptCheckpointWarning


class Place:
    """Prefixes under one root, local or in a moto bucket: URLs, store options, raw access."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        if kind == "local":
            self.root, self.options = str(tmp_path), StoreOptions(durable=False)
            self.raw = Raw(root=tmp_path)
            return
        endpoint = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        self.root = f"s3://{bucket}"
        self.options = StoreOptions(
            obstore={
                "config": {
                    "endpoint": endpoint,
                    "access_key_id": ACCESS_KEY_ID,
                    "secret_access_key": SECRET_ACCESS_KEY,
                    "region": REGION,
                },
                "client_options": {"allow_http": True},
            }
        )
        self.raw = make_site("s3", tmp_path, endpoint, bucket).raw

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    def listing(self, name: str) -> dict[str, bytes]:
        """Every object under the prefix ``name`` with its bytes."""
        return {k: self.raw.get(k) for k in self.raw.keys(name + "/")}


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    return Place(request.param, request, tmp_path)


def flytekit_wrote(place: Place, name: str, files: dict[str, bytes]) -> None:
    """What flytekit's SyncCheckpoint leaves at a prefix: plain objects."""
    for key, data in files.items():
        place.raw.put(f"{name}/{key}", data)


async def read_all(ckpt: Checkpoint) -> dict[str, bytes]:
    return await ckpt.read_all()


async def test_a_prefix_of_plain_objects_is_one_checkpoint_at_step_minus_one(
    place: Place,
) -> None:
    flytekit_wrote(place, "a0", {"_dst_cp": b"5", "sub/b.txt": b"two"})
    reader = ForeignReader(resolve(place.url("a0"), place.options), "flytekit")
    ckpt = await reader.latest()
    assert ckpt is not None
    assert (ckpt.step, ckpt.writer, dict(ckpt.metadata)) == (
        -1,
        "flytekit",
        {"foreign": "flytekit"},
    )
    assert {n: (f.size, f.crc32c) for n, f in ckpt.files.items()} == {
        "_dst_cp": (1, None),
        "sub/b.txt": (3, None),
    }
    assert await ckpt.read("_dst_cp") == b"5"
    assert await reader.list() == [ckpt]
    assert await reader.get(FOREIGN_STEP) is ckpt
    with pytest.raises(CheckpointNotFoundError):
        await reader.get(0)
    found = await reader.newest(read_all)
    assert found is not None and found[1] == {"_dst_cp": b"5", "sub/b.txt": b"two"}


async def test_asynccp_prefixes_and_empty_ones_hold_no_foreign_checkpoint(place: Place) -> None:
    async with Checkpointer(place.url("ours"), store=place.options) as cp:
        await cp.save(0, b"x")
    assert await ForeignReader(resolve(place.url("ours"), place.options), "t").latest() is None
    assert await ForeignReader(resolve(place.url("none"), place.options), "t").latest() is None


async def test_asynccp_objects_beside_another_tools_are_not_its_files(place: Place) -> None:
    """A lease an older asynccp left in flytekit's prefix is not part of its checkpoint
    (the "found 2" of a plain SyncCheckpoint.read() that such a lease caused)."""
    flytekit_wrote(place, "a0", {"_dst_cp": b"5", "writers/0123abcd.json": b"{}"})
    ckpt = await ForeignReader(resolve(place.url("a0"), place.options), "flytekit").latest()
    assert ckpt is not None and list(ckpt.files) == ["_dst_cp"]


async def test_a_file_changed_since_listed_is_skipped_with_a_warning(place: Place) -> None:
    flytekit_wrote(place, "a0", {"_dst_cp": b"5"})
    reader = ForeignReader(resolve(place.url("a0"), place.options), "flytekit")
    assert await reader.latest() is not None
    place.raw.put("a0/_dst_cp", b"55")  # no checksum to check: the size tells
    with pytest.warns(CorruptCheckpointWarning, match="flytekit checkpoint .* skipped"):
        assert await reader.newest(read_all) is None


# -- along the lineage --------------------------------------------------------------------


async def open_lineage(
    stack: AsyncExitStack, place: Place, own: str, previous: str | None, **kw: Any
) -> tuple[Checkpointer, Lineage]:
    cp = await stack.enter_async_context(Checkpointer(place.url(own), store=place.options))
    prev = None if previous is None else place.url(previous)
    return cp, await Lineage.open(cp, place.url(own), prev, place.options, **kw)


async def attempt_with_asynccp(place: Place, name: str, previous: str | None, steps: int) -> None:
    """An earlier attempt with the plugin: its record, then checkpoints 0..steps-1."""
    async with Checkpointer(place.url(name), store=place.options) as cp:
        prev = None if previous is None else place.url(previous)
        record = AttemptRecord(
            place.url(name), prev, None, cp.writer_id, datetime.now(timezone.utc)
        )
        await write_record(record, place.options)
        for step in range(steps):
            await cp.save(step, b"asynccp %d" % step)


async def test_flytekit_data_ranks_by_its_attempt_and_writes_number_after_it(
    place: Place,
) -> None:
    """a0: flytekit's own; a1: the plugin, which resumed from it and saved steps 0-1;
    a2 (own) reads: a1's newest first, flytekit's data last, the steps in order."""
    flytekit_wrote(place, "a0", {"_dst_cp": b"flytekit"})
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, place, "a1", "a0", foreign="flytekit")
        found = await lineage.newest_valid()
        assert found is not None and found[0] == place.url("a0") and found[1].step == -1
        assert await lineage.newest_step() == -1
        reader = LineageReader(lineage, 0)
        assert reader.next_step() == 0  # numbering starts at 0 after step -1
        newest = await reader.newest(read_all)
        assert newest is not None and newest[1] == {"_dst_cp": b"flytekit"}
    await attempt_with_asynccp(place, "a1", "a0", 2)
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, place, "a2", "a1", foreign="flytekit")
        assert lineage.prefixes == [place.url(n) for n in ("a2", "a1", "a0")]
        assert [(c.step, c.writer == "flytekit") for c in await lineage.list()] == [
            (-1, True),
            (0, False),
            (1, False),
        ]
        assert (await lineage.latest()).step == 1  # type: ignore[union-attr]
        assert await lineage.newest_step() == 1


async def test_without_foreign_the_frameworks_data_is_not_read(place: Place) -> None:
    flytekit_wrote(place, "a0", {"_dst_cp": b"flytekit"})
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(stack, place, "a1", "a0")
        assert await lineage.latest() is None


async def test_reading_earlier_prefixes_writes_nothing_there(place: Place) -> None:
    """Every object of the earlier prefixes, bytes included, is the same after an attempt
    read along them, resumed and saved: no lease, no folder, no record there."""
    flytekit_wrote(place, "a0", {"_dst_cp": b"flytekit"})
    await attempt_with_asynccp(place, "a1", "a0", 2)
    before = {name: place.listing(name) for name in ("a0", "a1")}
    async with AsyncExitStack() as stack:
        cp, lineage = await open_lineage(stack, place, "a2", "a1", foreign="flytekit")
        with cp._read_through(LineageReader(lineage, 2)):
            found = await cp.load_latest(read_all)
            assert found is not None and found[0].step == 1
            assert (await cp.list())[0].step == -1
            await (await cp.write(b"a2's")).wait()
    assert {name: place.listing(name) for name in ("a0", "a1")} == before
    assert any(k.startswith(("a2/manifests/", "a2/data/")) for k in place.listing("a2"))


async def test_a_prefix_without_a_record_is_crossed_by_flytes_layout(place: Place) -> None:
    """Attempt 1 never started: its prefix has nothing, not even a record. The lineage
    goes on to attempt 0's prefix by flytepropeller's naming, and only reads it."""

    def flyte(k: int) -> str:
        unique_id = f"exec123-n0-{k}"
        return f"raw/{shard_of(unique_id)}/{unique_id}/_flytecheckpoints"

    flytekit_wrote(place, flyte(0), {"_dst_cp": b"attempt 0"})
    async with AsyncExitStack() as stack:
        _, lineage = await open_lineage(
            stack, place, flyte(2), flyte(1), foreign="flytekit", earlier=previous_prefix
        )
        assert lineage.prefixes == [place.url(flyte(k)) for k in (2, 1, 0)]
        found = await lineage.load_latest(read_all)
        assert found is not None and found[1] == {"_dst_cp": b"attempt 0"}
    async with AsyncExitStack() as stack:  # without the layout, attempt 1 ends the chain
        _, lineage = await open_lineage(stack, place, flyte(3), flyte(1), foreign="flytekit")
        assert lineage.prefixes == [place.url(flyte(3)), place.url(flyte(1))]
    assert place.listing(flyte(1)) == {}


def test_the_plugin_default_keeps_three() -> None:
    assert DEFAULT_KEEP == 3
    assert PluginOptions().checkpointer.retention.keep == 3
    assert PluginOptions.check().checkpointer.retention.keep == 3
    assert PluginOptions.check(keep=5).checkpointer.retention.keep == 5
    assert PluginOptions.check(keep=None).checkpointer.retention.keep is None
    given = asynccp.Retention(keep_every=10)
    assert PluginOptions.check(retention=given).checkpointer.retention == given
    with pytest.raises(ValueError, match="disagree"):
        PluginOptions.check(keep=2, retention=asynccp.Retention(keep=4))
