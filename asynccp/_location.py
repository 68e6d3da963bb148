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

Reads, listings and deletes of local directories are asynccp's own too, with plain
file calls: obstore's LocalStore refuses to read names such as ``shard#1`` (a ``#``
and digits end its own temporary files) or ``weights:`` (taken for a drive letter),
and drops them from listings, and one file whose name is not UTF-8 fails its whole
listing. Every name asynccp accepts round-trips here, and a listing skips (with a
warning) what it cannot name. Remote stores and memory go through obstore.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import logging
import mmap
import os
import secrets
import shutil
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
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

from . import _memory

__all__ = ["STORE_TYPES", "Location", "ObjectInfo", "resolve"]

log = logging.getLogger("asynccp")
STORE_TYPES = (S3Store, GCSStore, AzureStore, LocalStore, MemoryStore, HTTPStore)
_REMOTE_SCHEMES = {"s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https"}
_COPY_CHUNK = 8 << 20
#: The end of every temporary file name a local write uses (the orphan collector's mark).
TMP_SUFFIX = ".asynccp-tmp"

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
    #: Local entries a listing skipped and warned about (each is warned about once).
    _skipped: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

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

    def put(
        self,
        rel: str,
        source: bytes | memoryview | Path,
        *,
        move: bool = False,
        checked: bool = False,
    ) -> None:
        """Write one object (overwriting). ``move`` lets a local write take ``source``.

        ``checked`` says a reader trusts the object only once a manifest names it with
        its size and checksum (a payload object). A durable local write then gives it
        its final name at once and only starts writing its bytes to disk: the
        :meth:`prepare_create` that precedes the manifest makes it durable, together
        with the manifest's own bytes, in one journal commit.
        """
        if self.local_root is not None:
            self._local_put(rel, source, move=move, checked=checked)
            return
        self._retrying(
            obstore.put,
            self.store,
            self._key(rel),
            source,
            chunk_size=self.chunk_size,
            max_concurrency=self.part_concurrency,
        )

    def create(self, rel: str, data: bytes, *, prepared: Path | None = None) -> None:
        """Write ``data`` only if ``rel`` does not exist; raise ObjectExists otherwise.

        ``prepared`` is what :meth:`prepare_create` wrote for ``data`` (local durable
        stores): the commit is then one link and one fsync of the folder.
        """
        if self.local_root is not None:
            if prepared is not None:
                self._link(prepared, rel)
                return
            self._local_put(rel, data, create=True)
            return
        try:
            self._retrying(obstore.put, self.store, self._key(rel), data, mode="create")
        except (AlreadyExistsError, PreconditionError) as e:
            raise ObjectExists(rel) from e

    def prepare_create(self, folder: str, data: bytes, *, sync: list[str]) -> Path | None:
        """Get a commit ready: write ``data`` to a temporary file in ``folder``, and make
        it, the objects ``sync`` (written by ``put(..., checked=True)``) and their
        folders durable, in one journal commit (local durable stores; elsewhere this
        does nothing and returns None).

        :meth:`create` then links the file into place: the commit itself is one link
        and one fsync of the folder. ``create`` removes the file when it links it; if
        the commit does not happen, :meth:`discard_prepared` removes it. ``folder`` is
        the checkpoint's own payload folder: a file left by a killed writer goes with
        that folder (collected with it, or deleted with the checkpoint by retention).
        """
        if self.local_root is None or not self.durable:
            return None
        parent = self.local_root / folder
        parent.mkdir(parents=True, exist_ok=True)
        name = f".manifest.{secrets.token_hex(8)}{TMP_SUFFIX}"
        tmp = parent / name
        try:
            _write_file(tmp, data, sync=False)
            _sync_files([self.local_root / rel for rel in sync] + [tmp])
            self.sync_folders([*sync, f"{folder}/{name}"])
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def discard_prepared(self, prepared: Path | None) -> None:
        """Remove what :meth:`prepare_create` wrote, when no :meth:`create` linked it."""
        if prepared is not None:
            prepared.unlink(missing_ok=True)

    def _link(self, prepared: Path, rel: str) -> None:
        """Create ``rel`` as a hard link to the prepared file, make it durable, and
        remove the prepared name."""
        assert self.local_root is not None
        dest = self.local_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(prepared, dest)
        except FileExistsError:
            raise ObjectExists(rel) from None
        prepared.unlink()
        _fsync_dir(dest.parent)

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
        checked: bool = False,
    ) -> None:
        assert self.local_root is not None
        sync = self.durable
        early = sync and checked and not create  # the final name first, then one fsync
        dest = self.local_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = f".{dest.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        if len(os.fsencode(tmp_name)) > 255:  # a long name: its temporary one must fit too
            tmp_name = f".{secrets.token_hex(8)}{TMP_SUFFIX}"
        tmp = dest.with_name(tmp_name)
        try:
            if isinstance(source, Path):
                if move and _try_rename(source, tmp):
                    if sync and not early:
                        _fsync_file(tmp)
                else:
                    _copy_file(source, tmp, sync=sync and not early)
            else:
                _write_file(tmp, source, sync=sync and not early, start_writeback=early)
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
                # A checked object is renamed before it is durable (prepare_create makes
                # it so): one journal commit then covers its bytes, its name and its
                # folder. A crash in between can leave a short file under the final
                # name: harmless, nothing trusts it until a manifest names it.
                os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- reads --------------------------------------------------------------------

    def get(self, rel: str) -> bytes:
        """The whole object as bytes; FileNotFoundError when there is none.

        A local folder where the object should be is no object either (as on an
        object store, where a "folder" is only a prefix of other keys).

        Local files are read straight into a ``bytes`` object: one copy, where going
        through obstore costs two (into its buffer, then into ``bytes``).
        """
        return _memory.to_bytes(self.get_buffer(rel))

    def get_buffer(self, rel: str) -> Any:
        """The whole object, without a copy where that can be had: obstore's ``Bytes``
        (a read-only buffer over what it received) for remote and memory stores, the
        file's ``bytes`` for local ones. FileNotFoundError when there is none.
        """
        if self.local_root is not None:
            with _open_object(self.local_root / rel) as f:
                return f.read()
        result = self._retrying(obstore.get, self.store, self._key(rel))
        return result.bytes()

    def map(self, rel: str) -> mmap.mmap | bytearray:
        """A local object as a private, writable memory map: no copy is made, and a
        write to the map changes only this process's copy of that page, never the file
        (local stores only; an empty file gives an empty ``bytearray``).

        The map stays valid when the file is deleted (retention): its pages live as
        long as the map. A file truncated in place while mapped would fault on access;
        asynccp never truncates a committed object.
        """
        if self.local_root is None:
            raise ValueError(f"{self.description} is not a local directory")
        with _open_object(self.local_root / rel) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return bytearray()
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)

    def chunks(self, rel: str, chunk_size: int | None = None) -> Iterator[Any]:
        """The object as a stream of buffers (for large objects), of about
        ``chunk_size`` bytes each (8 MiB by default).

        Errors may surface when the stream is first read rather than at this call.
        """
        if self.local_root is not None:
            return _file_chunks(self.local_root / rel)
        result = self._retrying(obstore.get, self.store, self._key(rel))
        return iter(result.stream(min_chunk_size=chunk_size or _COPY_CHUNK))

    def list(self, rel_prefix: str) -> list[ObjectInfo]:
        """Every object under the folder ``rel_prefix`` (keys relative to the location).

        A local directory is walked here, not by obstore: see the module docstring.
        """
        if self.local_root is not None:
            return self._list_local(rel_prefix)
        cut = len(self.prefix)
        out: builtins.list[ObjectInfo] = []

        def collect() -> builtins.list[ObjectInfo]:
            out.clear()
            for batch in obstore.list(self.store, prefix=self._key(rel_prefix)):
                for meta in batch:
                    key, size = meta["path"][cut:], int(meta["size"])
                    out.append(ObjectInfo(key, size, meta["last_modified"]))
            return out

        return self._retrying(collect)  # type: ignore[no-any-return]

    def _list_local(self, rel_prefix: str) -> builtins.list[ObjectInfo]:
        """Every regular file under ``local_root/rel_prefix``, as obstore would list it.

        Links are followed (a dangling one, or a loop, is skipped); sizes and
        modification times are the target's. An entry whose name is not UTF-8 cannot
        be a key: it is skipped, with a warning (once per location and entry), instead
        of failing the whole listing. Entries that vanish during the walk (another
        process deleting) are skipped; other errors, such as a folder that may not be
        read, propagate.
        """
        assert self.local_root is not None
        folder = rel_prefix.strip("/")
        top = os.path.join(self.local_root, folder) if folder else os.fspath(self.local_root)
        try:
            st = os.stat(top)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if not stat.S_ISDIR(st.st_mode):
            return []
        out: builtins.list[ObjectInfo] = []
        # (path, its key prefix, the folders above it: a link back to one is a loop)
        stack = [(top, f"{folder}/" if folder else "", frozenset({(st.st_dev, st.st_ino)}))]
        while stack:
            path, keys, above = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted since we saw it
            for entry in entries:
                key = keys + entry.name
                if _undecodable(entry.name):
                    self._skip(key, "its name is not UTF-8, so it cannot be a checkpoint object")
                    continue
                try:
                    st = entry.stat()  # follows a link, as obstore's listing does
                except (FileNotFoundError, NotADirectoryError):
                    continue  # a dangling link, or deleted since the folder was read
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
                    continue  # a link that points to itself, through others
                if stat.S_ISDIR(st.st_mode):
                    here = (st.st_dev, st.st_ino)
                    if here in above:
                        self._skip(key, "it is a link to a folder above it (a loop)")
                        continue
                    stack.append((entry.path, key + "/", above | {here}))
                elif stat.S_ISREG(st.st_mode):
                    out.append(ObjectInfo(key, st.st_size, _utc(st.st_mtime_ns)))
        return out

    def _skip(self, key: str, why: str) -> None:
        """Warn (once) that a local listing skipped ``key``."""
        if key not in self._skipped:
            self._skipped.add(key)
            shown = os.fsencode(key) if _undecodable(key) else key
            log.warning("asynccp: %s: skipping %r: %s", self.description, shown, why)

    def delete(self, rels: builtins.list[str]) -> None:
        """Delete objects; missing ones are fine."""
        if self.local_root is not None:
            for rel in rels:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(self.local_root / rel)
            _prune_empty_dirs(self.local_root, rels)
            return
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self._retrying(obstore.delete, self.store, self._key(rel))


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


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _utc(ns: int) -> datetime:
    """A file time in nanoseconds as an aware UTC datetime (microseconds, as obstore's)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _undecodable(name: str) -> bool:
    """Whether ``name`` came from bytes that are not UTF-8 (it holds escaped surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _open_object(path: Path) -> BinaryIO:
    """Open a local object for reading: FileNotFoundError (chained to the cause) when
    ``path`` is a folder, or below a file — no object, as a store would say."""
    try:
        return open(path, "rb")
    except (IsADirectoryError, NotADirectoryError) as e:
        raise FileNotFoundError(errno.ENOENT, f"no object: {e.strerror}", str(path)) from e


def _file_chunks(path: Path) -> Iterator[bytes]:
    """A local file as a stream of chunks (the file is opened at the first read)."""
    with _open_object(path) as f:
        while chunk := f.read(_COPY_CHUNK):
            yield chunk


def _write_file(
    path: Path, data: bytes | memoryview, *, sync: bool, start_writeback: bool = False
) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
        elif start_writeback:
            _writeback(fd, wait=False)
    finally:
        os.close(fd)


# sync_file_range(2) (Linux): start writing a file's dirty pages, or wait until they are.
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4
_sync_file_range: Any = None


def _writeback(fd: int, *, wait: bool) -> bool:
    """Write a file's data out (``wait``: and wait for it) without a journal commit.

    Returns False where ``sync_file_range`` does not exist (the caller's fsync then
    does everything). Data written out this way is carried by the next journal commit
    of the file system, whichever file's fsync triggers it.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
                fn.restype = ctypes.c_int
                _sync_file_range = fn
    if not _sync_file_range:
        return False
    flags = _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER if wait else _SFR_WRITE
    return bool(_sync_file_range(fd, 0, 0, flags) == 0)


def _sync_files(paths: list[Path]) -> None:
    """Make several files durable in (usually) one journal commit.

    Each file's data is written out and waited for first (``sync_file_range``): the
    block allocations and the data then all belong to the running journal transaction,
    so the first ``fsync`` commits every file, and the ones after it find their
    changes committed already. Without ``sync_file_range``, plain fsyncs.
    """
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        for fd in fds:
            _writeback(fd, wait=False)
        for fd in fds:
            _writeback(fd, wait=True)
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
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
