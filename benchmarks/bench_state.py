"""Training state: asynccp.State against torch DCP async_save and torch.save, one run.

    python benchmarks/bench_state.py [--sizes 16,128] [--rounds 3] [--saves 10] [--s3]
                                     [--json out.json]

Each writer saves a state dict of a few dozen float32 tensors of mixed sizes (34
tensors and an int) ``--saves`` times, the way a training loop does: it changes every
tensor right after ``save`` returns, and waits for the previous checkpoint to commit
before the next save (DCP's documented pattern). Every (writer, round) runs in a fresh
process, so the first save is **cold** (fresh process and checkpointer state) and the
last one (the tenth by default) **warm**. Per save: the caller's stall (the call), and
the time until committed (the call until the checkpoint is durable: asynccp's handle,
DCP's future; ``torch.save`` is synchronous and does not fsync). Then the restore of the
newest checkpoint into torch tensors: asynccp ``read_state(framework="torch")`` (alone,
and followed by ``copy_`` into the live tensors, which is what ``dcp.load`` does),
``dcp.load`` into the live state dict, ``torch.load``. A plain copy of the state into
memory touched before is the "one memory copy" reference.

With ``--s3`` the same runs happen on a moto S3 server on 127.0.0.1 (asynccp only:
DCP has no object-store writer without fsspec/s3fs), next to raw obstore puts and gets
of a file of the same size, and ``Checkpoint.read()`` of a large object is compared
with a raw ``obstore.get(...).bytes()``, interleaved. Last, 1 MiB durable checkpoints
on the local disk against raw durable puts (obstore put, fsync of the file and its
folders), as ``asynccp bench`` measures them. Rounds are interleaved (the order
rotates); every figure is a median, every ratio the median of per-round ratios.
Skips with a message when torch is not installed (``pip install 'asynccp[torch]'``).
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
import uuid
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
LOCAL_WRITERS = ("asynccp", "asynccp_prepared", "dcp_async_save", "torch_save")


# -- the state -------------------------------------------------------------------------


def make_state(total: int, seed: int = 0) -> dict[str, Any]:
    """About ``total`` bytes of float32 tensors of mixed sizes, named like a model's."""
    import torch

    g = torch.Generator().manual_seed(seed)
    layers = 8
    shares = {"embed.weight": 8, "head.weight": 8}
    for i in range(layers):
        shares[f"layers.{i}.attn.weight"] = 3
        shares[f"layers.{i}.mlp.weight"] = 6
    small = 2 * layers * (1024 + 512) * 4
    unit = (total - small) / sum(shares.values())
    state: dict[str, Any] = {}
    for name, share in shares.items():
        state[name] = torch.randn(int(unit * share) // 4, generator=g)
    for i in range(layers):
        state[f"layers.{i}.mlp.bias"] = torch.randn(1024, generator=g)
        state[f"layers.{i}.norm.weight"] = torch.randn(512, generator=g)
        state[f"layers.{i}.norm.bias"] = torch.randn(512, generator=g)
    state["step"] = 0
    return state


def state_bytes(state: dict[str, Any]) -> int:
    import torch

    return sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor))


def touch(state: dict[str, Any]) -> None:
    """One training step's worth of change: every tensor, and the step counter."""
    import torch

    for t in state.values():
        if isinstance(t, torch.Tensor):
            t.add_(1.0)
    state["step"] += 1


def memory_copy_ms(state: dict[str, Any]) -> float:
    """The reference: copying the state into memory touched before (the best of 5)."""
    import torch

    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    flat = torch.empty(sum(t.nbytes for t in tensors), dtype=torch.uint8)
    flat.fill_(0)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        off = 0
        for t in tensors:
            flat[off : off + t.nbytes].copy_(t.view(-1).view(torch.uint8))
            off += t.nbytes
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


# -- one writer, in a fresh process ----------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one writer's saves and restore in this (fresh) process; its figures."""
    state = make_state(spec["size"], seed=spec["round"])
    where = Path(spec["dir"])
    out: dict[str, Any] = {"bytes": state_bytes(state)}
    writer = spec["writer"]
    if writer in ("asynccp", "asynccp_prepared"):
        spec["prepare"] = writer == "asynccp_prepared"
        out.update(asyncio.run(_asynccp_child(spec, state, where)))
    elif writer == "dcp_async_save":
        out.update(_dcp_child(spec, state, where))
    elif writer == "torch_save":
        out.update(_torch_save_child(spec, state, where))
    elif writer == "raw_s3":
        out.update(_raw_s3_child(spec, state))
    else:  # pragma: no cover
        raise ValueError(writer)
    out["memory_copy_ms"] = memory_copy_ms(state)
    return out


async def _asynccp_child(spec: dict[str, Any], state: dict[str, Any], where: Path) -> Any:
    import asynccp

    location: Any = where
    if spec.get("s3"):
        location = _s3_store(spec["s3"])
    stalls, commits = [], []
    out: dict[str, Any] = {}
    async with asynccp.Checkpointer(location) as cp:
        if spec.get("prepare"):  # staging memory made at open, before the first save
            t0 = time.perf_counter()
            await cp.prepare(asynccp.State(state))
            out["prepare_s"] = time.perf_counter() - t0
        for step in range(spec["saves"]):
            t0 = time.perf_counter()
            handle = await cp.save(step, asynccp.State(state))
            stalls.append(time.perf_counter() - t0)
            touch(state)
            ckpt = await handle
            commits.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        restored = await ckpt.read_state(framework="torch")
        read_s = time.perf_counter() - t0
        for name, value in restored.items():  # into the live tensors, as dcp.load does
            if hasattr(value, "copy_"):
                state[name].copy_(value)
        copy_s = time.perf_counter() - t0
    out.update(stalls=stalls, commits=commits, restore_s=read_s, restore_copy_s=copy_s)
    return out


def _dcp_child(spec: dict[str, Any], state: dict[str, Any], where: Path) -> Any:
    import torch.distributed.checkpoint as dcp

    warnings.filterwarnings("ignore")  # single process: DCP warns that it is not distributed
    stalls, commits = [], []
    for step in range(spec["saves"]):
        t0 = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(where / f"step-{step}"))
        stalls.append(time.perf_counter() - t0)
        touch(state)
        future.result()
        commits.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    dcp.load(state, checkpoint_id=str(where / f"step-{spec['saves'] - 1}"))
    load_s = time.perf_counter() - t0
    return {"stalls": stalls, "commits": commits, "restore_s": load_s, "restore_copy_s": load_s}


def _torch_save_child(spec: dict[str, Any], state: dict[str, Any], where: Path) -> Any:
    import torch

    where.mkdir(parents=True, exist_ok=True)
    stalls = []
    for step in range(spec["saves"]):
        t0 = time.perf_counter()
        torch.save(state, where / f"step-{step}.pt")
        stalls.append(time.perf_counter() - t0)
        touch(state)
    t0 = time.perf_counter()
    loaded = torch.load(where / f"step-{spec['saves'] - 1}.pt")
    load_s = time.perf_counter() - t0
    for name, value in loaded.items():
        if hasattr(value, "copy_"):
            state[name].copy_(value)
    copy_s = time.perf_counter() - t0
    return {"stalls": stalls, "commits": stalls, "restore_s": load_s, "restore_copy_s": copy_s}


def _raw_s3_child(spec: dict[str, Any], state: dict[str, Any]) -> Any:
    """Raw obstore puts and gets of one object the size of the state (the S3 baseline)."""
    import obstore

    store = _s3_store(spec["s3"])
    body = bytes(state_bytes(state))
    puts, gets = [], []
    for step in range(spec["saves"]):
        t0 = time.perf_counter()
        obstore.put(store, f"raw/{step}", body, chunk_size=8 * MiB, max_concurrency=8)
        puts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    obstore.get(store, f"raw/{spec['saves'] - 1}").bytes()
    gets.append(time.perf_counter() - t0)
    return {"stalls": puts, "commits": puts, "restore_s": gets[0], "restore_copy_s": gets[0]}


def _s3_store(s3: dict[str, str]) -> Any:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _moto import make_s3_store

    return make_s3_store(s3["endpoint"], s3["bucket"], prefix=s3.get("prefix"))


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter (spawned: obstore is not fork-safe)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['writer']} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- the figures -----------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds: cold (first save) and warm (last) stall and commit, restore."""
    return {
        "stall_cold_ms": med([r["stalls"][0] for r in rounds]) * 1000,
        "stall_warm_ms": med([r["stalls"][-1] for r in rounds]) * 1000,
        "commit_cold_ms": med([r["commits"][0] for r in rounds]) * 1000,
        "commit_warm_ms": med([r["commits"][-1] for r in rounds]) * 1000,
        "restore_ms": med([r["restore_s"] for r in rounds]) * 1000,
        "restore_copy_ms": med([r["restore_copy_s"] for r in rounds]) * 1000,
        "memory_copy_ms": med([r["memory_copy_ms"] for r in rounds]),
    }


def per_round_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, i: int) -> float:
    return med([x[key][i] / y[key][i] for x, y in zip(a, b, strict=True)])


def local_state(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    cases = []
    for size in args.sizes:
        res: dict[str, list[dict[str, Any]]] = {w: [] for w in LOCAL_WRITERS}
        for r in range(args.rounds):
            k = r % len(LOCAL_WRITERS)
            order = LOCAL_WRITERS[k:] + LOCAL_WRITERS[:k]
            for writer in order:
                where = root / f"{writer}-{size}-{r}-{uuid.uuid4().hex[:6]}"
                spec = {"writer": writer, "size": size, "round": r, "saves": args.saves}
                print(f"local {size // MiB} MiB, round {r + 1}: {writer}", file=sys.stderr)
                res[writer].append(run_child({**spec, "dir": str(where)}))
                shutil.rmtree(where, ignore_errors=True)
        a, d = res["asynccp"], res["dcp_async_save"]
        cases.append(
            {
                "store": "local",
                "size": size,
                "bytes": a[0]["bytes"],
                **{w: summarise(v) for w, v in res.items()},
                "prepare_ms": med([r["prepare_s"] for r in res["asynccp_prepared"]]) * 1000,
                "stall_ratio_cold_prepared": per_round_ratio(
                    res["asynccp_prepared"], d, "stalls", 0
                ),
                "stall_ratio_cold": per_round_ratio(a, d, "stalls", 0),
                "stall_ratio_warm": per_round_ratio(a, d, "stalls", -1),
                "commit_ratio_cold": per_round_ratio(a, d, "commits", 0),
                "commit_ratio_warm": per_round_ratio(a, d, "commits", -1),
            }
        )
    return cases


def s3_state(args: argparse.Namespace, endpoint: str) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _moto import create_bucket

    cases = []
    writers = ("asynccp", "raw_s3")
    for size in args.sizes:
        res: dict[str, list[dict[str, Any]]] = {w: [] for w in writers}
        for r in range(args.rounds):
            for writer in writers[r % 2 :] + writers[: r % 2]:
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                create_bucket(endpoint, bucket)
                spec = {
                    "writer": writer,
                    "size": size,
                    "round": r,
                    "saves": args.saves,
                    "dir": "",
                    "s3": {"endpoint": endpoint, "bucket": bucket, "prefix": "run"},
                }
                print(f"S3 {size // MiB} MiB, round {r + 1}: {writer}", file=sys.stderr)
                res[writer].append(run_child(spec))
        a, raw = res["asynccp"], res["raw_s3"]
        cases.append(
            {
                "store": "s3",
                "size": size,
                "bytes": a[0]["bytes"],
                **{w: summarise(v) for w, v in res.items()},
                "commit_vs_raw_put_warm": per_round_ratio(a, raw, "commits", -1),
                "restore_vs_raw_get": med(
                    [x["restore_s"] / y["restore_s"] for x, y in zip(a, raw, strict=True)]
                ),
            }
        )
    return cases


async def s3_reads(endpoint: str, sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """``Checkpoint.read()`` against a raw ``obstore.get(...).bytes()``, interleaved."""
    import anyio.to_thread
    import obstore

    import asynccp
    from asynccp._layout import data_dir

    sys.path.insert(0, str(HERE.parent / "tests"))
    from _moto import create_bucket, make_s3_store

    def raw_get(store: Any, key: str) -> Any:
        return obstore.get(store, key).bytes()

    out = []
    for what, size in [(w, s) for s in sizes for w in ("read()", "read_state()")]:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        create_bucket(endpoint, bucket)
        store = make_s3_store(endpoint, bucket)
        async with asynccp.Checkpointer(store, store=asynccp.StoreOptions(prefix="run")) as cp:
            if what == "read()":
                ckpt = await (await cp.save(0, os.urandom(size)))
                key = f"run/{data_dir(ckpt.step, ckpt.writer)}/data"
            else:
                ckpt = await (await cp.save(0, asynccp.State(make_state(size))))
                key = f"run/{data_dir(ckpt.step, ckpt.writer)}/state.safetensors"
            mine, raw = [], []
            for r in range(rounds):
                for who in ("asynccp", "raw") if r % 2 == 0 else ("raw", "asynccp"):
                    t0 = time.perf_counter()
                    if who == "raw":
                        data = await anyio.to_thread.run_sync(raw_get, store, key)
                        raw.append(time.perf_counter() - t0)
                    elif what == "read()":
                        data = await ckpt.read()
                        mine.append(time.perf_counter() - t0)
                    else:
                        data = await ckpt.read_state(framework="torch")
                        mine.append(time.perf_counter() - t0)
                    del data
        out.append(
            {
                "what": what,
                "size": size,
                "read_ms": med(mine) * 1000,
                "raw_get_ms": med(raw) * 1000,
                "throughput_ratio": med([b / a for a, b in zip(mine, raw, strict=True)]),
            }
        )
    return out


async def small_durable(
    root: Path, rounds: int, cases: list[tuple[int, bool]]
) -> list[dict[str, Any]]:
    """1 MiB durable checkpoints vs raw durable puts (``asynccp bench``'s baseline).

    Each case is ``(saves per round, spaced)``: back to back (a burst, as ``asynccp
    bench`` saves), or spaced — each save waits for the previous checkpoint to commit,
    as a loop that saves now and then does.
    """
    import _common as c
    import anyio.to_thread

    import asynccp

    body = os.urandom(MiB)
    out = []
    for saves, spaced in cases:
        mine, raw = [], []
        for r in range(rounds):
            for who in ("asynccp", "raw") if r % 2 == 0 else ("raw", "asynccp"):
                where = root / f"small-{who}-{saves}-{spaced}-{r}"
                if who == "asynccp":
                    async with asynccp.Checkpointer(
                        where, limits=asynccp.Limits(max_pending=4)
                    ) as cp:
                        t0 = time.perf_counter()
                        handles = []
                        for i in range(saves):
                            handles.append(await cp.save(i, body))
                            if spaced:
                                await handles[-1]
                        for h in handles:
                            await h
                        mine.append(time.perf_counter() - t0)
                else:
                    raw.append(
                        await anyio.to_thread.run_sync(c.raw_durable_puts, where, saves, body)
                    )
                shutil.rmtree(where, ignore_errors=True)
        out.append(
            {
                "saves_per_round": saves,
                "spaced": spaced,
                "asynccp_ms_per_checkpoint": med(mine) * 1000 / saves,
                "raw_ms_per_put": med(raw) * 1000 / saves,
                "throughput_ratio": med([b / a for a, b in zip(mine, raw, strict=True)]),
            }
        )
    return out


# -- output ----------------------------------------------------------------------------


def print_tables(doc: dict[str, Any]) -> None:
    if doc["state"]:
        print("\n### State dicts: caller stall, time until committed, restore (medians, ms)\n")
        print(
            "| store | state | writer | stall cold | stall warm | committed cold | committed warm "
            "| restore | restore + copy_ into live tensors | one memory copy |"
        )
        print("|---" * 10 + "|")
        for c in doc["state"]:
            writers = LOCAL_WRITERS if c["store"] == "local" else ("asynccp", "raw_s3")
            for w in writers:
                s = c[w]
                label = {
                    "raw_s3": "raw obstore put / get",
                    "asynccp_prepared": f"asynccp, cp.prepare() at open ({c['prepare_ms']:.0f} ms)"
                    if c["store"] == "local"
                    else w,
                }.get(w, w)
                print(
                    f"| {c['store']} | {c['bytes'] / MiB:.0f} MiB, 34 tensors | {label} "
                    f"| {s['stall_cold_ms']:.1f} | {s['stall_warm_ms']:.1f} "
                    f"| {s['commit_cold_ms']:.0f} | {s['commit_warm_ms']:.0f} "
                    f"| {s['restore_ms']:.1f} | {s['restore_copy_ms']:.1f} "
                    f"| {s['memory_copy_ms']:.1f} |"
                )
        print("\n### Ratios (median of per-round ratios)\n")
        print("| store | state | measure | asynccp / baseline | target |")
        print("|---|---|---|---|---|")
        for c in doc["state"]:
            mib = f"{c['bytes'] / MiB:.0f} MiB"
            if c["store"] == "local":
                rows = [
                    ("stall cold / DCP", c["stall_ratio_cold"], "≤ 0.5"),
                    ("stall cold, prepared / DCP", c["stall_ratio_cold_prepared"], "≤ 0.5"),
                    ("stall warm / DCP", c["stall_ratio_warm"], "≤ 0.5"),
                    ("committed cold / DCP", c["commit_ratio_cold"], "≤ 1"),
                    ("committed warm / DCP", c["commit_ratio_warm"], "≤ 1"),
                ]
            else:
                rows = [
                    ("committed warm / raw put", c["commit_vs_raw_put_warm"], ""),
                    ("read_state / raw get (time)", c["restore_vs_raw_get"], ""),
                ]
            for name, value, target in rows:
                print(f"| {c['store']} | {mib} | {name} | {value:.2f} | {target} |")
        if doc.get("s3_read"):
            print("\n### S3: asynccp reads vs a raw get of the same object (target ≥ 90 %)\n")
            print("| read | object | asynccp | raw get | throughput ratio |")
            print("|---|---|---|---|---|")
            for r in doc["s3_read"]:
                print(
                    f"| {r['what']} | {r['size'] // MiB} MiB | {r['read_ms']:.0f} ms "
                    f"| {r['raw_get_ms']:.0f} ms | {r['throughput_ratio'] * 100:.1f} % |"
                )
    if not doc["small_durable"]:
        return
    print("\n### 1 MiB durable checkpoints vs raw durable puts (target ≥ 90 %)\n")
    print("| saves per round | asynccp per checkpoint | raw put per object | ratio |")
    print("|---|---|---|---|")
    for r in doc["small_durable"]:
        how = "each awaited (spaced)" if r["spaced"] else "back to back"
        print(
            f"| {r['saves_per_round']}, {how} | {r['asynccp_ms_per_checkpoint']:.2f} ms "
            f"| {r['raw_ms_per_put']:.2f} ms | {r['throughput_ratio'] * 100:.1f} % |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16,128", help="state sizes in MiB (default 16,128)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--saves", type=int, default=10, help="saves per process (default 10)")
    p.add_argument("--s3", action="store_true", help="also run on a moto S3 server")
    p.add_argument("--small-rounds", type=int, default=9, help="rounds of 1 MiB saves")
    p.add_argument("--dir", help="parent directory to write under (default: a temp dir)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument(
        "--only",
        choices=["state", "small"],
        help="only the state dicts (local, and S3 with --s3), or only the 1 MiB checkpoints",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    try:
        import torch
        import torch.distributed.checkpoint
    except ImportError:
        print("torch is not installed: skipping (pip install 'asynccp[torch]')")
        return
    args.sizes = [int(float(s) * MiB) for s in args.sizes.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="asynccp-state-bench-", dir=args.dir))
    started = time.perf_counter()
    doc: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count()}
    doc["state"] = []
    try:
        if args.only != "small":
            doc["state"] = local_state(args, root)
        if args.s3 and args.only != "small":
            sys.path.insert(0, str(HERE.parent / "tests"))
            from _moto import MotoServer

            with MotoServer() as server:
                doc["state"] += s3_state(args, server.url)
                doc["s3_read"] = asyncio.run(
                    s3_reads(server.url, [16 * MiB, 128 * MiB], 4 * args.rounds + 1)
                )
        doc["small_durable"] = []
        if args.only != "state":
            doc["small_durable"] = asyncio.run(
                small_durable(root, args.small_rounds, [(4, False), (20, False), (20, True)])
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(doc)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
