"""``asynccp consolidate``: one safetensors file of a step's global tensors.

A step saved by several writers (blocks split along dimensions 0 and 1, a bfloat16
tensor, a replicated one) written as one file that the ``safetensors`` library loads,
bit for bit; OUT never overwritten without ``--force``; a corrupt block refused
(and an older step taken instead); memory bounded by a piece, not the model (a real
process, its peak resident memory measured).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import asynccp
from asynccp import Checkpointer, Shard, State
from asynccp.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::asynccp.CorruptCheckpointWarning")


def full_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(300, 40, generator=g),
        "v": torch.randn(6, 5000, generator=g, dtype=torch.float64),
        "e": torch.randn(33, generator=g).to(torch.bfloat16),
    }


async def save(location: Path, step: int, full: dict[str, torch.Tensor], n: int) -> None:
    async def writer(r: int) -> None:
        a, b = 300 * r // n, 300 * (r + 1) // n
        c, d = 5000 * r // n, 5000 * (r + 1) // n
        state = {
            "model": {
                "w": Shard(full["w"][a:b].clone(), offset=(a, 0), shape=(300, 40)),
                "v": Shard(full["v"][:, c:d].contiguous(), offset=(0, c), shape=(6, 5000)),
                "e": full["e"],
            },
            "epoch": step,
        }
        sharding = asynccp.Sharding(r, n, generation=f"s{step}")
        async with Checkpointer(location, sharding=sharding) as cp:
            await (await cp.save(step, State(state)))

    async with anyio.create_task_group() as tg:
        for r in range(n):
            tg.start_soon(writer, r)


def test_consolidate_writes_one_file_of_the_global_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loc = tmp_path / "run"
    old, new = full_state(1), full_state(2)
    anyio.run(save, loc, 1, old, 3)
    anyio.run(save, loc, 2, new, 4)
    out = tmp_path / "model.safetensors"
    assert main(["consolidate", str(loc), str(out), "--key", "model"]) == 0
    assert "wrote 3 tensor(s)" in capsys.readouterr().out
    tensors = load_file(out)
    assert sorted(tensors) == ["e", "v", "w"]
    for k, v in new.items():
        assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v), k

    # OUT is never replaced without --force; then --step picks an older step
    before = out.read_bytes()
    assert main(["consolidate", str(loc), str(out), "--step", "1"]) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["consolidate", str(loc), str(out), "--step", "1", "--force", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["step"] == 1 and doc["shards"] == 3 and doc["skipped"] == ["epoch"]
    tensors = load_file(out)
    assert sorted(tensors) == ["model/e", "model/v", "model/w"]
    assert torch.equal(tensors["model/v"], old["v"])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    # a flipped byte in a block of step 2: that step is refused, step 1 is written
    victim = next(p for p in loc.glob("data/*2-*/state.safetensors"))
    raw = bytearray(victim.read_bytes())
    raw[-100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert main(["consolidate", str(loc), str(out), "--step", "2", "--force"]) == 1
    assert "fails its checksum" in capsys.readouterr().err
    assert main(["consolidate", str(loc), str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 1
    assert main(["consolidate", str(loc), str(tmp_path), "--force"]) == 2  # a directory


# The peak resident set of this process image (VmHWM; ru_maxrss would carry the
# forked test process's over the exec), before and after the command.
SCRIPT = """
import sys
from asynccp.cli import main
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
base = hwm()
code = main(["consolidate", sys.argv[1], sys.argv[2], "--json"])
print(code, base, hwm())
"""


@pytest.mark.slow
def test_consolidate_streams_in_pieces(tmp_path: Path) -> None:
    """768 MiB of tensors (three 256 MiB ones, saved by two writers) consolidated by a
    fresh process whose peak memory grows by less than half a tensor: a piece of 64 MiB
    (read into straight from the parts: a slice of rows is one run of a block) and
    numpy (measured here: about 84 MiB in all)."""
    loc = tmp_path / "run"
    rng = np.random.default_rng(0)
    full = {f"t{i}": rng.standard_normal((8192, 8192), np.float32) for i in range(3)}

    async def writer(r: int) -> None:
        a, b = 4096 * r, 4096 * (r + 1)
        state: dict[str, Any] = {
            k: Shard(v[a:b].copy(), offset=(a, 0), shape=v.shape) for k, v in full.items()
        }
        async with Checkpointer(loc, sharding=asynccp.Sharding(r, 2, generation="g")) as cp:
            await (await cp.save(0, State(state)))
            del state

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            for r in range(2):
                tg.start_soon(writer, r)

    anyio.run(both)
    out = tmp_path / "all.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(loc), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    code, base, peak = (int(x) for x in done.stdout.split("\n")[-2].split())
    assert code == 0, done
    grown_mib = (peak - base) / 1024  # kB
    assert grown_mib < 128, f"peak grew by {grown_mib:.0f} MiB for a 192 MiB model"
    from safetensors.numpy import load_file as load_numpy

    got = load_numpy(out)
    for k, v in full.items():
        np.testing.assert_array_equal(got[k], v, strict=True)
