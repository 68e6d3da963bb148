"""The torchrun example (``examples/torch_ddp.py``): 4 ranks, one SIGKILLed mid-run.

Three launches of ``python -m torch.distributed.run --standalone --nproc-per-node 4``:
an uninterrupted run (the reference); a run on another location in which rank 2 is
SIGKILLed once it has recorded a part halfway through (torchrun then stops the other
ranks and fails); and a relaunch on that location. The relaunch must resume, on every
rank, from the newest complete step the killed run left, and end in exactly the
reference's state (parameters, momentum and every rank's RNG: the digest the example
prints). Skipped without torch (the ``torch`` extra).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import asynccp

pytest.importorskip("torch")

EXAMPLE = Path(__file__).parent.parent / "examples" / "torch_ddp.py"
STEPS, EVERY = 60, 5
KILL_AFTER_STEP = 29  # rank 2 is killed once its part of this step (or a later one) is in
TIMEOUT = 300.0


def torchrun(location: Path) -> subprocess.Popen[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    job = [str(EXAMPLE), "--location", str(location), "--steps", str(STEPS)]
    return subprocess.Popen(
        [*launcher, "--nproc-per-node", "4", *job, "--every", str(EVERY)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def final_state(out: str) -> str:
    found = re.search(r"^final step (\d+) loss \S+ state ([0-9a-f]{64})$", out, re.MULTILINE)
    assert found, out[-3000:]
    assert int(found.group(1)) == STEPS - 1
    return found.group(2)


def run_and_kill(location: Path) -> tuple[list[str], int]:
    """Launch, SIGKILL rank 2 once its part of step >= KILL_AFTER_STEP is recorded;
    return the output and the step of its last part it reported."""
    proc = torchrun(location)
    assert proc.stdout is not None
    lines: list[str] = []
    pid = None
    killed_after = -1
    deadline = time.monotonic() + TIMEOUT
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if m := re.match(r"rank 2 pid (\d+)", line):
                pid = int(m.group(1))
            m = re.match(r"rank 2: part of step (\d+) recorded", line)
            if m and int(m.group(1)) >= KILL_AFTER_STEP and killed_after < 0:
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed_after = int(m.group(1))
            if time.monotonic() > deadline:
                raise TimeoutError("\n".join(lines[-20:]))
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert killed_after >= 0, "\n".join(lines[-30:])
    assert proc.returncode != 0  # torchrun reports the failed worker
    assert not any(line.startswith("final ") for line in lines)  # it died mid-run
    return lines, killed_after


async def newest_complete(location: Path) -> asynccp.Checkpoint | None:
    async with asynccp.Checkpointer(location) as cp:
        return await cp.latest()


@pytest.mark.slow
def test_a_killed_rank_and_a_relaunch_end_in_the_uninterrupted_state(tmp_path: Path) -> None:
    reference = torchrun(tmp_path / "reference")
    expected = final_state(finish(reference))

    location = tmp_path / "killed"
    _, killed_after = run_and_kill(location)
    newest = anyio.run(newest_complete, location)
    assert newest is not None and newest.shards == 4
    # the newest complete step: no later than the killed rank's last part, and before the end
    assert EVERY - 1 <= newest.step <= killed_after < STEPS - 1
    started = time.monotonic()
    relaunch = torchrun(location)
    out = finish(relaunch)
    assert relaunch.returncode == 0, out[-3000:]
    # Not anchored to lines: the ranks share torchrun's stdout, and two lines written at
    # once may end up run together ("...step 29rank 3: resumed...").
    resumed = re.findall(r"rank (\d): resumed from step (\d+)", out)
    assert sorted(resumed) == [(str(r), str(newest.step)) for r in range(4)], out[-3000:]
    assert final_state(out) == expected
    print(
        f"\nkill-and-resume: rank 2 killed after its part of step {killed_after}; newest "
        f"complete step {newest.step} (generation {newest.generation}); all 4 ranks resumed "
        f"from it and trained steps {newest.step + 1}-{STEPS - 1} (relaunch to the end "
        f"{time.monotonic() - started:.1f} s); final state equals the uninterrupted run's"
    )

    # the relaunch is another generation, and committed the last step
    async def last() -> asynccp.Checkpoint | None:
        return await newest_complete(location)

    end = anyio.run(last)
    assert end is not None and end.step == STEPS - 1 and end.generation != newest.generation
