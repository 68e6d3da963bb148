"""The peak-memory probe of ``asynccp bench``, run in a fresh process.

Many saves of the largest bytearray, and the growth of the resident set size they
cause. A fresh child process (a plain ``sys.executable`` subprocess: obstore is not
fork-safe) so that nothing this process did earlier counts against it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import secrets
import sys
from collections.abc import Callable
from typing import Any

import anyio

from asynccp import Checkpointer, Limits, StoreOptions
from asynccp._store import ObjectStore, resolve
from asynccp.errors import CheckpointError

from ._bench_options import MiB, Options
from ._bench_store import Target
from ._bench_targets import TARGETS
from ._format import fmt_size

__all__ = ["child", "memory"]


def _rss_now() -> int:
    """This process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM) to now; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """This process's peak resident set size, in bytes (since :func:`_reset_peak`)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: save a reused bytearray many times, track peak RSS."""
    size, count = spec["size"], spec["count"]
    buf = bytearray(random.Random(1).randbytes(size))
    if spec["root"] is not None:
        location: Any = spec["root"]
        store = StoreOptions(durable=spec["durable"])
    else:
        base = resolve(spec["url"], StoreOptions(obstore=spec["store_options"]))
        assert isinstance(base, ObjectStore)
        location, store = base.store, StoreOptions(prefix=base.prefix + spec["prefix"])

    async def main() -> None:
        limits = Limits(spec["max_pending"], spec["max_pending_bytes"])
        async with Checkpointer(location, limits=limits, store=store) as cp:
            for i in range(count):
                buf[:8] = i.to_bytes(8, "little")
                await cp.save(i, buf)

    before = _rss_now()
    exact = _reset_peak()
    asyncio.run(main())
    peak = _peak_rss()
    return {"rss_before": before, "peak_rss": peak, "exact_peak": exact}


async def memory(opts: Options, target: Target, progress: Callable[[str], None]) -> dict[str, Any]:
    """Peak RSS growth of many saves of the largest bytearray, measured in a fresh process."""
    size = max(opts.sizes)
    m = opts.max_pending_bytes
    count = max(8, 2 * opts.max_pending, math.ceil(3 * m / size))
    sub = f"memory-{secrets.token_hex(3)}"
    spec = {
        "size": size,
        "count": count,
        "max_pending": opts.max_pending,
        "max_pending_bytes": m,
        "durable": opts.durable,
        "root": str(target.root / sub) if target.root is not None else None,
        "url": target.url,
        "prefix": target.run_prefix + sub,
        "store_options": opts.store_options,
    }
    progress(f"peak memory: {count} saves of a {fmt_size(size)} bytearray, fresh process")
    code = (
        "import json, sys; from asynccp.cli._bench_memory import child; "
        "print(json.dumps(child(json.loads(sys.argv[1]))))"
    )
    proc = await anyio.run_process([sys.executable, "-c", code, json.dumps(spec)], check=False)
    await anyio.to_thread.run_sync(target.remove, sub)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CheckpointError(f"memory probe failed: {err[-1] if err else proc.returncode}")
    child = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    growth = child["peak_rss"] - child["rss_before"]
    return {
        "payload": "bytearray",
        "size": size,
        "saves": count,
        "max_pending_bytes": m,
        "rss_before_mib": child["rss_before"] / MiB,
        "peak_rss_mib": child["peak_rss"] / MiB,
        "growth_mib": growth / MiB,
        "bound_mib": m / MiB + TARGETS["memory_slack_mib"],
        "exact_peak": child["exact_peak"],
    }
