"""Reading a state back: :func:`read_state` (``ckpt.read_state()``).

The nesting comes back with numpy arrays (or torch tensors, :mod:`._torch`) that are
views of the verified file: memory-mapped on a local disk (copy-on-write, so they may
be changed freely), one buffer otherwise. Both files are untrusted input: every entry
is checked before it is used, and a bad one is a ``CorruptCheckpointError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio

from .._groups import first_leaf
from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ._chunks import parse_header
from ._schema import FORMAT, ITEMSIZE, MAX_DEPTH, ST_TO_NUMPY, STATE_NAME, VERSION, Framework, Shard

__all__ = ["Source", "check_framework", "decode_doc", "no_state", "read_state"]


class Source(Protocol):
    """What a state is read from: a checkpoint's files, read verified (a
    :class:`~asynccp.Checkpoint` is one; this module sits below it)."""

    @property
    def step(self) -> int: ...

    @property
    def files(self) -> Mapping[str, Any]: ...

    async def read(self, name: str) -> bytes: ...

    async def _read_buffer(self, name: str) -> Any: ...


async def read_state(
    ckpt: Source, name: str = STATE_NAME, *, framework: Framework = "numpy"
) -> Any:
    """The state saved as ``name`` in checkpoint ``ckpt``, verified (see the module doc).

    ``Shard`` values come back as :class:`~asynccp.Shard` objects of their block when
    ``ckpt`` is one part of a sharded step, and as the global tensor otherwise (a
    checkpoint of one process, whose block must then be the whole tensor: the reads
    that assemble blocks are :mod:`._partial`'s).
    """
    module = check_framework(framework)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    json_name = f"{name}.json"
    if json_name not in ckpt.files:
        raise no_state(ckpt, name)
    # The tensors are read side by side with the nesting (a request's latency saved on
    # a remote store): their file's name is known before the nesting names it.
    expected = f"{name}.safetensors"
    got: dict[str, Any] = {}

    async def fetch(file: str, read: Callable[[str], Awaitable[Any]]) -> None:
        got[file] = await read(file)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, json_name, ckpt.read)
            if expected in ckpt.files:
                tg.start_soon(fetch, expected, ckpt._read_buffer)
    except Exception as e:  # a task group wraps its children's errors
        leaf = first_leaf(e)
        raise leaf from leaf.__cause__
    doc = decode_doc(ckpt, json_name, got[json_name])
    tensors_file = doc["tensors"]
    arrays: dict[str, Any] = {}
    if tensors_file is not None:
        buf = got.get(tensors_file)
        if buf is None:  # a file of another name (not written by this asynccp)
            buf = await ckpt._read_buffer(tensors_file)
        arrays = _Tensors(ckpt, tensors_file, buf, module, framework)
    part_view = getattr(ckpt, "part", None) is not None
    return _Builder(ckpt, json_name, arrays, part_view).node(doc["tree"], 0)


def check_framework(framework: object) -> Any:
    """numpy or torch, as ``framework=`` names it (imported now)."""
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
    return _import(str(framework))


def no_state(ckpt: Any, name: str) -> CheckpointNotFoundError:
    """The error for a checkpoint that holds no state called ``name``."""
    json_name = f"{name}.json"
    states = sorted(n[: -len(".json")] for n in ckpt.files if n.endswith(".json"))
    found = f"states it may hold: {states}" if states else f"files: {sorted(ckpt.files)[:10]}"
    return CheckpointNotFoundError(
        f"checkpoint {ckpt.step} holds no state named {name!r} (no file {json_name!r}); {found}"
    )


def _import(framework: str) -> Any:
    try:
        if framework == "torch":
            import torch

            return torch
        import numpy

        return numpy
    except ImportError as e:
        extra = "torch" if framework == "torch" else "state"
        raise ModuleNotFoundError(
            f"read_state(framework={framework!r}) needs {framework}: pip install 'asynccp[{extra}]'"
        ) from e


def decode_doc(ckpt: Any, json_name: str, raw: bytes) -> dict[str, Any]:
    """A state's JSON, checked: format, version, its tensor file, a tree."""

    def bad(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"checkpoint {ckpt.step}: state file {json_name!r} {why}")

    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise bad(f"is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f'is not an asynccp state (no "format": {FORMAT!r})')
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise bad(f"has version {version!r}; this asynccp reads version {VERSION}")
    tensors = doc.get("tensors")
    if tensors is not None and (not isinstance(tensors, str) or tensors not in ckpt.files):
        raise bad(f"names a tensor file {tensors!r} the checkpoint does not hold")
    if "tree" not in doc:
        raise bad("has no tree")
    return doc


class _Tensors(dict[str, Any]):
    """The tensors of a verified safetensors buffer, each built when first asked for."""

    def __init__(self, ckpt: Any, name: str, buf: Any, module: Any, framework: str) -> None:
        super().__init__()
        self._ckpt, self._name, self._module, self._framework = ckpt, name, module, framework
        self._view = memoryview(buf).cast("B")
        self._buf = buf
        self._entries = parse_header(self._view, len(self._view), self._bad)

    def _bad(self, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"checkpoint {self._ckpt.step}: {self._name!r} is not a valid safetensors file: {why}"
        )

    def __missing__(self, key: str) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            raise self._bad(f"it has no tensor {key!r}")
        count = math.prod(entry.shape)
        value = self._build(key, entry.dtype, list(entry.shape), count, entry.begin)
        self[key] = value
        return value

    def _build(self, key: str, dtype: str, shape: list[int], count: int, begin: int) -> Any:
        aligned = begin % ITEMSIZE[dtype] == 0
        if self._framework == "torch":
            from ._torch import from_buffer

            return from_buffer(self._buf, dtype, shape, count, begin, aligned)
        np = self._module
        np_dtype = ST_TO_NUMPY.get(dtype)
        if np_dtype is None:
            raise TypeError(
                f"checkpoint {self._ckpt.step}: tensor {key!r} is {dtype}, which numpy "
                "cannot hold: read it with read_state(..., framework='torch')"
            )
        if count == 0:
            return np.empty(shape, dtype=np_dtype)
        a = np.frombuffer(self._buf, dtype=np_dtype, count=count, offset=begin)
        return (a if aligned else a.copy()).reshape(shape)

    def raw(self, key: str) -> bytes:
        """The bytes of a ``U8`` entry (a ``bytes`` value of the state)."""
        entry = self._entries.get(key)
        if entry is None or entry.dtype != "U8":
            raise self._bad(f"it has no bytes entry {key!r}")
        return bytes(self._view[entry.begin : entry.end])


class _Builder:
    """Turns a state's JSON tree back into mappings, lists, tuples, scalars, tensors."""

    def __init__(self, ckpt: Any, json_name: str, arrays: Any, part_view: bool) -> None:
        self._ckpt, self._json, self._arrays = ckpt, json_name, arrays
        self._part_view = part_view

    def _bad(self, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"checkpoint {self._ckpt.step}: {self._json!r}: {why}")

    def node(self, n: Any, depth: int) -> Any:
        if n is None or isinstance(n, (bool, int, float, str)):
            return n
        if depth > MAX_DEPTH + 1:
            raise self._bad("is nested too deep")
        if not isinstance(n, dict) or len(n) != 1:
            raise self._bad(f"has a node that is not one of asynccp's: {str(n)[:80]}")
        ((kind, body),) = n.items()
        if kind == "dict" and isinstance(body, dict):
            return {k: self.node(v, depth + 1) for k, v in body.items()}
        if kind == "items" and isinstance(body, list):
            out: dict[Any, Any] = {}
            for pair in body:
                if not (isinstance(pair, list) and len(pair) == 2) or not isinstance(
                    pair[0], (str, int)
                ):
                    raise self._bad(f"has a bad item {str(pair)[:80]}")
                out[pair[0]] = self.node(pair[1], depth + 1)
            return out
        if kind in ("list", "tuple") and isinstance(body, list):
            items = [self.node(v, depth + 1) for v in body]
            return tuple(items) if kind == "tuple" else items
        if kind == "tensor" and isinstance(body, str):
            if not isinstance(self._arrays, _Tensors):
                raise self._bad(f"names tensor {body!r} but the state has no tensor file")
            return self._arrays[body]
        if kind == "bytes" and isinstance(body, str):
            if not isinstance(self._arrays, _Tensors):
                raise self._bad(f"names bytes {body!r} but the state has no tensor file")
            return self._arrays.raw(body)
        if kind == "float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if kind == "shard" and isinstance(body, dict) and isinstance(self._arrays, _Tensors):
            return self._shard(body)
        raise self._bad(f"has a node that is not one of asynccp's: {str(n)[:80]}")

    def _shard(self, body: dict[str, Any]) -> Any:
        """A saved block: a Shard (one part's view), or the global tensor it is whole."""
        name, offset, shape = body.get("tensor"), body.get("offset"), body.get("shape")
        if not isinstance(name, str):
            raise self._bad(f"has a bad shard node {str(body)[:80]}")
        array = self._arrays[name]
        try:
            shard = Shard(array, offset=offset, shape=shape)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise self._bad(f"has a bad shard node for {name!r}: {e}") from None
        if self._part_view:
            return shard
        block = tuple(int(d) for d in array.shape)
        if any(shard.offset) or block != shard.shape:
            raise CheckpointNotFoundError(
                f"checkpoint {self._ckpt.step}: {name!r} holds only the block {block} at "
                f"{shard.offset} of a tensor of shape {shard.shape}: read the region it "
                "covers with read_state(slices=...)"
            )
        return array
