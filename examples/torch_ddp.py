"""Data-parallel training under torchrun, each rank checkpointing its part through asynccp.

    torchrun --standalone --nproc-per-node 4 examples/torch_ddp.py --location /tmp/ddp
    # no `torchrun` on the PATH: python -m torch.distributed.run (same arguments)
    # on S3: --location s3://bucket/runs/ddp (credentials from the AWS_* variables)

Four processes train replicas of a small MLP data-parallel (torch.distributed, gloo,
CPU), each on its own batches, gradients averaged by an all-reduce. Every ``--every``
steps each rank saves *its part* of the state with ``asynccp.Checkpointer(location,
sharding=asynccp.Sharding(rank, world))``: its slice of the parameters and of the
optimizer's momentum
(parameter ``i`` belongs to rank ``i % world``: the replicated state is stored once,
spread over the ranks) and its own RNG state (dropout differs per rank). ``save()``
returns at once; the step becomes a checkpoint when the last rank's part lands. No rank
waits for another and no collective is spent on checkpointing: the store alone commits.
The generation (which launch a part belongs to) comes from torchrun's environment, so a
relaunch never mixes its parts with those of a launch that died.

On start each rank loads the newest complete step — the same step on every rank,
without talking — takes its slices from its part and receives the other slices by
broadcast, and trains on: a run that is killed and relaunched ends in exactly the state
an uninterrupted run reaches (the last line, ``final ...``, prints a digest of it).

Why not ``DistributedDataParallel``? It would checkpoint the same way, but it re-buckets
gradients after each process's first iteration: a resumed process then sums its first
gradients in another order than the uninterrupted run did at that step, and the two
runs drift apart by rounding (about 1e-7). Averaging one flat gradient buffer with
``dist.all_reduce`` keeps the order fixed, so this example can show a bit-exact resume.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys

import anyio
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import asynccp


def build_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the same initial replica on every rank
    return nn.Sequential(
        nn.Linear(32, 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 1),
    )


def batch(seed: int, step: int, rank: int, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s batch at ``step``: a function of them alone (a resumed run sees the
    same data)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(size, 32, generator=g)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


class Trainer:
    """One rank's replica, optimizer and steps."""

    def __init__(self, seed: int, lr: float) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.seed = seed
        self.model = build_model(seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        torch.manual_seed(seed + 1 + self.rank)  # rank-local randomness (dropout)

    def step(self, step: int) -> float:
        x, y = batch(self.seed, step, self.rank)
        self.opt.zero_grad()
        loss = F.mse_loss(self.model(x), y)
        loss.backward()
        # data parallel: average the gradients over the ranks (one flat buffer, one
        # all-reduce, always summed in the same order)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        torch.nn.utils.vector_to_parameters(flat, grads)
        self.opt.step()
        return float(loss.item())

    def owned(self, i: int) -> bool:
        return i % self.world == self.rank

    def part(self) -> bytes:
        """This rank's part: its slices of parameters and momentum, and its RNG state."""
        params = list(self.model.parameters())
        state = {
            "params": {i: p.detach().clone() for i, p in enumerate(params) if self.owned(i)},
            "momentum": {
                i: self.opt.state[p]["momentum_buffer"].clone()
                for i, p in enumerate(params)
                if self.owned(i)
            },
            "rng": torch.get_rng_state(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def load(self, raw: bytes) -> None:
        """Take this rank's slices from its part and the others' from their owners."""
        state = torch.load(io.BytesIO(raw), weights_only=True)
        with torch.no_grad():
            for i, p in enumerate(self.model.parameters()):
                momentum = self.opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                if self.owned(i):
                    p.copy_(state["params"][i])
                    momentum.copy_(state["momentum"][i])
                dist.broadcast(p.data, src=i % self.world)
                dist.broadcast(momentum, src=i % self.world)
        torch.set_rng_state(state["rng"])

    def digest(self) -> str:
        """A digest of the whole job's state: parameters, momentum, every rank's RNG."""
        h = hashlib.sha256()
        for p in self.model.parameters():
            h.update(p.detach().numpy().tobytes())
            h.update(self.opt.state[p]["momentum_buffer"].numpy().tobytes())
        own = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        replicas: list[object] = [None] * self.world
        dist.all_gather_object(replicas, (h.hexdigest(), own))
        if len({r[0] for r in replicas}) != 1:  # type: ignore[index]
            raise RuntimeError(f"the replicas differ: {replicas}")
        for _, rng in replicas:  # type: ignore[misc]
            h.update(rng.encode())
        return h.hexdigest()


async def report(handle: asynccp.SaveHandle, rank: int) -> None:
    part = await handle  # resolves when this rank's part is recorded
    print(f"rank {rank}: part of step {part.step} recorded", flush=True)


async def train(args: argparse.Namespace) -> None:
    trainer = Trainer(args.seed, args.lr)
    rank, world = trainer.rank, trainer.world
    async with asynccp.Checkpointer(
        args.location,
        sharding=asynccp.Sharding(shard=rank, shards=world),
        keep=args.keep,
        limits=asynccp.Limits(max_pending=2),
    ) as cp:
        print(f"rank {rank} pid {os.getpid()} generation {cp.generation}", flush=True)

        async def load(ckpt: asynccp.Checkpoint) -> bytes:
            return await ckpt.shard(rank).read("state.pt")  # this rank's part

        found = await cp.load_latest(load)  # every part of the step verified first
        start, loss = 0, float("nan")
        if found is not None:
            ckpt, raw = found
            await anyio.to_thread.run_sync(trainer.load, raw)
            start, loss = ckpt.step + 1, float(ckpt.metadata.get("loss", loss))
            print(f"rank {rank}: resumed from step {ckpt.step}", flush=True)
        else:
            print(f"rank {rank}: no checkpoint in {cp.location}, starting from scratch")
        starts: list[object] = [None] * world
        dist.all_gather_object(starts, start)  # asynccp promises agreement; show it
        if len(set(starts)) != 1:
            raise RuntimeError(f"the ranks would resume from different steps: {starts}")
        if start >= args.steps and rank == 0:
            print(
                f"{cp.location} is already past the requested {args.steps} steps "
                f"(step {start - 1} is committed): nothing to do",
                flush=True,
            )
        async with anyio.create_task_group() as tg:
            for step in range(start, args.steps):
                # compute and collectives off the event loop: uploads keep moving meanwhile
                loss = await anyio.to_thread.run_sync(trainer.step, step)
                if (step + 1) % args.every == 0 or step == args.steps - 1:
                    part = await anyio.to_thread.run_sync(trainer.part)
                    handle = await cp.save(step, {"state.pt": part}, metadata={"loss": loss})
                    tg.start_soon(report, handle, rank)
    # leaving the block flushed this rank's parts
    digest = trainer.digest()
    if rank == 0:
        last = max(start, args.steps) - 1
        print(f"final step {last} loss {loss:.6f} state {digest}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--location", default="checkpoints/torch_ddp", help="path or URL")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    ap.add_argument("--keep", type=int, default=3, help="complete checkpoints to keep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1:
        sys.exit("--steps and --every must be >= 1")
    torch.set_num_threads(1)  # one thread per rank: reproducible, and no oversubscription
    dist.init_process_group("gloo")
    try:
        anyio.run(train, args)
        # every rank leaves together: a rank tearing gloo down while another still
        # talks to it can abort the process at exit
        dist.barrier()
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
