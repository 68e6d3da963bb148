"""A place to keep checkpoints in tests: a local directory, an in-memory store, or a
bucket on the moto S3 server, with raw access to its objects (to inspect or damage).

The one definition of "a store" for every test module: take the ``site`` (local, S3)
or ``any_site`` (local, memory, S3) fixture of tests/conftest.py, or build a
:class:`Site` here. Nothing patches asynccp or obstore.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore
from obstore.store import MemoryStore, S3Store

__all__ = ["Raw", "Site", "edit_newest", "make_site"]


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

    def edit_inline(self, record: str, name: str, edit: Callable[[bytes], bytes]) -> None:
        """Change the bytes of file ``name`` held inside the record ``record`` (a tiny
        checkpoint's), keeping the record itself well-formed: its size and checksum
        stay what they were, so only a read can tell."""
        doc = json.loads(self.get(record))
        info = doc["files"][name]
        info["inline"] = base64.b64encode(edit(base64.b64decode(info["inline"]))).decode()
        self.put(record, json.dumps(doc).encode())

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
    """A place to keep checkpoints: what to pass to Checkpointer, and raw access to it.

    ``url`` and ``env`` are how another process reaches the same place (a path, or an
    ``s3://`` URL with the moto server's endpoint and credentials in the environment);
    None for memory, which no other process can see.
    """

    kind: str
    make_location: Callable[[], Any]  # a fresh location object each call (a fresh client)
    raw: Raw
    url: str | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def make_site(
    kind: str, tmp_path: Path, endpoint: str | None = None, bucket: str | None = None
) -> Site:
    """A fresh place of ``kind`` ("local", "memory" or "s3": the last needs the moto
    server's ``endpoint`` and a fresh ``bucket``)."""
    if kind == "local":
        root = tmp_path / "store"
        return Site("local", lambda: root, Raw(root=root), url=str(root))
    if kind == "memory":
        store = MemoryStore()  # one store object: a fresh one would be empty
        return Site("memory", lambda: store, Raw(store=store))
    if kind == "s3":
        from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, make_s3_store

        assert endpoint is not None and bucket is not None
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }
        return Site(
            "s3",
            lambda: make_s3_store(endpoint, bucket),
            Raw(store=make_s3_store(endpoint, bucket)),
            url=f"s3://{bucket}",
            env=env,
        )
    raise ValueError(f"unknown site kind {kind!r}")


def edit_newest(root: Path, name: str, edit: Callable[[bytes], bytes]) -> int:
    """Change file ``name`` of the newest checkpoint in the local directory ``root``
    where it is stored (its payload object, or inside a tiny checkpoint's record), as a
    bad disk or a bad copy would; return its step."""
    records = sorted(p.name for p in (root / "manifests").iterdir() if p.suffix == ".json")
    record = root / "manifests" / records[-1]
    doc = json.loads(record.read_bytes())
    if "inline" in doc["files"][name]:
        Raw(root=root).edit_inline(f"manifests/{record.name}", name, edit)
    else:
        payload = root / doc["data"] / name
        payload.write_bytes(edit(payload.read_bytes()))
    return int(doc["step"])
