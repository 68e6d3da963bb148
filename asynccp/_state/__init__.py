"""Training state as a payload: tensors and arrays with dtype and shape, numbers, nesting.

``save(step, asynccp.State(state))`` stores a (nested) mapping — a model's
``state_dict()``, an optimizer's, ``{"model": ..., "optim": ..., "epoch": 3}`` — as
``<name>.json`` (the nesting and its scalars) and ``<name>.safetensors`` (every tensor
and array); ``ckpt.read_state()`` gives it back.

* :mod:`._schema` — the format: file names, the JSON tree, the dtype tables, ``State``;
* :mod:`._encode` — :func:`plan_state`: a state validated and laid out, no bytes copied;
* :mod:`._decode` — :func:`read_state`: the nesting back, tensors as views of the file;
* :mod:`._chunks` — the file in pieces: its header and a CRC32C per chunk of tensor data;
* :mod:`._tree` — the nesting as nodes: parsed, the parts of a step merged, selected;
* :mod:`._fetch` — regions of saved tensors, only the chunks they overlap, verified;
* :mod:`._partial` — :func:`read_partial`: ``keys=``, ``slices=``, whole sharded steps;
* :mod:`._load` — :func:`load_into`: the state copied into existing tensors, in place;
* :mod:`._torch` — what only torch tensors need, imported only when they are used.

numpy and torch are imported only when the state (or the reader) uses them.
"""

from ._decode import read_state
from ._encode import plan_state
from ._load import load_into
from ._partial import read_partial
from ._schema import STATE_NAME, Shard, State

__all__ = ["STATE_NAME", "Shard", "State", "load_into", "plan_state", "read_partial", "read_state"]
