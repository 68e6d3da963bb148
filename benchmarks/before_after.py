"""Compare two source trees of asynccp with ``asynccp bench``, interleaved, in one run.

    python benchmarks/before_after.py BEFORE_TREE AFTER_TREE [--pairs 4] [--sizes 64MiB]

Runs ``python -m asynccp.cli bench`` alternately on the two trees (before, after,
before, after, ...; each tree first on its own ``PYTHONPATH``), ``--pairs`` times, and
prints one Markdown table: for each figure, the median of each tree's runs and the
range (min to max) of those runs (the run-to-run noise), and a verdict: *worse beyond
noise* when every "after" run is worse than every "before" run, *median worse than
every before run* (a weaker sign: with 5 runs each, 8 % of figures show it by chance
alone, so it counts only where it repeats from one comparison to the next), else
*within noise*. The table ends with the chance of each, given the number of runs.
Interleaving spreads the machine's drifts (other work, thermal, cache) over both trees
alike. Both trees run 3 rounds per case (a tree
whose bench repeats rounds until the spread is known is held to 3), so that a figure
pooled over rounds (the loop lag's p99) pools as many ticks on both sides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: (label, path into a case of the bench document, True if higher is better)
CASE_FIGURES: list[tuple[str, tuple[str, ...], bool]] = [
    ("caller stall (ms)", ("stall_ms", "asynccp"), False),
    ("stall / sync write", ("stall_ms", "ratio"), False),
    ("committed MiB/s", ("throughput_mib_s", "asynccp"), True),
    ("throughput / raw puts", ("throughput_mib_s", "ratio"), True),
    ("restore MiB/s", ("restore_mib_s", "asynccp"), True),
    ("restore / raw gets", ("restore_mib_s", "ratio"), True),
    ("loop lag p50 (ms)", ("loop_lag_ms", "asynccp", "p50"), False),
    ("loop lag p99 (ms)", ("loop_lag_ms", "asynccp", "p99"), False),
]


def run_bench(tree: Path, sizes: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "asynccp.cli", "bench", "-q", "--sizes", sizes, "--json", str(out)]
    if _knows_max_rounds(tree, env):
        # The same number of rounds as a bench that has no --max-rounds (3): a tail
        # figure (loop lag p99, pooled over every round's ticks) of more rounds reaches
        # further into the tail, which would be the bench's change, not asynccp's.
        cmd += ["--rounds", "3", "--max-rounds", "3"]
    subprocess.run(cmd, check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _knows_max_rounds(tree: Path, env: dict[str, str]) -> bool:
    """Whether the tree's ``asynccp bench`` repeats rounds until the spread is known."""
    cmd = [sys.executable, "-m", "asynccp.cli", "bench", "--help"]
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return "--max-rounds" in done.stdout


def figures(doc: dict[str, Any]) -> dict[str, tuple[float | None, bool]]:
    """Every compared figure of one bench document: ``name -> (value, higher_is_better)``."""
    out: dict[str, tuple[float | None, bool]] = {}
    for case in doc["cases"]:
        label = f"{case['kind']} {case['size'] >> 20} MiB"
        for name, path, higher in CASE_FIGURES:
            value: Any = case
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            out[f"{label}: {name}"] = (value, higher)
    small = doc.get("small_saves") or {}
    out["16 B saves: saves/s"] = (small.get("asynccp_saves_per_s"), True)
    out["16 B saves: / sync writes"] = (small.get("ratio"), True)
    block = doc.get("small_block_saves") or {}  # (absent from a tree before it)
    out["16 B saves, block: saves/s"] = (block.get("asynccp_saves_per_s"), True)
    out["16 B saves, block: / sync writes"] = (block.get("ratio"), True)
    memory = doc.get("memory") or {}
    out["peak RSS growth (MiB)"] = (memory.get("growth_mib"), False)
    return out


def fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--sizes", default="64MiB")
    parser.add_argument("--keep", type=Path, help="also keep every JSON document here")
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="also count the runs kept in this folder by an earlier --keep",
    )
    args = parser.parse_args()
    runs: dict[str, list[dict[str, tuple[float | None, bool]]]] = {"before": [], "after": []}
    for folder in args.reuse:
        for which in runs:
            for path in sorted(folder.glob(f"{which}-*.json")):
                runs[which].append(figures(json.loads(path.read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            order = ["before", "after"] if pair % 2 == 0 else ["after", "before"]
            for which in order:
                tree = args.before if which == "before" else args.after
                out = (args.keep or Path(tmp)) / f"{which}-{pair}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                print(f"pair {pair + 1}/{args.pairs}: {which}", file=sys.stderr, flush=True)
                runs[which].append(figures(run_bench(tree.resolve(), args.sizes, out)))
    print_table(runs)


def print_table(runs: dict[str, list[dict[str, tuple[float | None, bool]]]]) -> None:
    """One Markdown table of every figure of ``runs`` (each run: ``name -> (value,
    higher_is_better)``), with each tree's median and range and the verdict, then the
    chance of each verdict given the number of runs."""
    names = list(runs["before"][0])
    print(f"{len(runs['before'])} runs of each, interleaved\n")
    print("| figure | before: median (range) | after: median (range) | after vs before |")
    print("|---|---|---|---|")
    for name in names:
        cols = []
        stats: dict[str, tuple[float, float, float]] = {}
        higher = runs["before"][0][name][1]
        for which in ("before", "after"):
            values = [r[name][0] for r in runs[which] if r[name][0] is not None]
            if not values:
                cols.append("n/a")
                continue
            med = statistics.median(values)
            stats[which] = (med, min(values), max(values))
            cols.append(f"{fmt(med)} ({fmt(min(values))} to {fmt(max(values))})")
        verdict = ""
        if len(stats) == 2:
            b_med, b_min, b_max = stats["before"]
            a_med = stats["after"][0]
            worst_before: float = b_min if higher else b_max
            better: Callable[[float, float], bool] = (
                (lambda x, y: x >= y) if higher else (lambda x, y: x <= y)
            )
            a_best: float = stats["after"][2] if higher else stats["after"][1]
            change = (a_med / b_med - 1) * 100 if b_med else 0.0
            if not better(a_best, worst_before) and a_best != worst_before:
                within = "**worse beyond noise** (every after run worse than every before run)"
            elif not better(a_med, worst_before):
                within = "median worse than every before run"
            else:
                within = "within noise"
            verdict = f"{change:+.0f} %, {within}"
        print(f"| {name} | {cols[0]} | {cols[1]} | {verdict} |")
    n_before, n_after = len(runs["before"]), len(runs["after"])
    print(
        f"\nBy chance alone (the trees alike, runs exchangeable), a figure's after median is "
        f"worse than every before run with probability {median_chance(n_before, n_after):.1%}, "
        f"and every after run worse than every before run with probability "
        f"{1 / math.comb(n_before + n_after, n_after):.2%}; over {len(names)} figures, "
        f"{len(names) * median_chance(n_before, n_after):.1f} and "
        f"{len(names) / math.comb(n_before + n_after, n_after):.2f} of them are expected so."
    )


def median_chance(n_before: int, n_after: int) -> float:
    """The chance that the after median (the worse middle run when even) is worse than
    all ``n_before`` runs, every ordering of the ``n_before + n_after`` runs alike: the
    worst ``m`` runs of all are after runs, ``m`` the after runs from the median out."""
    m = n_after // 2 + 1
    return math.comb(n_after, m) / math.comb(n_before + n_after, m)


if __name__ == "__main__":
    main()
