"""The framework plugins against the frameworks' own checkpoints, inside real tasks.

    python benchmarks/bench_plugins.py [--saves 10000] [--rounds 3] [--mib 64] [--json out.json]

1. **flytekit, the seed's loop**: ``current_context().checkpoint.write(f"{i + 1}".encode())``
   ``--saves`` times in a ``def`` task run locally (the sandbox's local folder), with
   ``task_config=asynccp.flytekit.Checkpointing(policy="latest", keep=3)`` against the
   same task without it (flytekit's ``SyncCheckpoint``). Saves per second over the
   whole task call: from the call to its return, so asynccp's end-of-task flush (every
   checkpoint committed) is included. Also shown: the loop alone, and asynccp with
   ``policy="block"`` over ``--block-saves`` writes (every write committed, durably: the
   rate of durable commits, which ``policy="latest"`` does not wait for).
2. **Flyte 2, one large save**: the caller's stall of ``await cp.save(data)`` with
   ``--mib`` MiB of ``bytes`` in an ``async def`` task run in Flyte 2's local mode:
   ``flyte.Checkpoint.save`` (writes the object before returning) against the
   asynccp-backed ``flyte.ctx().checkpoint`` of ``@asynccp.flyte.checkpointed``
   (returns once staged; the upload runs in the background).

Rounds are interleaved (the order alternates) and every ratio is the median of the
per-round ratios, measured in this run. Skips a part whose framework is not installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

SEED_TARGET = 10.0  # plugin saves/s >= 10 x flytekit's
STALL_TARGET = 0.01  # plugin stall <= 1 % of Flyte 2's


# -- flytekit: the seed's loop ------------------------------------------------------------

try:
    from flytekit import task

    import asynccp.flytekit
except ImportError:
    task = None


seed_loop = c.seed_loop


if task is not None:  # flytekit wants tasks at module level

    @task
    def flytekit_seed(n: int) -> float:
        return seed_loop(n)

    @task(task_config=asynccp.flytekit.Checkpointing(policy="latest", keep=3))
    def asynccp_seed(n: int) -> float:
        return seed_loop(n)

    @task(task_config=asynccp.flytekit.Checkpointing(keep=3))
    def asynccp_block_seed(n: int) -> float:
        return seed_loop(n)

    SEED_TASKS = {"flytekit": flytekit_seed, "asynccp": asynccp_seed}


def seed_round(fn: Any, saves: int) -> dict[str, float]:
    t0 = time.perf_counter()
    loop = fn(n=saves)
    whole = time.perf_counter() - t0
    return {"saves_per_s": saves / whole, "loop_saves_per_s": saves / loop}


# -- Flyte 2: one large save ----------------------------------------------------------------

try:
    import flyte

    import asynccp
    import asynccp.flyte
except ImportError:
    flyte = None

if flyte is not None:
    env = flyte.TaskEnvironment(name="asynccp_bench")

    async def one_save(size: int) -> float:
        """The stall of one save of ``size`` random bytes through flyte.ctx().checkpoint."""
        data = os.urandom(size)
        cp = flyte.ctx().checkpoint
        t0 = time.perf_counter()
        await cp.save(data)
        stall = time.perf_counter() - t0
        if isinstance(cp, asynccp.flyte.AsyncCheckpoint):
            await asynccp.current().flush()  # what the task's end does anyway
        return stall

    @env.task
    async def flyte_save(size: int) -> float:
        return await one_save(size)

    @asynccp.flyte.checkpointed(keep=2)
    @env.task
    async def asynccp_save(size: int) -> float:
        return await one_save(size)

    SAVE_TASKS = {"flyte": flyte_save, "asynccp": asynccp_save}


def stall_round(name: str, root: Path, size: int) -> float:
    raw = tempfile.mkdtemp(dir=root, prefix=f"{name}-")
    run = flyte.with_runcontext(mode="local", raw_data_path=raw).run(SAVE_TASKS[name], size)
    return float(run.outputs()[0])


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=10_000, help="seed-loop saves (default 10000)")
    p.add_argument(
        "--block-saves", type=int, default=1000, help="writes with policy=block (default 1000)"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--mib", type=int, default=64, help="size of the large save (default 64)")
    p.add_argument("--dir", help="parent directory for Flyte 2's runs (default: a temp dir)")
    p.add_argument("--json", help="write the results as JSON to this file")
    args = p.parse_args()
    rows: list[list[str]] = []
    doc: dict[str, Any] = {"saves": args.saves, "rounds": args.rounds, "mib": args.mib}
    met = True

    if task is None:
        print("flytekit is not installed: skipping the seed loop (pip install 'asynccp[flytekit]')")
    else:
        res = c.interleaved(
            args.rounds,
            {
                **{n: lambda _i, fn=fn: seed_round(fn, args.saves) for n, fn in SEED_TASKS.items()},
                "asynccp_block": lambda _i: seed_round(asynccp_block_seed, args.block_saves),
            },
        )
        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in res.items()}
        ratio = c.ratio(
            [r["saves_per_s"] for r in res["asynccp"]], [r["saves_per_s"] for r in res["flytekit"]]
        )
        block = c.ratio(
            [r["saves_per_s"] for r in res["asynccp_block"]],
            [r["saves_per_s"] for r in res["flytekit"]],
        )
        doc["seed_loop"] = {"medians": med, "ratio": ratio, "ratio_block": block}
        met &= ratio >= SEED_TARGET
        rows.append([
            f"seed loop, {args.saves:,} writes (flytekit task, local)",
            "saves/s, whole task call (asynccp: policy=latest, keep=3)",
            f"{med['asynccp']['saves_per_s']:,.0f}/s", f"{med['flytekit']['saves_per_s']:,.0f}/s",
            f"{ratio:.1f} x ({'met' if ratio >= SEED_TARGET else 'MISSED'}: >= {SEED_TARGET:g} x)",
        ])  # fmt: skip
        rows.append([
            "", "saves/s, the loop alone",
            f"{med['asynccp']['loop_saves_per_s']:,.0f}/s",
            f"{med['flytekit']['loop_saves_per_s']:,.0f}/s",
            f"{med['asynccp']['loop_saves_per_s'] / med['flytekit']['loop_saves_per_s']:.1f} x",
        ])  # fmt: skip
        rows.append([
            "", f"saves/s, whole task call (asynccp: policy=block, {args.block_saves:,} "
            "writes, every one committed durably)",
            f"{med['asynccp_block']['saves_per_s']:,.0f}/s",
            f"{med['flytekit']['saves_per_s']:,.0f}/s", f"{block:.2f} x",
        ])  # fmt: skip

    if flyte is None:
        print("flyte is not installed: skipping the Flyte 2 save (pip install 'asynccp[flyte]')")
    else:
        flyte.init()
        root, cleanup = c.workdir(args.dir)
        size = args.mib << 20
        try:
            res2 = c.interleaved(
                args.rounds,
                {n: lambda _i, n=n: stall_round(n, root, size) for n in SAVE_TASKS},
            )
        finally:
            cleanup()
        stall = c.ratio(res2["asynccp"], res2["flyte"])
        med2 = {k: statistics.median(v) for k, v in res2.items()}
        doc["flyte2_stall"] = {"stall_s": med2, "ratio": stall}
        met &= stall <= STALL_TARGET
        rows.append([
            f"one {args.mib} MiB save (Flyte 2 async task, local)", "caller stall of cp.save()",
            f"{med2['asynccp'] * 1e3:.3f} ms", f"{med2['flyte'] * 1e3:.1f} ms",
            f"{stall * 100:.3f} % ({'met' if stall <= STALL_TARGET else 'MISSED'}: "
            f"<= {STALL_TARGET * 100:g} %)",
        ])  # fmt: skip

    c.print_table(["case", "measure", "asynccp plugin", "framework's own", "ratio"], rows)
    doc["targets_met"] = met
    c.dump(args.json, doc)


if __name__ == "__main__":
    sys.exit(main())
