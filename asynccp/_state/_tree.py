"""A state's nesting as nodes: parsed from each part's JSON, merged, selected by path.

A partial read (``keys=``, ``slices=``), a read of a whole sharded step and
:meth:`~asynccp.Checkpoint.load_into` work on the nesting before any tensor byte is
fetched. This module turns each part's JSON tree (:mod:`._schema`) into nodes —
:class:`Map`, :class:`Seq`, :class:`Value`, :class:`Ref` (one tensor or ``bytes`` entry
of one part's file) and :class:`Sharded` (a global tensor, as the blocks the parts saved)
— and merges the parts of a step into one tree:

- mappings are merged key by key (the union, in the order first seen), lists and
  tuples item by item (they must be as long in every part);
- a :class:`~asynccp.Shard` path collects every part's blocks (the parts must agree on
  the global shape);
- any other value is taken from the first part that holds it (replicated state: each
  process saved the same; a process's own is read from its part, ``ckpt.shard(r)``).

Paths name values the way the safetensors file names tensors: the keys from the root,
joined by ``/`` (``~`` and ``/`` inside a key written ``~0`` and ``~1``), an ``int``
key or a list index as its digits: ``"model/w"``, ``"optim/state/0/exp_avg"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard, Union

from ..errors import CheckpointNotFoundError
from ._schema import MAX_DEPTH

__all__ = [
    "Block",
    "Map",
    "Node",
    "Ref",
    "Selection",
    "Seq",
    "Sharded",
    "Value",
    "check_keys",
    "join",
    "merge",
    "parse",
    "segment",
    "select",
    "walk_leaves",
]


@dataclass
class Value:
    """A scalar of the JSON tree (NaN and the infinities included)."""

    value: Any


@dataclass
class Ref:
    """Entry ``name`` of part ``part``'s tensor file: a tensor, or a ``bytes`` value."""

    part: int
    name: str
    is_bytes: bool = False


@dataclass(frozen=True)
class Block:
    """One saved block of a global tensor: entry ``name`` of part ``part``'s file, at
    ``offset`` in the global tensor."""

    part: int
    name: str
    offset: tuple[int, ...]


@dataclass
class Sharded:
    """A global tensor of ``shape``, as the blocks the parts saved of it."""

    shape: tuple[int, ...]
    blocks: list[Block]


@dataclass
class Map:
    """A mapping: ``dict`` (string keys) or ``items`` (some ``int`` keys)."""

    kind: str
    entries: dict[Any, Node] = field(default_factory=dict)


@dataclass
class Seq:
    """A ``list`` or a ``tuple``."""

    kind: str
    items: list[Node]


Node = Union[Value, Ref, Sharded, Map, Seq]  # noqa: UP007 - Python 3.10


def segment(key: str | int) -> str:
    """One key as a segment of a path (``~`` and ``/`` escaped, as in a JSON pointer)."""
    return str(key).replace("~", "~0").replace("/", "~1")


def join(path: str, key: str | int) -> str:
    return f"{path}/{segment(key)}" if path else segment(key)


def parse(tree: Any, part: int, bad: Callable[[str], Exception], depth: int = 0) -> Node:
    """One part's JSON tree as nodes, every node checked (the file is untrusted)."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return Value(tree)
    if depth > MAX_DEPTH + 1:
        raise bad("is nested too deep")
    if not isinstance(tree, dict) or len(tree) != 1:
        raise bad(f"has a node that is not one of asynccp's: {str(tree)[:80]}")
    ((kind, body),) = tree.items()
    if kind == "dict" and isinstance(body, dict):
        return Map("dict", {k: parse(v, part, bad, depth + 1) for k, v in body.items()})
    if kind == "items" and isinstance(body, list):
        out = Map("items")
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2) or not isinstance(
                pair[0], (str, int)
            ):
                raise bad(f"has a bad item {str(pair)[:80]}")
            out.entries[pair[0]] = parse(pair[1], part, bad, depth + 1)
        return out
    if kind in ("list", "tuple") and isinstance(body, list):
        return Seq(kind, [parse(v, part, bad, depth + 1) for v in body])
    if kind in ("tensor", "bytes") and isinstance(body, str):
        return Ref(part, body, is_bytes=kind == "bytes")
    if kind == "float" and body in ("nan", "inf", "-inf"):
        return Value(float(body))
    if kind == "shard" and isinstance(body, dict):
        name, offset, shape = body.get("tensor"), body.get("offset"), body.get("shape")
        if isinstance(name, str) and _dims(offset) and _dims(shape) and len(offset) == len(shape):
            return Sharded(tuple(shape), [Block(part, name, tuple(offset))])
        raise bad(f"has a bad shard node {str(body)[:80]}")
    raise bad(f"has a node that is not one of asynccp's: {str(tree)[:80]}")


def _dims(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    )


def merge(a: Node, b: Node, path: str, bad: Callable[[str], Exception]) -> Node:
    """Part ``b``'s tree merged into ``a`` (the parts before it; see the module doc)."""
    where = path or "the root"
    if isinstance(a, Sharded) or isinstance(b, Sharded):
        if not (isinstance(a, Sharded) and isinstance(b, Sharded)):
            raise bad(f"parts disagree at {where}: a Shard in one, another value in another")
        if a.shape != b.shape:
            raise bad(f"parts disagree on the global shape of {where}: {a.shape} and {b.shape}")
        return Sharded(a.shape, a.blocks + b.blocks)
    if isinstance(a, Map) and isinstance(b, Map):
        entries = dict(a.entries)
        for key, node in b.entries.items():
            mine = entries.get(key)
            entries[key] = node if mine is None else merge(mine, node, join(path, key), bad)
        return Map("items" if "items" in (a.kind, b.kind) else "dict", entries)
    if isinstance(a, Seq) and isinstance(b, Seq):
        if a.kind != b.kind or len(a.items) != len(b.items):
            raise bad(
                f"parts disagree at {where}: a {a.kind} of {len(a.items)} and a "
                f"{b.kind} of {len(b.items)}"
            )
        return Seq(
            a.kind,
            [
                merge(x, y, join(path, i), bad)
                for i, (x, y) in enumerate(zip(a.items, b.items, strict=True))
            ],
        )
    return a  # replicated: the first part's


def walk_leaves(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    """Every leaf (Value, Ref, Sharded) with its path, depth first, in order."""
    if isinstance(node, Map):
        for key, sub in node.entries.items():
            yield from walk_leaves(sub, join(path, key))
    elif isinstance(node, Seq):
        for i, sub in enumerate(node.items):
            yield from walk_leaves(sub, join(path, i))
    else:
        yield path, node


def check_keys(keys: object) -> list[str] | None:
    """``keys=`` of a read: None, or an iterable of non-empty path strings."""
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise TypeError(
            f"keys must be a list of paths such as ['model/w'], got {type(keys).__name__}"
        )
    out = []
    for key in keys:
        if not isinstance(key, str) or not key.strip("/"):
            raise TypeError(f"keys: each path must be a non-empty str, got {key!r}")
        out.append(key.strip("/"))
    return out


@dataclass
class Selection:
    """Which paths of a tree a read asks for: everything (``keys`` None), or the values
    at or under each key; ``found`` collects the keys that named something."""

    keys: list[str] | None
    found: set[str] = field(default_factory=set)

    def wanted(self, path: str) -> str:
        """``"all"`` (this path is asked for), ``"some"`` (a path under it is) or ``""``."""
        if self.keys is None:
            return "all"
        verdict = ""
        for key in self.keys:
            if path == key or path.startswith(key + "/"):
                self.found.add(key)
                return "all"
            if not path or key.startswith(path + "/"):
                verdict = "some"
        return verdict

    def check_found(self, step: int, tree: Node) -> None:
        missing = [k for k in self.keys or () if k not in self.found]
        if missing:
            paths = [p for p, _ in walk_leaves(tree)]
            raise CheckpointNotFoundError(
                f"checkpoint {step}: the state has no value at {missing[0]!r}; its paths "
                f"include {paths[:8]}"
            )


def select(node: Node, selection: Selection, path: str = "", full: bool = False) -> Node | None:
    """The part of ``node`` the selection asks for (None: nothing). In a list or tuple
    the items not asked for become ``Value(None)``: the positions are kept."""
    verdict = "all" if full else selection.wanted(path)
    if verdict == "all":
        if not full and selection.keys is not None:
            _mark_under(node, path, selection)
        return node
    if not verdict:
        return None
    if isinstance(node, Map):
        entries = {}
        for key, sub in node.entries.items():
            got = select(sub, selection, join(path, key))
            if got is not None:
                entries[key] = got
        return Map(node.kind, entries) if entries else None
    if isinstance(node, Seq):
        items = [select(sub, selection, join(path, i)) for i, sub in enumerate(node.items)]
        if all(i is None for i in items):
            return None
        return Seq(node.kind, [Value(None) if i is None else i for i in items])
    return None


def _mark_under(node: Node, path: str, selection: Selection) -> None:
    """Keys that name a path under one already asked for count as found too."""
    for key in selection.keys or ():
        if (
            key.startswith(path + "/")
            and key not in selection.found
            and any(p == key or p.startswith(key + "/") for p, _ in walk_leaves(node, path))
        ):
            selection.found.add(key)
