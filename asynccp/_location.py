"""Where checkpoints live: a URL, path or obstore store turned into one storage handle.

Every method here is synchronous and is meant to run in a worker thread
(``anyio.to_thread.run_sync``). That is deliberate: obstore's asyncio API can abort
the interpreter at exit (a tokio thread takes the GIL during shutdown, SIGABRT in
about 1 run of 3 under load) and does not work under trio at all, while its
synchronous API in worker threads exits cleanly and releases the GIL while it waits.

Local directories get their own writer: obstore's LocalStore never fsyncs, and a
checkpoint that vanishes in a power cut is no checkpoint. Payload files and the
manifest are written to a temporary name, fsynced (``durable=True``, the default),
renamed (or hard-linked, for the create-if-absent commit) into place, and their
folders fsynced, before a handle resolves. ``durable=False`` skips the fsyncs only.
Reads, lists and deletes of local directories still go through obstore.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, GenericError, PreconditionError
from obstore.store import (
    AzureStore,
    GCSStore,
    HTTPStore,
    LocalStore,
    MemoryStore,
    S3Store,
    from_url,
)

__all__ = ["STORE_TYPES", "Location", "ObjectInfo", "resolve"]

STORE_TYPES = (S3Store, GCSStore, AzureStore, LocalStore, MemoryStore, HTTPStore)
_REMOTE_SCHEMES = {"s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https"}
_COPY_CHUNK = 8 << 20

#: Multipart part size and parallel parts for large payload objects (remote stores).
DEFAULT_CHUNK_SIZE = 8 << 20
DEFAULT_PART_CONCURRENCY = 8
#: Attempts per store call on connection-level errors, on top of obstore's retry_config.
DEFAULT_IO_ATTEMPTS = 4
T = TypeVar("T")


class ObjectExists(Exception):
    """A create-if-absent put found the object already there."""


class Abandoned(Exception):
    """The work this call belonged to was abandoned: do not retry it."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says about one object (key relative to the location)."""

    key: str
    size: int
    last_modified: datetime


@dataclass
class Location:
    """One storage handle: a store, a key prefix inside it, and how to write to it."""

    description: str
    store: Any = None
    prefix: str = ""
    local_root: Path | None = None
    durable: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    part_concurrency: int = DEFAULT_PART_CONCURRENCY
    io_attempts: int = DEFAULT_IO_ATTEMPTS
    #: Set when pending work is abandoned: a worker thread still running a call then
    #: stops retrying, so it does not keep the process alive longer than one request.
    abandoned: threading.Event = field(default_factory=threading.Event, repr=False)

    def _retrying(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call obstore, retrying what it gave up on at the connection level.

        obstore retries 5xx answers and most dropped connections itself, but some
        transport errors (a pooled connection found dead: "connection was not ready")
        surface after few or no retries. They are ``GenericError``; "not found",
        "permission denied", "already exists" have their own types and are final.
        Payload puts are idempotent, and a repeated manifest create is recognised
        by its writer id, so repeating a call is safe.

        Up to ``io_attempts`` calls; before retry ``n`` it waits
        ``min(2, 0.05 * 2 ** (n - 1) + uniform(0, 0.05))`` seconds on ``abandoned`` (so
        abandoning the work also ends a backoff at once) and logs the retry at INFO on
        the ``asynccp`` logger, in asynccp's words. The loop is asynccp's own, not
        stamina's: stamina reports retries only through process-wide hooks
        (``stamina.instrumentation.set_on_retry_hooks``), whose default logs a bare
        ``stamina.retry_scheduled`` warning that reaches the stderr of a user who never
        set up logging; muting it for asynccp's calls alone would mean replacing those
        hooks (or filtering the ``stamina`` logger) for the user's own stamina calls
        too, and a user's ``stamina.set_active(False)`` or ``set_testing()`` would
        silently change these retries. INFO, not WARNING: a retried blip needs no
        action, and a call that still fails raises to the caller.
        """
        import logging  # here, not at the top: this method is the only user in the module
        import random

        for attempt in range(1, self.io_attempts + 1):
            try:
                return fn(*args, **kwargs)
            except GenericError as e:
                if attempt >= self.io_attempts:
                    raise
                delay = min(2.0, 0.05 * 2 ** (attempt - 1) + random.uniform(0, 0.05))
                lines = str(e).strip().splitlines()
                logging.getLogger("asynccp").info(
                    "%s: a store call failed (attempt %d of %d), retrying in %.2f s: %s",
                    self.description,
                    attempt,
                    self.io_attempts,
                    delay,
                    lines[0] if lines else type(e).__name__,
                )
                if self.abandoned.wait(delay):
                    raise Abandoned(
                        f"{self.description}: given up (the flush ran out of time)"
                    ) from e
        raise AssertionError("unreachable: io_attempts >= 1")  # pragma: no cover

    # -- setup --------------------------------------------------------------------

    def open(self) -> None:
        """Create the local directory and its store if needed (worker thread)."""
        if self.local_root is None:
            return
        if self.durable:
            # Create the two top folders once, durably: every later fsync is then of a
            # folder whose own entry is already on disk.
            for top in ("data", "manifests"):
                (self.local_root / top).mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.local_root)
            _fsync_dir(self.local_root.parent)
        else:
            self.local_root.mkdir(parents=True, exist_ok=True)
        if self.store is None:
            self.store = LocalStore(self.local_root)

    def _key(self, rel: str) -> str:
        return self.prefix + rel

    # -- writes -------------------------------------------------------------------

    def put(self, rel: str, source: bytes | memoryview | Path, *, move: bool = False) -> None:
        """Write one payload object (overwriting). ``move`` lets a local write take ``source``."""
        if self.local_root is not None:
            self._local_put(rel, source, move=move)
            return
        self._retrying(
            obstore.put,
            self.store,
            self._key(rel),
            source,
            chunk_size=self.chunk_size,
            max_concurrency=self.part_concurrency,
        )

    def create(self, rel: str, data: bytes) -> None:
        """Write ``data`` only if ``rel`` does not exist; raise ObjectExists otherwise."""
        if self.local_root is not None:
            self._local_put(rel, data, create=True)
            return
        try:
            self._retrying(obstore.put, self.store, self._key(rel), data, mode="create")
        except (AlreadyExistsError, PreconditionError) as e:
            raise ObjectExists(rel) from e

    def sync_folders(self, rels: list[str]) -> None:
        """Make the folders holding ``rels`` durable (local durable stores only)."""
        if self.local_root is None or not self.durable:
            return
        folders: set[Path] = set()
        for rel in rels:
            folder = (self.local_root / rel).parent
            while folder != self.local_root and folder not in folders:
                folders.add(folder)
                folder = folder.parent
        # Deepest first, up to and including ``data/``; the root's own entries (data/,
        # manifests/) were made durable once, by open().
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(folder)

    def _local_put(
        self,
        rel: str,
        source: bytes | memoryview | Path,
        *,
        create: bool = False,
        move: bool = False,
    ) -> None:
        assert self.local_root is not None
        sync = self.durable
        dest = self.local_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.asynccp-tmp")
        try:
            if isinstance(source, Path):
                if move and _try_rename(source, tmp):
                    if sync:
                        _fsync_file(tmp)
                else:
                    _copy_file(source, tmp, sync=sync)
            else:
                _write_file(tmp, source, sync=sync)
            if create:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    raise ObjectExists(rel) from None
                finally:
                    tmp.unlink()
                if sync:
                    _fsync_dir(dest.parent)
            else:
                os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- reads --------------------------------------------------------------------

    def get(self, rel: str) -> bytes:
        """The whole object as bytes.

        Local files are read straight into a ``bytes`` object: one copy, where going
        through obstore costs two (into its buffer, then into ``bytes``).
        """
        if self.local_root is not None:
            with open(self.local_root / rel, "rb") as f:
                return f.read()
        result = self._retrying(obstore.get, self.store, self._key(rel))
        return result.bytes().to_bytes()  # type: ignore[no-any-return]

    def chunks(self, rel: str) -> Iterator[Any]:
        """The object as a stream of buffers (for large objects)."""
        result = self._retrying(obstore.get, self.store, self._key(rel))
        return iter(result.stream(min_chunk_size=_COPY_CHUNK))

    def list(self, rel_prefix: str) -> list[ObjectInfo]:
        """Every object under ``rel_prefix`` (keys relative to the location)."""
        cut = len(self.prefix)
        out: list[ObjectInfo] = []

        def collect() -> list[ObjectInfo]:
            out.clear()
            for batch in obstore.list(self.store, prefix=self._key(rel_prefix)):
                for meta in batch:
                    key, size = meta["path"][cut:], int(meta["size"])
                    out.append(ObjectInfo(key, size, meta["last_modified"]))
            return out

        return self._retrying(collect)  # type: ignore[no-any-return]

    def delete(self, rels: list[str]) -> None:
        """Delete objects; missing ones are fine."""
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self._retrying(obstore.delete, self.store, self._key(rel))
        if self.local_root is not None:
            _prune_empty_dirs(self.local_root, rels)


def resolve(
    location: str | os.PathLike[str] | Any,
    *,
    prefix: str | None = None,
    durable: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    part_concurrency: int = DEFAULT_PART_CONCURRENCY,
    io_attempts: int = DEFAULT_IO_ATTEMPTS,
    **store_options: Any,
) -> Location:
    """Turn what the user passed as a location into a :class:`Location` (no I/O)."""
    sizes = (("chunk_size", chunk_size), ("part_concurrency", part_concurrency))
    for name, value in (*sizes, ("io_attempts", io_attempts)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if chunk_size < 5 << 20:
        raise ValueError("chunk_size must be at least 5 MiB (the S3 minimum part size)")
    common = {
        "durable": durable,
        "chunk_size": chunk_size,
        "part_concurrency": part_concurrency,
        "io_attempts": io_attempts,
    }
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if isinstance(location, STORE_TYPES):
        if store_options:
            raise TypeError(f"store options {sorted(store_options)} only apply to URLs")
        root = None
        if isinstance(location, LocalStore):
            root = Path(location.prefix) if location.prefix else None
        loc = Location(repr(location), store=location, **common)  # type: ignore[arg-type]
        if root is not None:
            loc.local_root = root / (prefix or "")
            loc.store = None if prefix else location
            return loc
        loc.prefix = _clean_prefix(prefix)
        return loc
    if prefix is not None:
        raise TypeError("prefix= only applies when the location is an obstore store object")
    if isinstance(location, os.PathLike):
        location = os.fspath(location)
    if not isinstance(location, str):
        raise TypeError(
            "location must be a path, a URL (file://, memory://, s3://, gs://, az://) "
            f"or an obstore store object, got {type(location).__name__}"
        )
    if not location:
        raise ValueError("location must not be empty")
    if "://" not in location:
        return _local(location, store_options, common)
    parsed = urlparse(location)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URLs must be absolute local paths, got {location!r}")
        return _local(unquote(parsed.path), store_options, common)
    if scheme == "memory":
        if store_options:
            raise TypeError(f"store options {sorted(store_options)} do not apply to memory://")
        path = (parsed.netloc + parsed.path).strip("/")
        return Location(location, store=MemoryStore(), prefix=_clean_prefix(path), **common)  # type: ignore[arg-type]
    if scheme in _REMOTE_SCHEMES:
        return Location(location, store=_from_url(location, store_options), **common)  # type: ignore[arg-type]
    raise ValueError(f"unsupported location scheme {scheme!r} in {location!r}")


#: obstore's ClientConfig keys: they belong in ``client_options={...}``; passed as plain
#: keyword arguments, some of them make obstore panic instead of raising.
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "default_headers",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "root_certificate",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)


def _from_url(url: str, options: dict[str, Any]) -> Any:
    """``obstore.store.from_url`` with bad options reported as errors, not panics."""
    misplaced = sorted(CLIENT_KEYS & options.keys())
    if misplaced:
        raise TypeError(
            f"{misplaced} are HTTP client options: pass them as "
            f"client_options={{{', '.join(repr(k) + ': ...' for k in misplaced)}}}"
        )
    try:
        return from_url(url, **options)
    except Exception as e:
        raise ValueError(f"cannot open {url!r}: {e}".splitlines()[0]) from e
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if type(e).__name__ != "PanicException":
            raise
        raise ValueError(f"cannot open {url!r} with options {sorted(options)}: {e}") from None


def _local(path: str, store_options: dict[str, Any], common: dict[str, Any]) -> Location:
    if store_options:
        raise TypeError(f"store options {sorted(store_options)} do not apply to local paths")
    root = Path(os.path.abspath(os.path.expanduser(path)))
    return Location(str(root), local_root=root, **common)


def _clean_prefix(prefix: str | None) -> str:
    prefix = (prefix or "").strip("/")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return f"{prefix}/" if prefix else ""


def _write_file(path: Path, data: bytes | memoryview, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(src: Path, dest: Path, *, sync: bool) -> None:
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)
        fout.flush()
        if sync:
            os.fsync(fout.fileno())


def _try_rename(src: Path, dest: Path) -> bool:
    try:
        os.rename(src, dest)
        return True
    except OSError as e:
        if e.errno == errno.EXDEV:
            return False
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (POSIX; Windows has no directory fsync)."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune_empty_dirs(root: Path, rels: list[str]) -> None:
    """Remove folders left empty by deletes (LocalStore leaves them behind)."""
    folders = {(root / rel).parent for rel in rels}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
