"""The README's example job really is interrupted and really resumes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "train_loop.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_train_loop_crashes_then_resumes(tmp_path: Path) -> None:
    loc = str(tmp_path / "ckpts")
    first = run("--location", loc, "--steps", "40", "--crash-at", "25")
    assert first.returncode == 137, first.stderr
    assert "starting from scratch" in first.stdout
    second = run("--location", loc, "--steps", "40")
    assert second.returncode == 0, second.stderr
    resumed = re.search(r"resuming from step (\d+)", second.stdout)
    assert resumed, second.stdout
    # os._exit skips the flush: the resume point is a committed step before the crash
    assert 0 <= int(resumed.group(1)) < 25
    assert "done: 40 steps" in second.stdout
    third = run("--location", loc, "--steps", "40")
    assert "resuming from step 39" in third.stdout
