"""Every save counts: tiny and small checkpoints, each committed, against the raw floor.

    python benchmarks/bench_small.py [--rounds 7] [--only local,durable,s3,...] [--json out.json]
                                     [--max-pending N]

Each case runs asynccp and its baseline back to back, ``--rounds`` times, the order
alternating, and reports the median of each and the median of the per-round ratios,
with their range (the spread of this machine). A target is *met* when the median ratio
reaches it; the table also says when the whole range does (or misses it).

- ``local``: ``--saves`` (2,000) checkpoints of 16 bytes to a local directory with
  ``policy="block"``, ``keep=3``, ``durable=False``, until ``flush()`` returned (every
  one committed); against the raw loop a careful synchronous writer runs: write a
  temporary file, rename it over the checkpoint file. Target ≥ 0.8.
- ``durable``: the same, durable (asynccp's default); against write, fsync, rename, fsync
  of the folder per checkpoint. Target ≥ 1.0.
- ``s3``: ``--s3-saves`` (300) checkpoints of 16 bytes to a moto S3 server (started
  here, on 127.0.0.1), ``policy="block"``, ``keep=3``; against sequential raw
  ``obstore.put`` calls of the same 16 bytes. Target ≥ 1.0.
- ``--max-pending N`` runs asynccp in ``local``, ``durable``, ``s3`` and the seed-loop
  cases with ``Limits(max_pending=N)`` instead of the default 4: a group commit takes
  at most what waits in the queue.
- ``seed-block`` / ``seed-latest``: Flyte's seed loop
  (``current_context().checkpoint.write(f"{i + 1}".encode())``, ``--seed-saves`` times)
  in a flytekit ``def`` task run locally, with
  ``task_config=asynccp.flytekit.Checkpointing(keep=3)`` (``policy="block"``: every
  write committed, durably), the same with ``durable=False`` (``seed-block-nofsync``:
  like for like, ``SyncCheckpoint`` does not fsync) or ``policy="latest"``, against
  the same task with flytekit's own ``SyncCheckpoint``; saves per second over the
  whole task call. Targets ≥ 2, ≥ 2 and ≥ 10.
- ``read16``: ``Checkpoint.read()`` of a 16 MiB checkpoint on the moto server against
  a raw ``obstore.get(...).bytes()`` of its object (both from a worker thread).
  Target ≥ 0.9 (time ratio inverted: throughput).
- ``mib1``: 20 checkpoints of 1 MiB saved back to back on the local disk, durable,
  ``max_pending=4``, until every handle resolved; against raw durable puts (obstore
  put, fsync of the file, its folder and the root), as ``asynccp bench`` and
  ``bench_state.py`` measure them. Target ≥ 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import _common as c  # noqa: E402

import asynccp  # noqa: E402

MiB = 1 << 20
TARGETS = {
    "local": 0.8,
    "durable": 1.0,
    "s3": 1.0,
    "seed-block": 2.0,
    "seed-block-nofsync": 2.0,
    "seed-latest": 10.0,
    "read16": 0.9,
    "mib1": 0.9,
}
CASES = list(TARGETS)


# -- the local loops -----------------------------------------------------------------


async def asynccp_tiny(
    where: Any, n: int, *, durable: bool = True, max_pending: int | None = None, **store: Any
) -> float:
    """``n`` 16-byte checkpoints, policy="block", keep=3; checkpoints per second until
    every one committed (``flush()`` returned). ``max_pending``: the Limits default
    unless given."""
    opts = asynccp.StoreOptions(durable=durable, **store)
    limits = asynccp.Limits() if max_pending is None else asynccp.Limits(max_pending=max_pending)
    async with asynccp.Checkpointer(where, keep=3, store=opts, limits=limits) as cp:
        t0 = time.perf_counter()
        for i in range(n):
            await cp.save(i, b"%016d" % (i + 1))
        await cp.flush()
        return n / (time.perf_counter() - t0)


def raw_tiny(where: Path, n: int, *, durable: bool) -> float:
    """The synchronous writer's loop: write a temporary file, (fsync,) rename it over the
    checkpoint, (fsync the folder); per second."""
    where.mkdir(parents=True)
    tmp, dest = where / ".counter.tmp", where / "counter"
    folder = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"%016d" % (i + 1))
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
            if durable:
                os.fsync(folder)
        return n / (time.perf_counter() - t0)
    finally:
        os.close(folder)


async def asynccp_mib(where: Path, saves: int, body: bytes) -> float:
    """``saves`` 1 MiB checkpoints back to back (durable, max_pending=4); seconds."""
    async with asynccp.Checkpointer(where, limits=asynccp.Limits(max_pending=4)) as cp:
        t0 = time.perf_counter()
        handles = [await cp.save(i, body) for i in range(saves)]
        for h in handles:
            await h
        return time.perf_counter() - t0


# -- S3 --------------------------------------------------------------------------------


class S3:
    """A moto S3 server on 127.0.0.1 for the run, and a fresh bucket per use."""

    def __init__(self) -> None:
        from _moto import MotoServer

        self.server = MotoServer()
        self.server.start()

    def store(self) -> Any:
        from _moto import create_bucket, make_s3_store

        bucket = f"small-{uuid.uuid4().hex[:12]}"
        create_bucket(self.server.url, bucket)
        return make_s3_store(self.server.url, bucket)

    def close(self) -> None:
        self.server.stop()


def raw_puts(store: Any, n: int) -> float:
    import obstore

    t0 = time.perf_counter()
    for i in range(n):
        obstore.put(store, "raw/counter", b"%016d" % (i + 1))
    return n / (time.perf_counter() - t0)


async def read_round(ckpt: Any, store: Any, key: str, who: str) -> float:
    import anyio.to_thread
    import obstore

    t0 = time.perf_counter()
    if who == "asynccp":
        data = await ckpt.read()
    else:
        data = await anyio.to_thread.run_sync(lambda: obstore.get(store, key).bytes())
    seconds = time.perf_counter() - t0
    del data
    return seconds


# -- flytekit's seed loop --------------------------------------------------------------

try:
    from flytekit import task

    import asynccp.flytekit
except ImportError:
    task = None

seed_loop = c.seed_loop


#: ``--max-pending``, declared once: ``main``'s parser takes it as a parent.
_LIMITS_ARGS = argparse.ArgumentParser(add_help=False)
_LIMITS_ARGS.add_argument(
    "--max-pending",
    type=int,
    help="Limits(max_pending=) of asynccp in the tiny local, S3 and seed-loop cases "
    "(default: the library's, 4)",
)


def _seed_limits() -> asynccp.Limits:
    """The seed-loop tasks' Limits: ``--max-pending`` read before ``main`` parses the
    command line, because a flytekit task's config is fixed where it is defined, at
    module level (flytekit refuses tasks defined in a function)."""
    mp = _LIMITS_ARGS.parse_known_args()[0].max_pending if __name__ == "__main__" else None
    return asynccp.Limits() if mp is None else asynccp.Limits(max_pending=mp)


if task is not None:
    _limits = _seed_limits()

    @task
    def flytekit_seed(n: int) -> float:
        return seed_loop(n)

    @task(task_config=asynccp.flytekit.Checkpointing(keep=3, limits=_limits))
    def asynccp_block_seed(n: int) -> float:
        return seed_loop(n)

    @task(
        task_config=asynccp.flytekit.Checkpointing(
            keep=3, limits=_limits, store=asynccp.StoreOptions(durable=False)
        )
    )
    def asynccp_nofsync_seed(n: int) -> float:
        return seed_loop(n)

    @task(
        task_config=asynccp.flytekit.Checkpointing(
            keep=3, limits=dataclasses.replace(_limits, policy="latest")
        )
    )
    def asynccp_latest_seed(n: int) -> float:
        return seed_loop(n)


def seed_rate(fn: Any, n: int) -> float:
    """Saves per second over the whole task call (asynccp's end-of-task flush included)."""
    t0 = time.perf_counter()
    fn(n=n)
    return n / (time.perf_counter() - t0)


# -- running ---------------------------------------------------------------------------


def interleave(rounds: int, mine: Callable[[int], float], base: Callable[[int], float]) -> Any:
    """``rounds`` rounds of both, the order alternating: (asynccp values, baseline values)."""
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        for who in ("a", "b") if r % 2 == 0 else ("b", "a"):
            (a if who == "a" else b).append((mine if who == "a" else base)(r))
    return a, b


def summary(name: str, unit: str, a: list[float], b: list[float], higher: bool) -> dict[str, Any]:
    """Medians, and the per-round ratios (a rate's a / b; a time's b / a)."""
    ratios = sorted((x / y) if higher else (y / x) for x, y in zip(a, b, strict=True))
    ratio = statistics.median(ratios)
    target = TARGETS[name]
    return {
        "case": name,
        "unit": unit,
        "asynccp": statistics.median(a),
        "baseline": statistics.median(b),
        "ratio": ratio,
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "rounds": len(ratios),
        "target": target,
        "met": ratio >= target,
        "whole_range": "met" if ratios[0] >= target else "missed" if ratios[-1] < target else "",
    }


def run_case(name: str, args: argparse.Namespace, root: Path, s3: S3 | None) -> dict[str, Any]:
    n, rounds, mp = args.saves, args.rounds, args.max_pending
    if name in ("local", "durable"):
        durable = name == "durable"
        a, b = interleave(
            rounds,
            lambda r: asyncio.run(
                asynccp_tiny(root / f"{name}-a{r}", n, durable=durable, max_pending=mp)
            ),
            lambda r: raw_tiny(root / f"{name}-b{r}", n, durable=durable),
        )
        return summary(name, "checkpoints/s", a, b, True)
    if name == "s3":
        assert s3 is not None
        store = s3.store()
        a, b = interleave(
            rounds,
            lambda r: asyncio.run(
                asynccp_tiny(store, args.s3_saves, max_pending=mp, prefix=f"run{r}")
            ),
            lambda r: raw_puts(store, args.s3_saves),
        )
        return summary(name, "checkpoints/s", a, b, True)
    if name.startswith("seed"):
        fn = {
            "seed-block": asynccp_block_seed,
            "seed-block-nofsync": asynccp_nofsync_seed,
            "seed-latest": asynccp_latest_seed,
        }[name]
        a, b = interleave(
            rounds,
            lambda r: seed_rate(fn, args.seed_saves),
            lambda r: seed_rate(flytekit_seed, args.seed_saves),
        )
        return summary(name, "saves/s", a, b, True)
    if name == "read16":
        assert s3 is not None
        return asyncio.run(read16(s3, rounds * 10))
    if name == "mib1":
        body = os.urandom(MiB)
        a, b = interleave(
            rounds,
            lambda r: asyncio.run(asynccp_mib(root / f"mib-a{r}", 20, body)),
            lambda r: c.raw_durable_puts(root / f"mib-b{r}", 20, body),
        )
        return summary(name, "s per 20", a, b, False)
    raise ValueError(name)


async def read16(s3: S3, rounds: int) -> dict[str, Any]:
    from asynccp._layout import data_dir

    store = s3.store()
    async with asynccp.Checkpointer(store, store=asynccp.StoreOptions(prefix="run")) as cp:
        ckpt = await (await cp.save(0, os.urandom(16 * MiB)))
    key = f"run/{data_dir(ckpt.step, ckpt.writer)}/data"
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        for who in ("asynccp", "raw") if r % 2 == 0 else ("raw", "asynccp"):
            (a if who == "asynccp" else b).append(await read_round(ckpt, store, key, who))
    return summary("read16", "s per read", a, b, False)


def fmt(x: float, unit: str) -> str:
    if unit.startswith("s "):
        return f"{x * 1000:.1f} ms"
    return f"{x:,.0f}/s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[_LIMITS_ARGS])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--saves", type=int, default=2000, help="local tiny saves (default 2000)")
    p.add_argument("--s3-saves", type=int, default=300, help="S3 tiny saves (default 300)")
    p.add_argument("--seed-saves", type=int, default=2000, help="seed-loop writes (default 2000)")
    p.add_argument("--only", default=",".join(CASES), help=f"cases (default {','.join(CASES)})")
    p.add_argument("--dir", help="parent directory for the local cases (default: a temp dir)")
    p.add_argument("--json", help="write the results as JSON to this file")
    args = p.parse_args()
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {CASES}")
    if task is None:
        print("flytekit is not installed: skipping the seed loop (pip install flytekit)")
        cases = [c for c in cases if not c.startswith("seed")]
    root = Path(tempfile.mkdtemp(prefix="asynccp-small-", dir=args.dir))
    disk = c.file_system(root)
    print(f"local cases in {root.parent}: {disk}")
    if cases_seed := [n for n in cases if n.startswith("seed")]:
        print(
            f"{', '.join(cases_seed)}: flytekit's files in {tempfile.gettempdir()}: "
            f"{c.file_system(Path(tempfile.gettempdir()))}"
        )
    s3 = S3() if {"s3", "read16"} & set(cases) else None
    results = []
    try:
        for name in cases:
            print(f"{name} ...", file=sys.stderr, flush=True)
            results.append(run_case(name, args, root, s3))
    finally:
        if s3 is not None:
            s3.close()
        shutil.rmtree(root, ignore_errors=True)
    print("| case | asynccp | baseline | ratio: median (range) | target | |")
    print("|---|---|---|---|---|---|")
    for r in results:
        verdict = "met" if r["met"] else "MISSED"
        if r["whole_range"]:
            verdict += f" (whole range {r['whole_range']})"
        print(
            f"| {r['case']} | {fmt(r['asynccp'], r['unit'])} | {fmt(r['baseline'], r['unit'])} "
            f"| {r['ratio']:.2f} ({r['ratio_min']:.2f} to {r['ratio_max']:.2f}) "
            f"| ≥ {r['target']:g} | {verdict} |"
        )
    if args.json:
        doc = {"rounds": args.rounds, "file_system": disk, "cases": results}
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
