"""The README's example job really is interrupted and really resumes."""

from __future__ import annotations

import os
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


def readme_block(heading: str) -> str:
    """The first ``python`` code block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(heading)
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, f"no python block after {heading!r}"
    return found.group(1)


@pytest.mark.slow
def test_readme_training_state_example_saves_and_resumes(tmp_path: Path) -> None:
    """The README's training loop, as printed, on a local directory: the first run saves
    steps 0, 100, 200; the second resumes from 200 through ``read_state`` (model, AdamW
    state with its int keys, RNG state) and saves 300 and 400."""
    pytest.importorskip("torch")
    code = readme_block("## Training state")
    location = '"s3://bucket/runs/42"'
    assert location in code and "steps: int = 10_000" in code
    code = code.replace(location, repr(str(tmp_path / "run")))
    code = code.replace("anyio.run(train)", "import sys\nanyio.run(train, int(sys.argv[1]))")
    script = tmp_path / "train.py"
    script.write_text(code)
    check = (
        "import anyio, asynccp, sys\n"
        "async def main():\n"
        f"    async with asynccp.Checkpointer({str(tmp_path / 'run')!r}) as cp:\n"
        "        c = await cp.latest()\n"
        "        s = await c.read_state(framework='torch')\n"
        "        steps = [x.step for x in await cp.list()]\n"
        "        print(steps, s['step'], sorted(s['optim']['state'])[:2])\n"
        "anyio.run(main)\n"
    )
    for steps, expected in ((250, "[0, 100, 200] 200 [0, 1]"), (450, "[200, 300, 400] 400 [0, 1]")):
        proc = subprocess.run(
            [sys.executable, str(script), str(steps)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        got = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == expected
