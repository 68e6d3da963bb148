"""SIGKILL with the remote tier behind: nothing acknowledged is lost.

A writer process saves one checkpoint after another into a tiered checkpointer whose
remote tier (moto S3) sits behind the fault proxy, throttled so that replication lags
several steps behind the local commits. It prints each step once its handle resolved
(the local commit: what a caller is told). The test kills it with SIGKILL at a seeded
point, starts the next writer on the same local directory (which replicates what the
killed one left behind, in the background, while it saves on), and so on. At the end a
last checkpointer on the same directory flushes, and every acknowledged step must be in
the remote tier, and verify there.

The default run kills a few writers; the slow run (``-m slow``) at least 50.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from _sites import Raw
from test_tiers import steps_in

import asynccp

WRITER = textwrap.dedent(
    """
    import os, sys
    import anyio
    sys.path.insert(0, sys.argv[4])
    from _moto import make_s3_store
    import asynccp

    endpoint, bucket, local = sys.argv[1:4]

    async def main():
        remote = make_s3_store(endpoint, bucket)
        async with asynccp.Checkpointer(remote, local=local, local_keep=2) as cp:
            latest = await cp.latest()
            step = 0 if latest is None else latest.step + 1
            while True:
                handle = await cp.save(step, os.urandom(150_000), metadata={"step": step})
                await handle  # durable in the local tier: acknowledged
                print(step, flush=True)
                step += 1

    anyio.run(main)
    """
)


def kill_campaign(
    tmp_path: Path, proxy: FaultProxy, upstream: str, bucket: str, kills: int, seed: int
) -> None:
    rng = random.Random(seed)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    local = tmp_path / "local"
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": str(Path(asynccp.__file__).parents[1])}
    proxy.throttle(1_000_000)  # ~1 MB/s: replication falls behind 150 kB saves
    acked: list[int] = []
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(script), proxy.url, bucket, str(local), tests],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            for _ in range(rng.randint(1, 6)):
                line = proc.stdout.readline()
                assert line, f"the writer died: {proc.communicate()[1]}"
                acked.append(int(line))
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
    proxy.throttle(None)
    raw = Raw(store=make_s3_store(upstream, bucket))
    assert acked == sorted(set(acked)), "a step was acknowledged twice"
    # A relaunch on the same local directory replicates what the last ones left.
    before = set(steps_in(raw))
    assert set(acked) - before, "the remote tier was never behind: the test tests nothing"

    async def relaunch() -> None:
        async with asynccp.Checkpointer(make_s3_store(proxy.url, bucket), local=local) as cp:
            await cp.flush()
            replication = cp.stats.replication
            assert replication is not None and replication.steps_behind == 0

    import anyio

    anyio.run(relaunch)
    remote = set(steps_in(raw))
    assert set(acked) <= remote, f"lost: {sorted(set(acked) - remote)}"

    async def verify() -> None:
        async with asynccp.Checkpointer(make_s3_store(upstream, bucket)) as cp:
            for ckpt in await cp.list():
                await ckpt.verify()
                assert ckpt.metadata == {"step": ckpt.step}

    anyio.run(verify)


@pytest.fixture
def upstream(fault_proxy: FaultProxy) -> str:
    return f"http://{fault_proxy.upstream[0]}:{fault_proxy.upstream[1]}"


def test_sigkill_with_the_remote_behind_loses_nothing(
    tmp_path: Path, fault_proxy: FaultProxy, upstream: str, s3_bucket: str
) -> None:
    kill_campaign(tmp_path, fault_proxy, upstream, s3_bucket, kills=3, seed=20)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_campaign(
    tmp_path: Path, fault_proxy: FaultProxy, upstream: str, s3_bucket: str, seed: int
) -> None:
    kill_campaign(tmp_path, fault_proxy, upstream, s3_bucket, kills=25, seed=seed)
