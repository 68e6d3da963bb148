"""Sharded training under torchrun that resumes on another number of processes.

    torchrun --standalone --nproc-per-node 4 examples/torch_reshard.py --stop-at 9
    torchrun --standalone --nproc-per-node 3 examples/torch_reshard.py --stop-at 19
    torchrun --standalone --nproc-per-node 2 examples/torch_reshard.py
    # --location PATH_OR_URL: where (default checkpoints/torch_reshard; s3://... too)
    # no `torchrun` on the PATH: python -m torch.distributed.run (same arguments)

Each rank holds a *shard* of every parameter — ``w1``'s rows and ``b1`` (split along
dimension 0), ``w2``'s columns (split along dimension 1); ``b2`` is small and replicated
— and the Adam state of its shards, as ZeRO-3/FSDP do. A step gathers the full
parameters (``all_gather``), computes the gradients of this rank's micro-batches,
gathers every micro-batch's gradient and sums them in micro-batch order (so the sum is
the same bits on any number of ranks), and each rank updates its own shards.

Every ``--every`` steps each rank saves its shards with the synchronous API,
``asynccp.sync.Checkpointer(location, sharding=asynccp.Sharding(rank, world))``, as
``asynccp.Shard(block, offset=..., shape=...)``: the step records where each block
sits in the global tensor. On start each rank loads *its own* blocks of the newest step
with ``ckpt.load_into({... Shard(my_block, offset=my_offset, shape=global) ...})``:
only the bytes of its share are read, whatever the number of processes that saved
it, with no coordinator and no conversion step. Stopped on 4 ranks and resumed on 3,
then on 2, the run prints exactly the losses of an uninterrupted run, bit for bit
(the last line, ``final ...``, is a digest of the whole state).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import asynccp
import asynccp.sync

#: The model: x (16) -> w1 (48x16), b1 -> relu -> w2 (8x48), b2 -> y (8).
SHAPES = {"w1": (48, 16), "b1": (48,), "w2": (8, 48), "b2": (8,)}
#: The dimension each parameter is split along (None: replicated on every rank).
SPLIT: dict[str, int | None] = {"w1": 0, "b1": 0, "w2": 1, "b2": None}
MICRO_BATCHES, MICRO_SIZE = 24, 8


def bounds(length: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s part of ``length`` elements (the last parts one longer when
    ``world`` does not divide it)."""
    return length * rank // world, length * (rank + 1) // world


def my_block(name: str, world: int, rank: int) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """The offset and the slices of parameter ``name`` this rank holds."""
    dim, shape = SPLIT[name], SHAPES[name]
    if dim is None:
        return (0,) * len(shape), tuple(slice(0, n) for n in shape)
    a, b = bounds(shape[dim], world, rank)
    offset = tuple(a if d == dim else 0 for d in range(len(shape)))
    return offset, tuple(slice(a, b) if d == dim else slice(0, n) for d, n in enumerate(shape))


def initial(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) * 0.3 for name, shape in SHAPES.items()}


def micro_batch(seed: int, step: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch ``i`` of ``step``: a function of them alone (any world size sees it)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + i)
    x = torch.randn(MICRO_SIZE, 16, generator=g)
    return x, torch.sin(x[:, :8] * 2)


class Trainer:
    """One rank's shards, their Adam state, and the training step."""

    def __init__(self, seed: int, lr: float) -> None:
        self.rank, self.world, self.seed = dist.get_rank(), dist.get_world_size(), seed
        full = initial(seed)
        self.params = {
            n: torch.nn.Parameter(full[n][my_block(n, self.world, self.rank)[1]].clone())
            for n in SHAPES
        }
        self.opt = torch.optim.Adam(self.params.values(), lr=lr)
        for p in self.params.values():  # Adam's state made now, so a load can fill it
            self.opt.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }

    def gather(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full tensors from every rank's shards."""
        out = {}
        for n, t in local.items():
            dim = SPLIT[n]
            if dim is None:
                out[n] = t.detach().clone()
                continue
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, t.detach())
            out[n] = torch.cat(parts, dim=dim)
        return out

    def step(self, step: int) -> float:
        full = {n: t.requires_grad_(True) for n, t in self.gather(self.params).items()}
        mine = range(self.rank, MICRO_BATCHES, self.world)
        grads, losses = {}, {}
        for i in mine:
            x, y = micro_batch(self.seed, step, i)
            h = F.relu(x @ full["w1"].T + full["b1"])
            loss = F.mse_loss(h @ full["w2"].T + full["b2"], y)
            g = torch.autograd.grad(loss, [full[n] for n in SHAPES])
            grads[i] = [t.detach() for t in g]
            losses[i] = loss.detach()
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, (grads, losses))
        merged_g: dict[int, list[torch.Tensor]] = {}
        merged_l: dict[int, torch.Tensor] = {}
        for g_part, l_part in every:
            merged_g.update(g_part)
            merged_l.update(l_part)
        # sum in micro-batch order: the same bits whatever the number of ranks
        total = [torch.zeros(SHAPES[n]) for n in SHAPES]
        loss_sum = torch.zeros(())
        for i in range(MICRO_BATCHES):
            total = [t + g for t, g in zip(total, merged_g[i], strict=True)]
            loss_sum = loss_sum + merged_l[i]
        for (n, p), g in zip(self.params.items(), total, strict=True):
            p.grad = (g / MICRO_BATCHES)[my_block(n, self.world, self.rank)[1]].contiguous()
        self.opt.step()
        return float(loss_sum / MICRO_BATCHES)

    def state(self, step: int) -> asynccp.State:
        """This rank's part of the checkpoint: its blocks, placed in the global tensors."""

        def place(n: str, t: torch.Tensor) -> Any:
            if SPLIT[n] is None:
                return t.detach()  # replicated: saved by every rank, read from the first
            offset, _ = my_block(n, self.world, self.rank)
            return asynccp.Shard(t.detach(), offset=offset, shape=SHAPES[n])

        optim = {}
        for n, p in self.params.items():
            s = self.opt.state[p]
            optim[n] = {
                "exp_avg": place(n, s["exp_avg"]),
                "exp_avg_sq": place(n, s["exp_avg_sq"]),
                "step": s["step"],
            }
        model = {n: place(n, p) for n, p in self.params.items()}
        return asynccp.State({"model": model, "optim": optim, "step": step})

    def target(self) -> dict[str, Any]:
        """Where a load goes: this rank's own tensors, as Shards of this launch's layout."""
        return self.state(-1).value

    def digest(self) -> str:
        """A digest of the whole state (every rank's shards gathered), the same on any
        number of ranks."""
        h = hashlib.sha256()
        full = self.gather(self.params)
        for n in SHAPES:
            s = self.opt.state[self.params[n]]
            moments = self.gather({n: s["exp_avg"]})[n], self.gather({n: s["exp_avg_sq"]})[n]
            for t in (full[n], *moments):
                h.update(t.numpy().tobytes())
            h.update(s["step"].numpy().tobytes())
        return h.hexdigest()


def train(args: argparse.Namespace) -> None:
    trainer = Trainer(args.seed, args.lr)
    rank, world = trainer.rank, trainer.world
    sharding = asynccp.Sharding(shard=rank, shards=world)
    with asynccp.sync.Checkpointer(args.location, sharding=sharding, keep=args.keep) as cp:
        # Every part of the newest step is verified; then this rank reads its share.
        found = cp.load_latest(lambda ckpt: ckpt.load_into(trainer.target()))
        start = 0
        if found is not None:
            ckpt = found[0]
            start = ckpt.step + 1
            print(f"rank {rank}: resumed from step {ckpt.step} ({ckpt.shards} -> {world} ranks)")
        last = min(args.steps, args.stop_at + 1)
        for step in range(start, last):
            loss = trainer.step(step)
            if rank == 0:
                print(f"loss {step} {loss!r}", flush=True)
            if (step + 1) % args.every == 0 or step == last - 1:
                cp.save(step, trainer.state(step))  # returns once staged
    # leaving the block flushed this rank's parts
    digest = trainer.digest()
    if rank == 0:
        print(f"final step {last - 1} on {world} ranks state {digest}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--location", default="checkpoints/torch_reshard", help="path or URL")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--stop-at", type=int, default=sys.maxsize, help="stop after this step")
    ap.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    ap.add_argument("--keep", type=int, default=2, help="complete checkpoints to keep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1:
        sys.exit("--steps and --every must be >= 1")
    torch.set_num_threads(1)  # one thread per rank: reproducible, and no oversubscription
    dist.init_process_group("gloo")
    try:
        train(args)
        dist.barrier()  # every rank leaves together
    finally:
        dist.destroy_process_group()
    # Leave without finalizing the interpreter. gloo's worker threads can still be
    # dropping the tensors of the last collectives (a gather's work object) when Python
    # finalizes, and taking the GIL then aborts the process ("terminate called without
    # an active exception", a core dump shows ProcessGroupGloo::runLoop destroying an
    # AsyncAllgatherWork). Every checkpoint is committed and the group is destroyed:
    # nothing is left to do.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
