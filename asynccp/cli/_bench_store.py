"""The store ``asynccp bench`` runs on: a private folder (or prefix), and raw access.

asynccp writes there through a :class:`~asynccp.Checkpointer`; the baselines write the
same objects with raw obstore calls, as durable as asynccp's commits (local files and
their folders fsynced). Everything a run wrote is removed at its end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import obstore
from obstore.store import LocalStore

from asynccp import Checkpointer, Limits, StoreOptions
from asynccp._store import ObjectStore, local_root, resolve

from ._bench_options import BenchError, Options
from ._format import one_line

__all__ = ["Target"]


# The sync-writer baseline makes its writes durable the way any careful writer does
# (fsync the file, then its folders). This repeats, on purpose, what the core's durable
# local writer does: the baseline must not depend on how the code it is compared with
# happens to be written, nor reach into its private names.


def _fsync(path: Path, *, folder: bool = False) -> None:
    """Make a file durable, or a folder's entries (POSIX; Windows has no folder fsync)."""
    if folder and not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Target:
    """The location under test: a private folder (or prefix) removed at the end.

    asynccp and the baselines write to sibling sub-folders of it, on the same store.
    """

    def __init__(self, opts: Options) -> None:
        self.tmp: Path | None = None
        url = opts.url
        if url is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="asynccp-bench-"))
            url = str(self.tmp)
        self.durable = opts.durable
        try:
            base = resolve(url, StoreOptions(obstore=opts.store_options))
        except (TypeError, ValueError) as e:
            raise BenchError(f"bad location {url!r}: {e}") from e
        except Exception as e:
            raise BenchError(f"cannot use location {url!r}: {one_line(e, limit=300)}") from e
        self.description = base.description
        run_id = f"asynccp-bench-{secrets.token_hex(4)}"
        self.root: Path | None = None
        self.prefix = ""
        root = local_root(base)
        if root is not None:
            self.root = root if self.tmp else root / run_id
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BenchError(f"cannot create {self.root}: {e.strerror or e}") from e
            self.store: Any = LocalStore(self.root)
            self.kind = "local directory" + ("" if self.durable else " (durable=False)")
        else:
            assert isinstance(base, ObjectStore)
            self.store = base.store
            self.prefix = f"{base.prefix}{run_id}/"
            self.kind = type(base.store).__name__
        self.url = url
        self.run_prefix = f"{run_id}/"

    def probe(self) -> None:
        """Fail early, in one line, when the store cannot be listed and written."""
        try:
            next(iter(obstore.list(self.store, prefix=self.prefix + "probe/")), None)
            self.put("probe/x", b"x")
            self.remove("probe")
        except Exception as e:
            raise BenchError(f"cannot reach {self.description}: {one_line(e, limit=300)}") from e

    def checkpointer(self, sub: str, limits: Limits, keep: int | None = None) -> Checkpointer:
        """An asynccp Checkpointer on sub-folder ``sub``, with the run's durability."""
        if self.root is not None:
            store = StoreOptions(durable=self.durable)
            return Checkpointer(self.root / sub, limits=limits, keep=keep, store=store)
        store = StoreOptions(prefix=self.prefix + sub)
        return Checkpointer(self.store, limits=limits, keep=keep, store=store)

    def key(self, rel: str) -> str:
        """The store key of ``rel`` (a path inside the target)."""
        return self.prefix + rel

    def put(self, rel: str, src: Any) -> None:
        """One raw obstore put; durable on local directories (file and folders fsynced)."""
        obstore.put(self.store, self.key(rel), src)
        if self.root is not None and self.durable:
            _fsync(self.root / rel)
            self.sync_dirs([rel])

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        """Raw puts of several objects, folders fsynced once at the end (local)."""
        for rel, src in items:
            obstore.put(self.store, self.key(rel), src)
            if self.root is not None and self.durable:
                _fsync(self.root / rel)
        self.sync_dirs([rel for rel, _ in items])

    def sync_dirs(self, rels: list[str]) -> None:
        """fsync the folders holding ``rels``, deepest first, up to the root (durable local)."""
        if self.root is None or not self.durable:
            return
        dirs = set()
        for rel in rels:
            d = (self.root / rel).parent
            while d != self.root and d not in dirs:
                dirs.add(d)
                d = d.parent
        for d in sorted(dirs, key=lambda p: -len(p.parts)):
            _fsync(d, folder=True)
        _fsync(self.root, folder=True)

    def get(self, rel: str) -> Any:
        """One raw obstore get, read whole."""
        return obstore.get(self.store, self.key(rel)).bytes()

    def remove(self, sub: str) -> None:
        """Delete sub-folder ``sub`` (between rounds, so the store does not fill up)."""
        if self.root is not None:
            shutil.rmtree(self.root / sub, ignore_errors=True)
        else:
            self._delete_prefix(self.key(sub + "/"))

    def _delete_prefix(self, prefix: str) -> None:
        for batch in obstore.list(self.store, prefix=prefix, chunk_size=1000):
            paths = [m["path"] for m in batch]
            if paths:
                obstore.delete(self.store, paths)

    def close(self) -> None:
        """Delete everything this run wrote (and the temporary folder, if it made one)."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):
                self._delete_prefix(self.prefix)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
