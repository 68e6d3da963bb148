"""Shared by the peer benchmarks: asynccp's side of each comparison, timing, tables.

Each peer script measures asynccp and the peer on the same machine and the same local
directory, in interleaved rounds (the order alternates each round), and reports
medians and the ratio of medians-per-round, like ``asynccp bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asynccp

MiB = 1 << 20


@dataclass
class Round:
    """One round of one writer: per-save stalls and the time to the last commit."""

    stalls: list[float] = field(default_factory=list)
    seconds: float = 0.0
    nbytes: int = 0
    restore_seconds: float = 0.0

    @property
    def mib_s(self) -> float:
        return self.nbytes / self.seconds / MiB

    @property
    def stall_ms(self) -> float:
        return statistics.median(self.stalls) * 1000


async def asynccp_round(
    where: Path,
    payload: Callable[[int], Any],
    touch: Callable[[int], None],
    saves: int,
    size: int,
    *,
    durable: bool = True,
    read: bool = True,
) -> Round:
    """``saves`` saves back to back; stall per save, throughput to the last commit, a read."""
    r = Round(nbytes=saves * size)
    async with asynccp.Checkpointer(
        where,
        store=asynccp.StoreOptions(durable=durable),
        limits=asynccp.Limits(max(4, saves), max(1 << 30, r.nbytes)),
    ) as cp:
        handles = []
        t0 = time.perf_counter()
        for i in range(saves):
            s = time.perf_counter()
            handles.append(await cp.save(i, payload(i)))
            r.stalls.append(time.perf_counter() - s)
            touch(i)  # the loop goes on and changes its state
        for h in handles:
            await h
        r.seconds = time.perf_counter() - t0
        if read:
            t0 = time.perf_counter()
            data = await cp.read()
            r.restore_seconds = time.perf_counter() - t0
            assert data is not None and len(data) == size
    return r


async def asynccp_small_saves(where: Path, n: int) -> float:
    """Flyte's example loop with asynccp: ``n`` 16-byte counter saves, policy="latest"; saves/s."""
    async with asynccp.Checkpointer(where, policy="latest", keep=3) as cp:
        t0 = time.perf_counter()
        for i in range(n):
            await cp.save(i, b"%016d" % (i + 1))
        await cp.flush()
        return n / (time.perf_counter() - t0)


def interleaved(rounds: int, runs: dict[str, Callable[[int], Any]]) -> dict[str, list[Any]]:
    """Run each writer once per round, rotating the order; results per writer."""
    names = list(runs)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(runs[name](i))
    return out


def ratio(a: list[float], b: list[float]) -> float:
    """Median of per-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def workdir(arg: str | None) -> tuple[Path, Callable[[], None]]:
    """The directory every writer writes under, and its cleanup."""
    if arg:
        root = Path(arg) / f"peer-bench-{time.time_ns()}"
        root.mkdir(parents=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="asynccp-peer-bench-"))
    return root, lambda: shutil.rmtree(root, ignore_errors=True)


def file_system(path: Path) -> str:
    """What ``path`` is stored on, for a benchmark's header: the file system, its device,
    its mount options and, for ext4, whether it has a journal (jbd2 lists the journals
    it runs under ``/proc/fs/jbd2``). Creating files is several times slower on ext4
    without a journal after many deletions, which changes every local ratio; a reader
    of the figures needs to know which it was. "unknown" where ``/proc`` is absent."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    where = os.path.realpath(path)
    best: tuple[int, str] = (-1, "unknown")
    for line in mounts:
        fields = line.split()
        sep = fields.index("-")
        point = fields[4].replace("\\040", " ")
        kind, device, options = fields[sep + 1], fields[sep + 2], fields[sep + 3]
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            text = f"{kind} on {device} ({options})"
            if kind == "ext4":
                journal = Path("/proc/fs/jbd2").glob(f"{os.path.basename(device)}-*")
                text += ", journaled" if any(journal) else ", no journal"
            best = (len(point), text)
    return best[1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sizes", default="1,16,64", help="payload sizes in MiB (default 1,16,64)")
    p.add_argument("--saves", type=int, default=4, help="saves per round (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--dir", help="parent directory to write under (default: a temp dir)")
    p.add_argument("--json", help="write the results as JSON to this file")
    return p


def sizes(text: str) -> list[int]:
    return [int(float(s) * MiB) for s in text.split(",") if s.strip()]


def print_table(head: list[str], rows: list[list[str]]) -> None:
    """A Markdown table (pastes into benchmarks/README.md as is)."""
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def dump(path: str | None, doc: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def medians(res: dict[str, list[Round]]) -> dict[str, dict[str, float]]:
    """Per contender: median stall (ms), throughput (MiB/s) and restore time (ms)."""
    return {
        "stall_ms": {k: statistics.median(r.stall_ms for r in v) for k, v in res.items()},
        "throughput_mib_s": {k: statistics.median(r.mib_s for r in v) for k, v in res.items()},
        "restore_ms": {
            k: statistics.median(r.restore_seconds * 1000 for r in v) for k, v in res.items()
        },
    }


def fsync(path: Path, folder: bool = False) -> None:
    """Make a file (or a folder's entries) durable."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_durable_puts(where: Path, saves: int, body: bytes) -> float:
    """``saves`` raw durable puts of ``body`` under ``where`` (obstore put, fsync of the
    file, its folder and ``where``), as ``asynccp bench``'s sync writer does; seconds."""
    import obstore
    from obstore.store import LocalStore

    where.mkdir(parents=True)
    store = LocalStore(where)
    t0 = time.perf_counter()
    for i in range(saves):
        rel = f"{i:04d}/data"
        obstore.put(store, rel, body)
        fsync(where / rel)
        fsync(where / f"{i:04d}", True)
        fsync(where, True)
    return time.perf_counter() - t0


def seed_loop(n: int) -> float:
    """Flyte's seed loop on ``current_context().checkpoint`` (inside a flytekit task);
    returns the loop's seconds."""
    from flytekit import current_context

    cp = current_context().checkpoint
    t0 = time.perf_counter()
    for i in range(n):
        cp.write(f"{i + 1}".encode())
    return time.perf_counter() - t0
