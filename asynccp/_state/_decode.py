"""Reading a state back: :func:`read_state` (``ckpt.read_state()``).

The nesting comes back with numpy arrays (or torch tensors, :mod:`._torch`) that are
views of the verified file: memory-mapped on a local disk (copy-on-write, so they may
be changed freely), one buffer otherwise. Both files are untrusted input: every entry
is checked before it is used, and a bad one is a ``CorruptCheckpointError``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio

from .._groups import first_leaf
from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ._schema import FORMAT, ITEMSIZE, MAX_DEPTH, ST_TO_NUMPY, STATE_NAME, VERSION, Framework

__all__ = ["Source", "read_state"]


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
    """The state saved as ``name`` in checkpoint ``ckpt``, verified (see the module doc)."""
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
    module = _import(framework)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    json_name = f"{name}.json"
    if json_name not in ckpt.files:
        states = sorted(n[: -len(".json")] for n in ckpt.files if n.endswith(".json"))
        found = f"states it may hold: {states}" if states else f"files: {sorted(ckpt.files)[:10]}"
        raise CheckpointNotFoundError(
            f"checkpoint {ckpt.step} holds no state named {name!r} (no file {json_name!r}); {found}"
        )
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
    doc = _decode_doc(ckpt, json_name, got[json_name])
    tensors_file = doc["tensors"]
    arrays: dict[str, Any] = {}
    if tensors_file is not None:
        buf = got.get(tensors_file)
        if buf is None:  # a file of another name (not written by this asynccp)
            buf = await ckpt._read_buffer(tensors_file)
        arrays = _Tensors(ckpt, tensors_file, buf, module, framework)
    return _Builder(ckpt, json_name, arrays).node(doc["tree"], 0)


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


def _decode_doc(ckpt: Any, json_name: str, raw: bytes) -> dict[str, Any]:
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
        self._header, self._start = self._parse()

    def _bad(self, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"checkpoint {self._ckpt.step}: {self._name!r} is not a valid safetensors file: {why}"
        )

    def _parse(self) -> tuple[dict[str, Any], int]:
        view = self._view
        if len(view) < 8:
            raise self._bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", view[:8])
        if n > len(view) - 8:
            raise self._bad(f"its header length {n} runs past the end")
        try:
            header = json.loads(bytes(view[8 : 8 + n]))
        except (ValueError, UnicodeDecodeError) as e:
            raise self._bad(f"its header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise self._bad("its header is not a JSON object")
        return header, 8 + n

    def __missing__(self, key: str) -> Any:
        entry = self._header.get(key)
        if key == "__metadata__" or not isinstance(entry, dict):
            raise self._bad(f"it has no tensor {key!r}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        ok = (
            dtype in ITEMSIZE
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        )
        if not ok:
            raise self._bad(f"tensor {key!r} has a bad entry {entry!r}")
        assert isinstance(dtype, str) and isinstance(shape, list) and isinstance(offsets, list)
        count = math.prod(shape)
        begin, end = offsets[0] + self._start, offsets[1] + self._start
        if not (self._start <= begin <= end <= len(self._view)) or (
            end - begin != count * ITEMSIZE[dtype]
        ):
            raise self._bad(f"tensor {key!r} has offsets {offsets} that do not fit")
        value = self._build(key, dtype, shape, count, begin)
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
        entry = self._header.get(key)
        if not isinstance(entry, dict) or entry.get("dtype") != "U8":
            raise self._bad(f"it has no bytes entry {key!r}")
        self.__missing__(key)  # validates the entry
        begin, end = (o + self._start for o in entry["data_offsets"])
        return bytes(self._view[begin:end])


class _Builder:
    """Turns a state's JSON tree back into mappings, lists, tuples, scalars, tensors."""

    def __init__(self, ckpt: Any, json_name: str, arrays: Any) -> None:
        self._ckpt, self._json, self._arrays = ckpt, json_name, arrays

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
        raise self._bad(f"has a node that is not one of asynccp's: {str(n)[:80]}")
