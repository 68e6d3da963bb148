"""The training-state format: its files, their names, the JSON tree, the dtypes.

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
  ``U8``), ``float`` (``"nan"``, ``"inf"``, ``"-inf"``, which JSON cannot hold), or
  ``shard`` (a :class:`Shard`: ``{"tensor": name, "offset": [...], "shape": [...]}``,
  the block stored as ``name`` and where it sits in the global tensor).

  What a partial read needs to verify the bytes it fetches is recorded beside the tree:
  ``header`` (the size and CRC32C of the safetensors file's first ``8 + n`` bytes: the
  length and the JSON header, read with one ranged request) and ``chunks`` (``size``,
  and ``crc32c``: the base64 of one little-endian CRC32C per ``size`` bytes of every
  tensor's data, tensors in the order of their data in the file, each tensor's last
  chunk shorter). A slice is fetched in whole chunks and each chunk is checked: see
  ``docs/loading.md``. A file without them (from an older asynccp) is read whole.
  ``version`` is 2 when the tree holds a ``shard`` node, else 1: an asynccp that reads
  version 1 only reads every state without a ``Shard`` (it passes over the new keys).

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

This module holds what both directions share: the names and version of the format,
the dtype tables, the :class:`State` marker and :class:`Tensor` (one entry of the
safetensors file and where its bytes come from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CHUNK",
    "FORMAT",
    "ITEMSIZE",
    "MAX_DEPTH",
    "NUMPY_TO_ST",
    "STATE_NAME",
    "ST_TO_NUMPY",
    "Shard",
    "ST_TO_TORCH",
    "TORCH_TO_ST",
    "VERSION",
    "Framework",
    "State",
    "Tensor",
]

#: The name of a state saved as the whole payload (``read_state()`` reads it).
STATE_NAME = "state"
FORMAT = "asynccp.state"
#: The newest version this asynccp reads and writes: 2 when a state holds a Shard (a
#: node version 1 readers do not know), 1 otherwise (its header and chunk records are
#: keys version 1 readers pass over).
VERSION = 2
#: Bytes of tensor data per recorded CRC32C: what a partial read fetches at least, at
#: each end of every contiguous run of what it needs (4 KiB: a page; checking a chunk
#: costs a call, about 0.3 us, so smaller chunks would slow down the save's pass).
CHUNK = 4096
#: Deeper nesting than this is refused (a cycle is caught before; this bounds recursion).
MAX_DEPTH = 200

Framework = Literal["numpy", "torch"]

# safetensors dtype names, by numpy dtype string and by torch dtype name.
NUMPY_TO_ST = {
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
ST_TO_NUMPY = {v: k for k, v in NUMPY_TO_ST.items()}
TORCH_TO_ST = {
    **NUMPY_TO_ST,  # torch names these dtypes as numpy does
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}
ITEMSIZE = {
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


class Shard:
    """A process's block of a global tensor, to save in a :class:`State`.

    ``Shard(array, offset=(r0, c0), shape=(R, C))``: ``array`` (a torch tensor or a
    numpy array, saved like any) is the block of the global tensor of shape ``shape``
    that starts at ``offset``; ``array.shape`` is the block's extent. Every process of
    a sharded checkpoint saves its own blocks, and the step records where each one
    sits, so ``ckpt.read_state()`` on the whole step gives the global tensors back and
    ``read_state(slices=...)`` / ``load_into(...)`` read any region of them, fetching
    only the blocks' bytes it overlaps: a job saved on 8 processes resumes on 6.

    A ``Shard`` is also a target of :meth:`~asynccp.Checkpoint.load_into`: the region
    ``[offset, offset + array.shape)`` of the saved global tensor is copied into
    ``array`` in place.

    Raises ``TypeError`` / ``ValueError`` when ``offset`` and ``shape`` are not tuples
    of ints of the array's number of dimensions, or the block does not fit in
    ``shape``.
    """

    __slots__ = ("array", "offset", "shape")

    def __init__(self, array: Any, *, offset: Sequence[int], shape: Sequence[int]) -> None:
        block = getattr(array, "shape", None)
        if block is None or isinstance(array, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"Shard takes a torch tensor or a numpy array, got {type(array).__name__}"
            )
        block = tuple(int(d) for d in block)
        self.offset = _dims("offset", offset, len(block))
        self.shape = _dims("shape", shape, len(block))
        for d, (o, b, g) in enumerate(zip(self.offset, block, self.shape, strict=True)):
            if o + b > g:
                raise ValueError(
                    f"Shard: the block of shape {block} at offset {self.offset} does not fit "
                    f"in the global shape {self.shape} (dimension {d}: {o} + {b} > {g})"
                )
        self.array = array

    @property
    def slices(self) -> tuple[slice, ...]:
        """The region of the global tensor the block covers, as slices."""
        block = tuple(int(d) for d in self.array.shape)
        return tuple(slice(o, o + b) for o, b in zip(self.offset, block, strict=True))

    def __repr__(self) -> str:
        block = tuple(int(d) for d in self.array.shape)
        return f"Shard(block {block} at {self.offset} of {self.shape})"


def _dims(what: str, value: object, ndim: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``ndim`` ints >= 0 (Shard's ``offset`` and ``shape``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"Shard: {what} must be a tuple of ints, got {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            index = getattr(v, "__index__", None)
            if index is None or isinstance(v, bool):
                raise TypeError(f"Shard: {what} must be a tuple of ints, got {tuple(value)!r}")
            v = index()
        if v < 0:
            raise ValueError(f"Shard: {what} must not be negative, got {tuple(value)!r}")
        out.append(int(v))
    if len(out) != ndim:
        raise ValueError(
            f"Shard: {what} {tuple(out)} has {len(out)} dimension(s), the block has {ndim}"
        )
    return tuple(out)


@dataclass
class Tensor:
    """One tensor or array found in a state: its entry in the safetensors file, and
    where its bytes come from when the snapshot is taken."""

    key: str  # its name in the safetensors file
    dtype: str  # safetensors dtype
    shape: list[int]
    nbytes: int
    itemsize: int
    address: int | None  # where its bytes are (CPU), kept valid by ``owner``; None: a buffer
    owner: Any  # the array / tensor / bytes object itself
    device: bool = False  # on a GPU: copied by torch, not by address
    torch: bool = False
