"""The examples and the README's code, run as printed: jobs that are interrupted and resume,
locations already past their steps, every complete README block one after another."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
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


@dataclass
class Block:
    """One fenced code block of the README."""

    heading: str  # the heading it follows
    info: str  # the fence's info string: "python", "python fragment", "bash"...
    code: str
    line: int  # where its fence opens (1-based)


def readme_blocks() -> list[Block]:
    """Every fenced code block of the README, in order."""
    blocks: list[Block] = []
    heading, fence, code = "", None, []
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if fence is None and line.startswith("```"):
            fence, code = (line[3:].strip(), n), []
        elif fence is not None and line.startswith("```"):
            blocks.append(Block(heading, fence[0], "\n".join(code) + "\n", fence[1]))
            fence = None
        elif fence is not None:
            code.append(line)
        elif line.startswith("#"):
            heading = line
    assert fence is None, f"README.md: the code block at line {fence[1]} is never closed"
    return blocks


def readme_block(heading: str) -> str:
    """The first complete ``python`` code block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(heading)
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, f"no python block after {heading!r}"
    return found.group(1)


#: Complete python blocks the sequential run leaves out, by the heading they follow.
NOT_RUN_IN_SEQUENCE = {
    "## Training state: tensors, optimizers, `read_state`": (
        "10,000 torch steps as printed; test_readme_training_state_example_saves_and_resumes "
        "runs it, as printed but for the step count"
    ),
}

#: What a block may need, and the module that says it is there.
NEEDS = {"from flytekit import": "flytekit", "import torch": "torch", "import numpy": "numpy"}


@pytest.mark.slow
def test_readme_python_blocks_run_one_after_another_as_printed(tmp_path: Path) -> None:
    """Every complete ``python`` block of the README (a fragment is fenced ``python
    fragment``), run as printed, one after another in one working directory: locations
    are relative or distinct, so no example trips over the checkpoints of another. The
    first example then leaves the newest ``keep=3`` of its 100 steps."""
    blocks = readme_blocks()
    python = [b for b in blocks if b.info.split()[:1] == ["python"]]
    assert {b.info for b in python} <= {"python", "python fragment"}
    complete = [b for b in python if b.info == "python"]
    assert complete and complete[0].heading == "## Example"
    assert set(NOT_RUN_IN_SEQUENCE) <= {b.heading for b in complete}
    ran = []
    for block in complete:
        if block.heading in NOT_RUN_IN_SEQUENCE:
            continue
        for marker, module in NEEDS.items():
            if marker in block.code and importlib.util.find_spec(module) is None:
                pytest.skip(f"README.md:{block.line} needs {module}")
        script = tmp_path / f"readme_{block.line}.py"
        script.write_text(block.code)
        proc = subprocess.run(
            [sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"README.md:{block.line} ({block.heading}):\n{proc.stderr}"
        ran.append(block.heading)
    assert ran[0] == "## Example"
    manifests = sorted(p.name for p in (tmp_path / "checkpoints/example/manifests").iterdir())
    assert manifests == [f"{step:020d}.json" for step in (97, 98, 99)]


def test_readme_python_blocks_use_locations_of_their_own() -> None:
    """A location a README block writes to (a URL, or a folder under ``checkpoints/``)
    appears in that block only: run one after another, no example resumes from another's
    checkpoints or trips on their steps (once, three shared ``s3://bucket/runs/42``)."""
    owners: dict[str, set[int]] = {}
    for block in readme_blocks():
        if block.info.split()[:1] == ["python"]:
            for loc in re.findall(r"[\"']((?:\w+://|checkpoints/)[^\"']*)[\"']", block.code):
                owners.setdefault(loc, set()).add(block.line)
    assert "checkpoints/example" in owners
    shared = {loc: lines for loc, lines in owners.items() if len(lines) > 1}
    assert not shared, shared


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


@pytest.mark.slow
def test_readme_training_state_example_saves_and_resumes(tmp_path: Path) -> None:
    """The README's training loop, as printed (but for its step count), in a fresh working
    directory: the first run saves steps 0, 100, 200 to ``checkpoints/training_state``; the
    second resumes from 200 through ``read_state`` (model, AdamW state with its int keys,
    RNG state) and saves 300 and 400."""
    pytest.importorskip("torch")
    code = readme_block("## Training state")
    location = '"checkpoints/training_state"'
    assert location in code and "steps: int = 10_000" in code
    run_dir = tmp_path / "checkpoints" / "training_state"
    code = code.replace("anyio.run(train)", "import sys\nanyio.run(train, int(sys.argv[1]))")
    script = tmp_path / "train.py"
    script.write_text(code)
    check = (
        "import anyio, asynccp, sys\n"
        "async def main():\n"
        f"    async with asynccp.Checkpointer({str(run_dir)!r}) as cp:\n"
        "        c = await cp.latest()\n"
        "        s = await c.read_state(framework='torch')\n"
        "        steps = [x.step for x in await cp.list()]\n"
        "        print(steps, s['step'], sorted(s['optim']['state'])[:2])\n"
        "anyio.run(main)\n"
    )
    for steps, expected in ((250, "[0, 100, 200] 200 [0, 1]"), (450, "[200, 300, 400] 400 [0, 1]")):
        proc = subprocess.run(
            [sys.executable, str(script), str(steps)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        got = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == expected
