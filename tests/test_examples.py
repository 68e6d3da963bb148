"""The examples, run as printed: jobs that are interrupted and resume, locations already
past their steps; and what the README promises about installing and errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import asynccp

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


@pytest.mark.slow
def test_train_loop_on_a_location_already_past_the_requested_steps(tmp_path: Path) -> None:
    """Run twice with ``--steps 5``: the second run finds step 4 committed, has nothing
    to do, says so in one line and exits 0 (it once died of an UnboundLocalError)."""
    loc = str(tmp_path / "ckpts")
    first = run("--location", loc, "--steps", "5")
    assert first.returncode == 0, first.stderr
    assert "done: 5 steps" in first.stdout
    second = run("--location", loc, "--steps", "5")
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    assert "resuming from step 4" in second.stdout
    past = f"{loc} is already past the requested 5 steps (step 4 is committed): nothing to do"
    assert past in second.stdout
    assert "done" not in second.stdout


@pytest.mark.slow
def test_torch_ddp_on_a_location_already_past_the_requested_steps(tmp_path: Path) -> None:
    """The torchrun example, 2 ranks, run twice with ``--steps 2``: the second launch
    resumes past step 1, says there is nothing to do, and ends with the same state."""
    pytest.importorskip("torch")
    example = EXAMPLE.with_name("torch_ddp.py")
    loc = str(tmp_path / "ddp")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc-per-node", "2"]
    outs = []
    for _ in range(2):
        proc = subprocess.run(
            [*launch, str(example), "--location", loc, "--steps", "2", "--every", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs.append(proc.stdout)
    assert "already past" not in outs[0]
    past = f"{loc} is already past the requested 2 steps (step 1 is committed): nothing to do"
    assert past in outs[1]
    finals = [re.findall(r"^final step 1 loss \S+ state [0-9a-f]{64}$", o, re.M) for o in outs]
    assert len(finals[0]) == 1 and finals[0] == finals[1]


README = Path(__file__).parent.parent / "README.md"

# The README's code blocks, and every page of docs/, are run by tests/test_docs.py.


def test_readme_installs_from_a_clone() -> None:
    """asynccp is not on a registry: every install of it is ``pip install -e '.[...]'``."""
    text = README.read_text()
    assert not re.search(r"pip install\s+['\"]?asynccp", text), "install from a clone: -e '.[x]'"
    assert "pip install -e '.[torch]'" in text


def test_readme_errors_paragraph_names_every_checkpoint_error() -> None:
    """The README's Errors paragraph lists every public error class (StoreError was missing)."""
    text = README.read_text()
    start = text.index("**Errors** all derive from `asynccp.CheckpointError`")
    paragraph = text[start : text.index("\n\n", start)]
    errors = [
        name
        for name in asynccp.__all__
        if isinstance(getattr(asynccp, name), type)
        and issubclass(getattr(asynccp, name), asynccp.CheckpointError)
    ]
    assert "StoreError" in errors
    missing = [
        name for name in errors if f"`{name}`" not in paragraph and name != "CheckpointError"
    ]
    assert not missing, missing
