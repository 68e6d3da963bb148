"""The seam between asynccp and where bytes live: the :class:`Store` protocol.

Everything above this seam (the commit, the catalog, retention, leases, checkpoints)
speaks in keys relative to a location — ``data/…``, ``manifests/…`` (see
:mod:`asynccp._layout`) — and calls a store only through :func:`asynccp._store.call`,
which runs the call in a worker thread and turns its failures into asynccp's errors.
Below it, two implementations: :class:`~asynccp._store.ObjectStore` (obstore: S3, GCS,
Azure, memory, HTTP) and :class:`~asynccp._store.LocalDir` (a local directory, written
durably by asynccp itself). Another backend is another class with these methods: the
protocol holds only what every store does. What only some stores can do (a local
directory's memory maps, its batched fsyncs) are the optional capabilities of
:mod:`asynccp._store._capabilities`, which the callers check for.

Every method is synchronous and blocking, on purpose: it runs in a worker thread (see
:mod:`asynccp._store._object` for why not obstore's asyncio API). The conventions:

- "not found" is :class:`FileNotFoundError` (the callers decide what a missing object
  means: a missing checkpoint, a corrupt one, or nothing at all);
- a create-if-absent write that finds the object raises
  :class:`~asynccp.errors.ObjectExists`;
- anything else is a failure of the store, which :func:`~asynccp._store.call` turns into
  a :class:`~asynccp.StoreError` naming the key and the location.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ObjectInfo", "Source", "Store"]

#: What a payload upload takes: bytes in memory, or a staged file.
Source = bytes | memoryview | Path


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says about one object (key relative to the location)."""

    key: str
    size: int
    last_modified: datetime


class Store(Protocol):
    """One location's objects: read, list, write, create-if-absent, delete.

    Keys are relative to the location (its prefix or directory is the store's business).
    """

    @property
    def description(self) -> str:
        """The location as people read it: a path, a URL, a store's repr."""
        ...

    def open(self) -> None:
        """Prepare the location for writing (a local directory is created)."""
        ...

    def put(self, key: str, source: Source, *, move: bool = False) -> None:
        """Write one object, replacing any; durable when it returns (on a durable
        store). ``move``: the store may take a staged file instead of copying it."""
        ...

    def create(self, key: str, data: bytes) -> None:
        """Write ``data`` only if ``key`` does not exist, else raise ObjectExists (the
        conditional put that commits a checkpoint); durable when it returns."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object; FileNotFoundError when there is none."""
        ...

    def get_buffer(self, key: str) -> Any:
        """The whole object as a buffer, without a copy where the store has one to give
        (obstore's ``Bytes``); FileNotFoundError when there is none."""
        ...

    def chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        """The object as a stream of buffers of about ``chunk_size`` bytes (a default
        when None); errors may surface at the first read."""
        ...

    def list_objects(self, folder: str) -> list[ObjectInfo]:
        """Every object under ``folder`` (a ``/``-terminated key prefix), any order."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete objects; missing ones are fine."""
        ...
