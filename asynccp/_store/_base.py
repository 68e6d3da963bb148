"""The seam between asynccp and where bytes live: the :class:`Store` protocol.

Everything above this seam (the commit, the catalog, retention, leases, checkpoints)
speaks in keys relative to a location — ``data/…``, ``manifests/…`` (see
:mod:`asynccp._layout`) — and calls a store only through :func:`asynccp._store.call`,
which runs the call in a worker thread and turns its failures into asynccp's errors.
Below it, two implementations: :class:`~asynccp._store.ObjectStore` (obstore: S3, GCS,
Azure, memory, HTTP) and :class:`~asynccp._store.LocalDir` (a local directory, written
durably by asynccp itself). Another backend is another class with these methods.

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

    @property
    def local_root(self) -> Path | None:
        """The directory, for a store that is one (readers size their thread use by it:
        local reads are CPU-bound, remote ones latency-bound); None otherwise."""
        ...

    def open(self) -> None:
        """Prepare the location for writing (a local directory is created)."""
        ...

    def put(self, key: str, source: Source, *, move: bool = False, checked: bool = False) -> None:
        """Write one object, replacing any. ``move``: a local store may take the file.

        ``checked``: a reader trusts the object only once a manifest names it with its
        size and checksum (a payload object), so a durable local store may give it its
        final name before its bytes are on disk; :meth:`prepare_create` then makes it
        durable.
        """
        ...

    def create(self, key: str, data: bytes, *, prepared: Any = None) -> None:
        """Write ``data`` only if ``key`` does not exist; else raise ObjectExists.

        ``prepared``: what :meth:`prepare_create` returned for ``data``.
        """
        ...

    def prepare_create(self, folder: str, data: bytes | None, *, sync: Sequence[str]) -> Any:
        """Get a commit ready: make the ``sync`` objects (checked puts), their folders
        and ``data`` (the record's bytes, written to a temporary file in ``folder``;
        None: no record) durable, at once where the store can (a local directory: one
        journal commit). Returns what :meth:`create` links into place, or None (nothing
        to prepare: an object store's put is durable when it returns)."""
        ...

    def discard_prepared(self, prepared: Any) -> None:
        """Remove what :meth:`prepare_create` wrote when no :meth:`create` linked it."""
        ...

    def make_durable(self, keys: Sequence[str]) -> None:
        """Make the folders holding ``keys`` durable (local durable stores; else nothing)."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object; FileNotFoundError when there is none."""
        ...

    def get_buffer(self, key: str) -> Any:
        """The whole object as a buffer, without a copy where the store has one to give
        (obstore's ``Bytes``); FileNotFoundError when there is none."""
        ...

    def map(self, key: str) -> Any:
        """A private, writable memory map of the object (a local file: no copy, and
        writes to it never reach the file), or None when the store cannot map it."""
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
