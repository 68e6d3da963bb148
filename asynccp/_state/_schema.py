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

This module holds what both directions share: the names and version of the format,
the dtype tables, the :class:`State` marker and :class:`Tensor` (one entry of the
safetensors file and where its bytes come from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FORMAT",
    "ITEMSIZE",
    "MAX_DEPTH",
    "NUMPY_TO_ST",
    "STATE_NAME",
    "ST_TO_NUMPY",
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
VERSION = 1
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
