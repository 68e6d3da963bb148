"""Saving a state: validate it, build its JSON tree, lay out its safetensors file.

:func:`plan_state` walks the state once on the event loop (quick, and the snapshot that
follows needs the layout) and copies no tensor bytes: the safetensors header is
written here and each tensor's bytes go straight into asynccp's staging memory (see
:class:`asynccp._memory.Gather`) when the snapshot is taken. numpy arrays are found
only when numpy is loaded, torch tensors only when torch is (:mod:`._torch`).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from collections.abc import Mapping
from typing import Any

import crc32c

from .._memory import Deferred, Gather
from .._names import validate_name
from ._chunks import chunk_table, table_length
from ._schema import CHUNK, FORMAT, MAX_DEPTH, NUMPY_TO_ST, VERSION, Shard, State, Tensor

__all__ = ["plan_state"]


class _Planner:
    """Walks a state once: validates it, builds the JSON tree, collects the tensors."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []
        self.names: set[str] = set()
        self.shards = 0  # Shard values found
        self._active: dict[int, str] = {}  # containers on the current path -> their path
        self._np = sys.modules.get("numpy")
        self._torch = sys.modules.get("torch")

    def node(self, value: Any, path: str, segments: tuple[str, ...], depth: int) -> Any:
        if isinstance(value, str):
            if not _is_unicode(value):
                raise ValueError(
                    f"{path} ({value!r}) is not valid Unicode: it holds a lone surrogate, "
                    "which cannot be written as UTF-8"
                )
            return value
        if value is None or isinstance(value, bool):
            return value
        np, torch = self._np, self._torch
        if np is not None and isinstance(value, np.generic) and not isinstance(value, bytes):
            # Before the float branch: np.float64 is a float, and would lose its dtype.
            return {"tensor": self._array(value, path, segments)}
        if isinstance(value, int):
            return int(value)  # an int subclass (an IntEnum) is stored as its value
        if isinstance(value, float):
            if math.isfinite(value):
                return float(value)
            return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, bytes):
            return {"bytes": self._bytes(value, segments)}
        if isinstance(value, Shard):
            return self._shard(value, path, segments)
        if torch is not None and isinstance(value, torch.Tensor):
            from ._torch import plan_tensor  # torch is loaded: the state holds its tensors

            t = plan_tensor(value, path, self._name(segments))
            self.tensors.append(t)
            return {"tensor": t.key}
        if np is not None and isinstance(value, (np.ndarray, np.generic)):
            return {"tensor": self._array(value, path, segments)}
        if isinstance(value, (Mapping, list, tuple)):
            return self._container(value, path, segments, depth)
        raise TypeError(
            f"{path} is a {type(value).__name__}: a state holds tensors, numpy arrays, "
            "None, bool, int, float, str, bytes, and mappings, lists and tuples of them"
        )

    def _container(self, value: Any, path: str, segments: tuple[str, ...], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise ValueError(f"{path} is nested more than {MAX_DEPTH} levels deep")
        ident = id(value)
        if ident in self._active:
            raise ValueError(
                f"{path} refers back to {self._active[ident]}, which contains it: "
                "a state must not contain itself (a cycle)"
            )
        self._active[ident] = path
        try:
            if isinstance(value, Mapping):
                pairs = []
                all_str = True
                for key, item in value.items():
                    if isinstance(key, bool) or not isinstance(key, (str, int)):
                        raise TypeError(
                            f"key {key!r} in {path} is a {type(key).__name__}: state keys "
                            "must be str or int"
                        )
                    if isinstance(key, str) and not _is_unicode(key):
                        raise TypeError(
                            f"key {key!r} in {path} is not valid Unicode (it holds a lone "
                            "surrogate, which cannot be written as UTF-8): state keys must "
                            "be str or int"
                        )
                    all_str = all_str and isinstance(key, str)
                    sub = f"{path}[{key!r}]"
                    pairs.append((key, self.node(item, sub, (*segments, _segment(key)), depth + 1)))
                if all_str:
                    return {"dict": dict(pairs)}
                return {"items": [[int(k) if isinstance(k, int) else k, n] for k, n in pairs]}
            nodes = [
                self.node(item, f"{path}[{i}]", (*segments, str(i)), depth + 1)
                for i, item in enumerate(value)
            ]
            return {"tuple" if isinstance(value, tuple) else "list": nodes}
        finally:
            del self._active[ident]

    def _shard(self, value: Shard, path: str, segments: tuple[str, ...]) -> Any:
        """A block of a global tensor: stored as its array, placed by the JSON node."""
        self.shards += 1
        array = value.array
        np, torch = self._np, self._torch
        if torch is not None and isinstance(array, torch.Tensor):
            from ._torch import plan_tensor

            t = plan_tensor(array, path, self._name(segments))
            self.tensors.append(t)
            key = t.key
        elif np is not None and isinstance(array, np.ndarray):
            key = self._array(array, path, segments)
        else:
            raise TypeError(
                f"{path} is a Shard of a {type(array).__name__}: a Shard holds a torch "
                "tensor or a numpy array"
            )
        block = tuple(int(d) for d in array.shape)
        for d, (o, b, g) in enumerate(zip(value.offset, block, value.shape, strict=True)):
            if o + b > g:  # the array was resized since the Shard was made
                raise ValueError(
                    f"{path}: the block of shape {block} at offset {value.offset} does not "
                    f"fit in the global shape {value.shape} (dimension {d})"
                )
        return {"shard": {"tensor": key, "offset": list(value.offset), "shape": list(value.shape)}}

    def _name(self, segments: tuple[str, ...]) -> str:
        name = "/".join(segments) or "."
        unique, n = name, 1
        while unique in self.names or unique == "__metadata__":
            n += 1
            unique = f"{name}~{n}"  # "~" + a digit >= 2 is no JSON-pointer escape
        self.names.add(unique)
        return unique

    def _bytes(self, value: bytes, segments: tuple[str, ...]) -> str:
        name = self._name(segments)
        self.tensors.append(Tensor(name, "U8", [len(value)], len(value), 1, None, value))
        return name

    def _array(self, value: Any, path: str, segments: tuple[str, ...]) -> str:
        np = self._np
        assert np is not None
        if isinstance(value, np.generic):
            value = np.asarray(value)  # a numpy scalar: a 0-d array of its dtype
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"{path} is a masked array: save its .data and .mask separately")
        dtype = value.dtype
        if dtype.hasobject:
            raise TypeError(
                f"{path} is an object array (dtype {dtype}): safetensors holds numbers only"
            )
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
            raise TypeError(
                f"{path} is big-endian ({dtype.str}): safetensors is little-endian; "
                f"pass x.astype({dtype.newbyteorder('<').str!r})"
            )
        st = NUMPY_TO_ST.get(dtype.name) if dtype.fields is None else None
        if st is None:
            raise TypeError(
                f"{path} has dtype {dtype}, which safetensors cannot hold (it holds "
                f"{', '.join(sorted(NUMPY_TO_ST))})"
            )
        if not value.flags.c_contiguous:
            raise TypeError(f"{path} is not C-contiguous: pass numpy.ascontiguousarray(x) (a copy)")
        name = self._name(segments)
        addr = value.__array_interface__["data"][0]
        self.tensors.append(
            Tensor(name, st, list(value.shape), value.nbytes, dtype.itemsize, addr, value)
        )
        return name


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _segment(key: str | int) -> str:
    """One key as a segment of a tensor's name (JSON-pointer escapes for ``~`` and ``/``)."""
    text = str(key).replace("~", "~0").replace("/", "~1")
    # A name that is not valid UTF-8 (a lone surrogate) cannot go in the header.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def plan_state(state: State, name: str) -> list[tuple[str, bytes | Gather | Deferred]]:
    """Validate ``state`` and lay out its files, copying no tensor bytes (on the loop:
    walking a state dict is quick, and the snapshot that follows needs the layout).

    Returns ``(name, value)`` for ``<name>.json`` (the nesting and scalars) and, when the
    state holds a tensor, ``<name>.safetensors`` (a :class:`~asynccp._memory.Gather` of
    every tensor's bytes). With tensors the JSON is a :class:`~asynccp._memory.Deferred`:
    its chunk checksums (:mod:`._chunks`) are computed from the staged copy of the
    tensors, by the commit, off the caller's path, and written into its reserved place.
    Without tensors it is ``bytes``.
    """
    json_name = validate_name(f"{name}.json")
    st_name = validate_name(f"{name}.safetensors")
    planner = _Planner()
    tree = planner.node(state.value, "state", (), 0)
    tensors = planner.tensors
    # Version 1 readers read every state without a Shard: they pass over the new keys.
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION if planner.shards else 1}
    if not tensors:
        doc["tensors"] = None
        doc["tree"] = tree
        return [(json_name, json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8"))]
    gather, spans = _gather(tensors)
    doc["tensors"] = st_name
    doc["header"] = {"size": len(gather.head), "crc32c": crc32c.crc32c(gather.head)}
    doc["tree"] = tree
    # The chunk table is the JSON's last value: its place is reserved now (its length
    # is known), and written once the tensors are staged (see _chunks).
    reserved = table_length([n for _, n in spans])
    text = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")[:-1]
    text += f', "chunks": {{"size": {CHUNK}, "crc32c": "'.encode()
    at = len(text)
    body = bytearray(text + b"A" * reserved + b'"}}')

    def complete(staged: Mapping[str, Any]) -> None:
        table = chunk_table(staged[st_name], spans)
        assert len(table) == reserved
        body[at : at + reserved] = table

    return [(json_name, Deferred(len(body), body, complete)), (st_name, gather)]


@functools.lru_cache(maxsize=16)
def _header(layout: tuple[tuple[str, str, tuple[int, ...], int, bool], ...]) -> bytes:
    """The safetensors header of tensors laid out in this order (name, dtype, shape,
    bytes, torch's?), its length first. Cached: a loop saves the same state shapes save
    after save, and a state of many tensors is a long header to encode each time."""
    header: dict[str, Any] = {
        "__metadata__": {"format": "pt" if any(torch for *_, torch in layout) else "np"}
    }
    offset = 0
    for key, dtype, shape, nbytes, _ in layout:
        header[key] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _gather(tensors: list[Tensor]) -> tuple[Gather, list[tuple[int, int]]]:
    """The safetensors file of ``tensors`` as a :class:`Gather`: header, then data.

    Tensors are laid out by item size, largest first (stable within a size), so that
    every tensor starts at a multiple of its item size: the header is padded to a
    multiple of 8, as the safetensors library pads it. Also returns each tensor's data
    as ``(file offset, bytes)``, in file order (what the chunk table covers).
    """
    ordered = sorted(tensors, key=lambda t: -t.itemsize)
    head = _header(tuple((t.key, t.dtype, tuple(t.shape), t.nbytes, t.torch) for t in ordered))
    sources: list[tuple[int, Any] | tuple[int, Any, int]] = []
    gpu: list[tuple[int, Any, int]] = []
    pos = len(head)
    for t in ordered:
        if t.nbytes:
            if t.device:
                gpu.append((pos, t.owner, t.nbytes))
            elif t.address is None:
                sources.append((pos, t.owner))
            elif t.torch:
                from ._torch import address_of

                sources.append((pos, address_of(t), t.nbytes))
            else:
                sources.append((pos, t.address, t.nbytes))
        pos += t.nbytes
    g = Gather(pos, head=head, sources=sources, keep=[t.owner for t in ordered])
    if gpu:
        from ._torch import device_copier, pinned

        g.allocate, g.device = pinned, device_copier(gpu)
    spans, at = [], len(head)
    for t in ordered:
        spans.append((at, t.nbytes))
        at += t.nbytes
    return g, spans
