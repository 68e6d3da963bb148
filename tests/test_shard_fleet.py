"""Sharded jobs as fleets of real processes on the S3 test server, killed at random.

``n`` processes (2, 4, 8) of ``tests/scripts/shard_saver.py`` each save their part of
every step (random sizes); a random subset is SIGKILLed after a random number of parts
were reported, the survivors run to the end, and the whole fleet is launched again (a
new generation) from the newest complete step; the last launch runs without kills.
After every launch, for every step:

- visible (a manifest) ⇒ every one of its ``n`` parts is recorded in one generation,
  the manifest is exactly the one those records make, and every part is byte-exact;
- every process of a launch reported its part ⇒ the step is visible, from that launch;
- all ``n`` parts recorded but the step not visible ⇒ a process of that launch was
  killed before it reported its part (it died between recording it and the listing
  that would have committed the step — the one window the protocol leaves open);
- the processes of a launch all resume from the same step, and the survivors of a
  kill are never blocked by it: they save every step and exit 0.

At the end the parts the killed launches left are collected as orphans. Also: two
processes started with the same shard, of which exactly one records its part.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import anyio
import obstore
import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, make_s3_store
from obstore.store import S3Store

import asynccp
from asynccp._layout import data_dir, manifest_key
from asynccp._retention import collect_orphans
from asynccp._shard_records import Part, ShardedManifest

SCRIPT = Path(__file__).parent / "scripts" / "shard_saver.py"
PREFIX = "fleet"
KiB = 1 << 10
MAX_SIZE = 128 * KiB
LAUNCHES = 3
#: Bounds on a launch: a stuck fleet fails the test instead of hanging the suite.
LAUNCH_TIMEOUT = 180.0


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shard_saver", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


saver = _load_script()


@dataclass
class Proc:
    """One shard's process and what it printed."""

    shard: int
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    killed: bool = False
    reader: threading.Thread | None = None

    def parts(self) -> set[int]:
        return {int(line.split()[1]) for line in list(self.lines) if line.startswith("part ")}


class Launch:
    """``n`` shard processes of one generation, their output read by threads."""

    def __init__(self, env: dict[str, str], n: int, generation: str, steps: int, seed: int):
        self.generation = generation
        self.procs: list[Proc] = []
        self.printed = threading.Condition()
        for r in range(n):
            args = [sys.executable, str(SCRIPT), f"s3://{env['BUCKET']}/{PREFIX}", str(r), str(n)]
            args += ["--steps", str(steps), "--seed", str(seed), "--max-size", str(MAX_SIZE)]
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**env, "ASYNCCP_GENERATION": generation},
            )
            proc = Proc(r, popen)
            proc.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
            proc.reader.start()
            self.procs.append(proc)

    def _read(self, proc: Proc) -> None:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            with self.printed:
                proc.lines.append(line.strip())
                self.printed.notify_all()
        with self.printed:
            self.printed.notify_all()

    def reported(self) -> int:
        return sum(len(p.parts()) for p in self.procs)

    def wait_reported(self, count: int, timeout: float) -> None:
        """Until ``count`` parts were reported, or every process ended."""
        deadline = time.monotonic() + timeout
        with self.printed:
            while self.reported() < count and any(p.popen.poll() is None for p in self.procs):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.reported()} of {count} parts reported")
                self.printed.wait(min(left, 0.5))

    def kill(self, shards: list[int]) -> None:
        for r in shards:
            proc = self.procs[r]
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGKILL)
                proc.killed = True

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            assert p.reader is not None
            p.reader.join(timeout=10)
            if not p.killed:
                err = p.popen.stderr.read() if p.popen.stderr else ""
                assert p.popen.returncode == 0, (
                    f"shard {p.shard} exited {p.popen.returncode}: {err}"
                )
                assert p.lines[-1] == "done", p.lines[-3:]

    def close(self) -> None:
        """Kill the processes still running; close their pipes once the readers are done."""
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
            p.popen.wait()
            if p.reader is not None:
                p.reader.join(timeout=10)
            for pipe in (p.popen.stdout, p.popen.stderr):
                if pipe is not None:
                    pipe.close()

    def start(self) -> int:
        starts = {p.lines[0] for p in self.procs if p.lines}
        assert len(starts) == 1, f"the shards resumed from different steps: {starts}"
        return int(starts.pop().split()[1])


@dataclass
class Stored:
    """What the store holds: visible steps, part records by (step, generation)."""

    visible: dict[int, asynccp.Checkpoint]
    records: dict[tuple[int, str], dict[int, Part]]


def stored(store: S3Store, n: int) -> Stored:
    records: dict[tuple[int, str], dict[int, Part]] = {}
    for batch in obstore.list(store, prefix=f"{PREFIX}/parts/"):
        for meta in batch:
            key = meta["path"][len(PREFIX) + 1 :]
            part = Part.decode(bytes(obstore.get(store, meta["path"]).bytes()), key=key)
            assert part.shards == n, key
            records.setdefault((part.manifest.step, part.generation), {})[part.shard] = part

    async def read() -> dict[int, asynccp.Checkpoint]:
        async with asynccp.Checkpointer(store, store=asynccp.StoreOptions(prefix=PREFIX)) as cp:
            return {c.step: c for c in await cp.list()}

    return Stored(anyio.run(read), records)


def check_visible(store: S3Store, now: Stored, n: int, seed: int) -> None:
    """Every visible step: all parts of one generation, the manifest they make, exact bytes."""

    async def read_parts(ckpt: asynccp.Checkpoint) -> list[bytes]:
        return [await ckpt.shard(r).read("part") for r in range(ckpt.shards)]

    for step, ckpt in now.visible.items():
        assert ckpt.shards == n and ckpt.generation is not None
        parts = now.records.get((step, ckpt.generation), {})
        assert sorted(parts) == list(range(n)), f"step {step} visible with parts {sorted(parts)}"
        made = ShardedManifest.from_parts(list(parts.values())).encode()
        # No record is ever replaced here: revision 0 is the step's record.
        raw = bytes(obstore.get(store, f"{PREFIX}/{manifest_key(step)}").bytes())
        assert raw == made, f"step {step}: the manifest is not the one its part records make"
        got = anyio.run(read_parts, ckpt)
        for r in range(n):
            assert got[r] == saver.payload_for(seed, step, r, max_size=MAX_SIZE), (step, r)


def check_launch(launch: Launch, start: int, steps: int, now: Stored) -> None:
    gen = launch.generation
    for step in range(start, steps):
        reported = [step in p.parts() for p in launch.procs]
        visible = now.visible.get(step)
        ours = visible is not None and visible.generation == gen
        if all(reported):
            assert ours, f"step {step}: every part of {gen} reported, the step is not visible"
        recorded = sorted(now.records.get((step, gen), {}))
        if recorded == list(range(len(launch.procs))) and not ours:
            assert any(p.killed and not reported[p.shard] for p in launch.procs), (
                f"step {step}: every part of {gen} recorded, not visible, and no process "
                "of it died before reporting"
            )
    for p in launch.procs:
        if not p.killed:  # never blocked by the dead: every step of its own reported
            assert p.parts() == set(range(start, steps)), (p.shard, sorted(p.parts()))


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4, 8])
def test_a_fleet_killed_at_random_commits_exactly_the_complete_steps(
    n: int, moto_server: str, s3_bucket: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    steps = 16 - n  # 14, 12, 8: the S3 test server is the bottleneck of the larger fleets
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
        "BUCKET": s3_bucket,
    }
    store = make_s3_store(moto_server, s3_bucket)
    newest = -1
    killed_any = False
    for k in range(LAUNCHES):
        launch = Launch(env, n, f"launch{k}", steps, seed)
        try:
            if k < LAUNCHES - 1:
                # kill within the first half of what is left: a kill after every
                # process ended (a launch with few steps left) kills nobody
                left = n * (steps - newest - 1)
                launch.wait_reported(rng.randint(1, min(3 * n, max(1, left // 2))), LAUNCH_TIMEOUT)
                victims = rng.sample(range(n), rng.randint(1, n - 1))
                launch.kill(victims)
                killed_any |= any(p.killed for p in launch.procs)
            launch.wait(timeout=LAUNCH_TIMEOUT)
        finally:
            launch.close()
        start = launch.start()
        assert start == newest + 1, f"seed {seed}: launch {k} resumed at {start}, not {newest + 1}"
        now = stored(store, n)
        check_visible(store, now, n, seed)
        check_launch(launch, start, steps, now)
        newest = max(now.visible, default=-1)
    assert killed_any, f"seed {seed}: no process was killed mid-run"
    assert newest == steps - 1  # the last launch, unharmed, completed every step

    # the parts the killed launches left are orphans: collected now that they are gone
    async def collect() -> None:
        async with asynccp.Checkpointer(store, store=asynccp.StoreOptions(prefix=PREFIX)) as cp:
            await collect_orphans(cp._store, timedelta(0))

    deadline = time.monotonic() + 60
    while True:  # S3's clock counts whole seconds: come back until it has moved on
        anyio.run(collect)
        final = stored(store, n)
        committed = {(c.step, c.generation) for c in final.visible.values()}
        if set(final.records) <= committed or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert set(final.records) <= committed, sorted(set(final.records) - committed)[:5]
    named = {
        data_dir(c.step, p.writer)
        for c in final.visible.values()
        for p in (c.shard(r) for r in range(n))
    }
    folders = {
        "/".join(m["path"][len(PREFIX) + 1 :].split("/")[:2])
        for batch in obstore.list(store, prefix=f"{PREFIX}/data/")
        for m in batch
    }
    assert folders == named, f"uncollected payload: {sorted(folders - named)[:5]}"


def test_two_processes_claiming_one_shard(moto_server: str, s3_bucket: str) -> None:
    """Two processes started with the same shard of the same launch save step 0: exactly
    one records its part; the other fails with ShardConflictError (and exits non-zero)."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
        "ASYNCCP_GENERATION": "twice",
    }
    args = [sys.executable, str(SCRIPT), f"s3://{s3_bucket}/{PREFIX}", "1", "2", "--steps", "1"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=LAUNCH_TIMEOUT) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, results
    winner, loser = (
        (results[0], results[1]) if procs[0].returncode == 0 else (results[1], results[0])
    )
    assert "part 0" in winner[0].split("\n")
    assert "ShardConflictError" in loser[1] and "already recorded" in loser[1]
    store = make_s3_store(moto_server, s3_bucket)
    records = [m["path"] for b in obstore.list(store, prefix=f"{PREFIX}/parts/") for m in b]
    assert records == [f"{PREFIX}/parts/{0:020d}/twice/1-of-2.json"]
    folders = {
        m["path"].split("/")[2] for b in obstore.list(store, prefix=f"{PREFIX}/data/") for m in b
    }
    assert len(folders) == 1  # the loser's payload was deleted
