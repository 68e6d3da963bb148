"""Compare two source trees on 1 MiB checkpoints with many samples per run, interleaved.

    python benchmarks/before_after_1mib.py BEFORE_TREE AFTER_TREE [--pairs 5]
                                           [--rounds 100] [--window 2]

``before_after.py`` runs ``asynccp bench`` at 3 rounds per case, which is enough at
64 MiB but not at 1 MiB: a round of four 1 MiB saves commits in 5-15 ms, so a round's
throughput is one short, noisy interval, and the loop-lag figure pools a handful of
ticks of a 5 ms ticker. Worse, the ticks it pools are biased: the faster a round, the
fewer ticks fall inside it, and the ones that do fall in the slow rounds, at the
moment the round's commits settle on the loop. A tree that commits twice as fast then
shows a *higher* lag.

This script measures the same figures with enough samples, through the public API both
trees share (``Checkpointer(path)``, ``save``, the handles, ``read_all``), each tree in
a process of its own (``PYTHONPATH``), alternately, ``--pairs`` times, for ``bytes``,
``bytearray`` (the caller changes it after every save) and ``file`` (a file the
caller may overwrite):

- ``--rounds`` rounds, each a fresh checkpointer on a local temporary directory
  (durable, the defaults: ``max_pending=4``) that saves four times back to back and
  awaits every handle: the median caller stall over every save, the median committed
  MiB/s of the rounds (first save to last handle), the median restore MiB/s
  (``read_all`` of each checkpoint);
- a window of ``--window`` seconds in which one checkpointer saves rounds of four back
  to back, with a 5 ms ticker on the loop: the lag's p50 and p99 over every tick (a
  few hundred), and the saves per second the window reached.

The checkpoints go to the temporary directory (``TMPDIR``), whose file system the
output names first. On ext4 without a journal, creating files right after many were
deleted (the rounds delete theirs as they go) is slow, and the window measures mostly
that; ``TMPDIR`` on a journaled file system measures the trees instead.

The table and its verdicts are ``before_after.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
KINDS = ("bytes", "bytearray", "file")
TICK = 0.005


# -- the worker: runs on one tree's asynccp ----------------------------------------------


async def _rounds(asynccp: Any, root: Path, kind: str, rounds: int) -> dict[str, float]:
    payload, touch = _payload(root, kind)
    stalls: list[float] = []
    writes: list[float] = []
    restores: list[float] = []
    for r in range(rounds):
        where = root / f"r{r}"
        async with asynccp.Checkpointer(where) as cp:
            handles = []
            t0 = time.perf_counter()
            for i in range(4):
                touch(i)
                s = time.perf_counter()
                handles.append(await cp.save(i, payload))
                stalls.append(time.perf_counter() - s)
            ckpts = [await h for h in handles]
            writes.append(4 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for c in ckpts:
            await c.read_all()
        restores.append(4 / (time.perf_counter() - t0))
        shutil.rmtree(where)
    return {
        "caller stall (ms)": statistics.median(stalls) * 1e3,
        "committed MiB/s": statistics.median(writes),
        "restore MiB/s": statistics.median(restores),
    }


async def _window(asynccp: Any, root: Path, kind: str, seconds: float) -> dict[str, float]:
    import anyio

    payload, touch = _payload(root, kind)
    lags: list[float] = []
    saves = 0
    async with asynccp.Checkpointer(root / "window") as cp:
        done = anyio.Event()

        async def ticker() -> None:
            while not done.is_set():
                t = time.perf_counter()
                await anyio.sleep(TICK)
                lags.append(max(0.0, time.perf_counter() - t - TICK))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                handles = []
                for _ in range(4):
                    touch(saves)
                    handles.append(await cp.save(saves, payload))
                    saves += 1
                for h in handles:
                    await h
            done.set()
    shutil.rmtree(root / "window")
    q = statistics.quantiles(lags, n=100)
    return {
        "loop lag p50 (ms)": q[49] * 1e3,
        "loop lag p99 (ms)": q[98] * 1e3,
        "saves/s (lag window)": saves / seconds,
    }


def _payload(root: Path, kind: str) -> tuple[Any, Any]:
    """The payload of ``kind`` and what the caller does to it before each save."""
    data = os.urandom(MiB)
    if kind == "bytes":
        return data, lambda i: None
    if kind == "bytearray":
        buf = bytearray(data)

        def touch(i: int) -> None:
            buf[:8] = i.to_bytes(8, "little")

        return buf, touch
    path = root / "source.bin"
    path.write_bytes(data)
    return path, lambda i: None


def worker(kinds: list[str], rounds: int, window: float) -> None:
    import asynccp

    out: dict[str, Any] = {"asynccp": asynccp.__file__}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            root = Path(tmp) / kind
            root.mkdir()
            figures = asyncio.run(_rounds(asynccp, root, kind, rounds))
            figures |= asyncio.run(_window(asynccp, root, kind, window))
            for name, value in figures.items():
                out[f"{kind} 1 MiB: {name}"] = value
    print(json.dumps(out))


# -- the comparison ---------------------------------------------------------------------

#: Whether a higher value of a figure is better.
HIGHER = {
    "caller stall (ms)": False,
    "committed MiB/s": True,
    "restore MiB/s": True,
    "loop lag p50 (ms)": False,
    "loop lag p99 (ms)": False,
    "saves/s (lag window)": True,
}


def run_tree(
    tree: Path, kinds: list[str], rounds: int, window: float
) -> dict[str, tuple[float | None, bool]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--worker", "--kinds", ",".join(kinds)]
    cmd += ["--rounds", str(rounds), "--window", str(window)]
    done = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True)
    doc: dict[str, Any] = json.loads(done.stdout)
    where = Path(doc.pop("asynccp")).resolve()
    if not where.is_relative_to(tree):
        raise SystemExit(f"{tree}: the worker imported asynccp from {where}")
    return {name: (value, HIGHER[name.split(": ", 1)[1]]) for name, value in doc.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, nargs="?")
    parser.add_argument("after", type=Path, nargs="?")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(KINDS), help="of " + ", ".join(KINDS))
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--window", type=float, default=2.0, help="seconds of the lag window")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds: a comma-separated list of {', '.join(KINDS)}")
    if args.pairs < 1 or args.rounds < 1 or args.window <= 0:
        parser.error("--pairs and --rounds must be >= 1, --window > 0")
    if args.worker:
        worker(kinds, args.rounds, args.window)
        return
    if args.before is None or args.after is None:
        parser.error("give the two trees: BEFORE_TREE AFTER_TREE")
    sys.path.insert(0, str(HERE))
    from _common import file_system
    from before_after import print_table

    print(
        f"checkpoints in {tempfile.gettempdir()} (TMPDIR): "
        f"{file_system(Path(tempfile.gettempdir()))}"
    )
    runs: dict[str, list[dict[str, tuple[float | None, bool]]]] = {"before": [], "after": []}
    for pair in range(args.pairs):
        for which in ("before", "after") if pair % 2 == 0 else ("after", "before"):
            tree = (args.before if which == "before" else args.after).resolve()
            runs[which].append(run_tree(tree, kinds, args.rounds, args.window))
            shown = ", ".join(f"{k}: {v[0]:.3g}" for k, v in runs[which][-1].items())
            print(f"pair {pair + 1}/{args.pairs}, {which}: {shown}", file=sys.stderr, flush=True)
    print_table(runs)


if __name__ == "__main__":
    main()
