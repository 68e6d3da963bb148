"""``asynccp.sync``: the checkpointer for synchronous code (a background event loop).

Saves return once staged and commit in the background; ``result()`` waits; the ``with``
block flushes; ``load_latest`` takes a plain function; a real process sent SIGTERM in
the middle of a loop flushes what it staged and exits with 75.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import asynccp
import asynccp.sync
from asynccp import State

SCRIPT = Path(__file__).parent / "scripts" / "sync_loop.py"


@pytest.fixture(autouse=True)
def restore_sigterm() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_saves_commit_in_the_background_and_the_block_flushes(tmp_path: Path) -> None:
    w = np.arange(1000, dtype=np.float64)
    with asynccp.sync.Checkpointer(tmp_path, keep=2) as cp:
        assert cp.latest() is None and cp.load_latest(lambda c: 1) is None
        handles = []
        for step in range(4):
            w += 1
            handles.append(cp.save(step, State({"w": w, "step": step})))
        ckpt = handles[-1].result(timeout=60)
        assert ckpt.step == 3 and isinstance(ckpt, asynccp.sync.Checkpoint)
        np.testing.assert_array_equal(ckpt.read_state()["w"], w)
        w += 1
        last = cp.save(4, State({"w": w, "step": 4}))
    assert last.done() and last.result().step == 4  # the exit flushed it
    with asynccp.sync.Checkpointer(tmp_path) as cp:
        assert [c.step for c in cp.list()] == [3, 4]  # keep=2
        target = {"w": np.zeros(1000), "step": 0}
        found = cp.load_latest(lambda c: c.load_into(target))
        assert found is not None and found[0].step == 4 and found[1] == ["w", "step"]
        assert target["step"] == 4
        np.testing.assert_array_equal(target["w"], w)
        part = cp.get(3).read_state(keys=["step"])
        assert part == {"step": 3}
        with pytest.raises(TypeError, match="plain function"):

            async def not_plain(ckpt: object) -> None: ...

            cp.load_latest(not_plain)  # type: ignore[arg-type]
    with pytest.raises(asynccp.CheckpointClosedError, match="with"):
        cp.latest()


def test_errors_reach_the_caller(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="did you mean"):
        asynccp.sync.Checkpointer(tmp_path, kep=3)
    with pytest.raises(ValueError, match="grace"):
        asynccp.sync.Checkpointer(tmp_path, grace=-1)
    with asynccp.sync.Checkpointer(tmp_path) as cp:
        cp.save(5, b"five").result()
        with pytest.raises(asynccp.StepOrderError):
            cp.save(5, b"again")
        with pytest.raises(ValueError, match="timeout"):
            cp.save(6, b"six").result(timeout=-1)
    # the body's exception passes through the flush, unchanged
    with pytest.raises(KeyError), asynccp.sync.Checkpointer(tmp_path) as cp:
        cp.save(7, b"seven")
        raise KeyError("body")
    with asynccp.sync.Checkpointer(tmp_path) as cp:
        latest = cp.latest()
        assert latest is not None and latest.step == 7 and latest.read() == b"seven"


def test_sigterm_in_a_sync_loop_flushes_and_exits_75(tmp_path: Path) -> None:
    """A real process: SIGTERM while the loop's main thread waits; every step staged
    before it is committed and verifies; the process exits with 75; a relaunch resumes."""
    location = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(location), "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    staged = []
    for line in proc.stdout:
        if line.startswith("staged"):
            staged.append(int(line.split()[1]))
            if len(staged) == 4:
                break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == asynccp.PREEMPTED_EXIT_CODE, (out, err)
    assert "not reached" not in out
    assert "every staged checkpoint committed" in err and "its newest committed step is 3" in err
    with asynccp.sync.Checkpointer(location) as cp:
        assert [c.step for c in cp.list()] == staged == [0, 1, 2, 3]
        for c in cp.list():
            c.verify()
            assert c.read_state(keys=["step"])["step"] == c.step
    again = subprocess.run(
        [sys.executable, str(SCRIPT), str(location), "1"],
        input="\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and again.stdout.startswith("resumed 4"), again
