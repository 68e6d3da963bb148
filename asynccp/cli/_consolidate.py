"""``asynccp consolidate``: one safetensors file of a step's global tensors.

The newest checkpoint whose reads verify (or ``--step N``, no fallback), every part of
a sharded step assembled (:mod:`asynccp._state._export`), streamed into a temporary
file beside OUT, flushed to disk, then moved to OUT: OUT appears only once complete,
and an existing OUT is replaced only with ``--force``. What Hugging Face tools and the
``safetensors`` library load; ``--key model`` writes the tensors under ``model`` with
their names relative to it (a model's own ``state_dict()`` names).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread

from asynccp._catalog import newest as newest_verified
from asynccp._checkpoint import Checkpoint
from asynccp._state._export import Exported, export
from asynccp.errors import CorruptCheckpointError

from ._format import emit, fmt_size, one_line
from ._location import load_step, open_location
from ._messages import Failure, UsageError

__all__ = ["cmd_consolidate"]


def _check_out(path: str, force: bool) -> Path:
    """OUT, absolute: a file name in a folder that exists; an existing file needs
    ``force``."""
    out = Path(path).absolute()
    if out.is_dir():
        raise UsageError(f"OUT {out} is a directory: name the file to write")
    if out.exists() and not force:
        raise Failure(f"{out} exists: nothing written; pass --force to replace it")
    if not out.parent.is_dir():
        raise Failure(f"the folder of OUT, {out.parent}, does not exist")
    return out


async def cmd_consolidate(args: argparse.Namespace) -> int:
    out = await anyio.to_thread.run_sync(_check_out, args.out, args.force)
    loc = open_location(args)

    async def one(ckpt: Checkpoint) -> Exported:
        return await _write(ckpt, out, args)

    if args.step is not None:
        ckpt = await load_step(loc, args.step)
        try:
            done = await one(ckpt)
        except CorruptCheckpointError as e:
            raise Failure(f"checkpoint {args.step} failed verification: {one_line(e)}") from None
    else:
        found = await newest_verified(loc, one)
        if found is None:
            raise Failure(f"no checkpoint in {loc.description} verifies; nothing written")
        ckpt, done = found
    doc = {
        "location": loc.description,
        "step": ckpt.step,
        "shards": ckpt.shards,
        "out": str(out),
        "tensors": done.tensors,
        "size": done.nbytes,
        "skipped": done.skipped,
    }
    left = f"; left out {len(done.skipped)} non-tensor value(s)" if done.skipped else ""
    emit(
        args.json,
        doc,
        lambda: (
            f"wrote {done.tensors} tensor(s), {fmt_size(done.nbytes)}, of step "
            f"{ckpt.step} ({ckpt.shards} part(s)) to {out}{left}"
        ),
    )
    return 0


async def _write(ckpt: Checkpoint, out: Path, args: argparse.Namespace) -> Exported:
    """Export ``ckpt`` into a temporary file beside ``out``, then move it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:

            async def write(data: Any) -> None:
                await anyio.to_thread.run_sync(f.write, data)

            done = await export(ckpt, write, name=args.name, key=args.key)
            await anyio.to_thread.run_sync(_sync, f)
        await anyio.to_thread.run_sync(_place, tmp, out, args.force)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(tmp.unlink, missing_ok=True))
        raise
    return done


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished file to ``out``: replacing it only with ``force`` (else a
    hard link, which fails if ``out`` appeared meanwhile)."""
    if force:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise Failure(f"{out} exists: nothing written; pass --force to replace it") from None
    tmp.unlink()
