"""Two tiers (``Checkpointer(remote, local=path)``, ``docs/tiers.md``): both tiers hold
every step after the block, ``keep`` and ``local_keep`` each apply to their tier and a
local copy never goes before the remote tier holds it, reads fall back from a damaged
local copy to the remote one (and to the remote tier alone when the local directory is
gone), a relaunch replicates what an earlier launch left behind, and the remote tier
survives being slow, down, or answering 503 to some of its requests.

Remotes are real: a local directory and the moto S3 server (``site``), and S3 behind the
fault proxy (tests/_proxy.py) where the link misbehaves. Killed processes are in
tests/test_tiers_crash.py; notices in tests/test_notices.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from _sites import Raw, Site

import asynccp
from asynccp._layout import manifest_key


def steps_in(raw: Raw) -> list[int]:
    """The committed steps of a location, read with no help from asynccp."""
    names = [k.rsplit("/", 1)[1] for k in raw.keys("manifests/") if k.endswith(".json")]
    return sorted(int(name.split(".")[0]) for name in names)


def payload(step: int) -> bytes:
    """Larger than a record holds inline: a payload object in each tier, to damage."""
    return f"step {step} ".encode() * (1000 + step)


def tiny(step: int) -> bytes:
    """A checkpoint that lives inside its record (no payload object)."""
    return f"step {step} ".encode() * (10 + step)


async def test_both_tiers_hold_every_step(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "local"
    async with asynccp.Checkpointer(site.make_location(), local=local, local_keep=10) as cp:
        for step in range(6):
            handle = await cp.save(step, payload(step), metadata={"loss": 1.0 / (step + 1)})
        ckpt = await handle  # resolves at the local commit
        assert ckpt.step == 5
    assert steps_in(Raw(root=local)) == list(range(6))
    assert steps_in(site.raw) == list(range(6))
    # The remote record is the local one's twin: same writer, same bytes.
    for step in range(6):
        assert site.raw.get(manifest_key(step)) == (local / manifest_key(step)).read_bytes()
    stats = cp.stats.replication
    assert stats is not None
    assert (stats.steps_behind, stats.bytes_behind, stats.replicated, stats.failed) == (0, 0, 6, 0)
    assert stats.last_replicated_step == 5
    assert stats.bytes_replicated == sum(len(payload(s)) for s in range(6))


async def test_tiny_checkpoints_are_replicated_inside_their_records(
    site: Site, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    async with asynccp.Checkpointer(site.make_location(), local=local, local_keep=10) as cp:
        for step in range(4):
            await cp.save(step, tiny(step))
    assert Raw(root=local).keys("data/") == [] and site.raw.keys("data/") == []
    for step in range(4):
        assert site.raw.get(manifest_key(step)) == (local / manifest_key(step)).read_bytes()
    async with asynccp.Checkpointer(site.make_location()) as remote_only:
        ckpt = await remote_only.latest()
        assert ckpt is not None and await ckpt.read() == tiny(3)


async def test_keep_and_local_keep_apply_each_to_its_tier(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "local"
    async with asynccp.Checkpointer(site.make_location(), local=local, local_keep=2, keep=3) as cp:
        for step in range(7):
            await cp.save(step, payload(step))
    assert steps_in(Raw(root=local)) == [5, 6]
    assert steps_in(site.raw) == [4, 5, 6]
    async with asynccp.Checkpointer(site.make_location(), local=local) as cp:
        assert [c.step for c in await cp.list()] == [4, 5, 6]
        found = await cp.load_latest(lambda c: c.read())
        assert found is not None and found[1] == payload(6)


@pytest.fixture
def proxied(fault_proxy: FaultProxy, s3_bucket: str) -> tuple[FaultProxy, Raw, str]:
    """The fault proxy in front of a fresh moto bucket: (proxy, raw access, bucket)."""
    from _moto import make_s3_store as direct

    upstream = f"http://{fault_proxy.upstream[0]}:{fault_proxy.upstream[1]}"
    return fault_proxy, Raw(store=direct(upstream, s3_bucket)), s3_bucket


async def test_a_local_copy_stays_until_the_remote_tier_holds_it(
    proxied: tuple[FaultProxy, Raw, str], tmp_path: Path
) -> None:
    proxy, raw, bucket = proxied
    local = tmp_path / "local"
    proxy.hold_requests(rb"^PUT \S*/manifests/")  # every remote commit waits
    async with asynccp.Checkpointer(
        make_s3_store(proxy.url, bucket), local=local, local_keep=1, flush_timeout=60
    ) as cp:
        for step in range(5):
            await (await cp.save(step, payload(step)))  # committed locally: resolved
        await anyio.to_thread.run_sync(proxy.wait_held)
        # local_keep=1, but the remote tier holds none of them yet: all stay.
        assert steps_in(Raw(root=local)) == list(range(5))
        stats = cp.stats.replication
        assert stats is not None and stats.steps_behind == 5
        assert stats.bytes_behind == sum(len(payload(s)) for s in range(5))
        proxy.release()
        await cp.flush()
        assert steps_in(raw) == list(range(5))
        assert steps_in(Raw(root=local)) == [4]


async def test_reads_fall_back_from_a_damaged_local_copy(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "local"
    async with asynccp.Checkpointer(site.make_location(), local=local, local_keep=5) as cp:
        for step in range(3):
            await cp.save(step, payload(step))
    damaged = next((local / "data").glob("00000000000000000002-*/data"))
    data = bytearray(damaged.read_bytes())
    data[10] ^= 0xFF
    damaged.write_bytes(bytes(data))  # same size: valid, but does not verify
    async with asynccp.Checkpointer(site.make_location(), local=local) as cp:
        with pytest.warns(asynccp.CorruptCheckpointWarning, match="checkpoint 2 in .*local"):
            found = await cp.load_latest(lambda c: c.read())
        assert found is not None
        ckpt, data_read = found
        assert (ckpt.step, data_read) == (2, payload(2))  # the remote copy of step 2
        # The damaged copy counts no more: step 3 is next, and saving it works.
        await cp.save(3, payload(3))
    assert steps_in(site.raw) == [0, 1, 2, 3]


async def test_reads_use_the_remote_tier_when_the_local_directory_is_gone(
    site: Site, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    async with asynccp.Checkpointer(site.make_location(), local=local) as cp:
        for step in range(3):
            await cp.save(step, payload(step))
    shutil.rmtree(local)
    async with asynccp.Checkpointer(site.make_location(), local=local) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == 2
        assert await cp.read() == payload(2)
        with pytest.raises(asynccp.StepOrderError):
            await cp.save(2, b"again")  # the floor comes from the remote tier
        await cp.save(3, payload(3))
    assert steps_in(site.raw) == [0, 1, 2, 3]
    assert steps_in(Raw(root=local)) == [3]


async def test_a_relaunch_replicates_what_was_committed_only_locally(
    site: Site, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    # An earlier launch that committed locally and never replicated (it is what a
    # SIGKILL leaves: tests/test_tiers_crash.py kills real processes).
    async with asynccp.Checkpointer(local) as cp:
        for step in range(4):
            await cp.save(step, payload(step))
    assert steps_in(site.raw) == []
    async with asynccp.Checkpointer(site.make_location(), local=local, local_keep=10) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == 3
        await cp.flush()
        stats = cp.stats.replication
        assert stats is not None and (stats.replicated, stats.steps_behind) == (4, 0)
    assert steps_in(site.raw) == [0, 1, 2, 3]
    for step in range(4):  # the remote copies verify
        async with asynccp.Checkpointer(site.make_location()) as remote:
            assert await (await remote.get(step)).read() == payload(step)


async def test_a_remote_tier_that_is_down_keeps_saves_local(
    proxied: tuple[FaultProxy, Raw, str], tmp_path: Path
) -> None:
    proxy, raw, bucket = proxied
    local = tmp_path / "local"
    proxy.set_mode("503")
    async with asynccp.Checkpointer(
        make_s3_store(proxy.url, bucket), local=local, local_keep=1
    ) as cp:
        for step in range(3):
            assert (await (await cp.save(step, payload(step)))).step == step
        result = await cp._flush_within(0.5)  # what a supervisor's grace does
        assert result.timed_out
        assert any(
            isinstance(e, asynccp.FlushTimeoutError) and "relaunch" in str(e) for e in result.errors
        )
        assert steps_in(Raw(root=local)) == [0, 1, 2]
        proxy.set_mode("pass")
        await cp.flush()
    assert steps_in(raw) == [0, 1, 2]
    assert steps_in(Raw(root=local)) == [2]


async def test_none_lost_with_one_remote_request_in_ten_answered_503(
    proxied: tuple[FaultProxy, Raw, str], tmp_path: Path
) -> None:
    proxy, raw, bucket = proxied
    local = tmp_path / "local"
    proxy.fail_fraction(0.10, seed=20)
    async with asynccp.Checkpointer(
        make_s3_store(proxy.url, bucket), local=local, local_keep=2
    ) as cp:
        for step in range(20):
            await cp.save(step, os.urandom(50_000) + payload(step))
    assert proxy.failures > 0
    assert steps_in(raw) == list(range(20))
    proxy.fail_fraction(0.0)
    async with asynccp.Checkpointer(make_s3_store(proxy.url, bucket)) as remote:
        for ckpt in await remote.list():
            await ckpt.verify()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"local_keep": 2}, ValueError, "pass local="),
        ({"local": "s3://bucket/x"}, ValueError, "local directory"),
        ({"local": 3}, TypeError, "local must be"),
        ({"local": "L", "local_keep": 0}, ValueError, "local_keep"),
        ({"local": "L", "local_keep": "2"}, TypeError, "local_keep"),
        ({"local": "L", "sharding": asynccp.Sharding(0, 2, "g")}, ValueError, "sharding"),
        ({"local": "R"}, ValueError, "another directory"),
        ({"lokal": "L"}, TypeError, "local"),
    ],
)
def test_arguments_are_checked(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args = {k: (str(tmp_path / v) if v in ("L", "R") else v) for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        asynccp.Checkpointer(tmp_path / "R", **args)  # type: ignore[arg-type]


async def test_supervise_takes_the_tier_options(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "local"
    seen: list[int | None] = []

    async def job(cp: asynccp.Checkpointer) -> None:
        latest = await cp.latest()
        seen.append(None if latest is None else latest.step)
        start = 0 if latest is None else latest.step + 1
        for step in range(start, start + 2):
            await cp.save(step, payload(step))
        if cp.attempt == 0:
            raise asynccp.RecoverableError("once")

    await asynccp.supervise(
        job, site.make_location(), local=local, local_keep=1, retries=1, backoff=0
    )
    assert seen == [None, 1]
    assert steps_in(site.raw) == [0, 1, 2, 3]
    assert steps_in(Raw(root=local)) == [3]


def test_ls_shows_the_tiers_and_the_replication_lag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from asynccp.cli import main

    remote, local = tmp_path / "remote", tmp_path / "local"

    async def write() -> None:
        async with asynccp.Checkpointer(remote, local=local, local_keep=2) as cp:
            for step in range(4):
                await cp.save(step, payload(step))
        async with asynccp.Checkpointer(local) as only_local:  # not replicated (yet)
            await only_local.save(4, payload(4))

    anyio.run(write)
    capsys.readouterr()
    assert main(["ls", str(remote), "--local", str(local), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tiers"] == {
        "0": "remote",
        "1": "remote",
        "2": "local+remote",
        "3": "local+remote",
        "4": "local",
    }
    assert doc["replication_lag"]["steps"] == 1
    assert doc["replication_lag"]["bytes"] == len(payload(4))
    assert main(["ls", str(remote), "--local", str(local)]) == 0
    out = capsys.readouterr().out
    assert "TIERS" in out and "local+remote" in out
    assert "replication lag 1 step(s)" in out
