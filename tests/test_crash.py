"""A process SIGKILLed while saving never leaves a broken latest checkpoint (DESIGN §3.3).

``tests/scripts/crash_saver.py`` saves 1-4 MiB checkpoints in a loop (resuming after
the latest one at its location) and prints each step whose handle resolved. The test
kills it with SIGKILL after a few such lines, at a different moment each time, and
then checks with a fresh reader that the latest checkpoint is complete, verifies,
holds exactly the bytes of its step, and is no older than the last step the killed
process saw committed. Every checkpoint listed must verify, too: no half-checkpoint
is ever committed. Runs on a local directory and on the moto S3 server.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import obstore
import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, make_s3_store

import asynccp

SCRIPT = Path(__file__).parent / "scripts" / "crash_saver.py"
#: Kill after this many "committed" lines, one process after the other, same location.
KILL_AFTER = (1, 2, 5, 9, 13)
#: A stuck child must not hang the suite.
LINE_TIMEOUT = 60.0


def _load_script() -> ModuleType:
    """The saver script as a module, for its ``payload_for`` (what each step holds)."""
    spec = importlib.util.spec_from_file_location("crash_saver", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


saver = _load_script()


@dataclass
class Target:
    """Where the saver writes (its argv), how the test reads it, and raw listing."""

    arg: str  # LOCATION argument of the script
    env: dict[str, str]
    reader: Any  # what the test passes to Checkpointer
    reader_options: dict[str, Any]

    def keys(self, prefix: str) -> list[str]:
        """Object keys under ``prefix`` of the location (temporary files included)."""
        if isinstance(self.reader, Path):
            base = self.reader / prefix
            if not base.exists():
                return []
            return sorted(
                p.relative_to(self.reader).as_posix() for p in base.rglob("*") if p.is_file()
            )
        cut = len(self.reader_options["prefix"]) + 1
        full = f"{self.reader_options['prefix']}/{prefix}"
        return sorted(
            m["path"][cut:] for batch in obstore.list(self.reader, prefix=full) for m in batch
        )


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "local":
        root = tmp_path / "ckpts"
        yield Target(str(root), dict(os.environ), root, {})
        return
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
    }
    yield Target(f"s3://{bucket}/crash", env, make_s3_store(endpoint, bucket), {"prefix": "crash"})


def start_saver(target: Target, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), target.arg, *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=target.env,
    )


def read_lines(proc: subprocess.Popen[str], committed: int | None) -> list[str]:
    """Lines of ``proc`` until ``committed`` "committed" lines were seen (or EOF)."""
    assert proc.stdout is not None
    lines = []
    seen = 0
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("committed "):
            seen += 1
            if committed is not None and seen >= committed:
                break
    return lines


async def lines_then_kill(proc: subprocess.Popen[str], committed: int) -> list[str]:
    """Read until ``committed`` steps resolved, then SIGKILL the saver at once."""
    try:
        with anyio.fail_after(LINE_TIMEOUT):
            lines = await anyio.to_thread.run_sync(
                read_lines, proc, committed, abandon_on_cancel=True
            )
    finally:
        proc.kill()  # SIGKILL; also unblocks the reader thread on a timeout
        _, err = await anyio.to_thread.run_sync(proc.communicate)
    seen = sum(line.startswith("committed ") for line in lines)
    assert seen >= committed, f"saver stopped early: {lines}\n{err}"
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    return lines


async def check_location(target: Target, at_least: int) -> int:
    """Latest complete, verified, right bytes, >= ``at_least``; every listed one verifies."""
    async with asynccp.Checkpointer(target.reader, **target.reader_options) as cp:
        latest = await cp.latest()
        assert latest is not None
        assert latest.step >= at_least, f"latest {latest.step} older than resolved {at_least}"
        await latest.verify()
        assert await latest.read() == saver.payload_for(latest.step)
        assert latest.metadata == {"step": latest.step}
        listed = await cp.list()
        assert listed and listed[-1].step == latest.step
        for ckpt in listed:  # no half-checkpoint is ever committed
            await ckpt.verify()
            assert await ckpt.read() == saver.payload_for(ckpt.step)
    return latest.step


@pytest.mark.slow
async def test_sigkill_while_saving_leaves_a_good_latest(target: Target) -> None:
    latest: int | None = None
    for kill_after in KILL_AFTER:
        proc = start_saver(target)
        lines = await lines_then_kill(proc, kill_after)
        # it resumed right after what the previous (killed) process left
        assert lines[0] == f"start {0 if latest is None else latest + 1}", lines[:3]
        resolved = [int(line.split()[1]) for line in lines if line.startswith("committed ")]
        latest = await check_location(target, at_least=max(resolved))

    # a clean run afterwards exits 0, resumes, and collects what the kills left behind
    proc = start_saver(target, "--steps", "3")
    out, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=LINE_TIMEOUT))
    assert proc.returncode == 0, err
    lines = out.split()
    assert f"start {latest + 1}" in out and lines[-1] == "done", out
    final = await check_location(target, at_least=latest + 3)
    assert final == latest + 3
    async with asynccp.Checkpointer(target.reader, **target.reader_options) as cp:
        folders = {f"data/{c.step:020d}-{c.writer}" for c in await cp.list()}
    stray = [k for k in target.keys("data/") if "/".join(k.split("/")[:2]) not in folders]
    assert stray == [], "payload of killed uploads was not collected"
    assert [k for k in target.keys("manifests/") if not k.endswith(".json")] == []
