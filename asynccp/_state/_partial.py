"""Partial reads of a state: ``read_state(keys=..., slices=...)`` and whole sharded steps.

:func:`open_state` reads the JSON of every part (a checkpoint of one process has one),
verified whole against the manifest, and merges their trees (:mod:`._tree`): on a
whole sharded step a :class:`~asynccp.Shard` path is one global tensor made of every
part's blocks. :func:`read_partial` then reads only what is asked for: the values at
or under the ``keys`` paths, and of a tensor in ``slices`` only that region, in global
coordinates — each saved block it overlaps is fetched in whole chunks and checked
(:mod:`._fetch`). So any number of processes can each read its own slice of a step
saved by any number of processes, with no coordinator: N → M.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .._groups import first_leaf
from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ._chunks import FileLayout
from ._decode import check_framework, decode_doc, no_state
from ._fetch import Job, RangedSource, SavedFile, raw_dtype, run_jobs
from ._schema import ITEMSIZE, ST_TO_NUMPY, ST_TO_TORCH, Framework, Shard
from ._tree import (
    Map,
    Node,
    Ref,
    Selection,
    Seq,
    Sharded,
    Value,
    check_keys,
    merge,
    parse,
    select,
    walk_leaves,
)

__all__ = ["Opened", "Target", "check_slices", "open_state", "read_partial", "region_of"]

Box = tuple[tuple[int, int], ...]


@dataclass
class Opened:
    """A state's merged tree, and each part's source, tensor file name and layout."""

    step: int
    tree: Node
    sources: list[Any]
    tensor_files: list[str | None]
    layouts: list[FileLayout | None]
    part_view: bool
    _files: dict[int, SavedFile] | None = None

    async def files(self, parts: set[int]) -> dict[int, SavedFile]:
        """The tensor files of ``parts``, their headers read and checked (side by side)."""
        out: dict[int, SavedFile] = dict(self._files or {})
        todo = []
        for r in sorted(parts - set(out)):
            name = self.tensor_files[r]
            if name is None:
                raise CorruptCheckpointError(
                    f"checkpoint {self.step}: part {r}'s state names tensors but has no tensor file"
                )
            out[r] = SavedFile(self.sources[r], name, self.layouts[r])
            todo.append(out[r])
        await _all([f.open for f in todo])
        self._files = out
        return out


async def _all(fns: Sequence[Any]) -> None:
    """Await every ``fn()`` side by side; raise the first error as itself."""
    try:
        async with anyio.create_task_group() as tg:
            for fn in fns:
                tg.start_soon(fn)
    except Exception as e:  # a task group wraps its children's errors
        leaf = first_leaf(e)
        raise leaf from leaf.__cause__


def parts_of(ckpt: Any) -> tuple[list[Any], bool]:
    """The sources a read of ``ckpt`` merges, and whether it is one part's view."""
    parts = getattr(ckpt, "_parts", ())
    if parts:
        return list(parts), False
    return [ckpt], getattr(ckpt, "part", None) is not None


async def open_state(ckpt: Any, name: str) -> Opened:
    """Read every part's ``<name>.json`` (verified, side by side) and merge the trees."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    sources, part_view = parts_of(ckpt)
    json_name = f"{name}.json"
    for source in sources:
        if json_name not in source.files:
            raise no_state(ckpt if len(sources) == 1 else source, name)
    raw: list[Any] = [None] * len(sources)

    def reader(r: int) -> Any:
        async def read() -> None:
            raw[r] = await sources[r].read(json_name)

        return read

    await _all([reader(r) for r in range(len(sources))])
    trees: list[Node] = []
    files: list[str | None] = []
    layouts: list[FileLayout | None] = []
    for r, source in enumerate(sources):

        def bad(why: str, r: int = r) -> CorruptCheckpointError:
            where = f" (part {r})" if len(sources) > 1 else ""
            return CorruptCheckpointError(
                f"checkpoint {ckpt.step}: state file {json_name!r}{where} {why}"
            )

        doc = decode_doc(source, json_name, raw[r])
        files.append(doc["tensors"])
        layouts.append(FileLayout.from_doc(doc, bad))
        trees.append(parse(doc["tree"], r, bad))
    tree = trees[0]
    for other in trees[1:]:

        def merge_bad(why: str) -> CorruptCheckpointError:
            return CorruptCheckpointError(f"checkpoint {ckpt.step}: state {name!r}: {why}")

        tree = merge(tree, other, "", merge_bad)
    return Opened(ckpt.step, tree, sources, files, layouts, part_view)


def check_slices(slices: object) -> dict[str, tuple[slice, ...]]:
    """``slices=`` of a read: a mapping of paths to a slice or a tuple of slices."""
    if slices is None:
        return {}
    if not isinstance(slices, Mapping):
        raise TypeError(
            "slices must be a mapping of paths to slices, such as {'model/w': "
            f"(slice(0, 512),)}}, got {type(slices).__name__}"
        )
    out = {}
    for path, value in slices.items():
        if not isinstance(path, str) or not path.strip("/"):
            raise TypeError(f"slices: each path must be a non-empty str, got {path!r}")
        items = value if isinstance(value, tuple) else (value,)
        for s in items:
            if not isinstance(s, slice):
                raise TypeError(
                    f"slices[{path!r}] must be a slice or a tuple of slices, got {value!r}"
                )
            if s.step not in (None, 1):
                raise ValueError(f"slices[{path!r}]: a step other than 1 is not supported ({s})")
        out[path.strip("/")] = items
    return out


def region_of(path: str, shape: tuple[int, ...], slices: tuple[slice, ...] | None) -> Box:
    """The ``[start, stop)`` of each dimension that ``slices`` selects of ``shape``."""
    if slices is None:
        return tuple((0, d) for d in shape)
    if len(slices) > len(shape):
        raise ValueError(
            f"slices[{path!r}] has {len(slices)} slices; the tensor has {len(shape)} "
            f"dimension(s) (shape {shape})"
        )
    box = []
    for d, dim in enumerate(shape):
        if d < len(slices):
            start, stop, _ = slices[d].indices(dim)
            box.append((start, max(start, stop)))
        else:
            box.append((0, dim))
    return tuple(box)


@dataclass
class Target:
    """One tensor value to read: the leaf, its path, its dtype and global shape, the
    region wanted, and its jobs once planned."""

    path: str
    leaf: Ref | Sharded
    dtype: str
    shape: tuple[int, ...]
    blocks: list[tuple[SavedFile, Any, tuple[int, ...]]]  # file, entry, offset

    def jobs(self, region: Box, dest: Any, origin: tuple[int, ...]) -> list[Job]:
        """The jobs that fill ``dest`` (element 0 at ``origin``) with ``region``,
        checked to cover it exactly (each element saved once)."""
        out, volume = [], 0
        boxes: list[Box] = []
        for file, entry, offset in self.blocks:
            job = Job(file, entry, offset, region, dest, origin, self.path)
            if not job.plan():
                continue
            box = tuple((o + a, o + z) for o, a, z in zip(offset, job.lo, job.hi, strict=True))
            for other in boxes:
                if all(a < z2 and a2 < z for (a, z), (a2, z2) in zip(box, other, strict=True)):
                    raise CorruptCheckpointError(
                        f"checkpoint {file.source.step}: the saved blocks of {self.path!r} "
                        f"overlap ({list(box)} and {list(other)}): save each element once "
                        "(replicated values as plain tensors)"
                    )
            boxes.append(box)
            volume += math.prod(z - a for a, z in box)
            out += _pieces(job, box)
        if volume != math.prod(z - a for a, z in region):
            raise CheckpointNotFoundError(
                f"checkpoint {self.blocks[0][0].source.step if self.blocks else '?'}: "
                f"the saved blocks of {self.path!r} (shape {self.shape}) do not cover "
                f"{[list(b) for b in region]}: only {volume} of its "
                f"{math.prod(z - a for a, z in region)} elements were saved"
            )
        return out


#: A job that stages more than this (an overlap of many runs: a slice along a later
#: dimension) is split into pieces of rows of the first dimension, each staged alone.
STAGING_PIECE = 4 << 20


def _pieces(job: Job, box: Box) -> list[Job]:
    """``job``, or pieces of it along the first dimension (``box``: its overlap, global)
    that each stage about :data:`STAGING_PIECE` bytes: the memory a read needs beyond
    its destination stays small whatever the size of a tensor."""
    if not box or job.staging <= STAGING_PIECE or box[0][1] - box[0][0] < 2:
        return [job]
    first, last = box[0]
    rows = last - first
    step = max(1, rows * STAGING_PIECE // job.staging)
    out = []
    for a in range(first, last, step):
        region = ((a, min(a + step, last)), *job.region[1:])
        piece = Job(job.file, job.entry, job.offset, region, job.dest, job.origin, job.key)
        if piece.plan():
            out.append(piece)
    return out


async def targets_of(opened: Opened, leaves: Sequence[tuple[str, Ref | Sharded]]) -> list[Target]:
    """Each tensor leaf with its saved blocks, their files opened and checked."""
    parts: set[int] = set()
    for _, leaf in leaves:
        parts |= {leaf.part} if isinstance(leaf, Ref) else {b.part for b in leaf.blocks}
    files = await opened.files(parts)
    out = []
    for path, leaf in leaves:
        if isinstance(leaf, Ref):
            file = files[leaf.part]
            entry = file.entry(leaf.name)
            zero = (0,) * len(entry.shape)
            out.append(Target(path, leaf, entry.dtype, entry.shape, [(file, entry, zero)]))
            continue
        blocks, dtypes = [], set()
        for b in leaf.blocks:
            file = files[b.part]
            entry = file.entry(b.name)
            dtypes.add(entry.dtype)
            fits = len(entry.shape) == len(leaf.shape) == len(b.offset) and all(
                o + n <= g for o, n, g in zip(b.offset, entry.shape, leaf.shape, strict=True)
            )
            if not fits:
                raise CorruptCheckpointError(
                    f"checkpoint {opened.step}: a block of {path!r} (shape {entry.shape} at "
                    f"{b.offset}, part {b.part}) does not fit its global shape {leaf.shape}"
                )
            blocks.append((file, entry, b.offset))
        if len(dtypes) != 1:
            raise CorruptCheckpointError(
                f"checkpoint {opened.step}: the parts saved {path!r} with different dtypes "
                f"{sorted(dtypes)}"
            )
        out.append(Target(path, leaf, dtypes.pop(), leaf.shape, blocks))
    return out


def typed(raw: Any, dtype: str, framework: Framework) -> Any:
    """A raw array (integers of the item size) as an array or tensor of ``dtype``."""
    if framework == "torch":
        import torch

        return torch.from_numpy(raw).view(getattr(torch, ST_TO_TORCH[dtype]))
    return raw.view(ST_TO_NUMPY[dtype])


async def read_partial(
    ckpt: RangedSource,
    name: str,
    *,
    framework: Framework,
    keys: object,
    slices: object,
) -> Any:
    """The state ``name`` of ``ckpt`` (a checkpoint, a whole sharded step or one part),
    only what ``keys`` and ``slices`` ask for (see the module doc)."""
    check_framework(framework)
    wanted = Selection(check_keys(keys))
    cuts = check_slices(slices)
    opened = await open_state(ckpt, name)
    tree = select(opened.tree, wanted)
    wanted.check_found(opened.step, opened.tree)
    leaves: list[tuple[str, Ref | Sharded]] = []
    found = set()
    for path, leaf in walk_leaves(tree) if tree is not None else ():
        if isinstance(leaf, (Ref, Sharded)):
            leaves.append((path, leaf))
            if path in cuts:
                if isinstance(leaf, Ref) and leaf.is_bytes:
                    raise TypeError(f"slices[{path!r}]: {path!r} is a bytes value, not a tensor")
                found.add(path)
    for path in cuts:
        if path not in found:
            raise CheckpointNotFoundError(
                f"checkpoint {opened.step}: slices names {path!r}, which is not a tensor "
                "the read asks for (keys=)"
            )
    targets = await targets_of(opened, leaves)
    results: dict[int, Any] = {}
    jobs: list[Job] = []
    finals: list[tuple[Target, Any, tuple[int, ...] | None]] = []
    for t in targets:
        if framework == "numpy" and t.dtype not in ST_TO_NUMPY:
            raise TypeError(
                f"checkpoint {opened.step}: tensor {t.path!r} is {t.dtype}, which numpy "
                "cannot hold: read it with read_state(..., framework='torch')"
            )
        import numpy as np

        if opened.part_view and isinstance(t.leaf, Sharded):
            if t.path in cuts:
                raise ValueError(
                    f"slices[{t.path!r}]: on one part, a Shard comes back as its own block; "
                    "read the whole step (not ckpt.shard(r)) to slice it in global coordinates"
                )
            file, entry, at = t.blocks[0]
            zero = (0,) * len(at)
            own = Target(t.path, t.leaf, t.dtype, entry.shape, [(file, entry, zero)])
            raw = np.empty(entry.shape, raw_dtype(entry.itemsize))
            jobs += own.jobs(tuple((0, d) for d in entry.shape), raw, zero)
            finals.append((t, raw, at))
            continue
        box = region_of(t.path, t.shape, cuts.get(t.path))
        raw = np.empty(tuple(z - a for a, z in box), raw_dtype(ITEMSIZE[t.dtype]))
        jobs += t.jobs(box, raw, tuple(a for a, _ in box))
        finals.append((t, raw, None))
    await run_jobs(jobs)
    for t, raw, offset in finals:
        if isinstance(t.leaf, Ref) and t.leaf.is_bytes:
            results[id(t.leaf)] = raw.tobytes()
        elif offset is not None:
            assert isinstance(t.leaf, Sharded)
            array = typed(raw, t.dtype, framework)
            results[id(t.leaf)] = Shard(array, offset=offset, shape=t.shape)
        else:
            results[id(t.leaf)] = typed(raw, t.dtype, framework)
    return {} if tree is None else build(tree, results)


def build(node: Node, results: Mapping[int, Any]) -> Any:
    """The selected tree as Python values, tensors from ``results`` (by leaf)."""
    if isinstance(node, Value):
        return node.value
    if isinstance(node, Map):
        return {k: build(v, results) for k, v in node.entries.items()}
    if isinstance(node, Seq):
        items = [build(v, results) for v in node.items]
        return tuple(items) if node.kind == "tuple" else items
    return results[id(node)]
