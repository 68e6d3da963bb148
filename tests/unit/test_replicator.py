"""Unit tests of ``asynccp._tiers._replicator.Replicator``: it gives way to saves.

Before it replicates a checkpoint the replicator waits until the write pipeline has
nothing staged (its ``quiet`` awaitable), for at most as long as its previous
replication took. The waits are shown without timing: an ordered log of what ran, and
every task let run until it blocks (``anyio.wait_all_tasks_blocked``) before the pipeline
is let go quiet.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import asynccp
from asynccp import _catalog as catalog
from asynccp._manifest import Manifest
from asynccp._store import LocalDir, Store, resolve
from asynccp._tiers import _replicator
from asynccp._tiers._replicator import Replicator
from asynccp._write._commit import Committed


async def committed_locally(path: Path, steps: int) -> tuple[Store, list[Manifest]]:
    """``steps`` small checkpoints committed in ``path`` by a one-tier checkpointer."""
    async with asynccp.Checkpointer(path) as cp:
        for step in range(steps):
            await cp.save(step, bytes([step]) * 8192)  # not inline: a file to map
    local = resolve(path)
    manifests = []
    for record in await catalog.records(local):
        manifest = await catalog.validate(local, record)
        assert isinstance(manifest, Manifest)
        manifests.append(manifest)
    return local, manifests


def replicator(local: Store, remote: Store, log: list[str]) -> Replicator:
    async def after_commit(committed: Committed, manifest: Manifest) -> None:
        log.append(f"replicated {manifest.step}")

    ready = anyio.Event()
    ready.set()
    r = Replicator(
        local,
        remote,
        limiter=anyio.CapacityLimiter(4),
        bad=set(),
        local_bad=lambda bad: None,
        after_commit=after_commit,
        ready=ready,
    )
    r.remote_newest(None)
    return r


async def test_waits_for_the_pipeline_to_be_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_replicator, "FIRST_DEFER", 60.0)  # longer than this test runs
    local, manifests = await committed_locally(tmp_path / "local", 1)
    remote = LocalDir(tmp_path / "remote")
    log: list[str] = []
    quiet = anyio.Event()

    async def wait_quiet(seconds: float) -> None:
        log.append(f"waiting {seconds:g} s quiet")
        await quiet.wait()
        log.append("quiet")

    r = replicator(local, remote, log)
    r.quiet = wait_quiet
    async with anyio.create_task_group() as tg:
        await tg.start(r.run)
        r.add(manifests[0])
        await anyio.wait_all_tasks_blocked()
        assert log == [f"waiting {_replicator.SETTLE:g} s quiet"]  # nothing read or sent yet
        quiet.set()
        with anyio.fail_after(30):
            await r.wait_caught_up()
        tg.cancel_scope.cancel()
    assert log == [f"waiting {_replicator.SETTLE:g} s quiet", "quiet", "replicated 0"]
    assert [rec.step for rec in await catalog.records(remote)] == [0]


async def test_a_pipeline_never_quiet_does_not_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_replicator, "FIRST_DEFER", 0.01)
    local, manifests = await committed_locally(tmp_path / "local", 3)
    remote = LocalDir(tmp_path / "remote")
    log: list[str] = []
    r = replicator(local, remote, log)

    async def never(seconds: float) -> None:  # saves without pause
        await anyio.sleep_forever()

    r.quiet = never
    async with anyio.create_task_group() as tg:
        await tg.start(r.run)
        for manifest in manifests:
            r.add(manifest)
        with anyio.fail_after(30):  # (without the bound it would wait for ever)
            await r.wait_caught_up()
        tg.cancel_scope.cancel()
    assert log == ["replicated 0", "replicated 1", "replicated 2"]
    assert [rec.step for rec in await catalog.records(remote)] == [0, 1, 2]
