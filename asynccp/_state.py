"""Training state as a payload: tensors and arrays with dtype and shape, numbers, nesting.

``save(step, asynccp.State(state))`` stores a (nested) mapping — a model's
``state_dict()``, an optimizer's, ``{"model": ..., "optim": ..., "epoch": 3}`` — as
two files named after the state (``state`` when it is the whole payload; the
mapping key when it is one value of a file mapping):

- ``<name>.safetensors``: every tensor and array, in the safetensors format (any
  safetensors reader opens it), named by its path in the nesting (segments joined by
  ``/``, with ``~`` and ``/`` inside a key written ``~0`` and ``~1``, as in a JSON
  pointer). Written only when the state holds a tensor.
- ``<name>.json``: the nesting itself, with the scalars in it::

      {"format": "asynccp.state", "version": 1, "tensors": "state.safetensors",
       "tree": {"dict": {"model": {"dict": {"w": {"tensor": "model/w"}}},
                         "epoch": 3}}}

  A node is a JSON scalar (``null``, ``true``, a number, a string) or an object with
  one key saying what it is: ``dict`` (string keys, in order), ``items`` (a mapping
  with an ``int`` key: a list of ``[key, node]`` pairs), ``list``, ``tuple``,
  ``tensor`` (its name in the safetensors file), ``bytes`` (likewise, stored as
  ``U8``), or ``float`` (``"nan"``, ``"inf"``, ``"-inf"``, which JSON cannot hold).

What a state may hold: ``str`` and ``int`` keys (``int`` for an optimizer's
``state_dict()``, whose ``"state"`` is keyed by parameter index; ``bool`` and every
other key type is refused), mappings, lists, tuples, ``None``, ``bool``, ``int``,
``float``, ``str``, ``bytes``, numpy arrays and numpy scalars (kept as 0-d arrays of
their dtype, ``np.float64`` and ``np.bool_`` included: ``np.float64`` is a ``float``
subclass, but reads back as a float64 array like every other numpy scalar; ``np.str_``
and ``np.bytes_`` are kept as ``str`` and ``bytes``), and torch tensors on the CPU or a
CUDA device. Anything else — an object array, a dtype safetensors cannot hold, a tensor
that is not contiguous, a cycle, a key or string that is not valid Unicode (a lone
surrogate cannot be written as UTF-8: a ``TypeError`` for a key, like every bad key, a
``ValueError`` for a value) — is a ``TypeError`` / ``ValueError`` naming the key,
raised before anything is staged.

The snapshot is one copy: the safetensors header is written here and each tensor's
bytes go straight into asynccp's staging memory (see :class:`asynccp._memory.Gather`).
``read_state`` gives the nesting back with numpy arrays (or torch tensors) that are
views of the verified file: memory-mapped on a local disk (copy-on-write, so they may
be changed freely), one buffer otherwise.

numpy and torch are imported only when the state (or the reader) uses them.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio

from ._groups import first_leaf
from ._memory import Gather
from ._names import validate_name
from .errors import CheckpointNotFoundError, CorruptCheckpointError


class Source(Protocol):
    """What a state is read from: a checkpoint's files, read verified (a
    :class:`~asynccp.Checkpoint` is one; this module sits below it)."""

    @property
    def step(self) -> int: ...

    @property
    def files(self) -> Mapping[str, Any]: ...

    async def read(self, name: str) -> bytes: ...

    async def _read_buffer(self, name: str) -> Any: ...


__all__ = ["STATE_NAME", "State", "plan_state", "read_state"]

#: The name of a state saved as the whole payload (``read_state()`` reads it).
STATE_NAME = "state"
FORMAT = "asynccp.state"
VERSION = 1
#: Deeper nesting than this is refused (a cycle is caught before; this bounds recursion).
MAX_DEPTH = 200

Framework = Literal["numpy", "torch"]

# safetensors dtype names, by numpy dtype string and by torch dtype name.
_NUMPY_TO_ST = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "uint64": "U64",
    "complex64": "C64",
}
_ST_TO_NUMPY = {v: k for k, v in _NUMPY_TO_ST.items()}
_TORCH_TO_ST = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}
_ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}
_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


class State:
    """Training state to save: ``await cp.save(step, asynccp.State(state))``.

    ``state`` is a mapping, nested as deep as needed, of torch tensors (CPU or CUDA),
    numpy arrays and scalars, and ``None`` / ``bool`` / ``int`` / ``float`` / ``str`` /
    ``bytes``, in mappings, lists and tuples; keys are ``str`` or ``int``. Tensors and
    arrays are stored in the safetensors format with their dtype and shape, the rest
    as JSON; ``await ckpt.read_state()`` gives the same structure back.

    The marker is what tells a state from a mapping of file names to payloads
    (``{"weights": array}`` saves the array's bytes as a file named ``weights``). It
    can also be one value of such a mapping: ``{"train": State(...), "notes.txt":
    text}`` saves ``train.json`` and ``train.safetensors`` (read them with
    ``read_state("train")``) next to ``notes.txt``. Nothing is copied until
    ``save()``; the snapshot is taken then, so the caller may change its tensors as
    soon as ``save()`` returns.
    """

    __slots__ = ("value",)

    def __init__(self, value: Mapping[Any, Any]) -> None:
        if not isinstance(value, Mapping):
            raise TypeError(
                f"State takes a mapping (a state_dict, {{'model': ..., 'epoch': 3}}), "
                f"got {type(value).__name__}"
            )
        self.value = value

    def __repr__(self) -> str:
        return f"State({len(self.value)} keys: {list(self.value)[:5]!r})"


# -- saving ----------------------------------------------------------------------------


@dataclass
class _Tensor:
    """One tensor or array found in a state, ready to be laid out in the file."""

    key: str  # its name in the safetensors file
    dtype: str  # safetensors dtype
    shape: list[int]
    nbytes: int
    itemsize: int
    address: int | None  # where its bytes are (CPU), kept valid by ``owner``; None: a buffer
    owner: Any  # the array / tensor / bytes object itself
    device: bool = False  # on a GPU: copied by torch, not by address
    torch: bool = False


class _Planner:
    """Walks a state once: validates it, builds the JSON tree, collects the tensors."""

    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.names: set[str] = set()
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
        if torch is not None and isinstance(value, torch.Tensor):
            return {"tensor": self._torch_tensor(value, path, segments)}
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
        self.tensors.append(_Tensor(name, "U8", [len(value)], len(value), 1, None, value))
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
        st = _NUMPY_TO_ST.get(dtype.name) if dtype.fields is None else None
        if st is None:
            raise TypeError(
                f"{path} has dtype {dtype}, which safetensors cannot hold (it holds "
                f"{', '.join(sorted(_NUMPY_TO_ST))})"
            )
        if not value.flags.c_contiguous:
            raise TypeError(f"{path} is not C-contiguous: pass numpy.ascontiguousarray(x) (a copy)")
        name = self._name(segments)
        addr = value.__array_interface__["data"][0]
        self.tensors.append(
            _Tensor(name, st, list(value.shape), value.nbytes, dtype.itemsize, addr, value)
        )
        return name

    def _torch_tensor(self, value: Any, path: str, segments: tuple[str, ...]) -> str:
        torch = self._torch
        assert torch is not None
        if value.layout != torch.strided:
            raise TypeError(f"{path} is a {value.layout} tensor: pass x.to_dense()")
        if value.is_quantized:
            raise TypeError(f"{path} is a quantized tensor: pass x.dequantize() or x.int_repr()")
        dtype_name = str(value.dtype).removeprefix("torch.")
        st = _TORCH_TO_ST.get(dtype_name)
        if st is None:
            raise TypeError(
                f"{path} has dtype {value.dtype}, which safetensors cannot hold (it holds "
                f"{', '.join(sorted(_TORCH_TO_ST))})"
            )
        kind = value.device.type
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise TypeError(f"{path} is on {value.device}, but CUDA is not available here")
        elif kind != "cpu":
            raise TypeError(
                f"{path} is on device {value.device!s}: asynccp copies tensors from the "
                "CPU or a CUDA device; pass x.cpu()"
            )
        if not value.is_contiguous():
            raise TypeError(f"{path} is not contiguous: pass x.contiguous() (a copy)")
        if value.is_conj() or value.is_neg():
            raise TypeError(f"{path} has a lazy conjugate/negation: pass x.resolve_conj()")
        nbytes = value.numel() * value.element_size()
        addr = value.data_ptr() if kind == "cpu" else 0
        name = self._name(segments)
        self.tensors.append(
            _Tensor(
                name,
                st,
                list(value.shape),
                nbytes,
                value.element_size(),
                addr,
                value,
                device=kind == "cuda",
                torch=True,
            )
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


def plan_state(state: State, name: str) -> list[tuple[str, bytes | Gather]]:
    """Validate ``state`` and lay out its files, copying no tensor bytes (on the loop:
    walking a state dict is quick, and the snapshot that follows needs the layout).

    Returns ``(name, value)`` for ``<name>.json`` (the nesting and scalars, as
    ``bytes``) and, when the state holds a tensor, ``<name>.safetensors`` (a
    :class:`~asynccp._memory.Gather` of every tensor's bytes).
    """
    json_name = validate_name(f"{name}.json")
    st_name = validate_name(f"{name}.safetensors")
    planner = _Planner()
    tree = planner.node(state.value, "state", (), 0)
    tensors = planner.tensors
    doc = {"format": FORMAT, "version": VERSION, "tensors": st_name if tensors else None}
    doc["tree"] = tree
    body = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")
    parts: list[tuple[str, bytes | Gather]] = [(json_name, body)]
    if tensors:
        parts.append((st_name, _gather(tensors)))
    return parts


def _gather(tensors: list[_Tensor]) -> Gather:
    """The safetensors file of ``tensors`` as a :class:`Gather`: header, then data.

    Tensors are laid out by item size, largest first (stable within a size), so that
    every tensor starts at a multiple of its item size: the header is padded to a
    multiple of 8, as the safetensors library pads it.
    """
    ordered = sorted(tensors, key=lambda t: -t.itemsize)
    header: dict[str, Any] = {
        "__metadata__": {"format": "pt" if any(t.torch for t in tensors) else "np"}
    }
    offset = 0
    for t in ordered:
        header[t.key] = {
            "dtype": t.dtype,
            "shape": t.shape,
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    head = struct.pack("<Q", len(text)) + text
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
                sources.append((pos, _torch_address(t), t.nbytes))
            else:
                sources.append((pos, t.address, t.nbytes))
        pos += t.nbytes
    g = Gather(pos, head=head, sources=sources, keep=[t.owner for t in ordered])
    if gpu:
        g.allocate, g.device = _pinned, _device_copier(gpu)
    return g


def _torch_address(t: _Tensor) -> Callable[[], int]:
    """Where a CPU tensor's bytes are when the copy starts: a tensor resized (its storage
    replaced) between ``save()`` planning it and copying it fails the save, instead of
    the copy reading memory the tensor no longer owns."""
    tensor, nbytes, key = t.owner, t.nbytes, t.key

    def address() -> int:
        if tensor.numel() * tensor.element_size() != nbytes or not tensor.is_contiguous():
            raise ValueError(f"tensor {key!r} changed shape while the save was waiting")
        return int(tensor.data_ptr())

    return address


def _pinned(size: int) -> tuple[Any, Any]:
    """Pinned (page-locked) host memory from torch's caching host allocator: copies from
    a GPU into it are DMA transfers, and its blocks are reused from save to save."""
    import torch

    owner = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    return owner, owner.numpy()


def _device_copier(gpu: list[tuple[int, Any, int]]) -> Callable[[Any], None]:
    """Copies each GPU tensor into its place in the pinned file (worker thread)."""

    def copy(owner: Any) -> None:  # pragma: no cover - needs a CUDA device
        import torch

        devices = set()
        for pos, tensor, nbytes in gpu:
            flat = tensor.detach().reshape(-1).view(torch.uint8)
            owner[pos : pos + nbytes].copy_(flat, non_blocking=True)
            devices.add(tensor.device)
        for device in devices:  # the copies were queued on each device's current stream
            torch.cuda.current_stream(device).synchronize()

    return copy


# -- reading ---------------------------------------------------------------------------


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
            dtype in _ITEMSIZE
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
            end - begin != count * _ITEMSIZE[dtype]
        ):
            raise self._bad(f"tensor {key!r} has offsets {offsets} that do not fit")
        value = self._build(key, dtype, shape, count, begin)
        self[key] = value
        return value

    def _build(self, key: str, dtype: str, shape: list[int], count: int, begin: int) -> Any:
        aligned = begin % _ITEMSIZE[dtype] == 0
        if self._framework == "torch":
            torch = self._module
            tdtype = getattr(torch, _ST_TO_TORCH[dtype])
            if count == 0:
                return torch.empty(shape, dtype=tdtype)
            t = torch.frombuffer(self._buf, dtype=tdtype, count=count, offset=begin)
            return (t if aligned else t.clone()).reshape(shape)
        np = self._module
        np_dtype = _ST_TO_NUMPY.get(dtype)
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
