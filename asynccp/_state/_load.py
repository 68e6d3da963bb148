"""``ckpt.load_into(target)``: the saved state copied into existing tensors, in place.

The target — a ``state_dict()``, or any nesting of mappings, lists and tuples of
tensors, arrays, :class:`~asynccp.Shard` and scalars — is walked beside the saved tree
(:mod:`._tree`; a whole sharded step's parts merged) and every difference is found
before a byte is fetched: a missing or extra path (with ``strict``), a value of another
kind, a tensor of another shape or dtype — a ``ValueError`` naming the path.

Then each tensor's region is fetched and checked as :mod:`._fetch` does, and copied
from its staging buffer into the target's own memory: a numpy array, or a CPU torch
tensor through a numpy view of its storage (the tensor keeps its storage, its
``data_ptr``). A tensor on a GPU is filled from a host copy of its region. A ``Shard``
receives the region ``[offset, offset + array.shape)`` of the saved global tensor: a
process of a job restarted on another number of processes loads its share only.
Scalars and ``bytes`` are set in their mapping or list (a tuple cannot take them:
there they must equal what was saved).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._fetch import Job, raw_dtype, run_jobs
from ._partial import Box, open_state, region_of, targets_of
from ._schema import ITEMSIZE, NUMPY_TO_ST, TORCH_TO_ST, Shard
from ._tree import Map, Node, Ref, Seq, Sharded, Value, join

__all__ = ["load_into"]


@dataclass
class _Tensor:
    """A tensor of the target and the leaf it is loaded from."""

    path: str
    leaf: Ref | Sharded
    array: Any  # the numpy array or torch tensor that receives it
    region: tuple[slice, ...] | None  # a Shard's region, else the whole tensor


@dataclass
class _Set:
    """A scalar (or ``bytes``) to set at ``container[key]``."""

    path: str
    container: Any
    key: Any
    leaf: Value | Ref


class _Walk:
    """The target walked beside the saved tree: what to copy, what to set, what differs."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.tensors: list[_Tensor] = []
        self.sets: list[_Set] = []
        self._np = sys.modules.get("numpy")
        self._torch = sys.modules.get("torch")

    def _is_tensor(self, value: Any) -> bool:
        np, torch = self._np, self._torch
        return (np is not None and isinstance(value, np.ndarray)) or (
            torch is not None and isinstance(value, torch.Tensor)
        )

    def node(self, value: Any, node: Node, path: str, container: Any, key: Any) -> None:
        where = path or "the root"
        if isinstance(value, Shard) or self._is_tensor(value):
            if not isinstance(node, (Ref, Sharded)) or (isinstance(node, Ref) and node.is_bytes):
                raise ValueError(
                    f"{where}: the target holds a tensor, the checkpoint {_kind(node)}"
                )
            array = value.array if isinstance(value, Shard) else value
            region = value.slices if isinstance(value, Shard) else None
            self.tensors.append(_Tensor(path, node, array, region))
            return
        if isinstance(value, Mapping):
            if not isinstance(node, Map):
                raise ValueError(
                    f"{where}: the target holds a mapping, the checkpoint {_kind(node)}"
                )
            for k, sub in node.entries.items():
                if k in value:
                    self.node(value[k], sub, join(path, k), value, k)
                elif self.strict:
                    raise ValueError(
                        f"{join(path, k)}: the checkpoint holds it, the target does not "
                        "(load_into(..., strict=False) loads what both hold)"
                    )
            for k in value:
                if k not in node.entries and self.strict:
                    raise ValueError(
                        f"{join(path, k)}: the target holds it, the checkpoint does not "
                        "(load_into(..., strict=False) loads what both hold)"
                    )
            return
        if isinstance(value, (list, tuple)):
            if not isinstance(node, Seq) or len(node.items) != len(value):
                raise ValueError(
                    f"{where}: the target holds a {type(value).__name__} of {len(value)}, "
                    f"the checkpoint {_kind(node)}"
                )
            mutable = value if isinstance(value, list) else None
            for i, (item, sub) in enumerate(zip(value, node.items, strict=True)):
                self.node(item, sub, join(path, i), mutable, i)
            return
        if isinstance(node, Value) or (isinstance(node, Ref) and node.is_bytes):
            if container is None and not (isinstance(node, Value) and _same(node.value, value)):
                raise ValueError(f"{where}: a value inside a tuple cannot be set in place")
            if container is not None:
                self.sets.append(_Set(path, container, key, node))
            return
        raise ValueError(
            f"{where}: the target holds a {type(value).__name__}, the checkpoint {_kind(node)}"
        )


def _kind(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return f"a {node.kind} of {len(node.items)}"
    if isinstance(node, Sharded):
        return f"a sharded tensor of shape {node.shape}"
    if isinstance(node, Ref):
        return "bytes" if node.is_bytes else "a tensor"
    return f"the value {node.value!r}"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _dtype_of(array: Any) -> str | None:
    """The safetensors dtype of a numpy array or torch tensor (None: none)."""
    dtype = getattr(array, "dtype", None)
    name = str(dtype).removeprefix("torch.")
    table = NUMPY_TO_ST if hasattr(dtype, "kind") else TORCH_TO_ST
    return table.get(getattr(dtype, "name", name))


def _writable_view(array: Any, path: str) -> tuple[Any, Any]:
    """A numpy view of ``array``'s own memory as raw integers, and for a tensor that
    has none on the host (a GPU's) the tensor to copy the host buffer into after."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        raw_torch = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        itemsize = array.element_size()
        if array.device.type != "cpu":
            import numpy as np

            return np.empty(tuple(array.shape), raw_dtype(itemsize)), array
        return array.detach().view(raw_torch[itemsize]).numpy(), None
    if not array.flags.writeable:
        raise ValueError(f"{path}: the target array is read-only")
    return array.view(raw_dtype(array.dtype.itemsize)), None


async def load_into(ckpt: Any, target: object, name: str, *, strict: bool) -> list[str]:
    """Copy state ``name`` of ``ckpt`` into ``target`` in place (see the module doc)."""
    if not isinstance(target, Mapping):
        raise TypeError(
            f"load_into takes a mapping (a state_dict, {{'model': ..., 'epoch': 3}}), "
            f"got {type(target).__name__}"
        )
    opened = await open_state(ckpt, name)
    walk = _Walk(strict)
    walk.node(target, opened.tree, "", None, None)
    targets = await targets_of(opened, [(t.path, t.leaf) for t in walk.tensors])
    jobs: list[Job] = []
    after: list[tuple[Any, Any, tuple[slice, ...] | None]] = []
    for t, saved in zip(walk.tensors, targets, strict=True):
        dtype = _dtype_of(t.array)
        if dtype != saved.dtype:
            raise ValueError(
                f"{t.path}: the target's dtype is {t.array.dtype}, the checkpoint's {saved.dtype}"
            )
        shape = tuple(int(d) for d in t.array.shape)
        if t.region is None:
            if shape != saved.shape:
                raise ValueError(
                    f"{t.path}: the target's shape is {shape}, the checkpoint's {saved.shape}"
                )
            box: Box = region_of(t.path, saved.shape, None)
        else:
            box = tuple((s.start, s.stop) for s in t.region)
            inside = len(box) == len(saved.shape) and all(
                z <= g for (_, z), g in zip(box, saved.shape, strict=True)
            )
            if not inside:
                raise ValueError(
                    f"{t.path}: the target Shard covers {[list(b) for b in box]}, outside the "
                    f"checkpoint's global shape {saved.shape}"
                )
        dest, device = _writable_view(t.array, t.path)
        assert dest.dtype.itemsize == ITEMSIZE[saved.dtype]
        jobs += saved.jobs(box, dest, tuple(a for a, _ in box))
        if device is not None:
            after.append((device, dest, None))
    bytes_refs = [s for s in walk.sets if isinstance(s.leaf, Ref)]
    raws: dict[int, Any] = {}
    if bytes_refs:
        import numpy as np

        for s, saved in zip(
            bytes_refs,
            await targets_of(opened, [(s.path, s.leaf) for s in bytes_refs]),  # type: ignore[misc]
            strict=True,
        ):
            raw = np.empty(saved.shape, np.int8)
            jobs += saved.jobs(region_of(s.path, saved.shape, None), raw, (0,))
            raws[id(s)] = raw
    await run_jobs(jobs)
    for device_tensor, host, _ in after:
        import torch

        device_tensor.copy_(torch.from_numpy(host).view(device_tensor.dtype))
    for s in walk.sets:
        value = raws[id(s)].tobytes() if id(s) in raws else s.leaf.value  # type: ignore[union-attr]
        s.container[s.key] = value
    return [t.path for t in walk.tensors] + [s.path for s in walk.sets]
