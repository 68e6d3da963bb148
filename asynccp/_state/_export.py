"""One safetensors file of a state's global tensors, streamed: ``asynccp consolidate``.

A step saved by many processes holds each global tensor as blocks in several files
(:class:`~asynccp.Shard`); tools such as Hugging Face's load one file. :func:`export`
writes the tensors of a state — every part's blocks assembled, in global coordinates —
as one safetensors file: the header first (names, dtypes, global shapes and offsets
are known from the parts' headers), then each tensor in pieces of at most
``piece_bytes`` (whole rows of its first dimension), each piece read as a slice with
the chunk checks of :mod:`._fetch` and written before the next is read. Memory stays
at about one piece, whatever the size of the model.

Names are the tensors' paths (``model/layers.0.weight``), relative to ``key`` when one
is given (``key="model"`` gives ``layers.0.weight``: a model's own ``state_dict()``
names). Scalars and ``bytes`` values are not tensors: they are left out (and counted).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._fetch import raw_dtype, run_jobs
from ._partial import Target, open_state, targets_of
from ._schema import ITEMSIZE
from ._tree import Ref, Selection, Sharded, select, walk_leaves

__all__ = ["Exported", "export"]

#: Bytes of a tensor read and written at a time.
PIECE_BYTES = 64 << 20


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote: the tensors, their bytes, what it left out."""

    tensors: int
    nbytes: int
    skipped: list[str]


async def export(
    ckpt: Any,
    write: Callable[[Any], Any],
    *,
    name: str = "state",
    key: str | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> Exported:
    """Write state ``name`` of ``ckpt`` as one safetensors file through ``write`` (an
    async function taking bytes or a buffer), tensor by tensor, piece by piece."""
    opened = await open_state(ckpt, name)
    selection = Selection(None if key is None else [key.strip("/")])
    tree = select(opened.tree, selection)
    selection.check_found(opened.step, opened.tree)
    leaves: list[tuple[str, Ref | Sharded]] = []
    skipped: list[str] = []
    prefix = "" if key is None else key.strip("/") + "/"
    for path, leaf in walk_leaves(tree) if tree is not None else ():
        if isinstance(leaf, Sharded) or (isinstance(leaf, Ref) and not leaf.is_bytes):
            leaves.append((path, leaf))
        else:
            skipped.append(path)
    targets = await targets_of(opened, leaves)
    # Largest item size first: every tensor starts at a multiple of its item size.
    order = sorted(targets, key=lambda t: -ITEMSIZE[t.dtype])
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "asynccp.step": str(opened.step)}}
    at = 0
    for t in order:
        size = math.prod(t.shape) * ITEMSIZE[t.dtype]
        name_in_file = t.path.removeprefix(prefix) if prefix else t.path
        header[name_in_file or t.path] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [at, at + size],
        }
        at += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    await write(struct.pack("<Q", len(text)) + text)
    for t in order:
        await _stream(t, write, piece_bytes)
    return Exported(len(order), at, skipped)


async def _stream(t: Target, write: Callable[[Any], Any], piece_bytes: int) -> None:
    """Tensor ``t``, whole rows of its first dimension at a time."""
    import numpy as np

    itemsize = ITEMSIZE[t.dtype]
    if not t.shape:
        rows, row_bytes = 1, itemsize
    else:
        rows, row_bytes = t.shape[0], math.prod(t.shape[1:]) * itemsize
    step = max(1, piece_bytes // max(1, row_bytes))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        box = ((start, stop), *((0, d) for d in t.shape[1:])) if t.shape else ()
        dest = np.empty(tuple(z - a for a, z in box), raw_dtype(itemsize))
        await run_jobs(t.jobs(box, dest, tuple(a for a, _ in box)))
        await write(dest.data)
