"""One rank of benchmarks/bench_reshard.py (started by it with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT set, as torchrun would).

    python _reshard_worker.py save DIR TENSORS SIDE
    python _reshard_worker.py load-asynccp|load-asynccp-verified|load-dcp DIR TENSORS SIDE

``save`` writes the same state twice, as this rank's blocks: with asynccp
(``asynccp.Shard`` in a sharded step, ``DIR/asynccp``) and with
``torch.distributed.checkpoint`` (DTensors, ``DIR/dcp``). The state is ``TENSORS``
float32 tensors of ``SIDE x SIDE``, the even ones split along dimension 0, the odd
ones along dimension 1; their values are a function of their index.

A load makes this rank's target tensors for the current world size (its blocks, zeroed
so that they are resident), waits at a barrier, loads, waits at a barrier again, checks every value
against what was saved (bit for bit), and prints one JSON line: the seconds from the
first barrier to the second (the same for every rank), the bytes this process read
(``rchar`` of ``/proc/self/io``: every ``read``/``pread`` of the load, page-cache hits
included), and how far its resident memory rose above where it was when the load began
(peak ``VmHWM``, reset at the start, minus ``VmRSS`` then): memory beyond the targets.

- ``load-asynccp``: ``cp.latest()`` then ``ckpt.load_into(...)`` — each rank reads its
  share, each chunk it reads checked against its CRC32C (what DCP's load compares to:
  it checks nothing);
- ``load-asynccp-verified``: a sharded checkpointer's ``load_latest(...)``, which
  verifies every part of the step whole before the loader runs (so that every rank
  reaches the same verdict): each rank reads the whole step once, then its share;
- ``load-dcp``: ``dcp.load`` into DTensors of the new mesh (DCP reshards).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Shard, init_device_mesh

import asynccp
import asynccp.sync


def full(i: int, side: int) -> torch.Tensor:
    return torch.randn(side, side, generator=torch.Generator().manual_seed(i))


def block(i: int, side: int, world: int, rank: int) -> tuple[int, tuple[int, int], slice]:
    """Tensor ``i``'s split dimension, this rank's offset in it, and its slice (as
    DTensor's ``Shard`` splits: ``torch.chunk``'s sizes)."""
    dim = i % 2
    c = -(-side // world)
    a, b = min(rank * c, side), min((rank + 1) * c, side)
    return dim, (a, 0) if dim == 0 else (0, a), slice(a, b)


def region(t: torch.Tensor, dim: int, s: slice) -> torch.Tensor:
    return t[s] if dim == 0 else t[:, s]


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def memory(field: str) -> int:
    """A ``/proc/self/status`` figure, in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    """Make VmHWM start again from the current resident set (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def save(where: str, n: int, side: int, rank: int, world: int) -> None:
    mesh = init_device_mesh("cpu", (world,))
    mine: dict[str, torch.Tensor] = {}
    dtensors: dict[str, Any] = {}
    shards: dict[str, Any] = {}
    for i in range(n):
        dim, offset, s = block(i, side, world, rank)
        local = region(full(i, side), dim, s).contiguous()
        mine[f"w{i}"] = local
        dtensors[f"w{i}"] = DTensor.from_local(
            local, mesh, [Shard(dim)], shape=torch.Size((side, side)), stride=(side, 1)
        )
        shards[f"w{i}"] = asynccp.Shard(local, offset=offset, shape=(side, side))
    sharding = asynccp.Sharding(rank, world, generation="bench-save")
    with asynccp.sync.Checkpointer(f"{where}/asynccp", sharding=sharding) as cp:
        cp.save(0, asynccp.State({"model": shards})).result()
    dcp.save({"model": dtensors}, checkpoint_id=f"{where}/dcp")
    dist.barrier()


def load(mode: str, where: str, n: int, side: int, rank: int, world: int) -> None:
    mesh = init_device_mesh("cpu", (world,))
    targets: dict[str, torch.Tensor] = {}
    wanted: dict[str, Any] = {}
    for i in range(n):
        dim, offset, s = block(i, side, world, rank)
        shape = (side, s.stop - s.start) if dim == 1 else (s.stop - s.start, side)
        local = torch.zeros(shape)  # resident before the load: its memory is not the load's
        targets[f"w{i}"] = local
        if mode == "load-dcp":
            wanted[f"w{i}"] = DTensor.from_local(
                local, mesh, [Shard(dim)], shape=torch.Size((side, side)), stride=(side, 1)
            )
        else:
            wanted[f"w{i}"] = asynccp.Shard(local, offset=offset, shape=(side, side))
    cp: Any = None
    if mode == "load-asynccp":
        cp = asynccp.sync.Checkpointer(f"{where}/asynccp").__enter__()
    elif mode == "load-asynccp-verified":
        sharding = asynccp.Sharding(rank, world, generation=f"bench-load-{time.time_ns()}")
        cp = asynccp.sync.Checkpointer(f"{where}/asynccp", sharding=sharding).__enter__()
    dist.barrier()
    reset_peak()
    rss0 = memory("VmRSS")
    read0, t0 = rchar(), time.perf_counter()
    if mode == "load-dcp":
        dcp.load({"model": wanted}, checkpoint_id=f"{where}/dcp")
    elif mode == "load-asynccp":
        ckpt = cp.latest()
        ckpt.load_into({"model": wanted})
    else:
        found = cp.load_latest(lambda ckpt: ckpt.load_into({"model": wanted}))
        assert found is not None
    read = rchar() - read0
    grown = memory("VmHWM") - rss0
    dist.barrier()
    seconds = time.perf_counter() - t0
    if cp is not None:
        cp.__exit__(None, None, None)
    for i in range(n):
        dim, _, s = block(i, side, world, rank)
        if not torch.equal(targets[f"w{i}"], region(full(i, side), dim, s)):
            raise SystemExit(f"{mode}: rank {rank}: w{i} differs from what was saved")
        into = wanted[f"w{i}"].to_local() if mode == "load-dcp" else wanted[f"w{i}"].array
        if targets[f"w{i}"].data_ptr() != into.data_ptr():
            raise SystemExit(f"{mode} did not load into the target tensor w{i}")
    sizes = [t.numel() * t.element_size() for t in targets.values()]
    line = {"rank": rank, "seconds": seconds, "read": read, "share": sum(sizes)}
    line |= {"peak_growth": grown, "largest": max(sizes)}
    print(json.dumps(line), flush=True)


def main() -> None:
    mode, where, n, side = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        if mode == "save":
            save(where, n, side, rank, world)
        else:
            load(mode, where, n, side, rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
