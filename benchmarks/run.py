"""Reproduce benchmarks/README.md: every figure, on this machine, in one command.

    pip install -e '.[bench,test]'            # rich, matplotlib, moto (for --s3)
    pip install flytekit torch==2.13.0        # the peers (optional: skipped if missing)
    python benchmarks/run.py [--s3] [--out benchmarks/results]

Runs ``asynccp bench`` on a local temporary directory (and, with ``--s3``, on a moto
S3 server on 127.0.0.1 configured through AWS_* environment variables), then the
peer scripts, writes every JSON document and the plot into ``--out``, and prints the
Markdown tables that benchmarks/README.md holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def sh(*cmd: str, env: dict[str, str] | None = None) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, cwd=ROOT)


def bench(out: Path, name: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    path = out / f"{name}.json"
    sh(sys.executable, "-m", "asynccp", "bench", "-q", "--json", str(path), *extra, env=env)
    return json.loads(path.read_text())


def num(value: float | None, spec: str, unit: str = "", scale: float = 1.0) -> str:
    """A figure of a bench document; ``n/a`` when it had no samples (``None``)."""
    return "n/a" if value is None else f"{value * scale:{spec}}{unit}"


def targets_table(docs: dict[str, dict[str, Any]]) -> None:
    names = list(docs)
    print("| target | " + " | ".join(names) + " | goal |")
    print("|---|" + "---|" * (len(names) + 1))
    rows: dict[str, list[str]] = {}
    goals: dict[str, str] = {}
    for i, (_, doc) in enumerate(docs.items()):
        for t in doc["targets"]:
            row = rows.setdefault(t["target"], [""] * len(names))
            if t["unit"] == "x" and t["limit"] < 1:
                val, goal = num(t["value"], ".1f", " %", 100), f"≥ {t['limit'] * 100:.0f} %"
            elif t["unit"] == "x":
                val, goal = num(t["value"], ".2f", " x"), f"{t['limit']:g} x"
            else:
                val, goal = num(t["value"], ".1f", f" {t['unit']}"), f"{t['limit']:.0f} {t['unit']}"
            if "stall" in t["target"] and t["unit"] == "x" and t["limit"] < 1:
                goal = goal.replace("≥", "≤")
            elif "stall" in t["target"] or "lag" in t["target"] or "RSS" in t["target"]:
                goal = "≤ " + goal
            else:
                goal = goal if goal.startswith("≥") else "≥ " + goal
            row[i] = f"{val} {'✅' if t['met'] else '❌'}"
            goals[t["target"]] = goal
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row) + f" | {goals[name]} |")


def cases_table(doc: dict[str, Any]) -> None:
    print(
        "| payload | stall asynccp | stall sync write | ratio | throughput asynccp | raw puts "
        "| ratio | restore asynccp | raw gets | ratio | loop lag p50/p99 asynccp "
        "| loop lag p50/p99 sync writer |"
    )
    print("|---" * 12 + "|")
    for c in doc["cases"]:
        s, t, r = c["stall_ms"], c["throughput_mib_s"], c["restore_mib_s"]
        la, ls = c["loop_lag_ms"]["asynccp"], c["loop_lag_ms"]["sync_writer"]
        extra = f" (copy {num(s['memory_copy'], '.1f', ' ms')})" if "memory_copy" in s else ""
        print(
            f"| {c['kind']} {c['size'] >> 20} MiB | {num(s['asynccp'], '.3f', ' ms')}{extra} "
            f"| {num(s['sync_write'], '.1f', ' ms')} | {num(s['ratio'], '.2f', ' %', 100)} "
            f"| {num(t['asynccp'], '.0f', ' MiB/s')} | {num(t['raw_obstore'], '.0f', ' MiB/s')} "
            f"| {num(t['ratio'], '.0f', ' %', 100)} "
            f"| {num(r['asynccp'], '.0f', ' MiB/s')} | {num(r['raw_obstore'], '.0f', ' MiB/s')} "
            f"| {num(r['ratio'], '.0f', ' %', 100)} "
            f"| {num(la['p50'], '.1f')} / {num(la['p99'], '.1f', ' ms')} "
            f"| {num(ls['p50'], '.0f')} / {num(ls['p99'], '.0f', ' ms')} |"
        )
    small, mem = doc.get("small_saves"), doc.get("memory")
    block = doc.get("small_block_saves")
    if block:
        print(
            f"\nSmall saves (16 B, policy=block, {block['saves']} saves, every one committed): "
            f"asynccp {num(block['asynccp_saves_per_s'], ',.0f', '/s')} vs sync writes "
            f"{num(block['sync_writes_per_s'], ',.0f', '/s')} = {num(block['ratio'], '.2f', ' x')} "
            f"({num(block['ratio_low'], '.2f')} to {num(block['ratio_high'], '.2f')} by round)."
        )
    if small:
        print(
            f"\nSmall saves (16 B, policy=latest, {small['saves']} saves): asynccp "
            f"{num(small['asynccp_saves_per_s'], ',.0f', '/s')} vs sync writes "
            f"{num(small['sync_writes_per_s'], ',.0f', '/s')} "
            f"= {num(small['ratio'], '.1f', ' x')} ({small['committed']} committed, "
            f"{small['superseded']} "
            "superseded)."
        )
    if mem:
        print(
            f"Peak memory ({mem['saves']} saves of a {mem['size'] >> 20} MiB bytearray, "
            f"max_pending_bytes {mem['max_pending_bytes'] >> 20} MiB, fresh process): RSS "
            f"{mem['rss_before_mib']:.0f} MiB before, {mem['peak_rss_mib']:.0f} MiB peak, growth "
            f"{mem['growth_mib']:.0f} MiB (bound {mem['bound_mib']:.0f} MiB)."
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results"), help="folder for JSON and plots")
    p.add_argument("--s3", action="store_true", help="also run on a moto S3 server (loopback)")
    p.add_argument("--rounds", default="5", help="rounds for asynccp bench (default 5)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = {
        "local disk": bench(out, "local", "--rounds", args.rounds, "--plot", str(out / "local.png"))
    }
    if args.s3:
        sys.path.insert(0, str(ROOT / "tests"))
        from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer, create_bucket

        with MotoServer() as server:
            create_bucket(server.url, "bench")
            env = {
                "AWS_ENDPOINT_URL": server.url,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "AWS_REGION": REGION,
            }
            docs["S3 (moto, loopback)"] = bench(
                out, "s3", "--url", "s3://bench/run", "--rounds", "3", "--kinds",
                "bytes,bytearray,files", "--small-saves", "2000", env=env,
            )  # fmt: skip
    for peer in ("flytekit", "torch"):
        sh(sys.executable, str(HERE / f"bench_{peer}.py"), "--json", str(out / f"{peer}.json"))
    print("\n## Targets\n")
    targets_table(docs)
    for name, doc in docs.items():
        m = doc["machine"]
        print(f"\n## asynccp bench — {name}\n")
        print(
            f"{m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}, "
            f"obstore {m['obstore']}; {doc['seconds']} s; medians of "
            f"{doc['options']['rounds']} interleaved rounds.\n"
        )
        cases_table(doc)
    for peer in ("flytekit", "torch"):
        path = out / f"{peer}.json"
        if path.exists():
            print(f"\n## {peer}: see the table printed above ({path.name})")


if __name__ == "__main__":
    main()
