"""The engine behind ``asynccp bench``: caller stall, throughput, loop lag, memory.

Everything is measured in one run, interleaved so that machine drift hits asynccp and
its baselines alike: each round of a case runs asynccp and the baseline back to back,
alternating which goes first. Each figure is the median of its samples over every
round; each ratio is the median of the per-round ratios ``asynccp / baseline`` (a
pair run back to back shares the machine's state of the moment), so it need not equal
the ratio of the two medians shown, and the report says so. A figure without samples
(a ticker that never ticked, a time too short to measure) is ``None``, shown as
``n/a``. The baselines use the same store, the same objects and the same durability:

* **sync writer** — what flytekit's ``SyncCheckpoint.write`` does: the caller itself
  writes the bytes to the store and waits (``obstore.put`` on the caller's thread; on
  a local directory followed by ``fsync`` of the file and its folders, because
  asynccp's local commits are durable too). Its per-save time is the stall asynccp
  is compared with, and its puts are also the **raw obstore** throughput baseline
  (the store's own speed, the limit asynccp can approach).
* **memory copy** — ``bytes(buffer)``: the least any snapshot of a mutable buffer
  can cost, the yardstick for ``bytearray`` saves.
* **raw gets** — ``obstore.get(...).bytes()`` of the same objects, for restores.

Peak memory is measured in a fresh child process (``spawn``-free: a plain
``sys.executable`` subprocess, obstore is not fork-safe) so that nothing this process
did earlier counts against it.

The engine knows nothing about terminals: it reports progress through a callback and
returns a plain dict (the ``--json`` document); :mod:`asynccp.cli._bench_report` turns
that dict into tables or a figure. It uses the library as a user would (``Checkpointer``)
plus the location resolver, so that ``--url`` reads like any asynccp location.

Rounds repeat until the spread is known: each case runs at least ``rounds`` rounds and
more, up to ``max_rounds``, while the newest round still widens the range of its
per-round ratios; every ratio is reported with that range (``ratio_low``,
``ratio_high``), and a target is called missed only when the whole range misses it.

This module runs it all: the store (:mod:`._bench_store`), the payloads and rounds
(:mod:`._bench_engine`), the small-save tests (:mod:`._bench_small`), the memory probe
(:mod:`._bench_memory`), the targets (:mod:`._bench_targets`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio

from ._bench_engine import Case, Engine
from ._bench_memory import memory
from ._bench_options import Options
from ._bench_small import small_saves
from ._bench_store import Target
from ._bench_targets import targets

__all__ = ["machine", "plan", "run"]


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, OS, Python, obstore and asynccp."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "obstore": _version("obstore"),
        "asynccp": _version("asynccp"),
    }


def _version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def plan(opts: Options) -> int:
    """How many progress steps a run takes at most (a case stops adding rounds once its
    spread is known)."""
    steps = len(opts.kinds) * len(opts.sizes) * opts.max_rounds * 2
    steps += (bool(opts.small_saves) + bool(opts.small_block_saves)) * opts.max_rounds * 2
    return steps + (1 if opts.memory else 0)


async def run(opts: Options, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run every measurement; return the result document (what ``--json`` writes)."""
    opts.validate()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    target = await anyio.to_thread.run_sync(Target, opts)
    src = Path(tempfile.mkdtemp(prefix="asynccp-bench-src-"))
    try:
        await anyio.to_thread.run_sync(target.probe)
        engine = Engine(opts, target, progress)
        cases = []
        largest = max(opts.sizes)
        for kind in opts.kinds:
            for size in opts.sizes:
                case = await anyio.to_thread.run_sync(Case, kind, size, src, opts.files_per_save)
                cases.append(await engine.case(case, lag_case=size == largest))
                del case
        small = await small_saves(engine, "latest", opts.small_saves) if opts.small_saves else None
        block = None
        if opts.small_block_saves:
            block = await small_saves(engine, "block", opts.small_block_saves)
        mem = await memory(opts, target, progress) if opts.memory else None
    finally:
        await anyio.to_thread.run_sync(target.close)
        shutil.rmtree(src, ignore_errors=True)
    doc = {
        "asynccp_bench": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "location": {"description": target.description, "kind": target.kind},
        "options": {k: v for k, v in asdict(opts).items() if k != "store_options"},
        "cases": cases,
        "small_saves": small,
        "small_block_saves": block,
        "memory": mem,
    }
    doc["targets"] = targets(doc)
    return doc
