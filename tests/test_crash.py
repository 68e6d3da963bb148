"""A process SIGKILLed while saving never leaves a broken latest checkpoint.

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
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from _sites import Site

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


def start_saver(site: Site, *extra: str) -> subprocess.Popen[str]:
    assert site.url is not None
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), site.url, *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
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


async def check_location(site: Site, at_least: int) -> int:
    """Latest complete, verified, right bytes, >= ``at_least``; every listed one verifies."""
    async with asynccp.Checkpointer(site.make_location()) as cp:
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
async def test_sigkill_while_saving_leaves_a_good_latest(site: Site) -> None:
    latest: int | None = None
    for kill_after in KILL_AFTER:
        proc = start_saver(site)
        lines = await lines_then_kill(proc, kill_after)
        # it resumed right after what the previous (killed) process left
        assert lines[0] == f"start {0 if latest is None else latest + 1}", lines[:3]
        resolved = [int(line.split()[1]) for line in lines if line.startswith("committed ")]
        latest = await check_location(site, at_least=max(resolved))

    # a clean run afterwards exits 0, resumes, and collects what the kills left behind
    proc = start_saver(site, "--steps", "3")
    out, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=LINE_TIMEOUT))
    assert proc.returncode == 0, err
    lines = out.split()
    assert f"start {latest + 1}" in out and lines[-1] == "done", out
    final = await check_location(site, at_least=latest + 3)
    assert final == latest + 3
    async with asynccp.Checkpointer(site.make_location()) as cp:
        folders = {f"data/{c.step:020d}-{c.writer}" for c in await cp.list()}

    def stray() -> list[str]:
        return [k for k in site.raw.keys("data/") if "/".join(k.split("/")[:2]) not in folders]

    if stray():
        # A killed process's last request can land on a busy server after the clean
        # run's one orphan pass: a later pass (as `asynccp gc` runs it) takes it. The
        # S3 server dates objects to the second, so an upload that landed in the same
        # second as the pass's own clock reading is not yet "older than grace=0": the
        # pass is repeated until the store's clock has moved past it (a bounded wait).
        from datetime import timedelta

        from asynccp._retention import collect_orphans
        from asynccp._store import resolve

        store = resolve(site.make_location())
        await anyio.to_thread.run_sync(store.open)
        with anyio.fail_after(LINE_TIMEOUT):
            while stray():
                await collect_orphans(store, timedelta(0))
                if stray():
                    await anyio.sleep(0.5)  # no event for "the server's clock ticked"
    assert stray() == [], "payload of killed uploads was not collected"
    assert [k for k in site.raw.keys("manifests/") if not k.endswith(".json")] == []
