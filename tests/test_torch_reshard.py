"""The torchrun resharding example (``examples/torch_reshard.py``), in real processes.

A run saved on 4 ranks resumes on 2 (and, in the slow test, on 3 then 2, on a local
disk and on S3): every loss it prints, and the digest of the whole final state
(parameters and Adam state, gathered), equal those of an uninterrupted run, bit for
bit. The uninterrupted run uses one process: the example's sums do not depend on the
number of ranks, so that is the same run. Skipped without torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sites import Site

pytest.importorskip("torch")

EXAMPLE = Path(__file__).parent.parent / "examples" / "torch_reshard.py"
STEPS = 20
TIMEOUT = 300.0


def launch(
    ranks: int, location: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[dict[int, str], str]:
    """One torchrun launch; returns its losses by step and its final digest."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    job = [str(EXAMPLE), "--location", location, "--steps", str(STEPS), *extra]
    done = subprocess.run(
        [*launcher, "--nproc-per-node", str(ranks), *job],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**(env or os.environ), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = {int(s): v for s, v in re.findall(r"^loss (\d+) (\S+)$", done.stdout, re.M)}
    final = re.search(r"^final step \d+ on \d+ ranks state ([0-9a-f]{64})$", done.stdout, re.M)
    assert final, done.stdout[-3000:]
    return losses, final.group(1)


@pytest.mark.slow
def test_saved_on_4_ranks_resumed_on_2_continues_exactly(tmp_path: Path) -> None:
    reference, final = launch(1, str(tmp_path / "reference"))
    assert sorted(reference) == list(range(STEPS))
    location = str(tmp_path / "run")
    first, _ = launch(4, location, "--stop-at", "9")
    second, resumed_final = launch(2, location)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10, STEPS))
    assert {**first, **second} == reference  # every loss, bit for bit (repr of the float)
    assert resumed_final == final


@pytest.mark.slow
def test_4_then_3_then_2_ranks_on_each_store(site: Site) -> None:
    reference, final = launch(1, f"{site.url}/ref", env=site.env)
    where = f"{site.url}/run"
    runs = [launch(4, where, "--stop-at", "6", env=site.env)]
    runs.append(launch(3, where, "--stop-at", "13", env=site.env))
    runs.append(launch(2, where, env=site.env))
    merged: dict[int, str] = {}
    for losses, _ in runs:
        assert not merged.keys() & losses.keys()
        merged.update(losses)
    assert merged == reference
    assert runs[-1][1] == final
