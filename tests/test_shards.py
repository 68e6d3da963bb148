"""Checkpoints written by many processes: ``Checkpointer(location, shard=r, shards=n)``.

Each part is recorded by a create-if-absent put; the shard that finds every part
recorded creates the step's manifest, whose bytes are a function of the part records.
These tests hold several shards in one process (each its own writer, lease and
uploads), on real stores; the process fleets and kills are in ``test_shard_fleet.py``,
the torchrun example in ``test_torch_ddp.py``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from _sites import Raw, Site

import asynccp
from asynccp import (
    Checkpoint,
    Checkpointer,
    CorruptCheckpointWarning,
    ShardConflictError,
    ShardMismatchError,
    StoreError,
)
from asynccp._retention import collect_orphans
from asynccp._shard_records import Part, ShardedManifest, generation_from_env

if TYPE_CHECKING:
    from obstore.store import RetryConfig

FAIL_FAST: RetryConfig = {
    "max_retries": 0,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=20),
    },
    "retry_timeout": timedelta(seconds=2),
}
#: Environment variables a launcher may set; cleared where a test needs none of them.
LAUNCHER_ENV = (
    "ASYNCCP_GENERATION",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_RESTART_COUNT",
)


def part_bytes(step: int, shard: int) -> bytes:
    return f"step {step} shard {shard};".encode() * (40 + 13 * shard)


def manifest_key(step: int, rev: int = 0) -> str:
    return f"manifests/{step:020d}.json" if rev == 0 else f"manifests/{step:020d}.{rev}.json"


@asynccontextmanager
async def launch(
    make: Callable[[], Any], shards: int, generation: str, *, only: range | None = None, **opts: Any
) -> AsyncIterator[list[Checkpointer]]:
    """Open the checkpointers of shards ``only`` (default: all) of one launch."""
    async with AsyncExitStack() as stack:
        cps = []
        for r in only if only is not None else range(shards):
            cp = Checkpointer(
                make(),
                sharding=asynccp.Sharding(shard=r, shards=shards, generation=generation),
                **opts,
            )
            cps.append(await stack.enter_async_context(cp))
        yield cps


async def save_all(cps: list[Checkpointer], step: int) -> list[Checkpoint]:
    handles = [await cp.save(step, {"state": part_bytes(step, cp.shard or 0)}) for cp in cps]
    return [await h for h in handles]


async def read_own(cp: Checkpointer) -> Callable[[Checkpoint], Any]:
    async def load(ckpt: Checkpoint) -> bytes:
        return await ckpt.shard(cp.shard or 0).read("state")

    return load


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"shard": 4, "shards": 4}, ValueError, "between 0 and shards - 1 = 3, got 4"),
        ({"shard": -1, "shards": 4}, ValueError, "got -1"),
        ({"shard": 0, "shards": 0}, ValueError, "shards must be between 1"),
        ({"shard": 0, "shards": -2}, ValueError, "shards must be between 1"),
        ({"shard": True, "shards": 2}, TypeError, "shard must be an int"),
        ({"shard": 0, "shards": 2.0}, TypeError, "shards must be an int"),
        ({"shard": 0, "shards": 2, "generation": "a/b"}, ValueError, "generation must be"),
        ({"shard": 0, "shards": 2, "generation": ""}, ValueError, "generation must be"),
        ({"shard": 0, "shards": 2}, ValueError, "needs a generation"),
    ],
)
def test_bad_shard_options_are_refused_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(error, match=words.replace("(", r"\(")):
        asynccp.Sharding(**options)  # checked where it is made, before any checkpointer


def test_the_generation_comes_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    assert generation_from_env() is None
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert generation_from_env() == "slurm812.3.0"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert generation_from_env() == "slurm812.3.2"
    run_id = "5d1c0a6e-08a1-4be4-9d6e-0f0f4b8c2c1a"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)  # torchrun wins over Slurm
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert generation_from_env() == f"{run_id}.1"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job 42/a b")  # not a key segment: hashed
    hashed = generation_from_env()
    assert hashed is not None and hashed.startswith("h") and "/" not in hashed
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert generation_from_env() not in (hashed, None)  # a restart is a new generation
    monkeypatch.setenv("ASYNCCP_GENERATION", "launch-7")  # explicit wins over launchers
    assert generation_from_env() == "launch-7"
    assert (
        Checkpointer("memory://", sharding=asynccp.Sharding(shard=1, shards=4)).generation
        == "launch-7"
    )
    assert (
        Checkpointer(
            "memory://", sharding=asynccp.Sharding(shard=1, shards=4, generation=9)
        ).generation
        == "9"
    )
    monkeypatch.setenv("ASYNCCP_GENERATION", "no spaces")
    with pytest.raises(ValueError, match="ASYNCCP_GENERATION"):
        Checkpointer("memory://", sharding=asynccp.Sharding(shard=0, shards=2))


def test_one_shard_needs_no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    a, b = (
        Checkpointer("memory://", sharding=asynccp.Sharding(shard=0, shards=1)) for _ in range(2)
    )
    assert a.generation == a.writer_id and b.generation == b.writer_id  # one per open
    plain = Checkpointer("memory://")
    assert (plain.shard, plain.shards, plain.generation) == (None, None, None)


# -- the commit ------------------------------------------------------------------------


async def test_a_step_is_visible_once_every_part_is_in(any_site: Site) -> None:
    async with launch(any_site.make_location, 3, "g1") as cps:
        reader = cps[0]
        parts = await save_all(cps[:2], 0)  # two of three parts
        assert [(p.part, p.shards, p.generation) for p in parts] == [(0, 3, "g1"), (1, 3, "g1")]
        assert await reader.latest() is None
        assert await reader.list() == []
        with pytest.raises(asynccp.CheckpointNotFoundError):
            await reader.get(0)
        assert not any(k.startswith("manifests/") for k in any_site.raw.keys(""))
        last = await save_all(cps[2:], 0)  # the last part commits the step
        assert last[0].part == 2
        ckpt = await reader.latest()
        assert ckpt is not None and ckpt.step == 0 and ckpt.shards == 3
        assert ckpt.generation == "g1" and ckpt.part is None
        assert [c.step for c in await cps[1].list()] == [0]
        for r in range(3):
            part = ckpt.shard(r)
            assert part.part == r and part.writer == cps[r].writer_id
            assert await part.read("state") == part_bytes(0, r)
            assert await part.read_all() == {"state": part_bytes(0, r)}
            await part.verify()
        assert sorted(ckpt.files) == ["shard-0/state", "shard-1/state", "shard-2/state"]
        assert ckpt.size == sum(len(part_bytes(0, r)) for r in range(3))
        assert await ckpt.read("shard-1/state") == part_bytes(0, 1)
        await ckpt.verify()
        with pytest.raises(ShardMismatchError, match="no shard 3"):
            ckpt.shard(3)
        with pytest.raises(ShardMismatchError, match="not part 0"):
            ckpt.shard(1).shard(0)

    # the manifest is a function of the part records: rebuilt from them, byte for byte
    records = [
        Part.decode(
            any_site.raw.get(f"parts/{0:020d}/g1/{r}-of-3.json"),
            key=f"parts/{0:020d}/g1/{r}-of-3.json",
        )
        for r in range(3)
    ]
    assert ShardedManifest.from_parts(records).encode() == any_site.raw.get(manifest_key(0))
    assert json.loads(any_site.raw.get(manifest_key(0)))["format"] == 2


async def test_download_of_a_sharded_step_and_of_one_part(site: Site, tmp_path: Path) -> None:
    async with launch(site.make_location, 2, "g") as cps:
        await save_all(cps, 4)
        ckpt = await cps[0].latest()
        assert ckpt is not None
        whole = await ckpt.download(tmp_path / "whole")
        assert (whole / "shard-1" / "state").read_bytes() == part_bytes(4, 1)
        one = await ckpt.shard(0).download(tmp_path / "one")
        assert sorted(p.name for p in one.iterdir()) == ["state"]
        assert await cps[1].restore(tmp_path / "own") == tmp_path / "own"
        assert (tmp_path / "own" / "state").read_bytes() == part_bytes(4, 1)
        assert await cps[0].read() == part_bytes(4, 0)  # its own part


async def test_shards_that_land_together_make_one_commit(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """Both shards list only once both parts are recorded: both find the step complete
    and create its manifest. One create wins; the other finds the identical commit and
    is done — no error, one record."""
    fault_proxy.hold_requests(rb"^GET \S*prefix=parts")
    async with launch(lambda: make_s3_store(fault_proxy.url, s3_bucket), 2, "g") as cps:
        handles = [await cp.save(0, {"state": part_bytes(0, cp.shard or 0)}) for cp in cps]
        await anyio.to_thread.run_sync(held, fault_proxy, 2)  # both listings held
        fault_proxy.release()
        parts = [await h for h in handles]
        assert [p.part for p in parts] == [0, 1]
        ckpt = await cps[1].latest()
        assert ckpt is not None and ckpt.step == 0 and ckpt.shards == 2
        await ckpt.verify()
    keys = Raw(store=make_s3_store(fault_proxy.url, s3_bucket)).keys("manifests/")
    assert keys == [manifest_key(0)]  # one record, no revision


def held(proxy: FaultProxy, n: int, timeout: float = 30.0) -> None:
    """Block until ``proxy`` holds ``n`` requests (a poll in a worker thread)."""
    deadline = time.monotonic() + timeout
    while proxy.held < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proxy.held} of {n} requests held")
        time.sleep(0.01)


async def test_two_writers_claiming_one_shard(any_site: Site) -> None:
    """Exactly one records the part; the other gets ShardConflictError (its handle, its
    exit) and its payload is deleted."""
    a = Checkpointer(
        any_site.make_location(), sharding=asynccp.Sharding(shard=1, shards=2, generation="g")
    )
    b = Checkpointer(
        any_site.make_location(), sharding=asynccp.Sharding(shard=1, shards=2, generation="g")
    )
    outcomes: list[BaseException | Checkpoint] = []
    with pytest.raises(ShardConflictError, match="already recorded") as raised:
        async with a, b:
            handles = [await a.save(3, {"state": b"from a"}), await b.save(3, {"state": b"from b"})]
            for h in handles:
                try:
                    outcomes.append(await h)
                except ShardConflictError as e:
                    outcomes.append(e)
    won = [o for o in outcomes if isinstance(o, Checkpoint)]
    lost = [o for o in outcomes if isinstance(o, ShardConflictError)]
    assert len(won) == 1 and len(lost) == 1
    assert "shard=1" in str(raised.value) and "generation" in str(raised.value)
    record = json.loads(any_site.raw.get(f"parts/{3:020d}/g/1-of-2.json"))
    assert record["writer"] == won[0].writer
    folders = {k.split("/")[1] for k in any_site.raw.keys("data/")}
    assert folders == {f"{3:020d}-{won[0].writer}"}  # the loser's payload is gone


async def test_a_store_failing_for_one_shard(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    """Shard 0's store fails: its handle and its exit raise, the steps never become
    visible, and shard 1 goes on saving (its handles resolve) without waiting."""
    fault_proxy.set_mode("503")
    broken = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAIL_FAST)
    healthy = make_s3_store(moto_server, s3_bucket)
    with pytest.raises(StoreError) as at_exit:
        async with (
            Checkpointer(
                broken,
                store=asynccp.StoreOptions(io_attempts=1),
                sharding=asynccp.Sharding(shard=0, shards=2, generation="g"),
            ) as cp0,
            Checkpointer(
                healthy, sharding=asynccp.Sharding(shard=1, shards=2, generation="g")
            ) as cp1,
        ):
            h0 = await cp0.save(0, {"state": part_bytes(0, 0)})
            with pytest.raises(StoreError):
                await h0
            with anyio.fail_after(60):  # never blocked by shard 0
                for step in range(4):
                    part = await (await cp1.save(step, {"state": part_bytes(step, 1)}))
                    assert part.part == 1
            assert await cp1.latest() is None  # nothing complete
            assert await cp1.list() == []
    assert "step 0" in str(at_exit.value)
    # the store heals: shard 0 starts again in the same launch and completes later steps
    fault_proxy.set_mode("pass")
    async with Checkpointer(
        broken, sharding=asynccp.Sharding(shard=0, shards=2, generation="g")
    ) as cp0:
        assert await cp0.latest() is None
        for step in (2, 3):
            await (await cp0.save(step, {"state": part_bytes(step, 0)}))
        assert [c.step for c in await cp0.list()] == [2, 3]
        found = await cp0.load_latest(await read_own(cp0))
        assert found is not None and found[0].step == 3 and found[1] == part_bytes(3, 0)


async def test_part_records_that_disagree_on_shards_never_commit(any_site: Site) -> None:
    """A relaunch with another world size that reuses the generation while the old
    parts are there: the step is never committed, and every shard says why."""
    async with launch(any_site.make_location, 2, "g", only=range(1)) as old:
        await save_all(old, 0)  # part 0 of 2 only
    with pytest.raises(ShardMismatchError, match="disagree on the number of shards"):
        async with launch(any_site.make_location, 4, "g") as new:
            handles = [await cp.save(0, {"state": part_bytes(0, cp.shard or 0)}) for cp in new]
            for h in handles:
                with pytest.raises(ShardMismatchError, match=r"part \d of 4, and parts of 2"):
                    await h
    with pytest.raises(ShardMismatchError):  # the old launch's missing part: still refused
        async with launch(any_site.make_location, 2, "g", only=range(1, 2)) as old:
            await save_all(old, 0)
    async with Checkpointer(any_site.make_location()) as reader:
        assert await reader.latest() is None
    assert not any(k.startswith("manifests/") for k in any_site.raw.keys(""))
    # the same relaunch under its own generation is fine, leftovers or not
    async with launch(any_site.make_location, 4, "g2") as new:
        await save_all(new, 0)
        ckpt = await new[3].latest()
        assert ckpt is not None and ckpt.shards == 4 and ckpt.generation == "g2"


async def test_restoring_with_another_number_of_shards_is_an_error(
    any_site: Site, tmp_path: Path
) -> None:
    async with launch(any_site.make_location, 2, "g") as cps:
        await save_all(cps, 7)
    async with launch(any_site.make_location, 4, "g2", only=range(1)) as (cp,):
        with pytest.raises(ShardMismatchError, match="restore it with shards=2"):
            await cp.load_latest(await read_own(cp))
        with pytest.raises(ShardMismatchError):
            await cp.read()
    async with Checkpointer(
        any_site.make_location(), sharding=asynccp.Sharding(shard=0, shards=1)
    ) as cp:
        with pytest.raises(ShardMismatchError, match="written by 2 process"):
            await cp.restore(tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    # a plain checkpointer reads every part (resharding is the caller's)
    async with Checkpointer(any_site.make_location()) as cp:
        found = await cp.load_latest(_all_parts)
        assert found is not None
        assert found[1] == [part_bytes(7, 0), part_bytes(7, 1)]


async def _all_parts(ckpt: Checkpoint) -> list[bytes]:
    return [await ckpt.shard(r).read("state") for r in range(ckpt.shards)]


async def test_a_corrupt_part_makes_every_shard_fall_back(any_site: Site) -> None:
    async with launch(any_site.make_location, 2, "g") as cps:
        for step in range(2):
            await save_all(cps, step)
        bad = await cps[0].latest()
        assert bad is not None and bad.step == 1
    key = bad.shard(1)._key("state")
    flipped = bytearray(any_site.raw.get(key))
    flipped[5] ^= 0xFF
    any_site.raw.put(key, bytes(flipped))
    async with launch(any_site.make_location, 2, "g2") as cps:
        for cp in cps:  # shard 0's own part is fine, yet it falls back as shard 1 does
            with pytest.warns(CorruptCheckpointWarning, match="checkpoint 1"):
                found = await cp.load_latest(await read_own(cp))
            assert found is not None and found[0].step == 0
            assert found[1] == part_bytes(0, cp.shard or 0)
        # saving step 1 again replaces the bad record (a revision; the old one is moved aside)
        await save_all(cps, 1)
        ckpt = await cps[0].latest()
        assert ckpt is not None and ckpt.step == 1 and ckpt.generation == "g2"
        await ckpt.verify()
    assert manifest_key(1, 1) in any_site.raw.keys("manifests/")
    assert any(k.startswith("quarantine/") for k in any_site.raw.keys(""))


async def test_an_invalid_sharded_record_is_replaced_by_the_next_commit(any_site: Site) -> None:
    """Revisions and quarantine work for sharded steps: an undecodable manifest of step
    1 is skipped by readers, and the relaunch that saves step 1 again commits it at the
    next revision; the garbage goes to quarantine, a tombstone in its place."""
    async with launch(any_site.make_location, 2, "g") as cps:
        for step in range(2):
            await save_all(cps, step)
    any_site.raw.put(manifest_key(1), b"garbage{")
    garbage = r"checkpoint 1\b.*not JSON"
    with pytest.warns(CorruptCheckpointWarning, match=garbage):  # opening: the floor
        async with launch(any_site.make_location, 2, "g2") as cps:
            with pytest.warns(CorruptCheckpointWarning, match=garbage):
                found = await cps[1].load_latest(await read_own(cps[1]))
            assert found is not None and found[0].step == 0
            await save_all(cps, 1)
            ckpt = await cps[0].latest()
            assert ckpt is not None and ckpt.step == 1 and ckpt.generation == "g2"
    keys = any_site.raw.keys("")
    assert manifest_key(1, 1) in keys
    stone = json.loads(any_site.raw.get(manifest_key(1)))  # the old revision: a tombstone
    assert stone["tombstone"] is True and stone["replaced_by"] == manifest_key(1, 1)
    assert any_site.raw.get(stone["moved_to"]) == b"garbage{"


async def test_a_lost_answer_to_a_part_record_is_looked_up(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """The record landed but its answer was lost: the store says it is this writer's,
    and the part counts as recorded (the step commits)."""
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAIL_FAST)
    async with launch(lambda: store, 2, "g", store=asynccp.StoreOptions(io_attempts=1)) as cps:
        fault_proxy.lose_answers(rb"^PUT \S*/parts/", n=2)
        parts = await save_all(cps, 0)
        assert fault_proxy.lost_answers == 2
        assert [p.part for p in parts] == [0, 1]
        ckpt = await cps[0].latest()
        assert ckpt is not None and ckpt.step == 0
        await ckpt.verify()


async def test_a_relaunch_never_mixes_its_parts_with_leftovers(site: Site) -> None:
    """The first launch dies with two of three parts of step 5 recorded; the relaunch (a
    new generation) saves step 5 whole, and the leftovers are collected once the first
    launch's writers are gone."""
    async with launch(site.make_location, 3, "first") as first:
        await save_all(first, 4)
        await save_all(first[:2], 5)  # shard 2 "died" before step 5
    async with launch(
        site.make_location, 3, "second", retention=asynccp.Retention(orphan_grace=0)
    ) as second:
        latest = await second[1].latest()
        assert latest is not None and latest.step == 4  # the same for every shard
        await save_all(second, 5)
        ckpt = await second[2].latest()
        assert ckpt is not None and ckpt.step == 5 and ckpt.generation == "second"
        assert [ckpt.shard(r).writer for r in range(3)] == [cp.writer_id for cp in second]
        for r in range(3):
            assert await ckpt.shard(r).read("state") == part_bytes(5, r)
    # what the first launch left of step 5 is collected (by shard 0 after its first
    # commit; S3's clock counts whole seconds, so a collector may have to come back)
    leftovers = {f"{5:020d}-{cp.writer_id}" for cp in first[:2]}

    def left() -> set[str]:
        keys = site.raw.keys("")
        folders = {k.split("/")[1] for k in keys if k.startswith("data/")} & leftovers
        return folders | {k for k in keys if k.startswith(f"parts/{5:020d}/first/")}

    with anyio.fail_after(30):
        while left():
            async with Checkpointer(site.make_location()) as collector:
                await collect_orphans(collector._store, timedelta(0))
            await anyio.sleep(0.2)
    keys = site.raw.keys("")
    assert {k for k in keys if k.startswith("parts/")} == {
        f"parts/{s:020d}/{gen}/{r}-of-3.json"
        for s, gen in ((4, "first"), (5, "second"))
        for r in range(3)
    }


async def test_parts_of_a_live_launch_are_never_collected(site: Site) -> None:
    """Shard 0 recorded its part and closed; shard 1 is still open (its lease names the
    generation) and has not saved yet. A collector with no grace takes nothing of the
    launch; once shard 1 completes the step it verifies."""
    async with launch(site.make_location, 2, "live", only=range(1, 2)) as (cp1,):
        async with launch(site.make_location, 2, "live", only=range(1)) as (cp0,):
            await save_all([cp0], 0)
        async with Checkpointer(site.make_location()) as collector:
            taken = await collect_orphans(
                collector._store, timedelta(0), writer=collector.writer_id
            )
        assert taken == []
        await save_all([cp1], 0)
        ckpt = await cp1.latest()
        assert ckpt is not None and ckpt.step == 0
        await ckpt.verify()


async def test_retention_is_applied_by_shard_0_alone(any_site: Site) -> None:
    async with AsyncExitStack() as stack:
        cps = [
            await stack.enter_async_context(
                Checkpointer(
                    any_site.make_location(),
                    sharding=asynccp.Sharding(shard=r, shards=2, generation="g"),
                    keep=keep,
                )
            )
            for r, keep in ((0, None), (1, 1))  # shard 1's keep is ignored: it never deletes
        ]
        for step in range(3):
            await save_all(cps, step)
    assert [c.step for c in await _list(any_site)] == [0, 1, 2]
    async with launch(any_site.make_location, 2, "g2", keep=2) as cps:
        for step in range(3, 6):
            # shard 0 saves last here: its commit makes the step visible, and its
            # retention counts it (a step another shard completes is counted at shard
            # 0's next commit)
            await save_all(cps[::-1], step)
    assert [c.step for c in await _list(any_site)] == [4, 5]
    keys = any_site.raw.keys("")
    steps_left = {int(k.split("/")[1][:20]) for k in keys if k.startswith(("data/", "parts/"))}
    assert steps_left == {4, 5}  # payload and part records of rotated steps gone


async def _list(site: Site) -> list[Checkpoint]:
    async with Checkpointer(site.make_location()) as cp:
        return await cp.list()


async def test_supervised_shards_resume_from_the_newest_complete_step(tmp_path: Path) -> None:
    """Shard 1 fails after recording parts beyond the newest complete step; its next
    attempt resumes from that step, and the parts it had recorded are its own (no
    conflict). ``asynccp.current()`` is the shard's checkpointer."""
    root = tmp_path / "ckpts"
    shard0_done_2 = anyio.Event()
    shard1_retried = anyio.Event()
    seen: dict[int, list[tuple[int, int | None]]] = {0: [], 1: []}

    async def job(r: int) -> int:
        cp = asynccp.current()
        assert (cp.shard, cp.shards, cp.generation) == (r, 2, "sup")
        prev = await cp.latest()
        start = prev.step + 1 if prev else 0
        seen[r].append((cp.attempt, None if prev is None else prev.step))
        for step in range(start, 8):
            await (await cp.save(step, {"state": part_bytes(step, r)}))
            if r == 0 and step == 2:
                shard0_done_2.set()
                await shard1_retried.wait()  # shard 0 lags: steps 3.. wait for it
            if r == 1 and cp.attempt == 0 and step == 5:
                await shard0_done_2.wait()
                raise asynccp.RecoverableError("shard 1 fails once")
        if r == 1:
            shard1_retried.set()
        return step

    async with anyio.create_task_group() as tg:
        for r in range(2):
            tg.start_soon(
                lambda r=r: asynccp.supervise(
                    lambda cp: job(r),
                    root,
                    sharding=asynccp.Sharding(shard=r, shards=2, generation="sup"),
                    backoff=0,
                )
            )
    assert seen[1] == [(0, None), (1, 2)]  # attempt 1 resumed from the newest complete step
    async with Checkpointer(root) as cp:
        ckpts = await cp.list()
        assert [c.step for c in ckpts] == list(range(8))
        for c in ckpts:
            await c.verify()
            assert await c.shard(1).read("state") == part_bytes(c.step, 1)
        # steps 3-5 keep the parts shard 1's first attempt recorded
        writers = {c.step: c.shard(1).writer for c in ckpts}
        assert writers[3] == writers[5] == writers[0] != writers[6]


async def test_one_shard_is_a_sharded_step_plain_readers_see(any_site: Site) -> None:
    async with Checkpointer(
        any_site.make_location(), sharding=asynccp.Sharding(shard=0, shards=1)
    ) as cp:
        part = await (await cp.save(0, b"solo"))
        assert part.part == 0 and part.shards == 1
    async with Checkpointer(any_site.make_location()) as plain:
        ckpt = await plain.latest()
        assert ckpt is not None and ckpt.shards == 1 and ckpt.generation is not None
        assert await ckpt.shard(0).read() == b"solo"
        assert await plain.read() == b"solo"  # the step holds one file: shard-0/<name>
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with Checkpointer(
            any_site.make_location(), sharding=asynccp.Sharding(shard=0, shards=1)
        ) as again:
            assert await again.read() == b"solo"


# -- the command line ------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from asynccp.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_command_line_on_a_sharded_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ckpts"
    async with launch(lambda: root, 3, "gen1") as first:
        for step in range(3):
            await save_all(first, step)
        await save_all(first[:2], 3)  # step 3 waits for shard 2
    with pytest.raises(ShardMismatchError):  # part 0 of 2 beside parts of 3: never committed
        async with launch(lambda: root, 2, "gen1", only=range(1)) as cps:
            await save_all(cps, 3)

    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(capsys, *args)

    code, out, _ = await anyio.to_thread.run_sync(lambda: cli("ls", str(root)))
    assert code == 0
    assert "SHARDS" in out and "gen gen1" in out
    assert "step 3 (generation gen1): part records disagree on the number of shards (2, 3)" in out
    code, out, _ = await anyio.to_thread.run_sync(lambda: cli("ls", str(root), "--json"))
    doc = json.loads(out)
    assert [c["shards"] for c in doc["checkpoints"]] == [3, 3, 3]
    assert [p["writer"] for p in doc["checkpoints"][0]["parts"]] == [c.writer_id for c in first]
    assert doc["uncommitted_parts"] == [
        {"step": 3, "generation": "gen1", "shards": [2, 3], "recorded": [0, 0, 1], "missing": []}
    ]
    code, out, _ = await anyio.to_thread.run_sync(lambda: cli("show", str(root), "2"))
    assert code == 0 and "shards      3" in out and "generation  gen1" in out
    assert "shard-2/state" in out
    code, out, _ = await anyio.to_thread.run_sync(lambda: cli("verify", str(root)))
    assert code == 0 and "step 2: ok (3 file(s) in 3 shards" in out

    dest = tmp_path / "part1"
    code, out, _ = await anyio.to_thread.run_sync(
        lambda: cli("restore", str(root), str(dest), "--shard", "1")
    )
    assert code == 0 and "restored part 1 of 3 of step 2" in out
    assert (dest / "state").read_bytes() == part_bytes(2, 1)
    code, _, err = await anyio.to_thread.run_sync(
        lambda: cli("restore", str(root), str(tmp_path / "no"), "--shard", "3")
    )
    assert code == 1 and "no shard 3" in err
    whole = tmp_path / "whole"
    code, out, _ = await anyio.to_thread.run_sync(lambda: cli("restore", str(root), str(whole)))
    assert code == 0 and (whole / "shard-2" / "state").read_bytes() == part_bytes(2, 2)

    # a corrupt part: verify names it, restore --shard of another part falls back
    async with Checkpointer(root) as reader:
        newest = await reader.latest()
    assert newest is not None
    target = root / newest.shard(2)._key("state")
    target.write_bytes(b"X" + target.read_bytes()[1:])
    code, out, _ = await anyio.to_thread.run_sync(lambda: cli("verify", str(root)))
    assert code == 1 and "step 2: FAILED" in out and "shard-2/state" in out
    dest = tmp_path / "fallback"
    with warnings.catch_warnings():  # shown as a process shows it, on stderr: not raised
        warnings.simplefilter("default", CorruptCheckpointWarning)
        code, out, err = await anyio.to_thread.run_sync(
            lambda: cli("restore", str(root), str(dest), "--shard", "0")
        )
    assert code == 0 and "of step 1" in out
    assert err.startswith("asynccp: warning: checkpoint 2 ") and "shard-2/state" in err, err

    # gc: retention counts the steps that verify (step 2 has a corrupt part: not counted,
    # not deleted; step 1, read whole first, stands for it); the abandoned parts of step 3
    # are collected
    code, out, _ = await anyio.to_thread.run_sync(
        lambda: cli("gc", str(root), "--keep", "1", "--orphan-grace", "0")
    )
    assert code == 0, out
    assert "deleted 1 checkpoint(s): 0" in out
    assert "read and verified before relying on them: 1" in out
    assert "do not verify (not counted, not deleted" in out and "): 2" in out
    assert "the part records of 1 abandoned sharded step(s)" in out
    left = sorted(p.relative_to(root).as_posix() for p in (root / "parts").rglob("*.json"))
    assert left == [f"parts/{s:020d}/gen1/{r}-of-3.json" for s in (1, 2) for r in range(3)]
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(f"{3:020d}")]
