"""A place to keep checkpoints in tests: a local directory, an in-memory store, or a
bucket on the moto S3 server, with raw access to its objects (to inspect or damage).

Every test module that needs "a store" takes the ``site`` fixture (tests/conftest.py)
or builds a :class:`Site` here; nothing patches asynccp or obstore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
from obstore.store import MemoryStore, S3Store

__all__ = ["Raw", "Site", "make_site"]


class Raw:
    """Direct access to the objects of a location, bypassing asynccp (to inspect or damage).

    A local directory is edited on disk; S3 and memory through obstore's sync API on the
    same store.
    """

    def __init__(
        self, *, root: Path | None = None, store: S3Store | MemoryStore | None = None
    ) -> None:
        assert (root is None) != (store is None)
        self.root = root
        self.store = store

    def get(self, key: str) -> bytes:
        if self.root is not None:
            return (self.root / key).read_bytes()
        return bytes(obstore.get(self.store, key).bytes())

    def put(self, key: str, data: bytes) -> None:
        if self.root is not None:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:  # in place, like a disk or a bucket editor would
                f.write(data)
            return
        obstore.put(self.store, key, data)

    def delete(self, key: str) -> None:
        if self.root is not None:
            (self.root / key).unlink()
            return
        obstore.delete(self.store, key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (files only, temporary files included)."""
        if self.root is not None:
            base = self.root / prefix if prefix else self.root
            if not base.exists():
                return []
            return sorted(
                p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file()
            )
        return sorted(m["path"] for batch in obstore.list(self.store, prefix=prefix) for m in batch)


@dataclass
class Site:
    """A place to keep checkpoints: what to pass to Checkpointer, and raw access to it."""

    kind: str
    make_location: Callable[[], Any]  # a fresh location object each call (a fresh client)
    raw: Raw


def make_site(
    kind: str, tmp_path: Path, endpoint: str | None = None, bucket: str | None = None
) -> Site:
    """A fresh place of ``kind`` ("local", "memory" or "s3": the last needs the moto
    server's ``endpoint`` and a fresh ``bucket``)."""
    if kind == "local":
        root = tmp_path / "store"
        return Site("local", lambda: root, Raw(root=root))
    if kind == "memory":
        store = MemoryStore()  # one store object: a fresh one would be empty
        return Site("memory", lambda: store, Raw(store=store))
    if kind == "s3":
        from _moto import make_s3_store

        assert endpoint is not None and bucket is not None
        return Site(
            "s3",
            lambda: make_s3_store(endpoint, bucket),
            Raw(store=make_s3_store(endpoint, bucket)),
        )
    raise ValueError(f"unknown site kind {kind!r}")
