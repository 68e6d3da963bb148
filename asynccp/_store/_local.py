"""A local directory as a :class:`~asynccp._store.Store`, read and written by asynccp.

Writes are durable: obstore's LocalStore never fsyncs, and a checkpoint that vanishes in
a power cut is no checkpoint (``durable=True``, the default; ``durable=False`` skips the
fsyncs only). A checkpoint costs two journal commits: its payload files are written to a
temporary name and renamed into place with their writeback only started
(:meth:`~LocalDir.put_unsynced`); :meth:`~LocalDir.prepare_create` writes the record's
bytes beside them and makes all of it and the folders durable in one journal commit; the
commit is a hard link of the record into place (:meth:`~LocalDir.link_prepared`,
create-if-absent) and one fsync of its folder. Small checkpoints saved back to back
share those two: :meth:`LocalDir.prepare_group` and :meth:`LocalDir.link_group` (see
``asynccp._write._group.commit_group``). These are the
:class:`~asynccp._store.DurableCommits` capability; being a directory (its ``root``,
private memory maps of its files) is :class:`~asynccp._store.LocalFiles`.
Other objects (leases, attempt records) are written to a temporary name, fsynced and
renamed.

Reads, listings and deletes are plain file calls too: obstore's LocalStore refuses to
read names such as ``shard#1`` (a ``#`` and digits end its own temporary files) or
``weights:`` (taken for a drive letter), drops them from listings, and fails a whole
listing on one file whose name is not UTF-8. Every name asynccp accepts round-trips
here, and a listing skips (with a warning) what it cannot name.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import mmap
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .._layout import MANIFESTS, TMP_SUFFIX, TOP_FOLDERS, prepared_record_key
from ..errors import ObjectExists, StoreError
from ._base import ObjectInfo, Source
from ._files import (
    copy_file,
    fsync_dir,
    fsync_file,
    place,
    sync_files,
    try_rename,
    write_fd,
    write_file,
)
from ._spares import Spares, write_over

if TYPE_CHECKING:
    from ._base import Store
    from ._capabilities import DurableCommits, LocalFiles, RangedReads

__all__ = ["LocalDir"]

log = logging.getLogger("asynccp")
_COPY_CHUNK = 8 << 20


class LocalDir:
    """The directory ``root`` as a store; ``durable`` fsyncs every write.

    A :class:`~asynccp._store.Store`, and :class:`~asynccp._store.LocalFiles` and
    :class:`~asynccp._store.DurableCommits` besides.
    """

    def __init__(self, root: Path, *, durable: bool = True, description: str | None = None) -> None:
        self.root = root
        self._root = os.fspath(root)
        self.durable = durable
        self.description = description or str(root)
        #: Entries a listing skipped and warned about (each is warned about once).
        self._skipped: set[str] = set()
        #: Record files retention deleted, kept to be written over (off until a writer
        #: turns them on: :meth:`recycle_records`).
        self._spares = Spares()
        self._records = os.path.join(self._root, MANIFESTS.rstrip("/"))

    def __repr__(self) -> str:
        return f"<LocalDir {self.root} durable={self.durable}>"

    # -- writes -------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory; durably, its top folders too (once: every later fsync
        is then of a folder whose own entry is already on disk).

        Raises:
            StoreError: the directory cannot be made or used, whatever the OSError
                (a missing parent the system will not create such as ``/proc/x``, a
                file in the way, a read-only file system, no permission...): a
                location that cannot be used is a store failure, never a bare OSError
                (``call()`` passes "not found" through, as a read's answer).
        """
        try:
            if not self.durable:
                self.root.mkdir(parents=True, exist_ok=True)
                return
            for top in TOP_FOLDERS:
                (self.root / top).mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
            fsync_dir(self.root.parent)
        except OSError as e:
            raise StoreError(
                f"cannot use {self.description} as a checkpoint location: "
                f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
                "choose a writable local directory, or a URL such as s3://bucket/prefix"
            ) from e

    def put(self, key: str, source: Source, *, move: bool = False) -> None:
        self._write(key, source, move=move)

    def put_unsynced(self, key: str, source: Source, *, move: bool = False) -> None:
        """A payload object: renamed into place with its writeback only started;
        :meth:`prepare_create` (its ``sync``) makes it durable."""
        self._write(key, source, move=move, checked=True)

    def create(self, key: str, data: bytes) -> None:
        """Write ``data`` to a temporary name beside ``key`` (fsynced when durable) and
        move it to ``key`` only if there is none (ObjectExists otherwise), then make the
        folder durable: the commit of a record (few system calls: a loop of tiny
        checkpoints makes one per checkpoint). A spare record file of the folder is
        written over when there is one (:mod:`._spares`)."""
        dest = os.path.join(self._root, key)
        folder = os.path.dirname(dest)
        records = key.startswith(MANIFESTS)
        claimed = self._spares.claim(folder) if records else None
        try:
            self._create(key, dest, data, claimed)
        except FileNotFoundError:
            if claimed is None:
                raise
            self._create(key, dest, data, None)  # the spare was collected meanwhile
        if records:
            self._spares.used(folder)
        if self.durable:
            fsync_dir(Path(folder))

    def _create(self, key: str, dest: str, data: bytes, claimed: tuple[str, int] | None) -> None:
        if claimed is None:
            folder, name = os.path.split(dest)
            tmp = os.path.join(folder, _tmp_name(name))
            try:
                fd = os.open(tmp, _CREATE, 0o644)
            except FileNotFoundError:  # its folder is new (or retention removed it)
                os.makedirs(folder, exist_ok=True)
                fd = os.open(tmp, _CREATE, 0o644)
        else:
            tmp, fd = claimed
        try:
            try:
                (write_fd if claimed is None else write_over)(fd, data)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            place(tmp, dest)
        except FileExistsError:
            _unlink(tmp)
            raise ObjectExists(key) from None
        except BaseException:
            _unlink(tmp)
            raise

    def prepare_group(self, records: Sequence[tuple[str, bytes, Sequence[str]]]) -> list[Path]:
        """:meth:`prepare_create` for several records at once (durable stores only):
        each ``(folder, data, sync)`` written, then all of it and their folders made
        durable together — one journal commit for the lot, where one each would take
        turns. Returns the prepared files, in order, for :meth:`link_group`."""
        assert self.durable, "a group is prepared on a durable store only"
        made: list[Path] = []
        objects: list[str] = []
        try:
            for folder, data, sync in records:
                made.append(self._prepare_record(folder, data))
                objects += sync
            sync_files([self.root / k for k in objects] + made)
            # The objects' names must be durable; a prepared file's need not be (its
            # link is a new name, made durable by link_group's make_durable).
            self.make_durable(objects)
        except BaseException:
            self.discard_group(made)
            raise
        return made

    def link_group(self, links: Sequence[tuple[Path, str]]) -> int:
        """Create each ``key`` as a hard link to its prepared file, in order, stopping
        at the first that fails (it raises when it is the first). Returns how many were
        linked; the ones after them are left prepared, for :meth:`link_prepared` or
        :meth:`discard_prepared`. :meth:`make_durable` of the linked keys then makes
        them durable with one fsync per folder."""
        done: list[str] = []
        try:
            for prepared, key in links:
                self._link(prepared, key)
                done.append(key)
        except Exception:
            if not done:
                raise
        return len(done)

    def discard_group(self, prepared: Sequence[Path]) -> None:
        """Remove prepared files no link took."""
        for path in prepared:
            path.unlink(missing_ok=True)

    def prepare_create(
        self, folder: str, data: bytes | None, *, sync: Sequence[str]
    ) -> Path | None:
        """Get a commit ready: write ``data`` to a temporary file in ``folder``, and make
        it, the objects ``sync`` (written by :meth:`put_unsynced`) and their
        folders durable, in one journal commit (durable stores; otherwise None). With
        ``data`` None only the ``sync`` objects and their folders are made durable.

        :meth:`link_prepared` then links the file into place: the commit itself is one link
        and one fsync of the folder, and the temporary name goes with the link; if the
        commit does not happen, :meth:`discard_prepared` removes it. ``folder`` is the
        checkpoint's own payload folder: a file left there by a killed writer goes with
        that folder (collected with it, or deleted with the checkpoint by retention). A
        spare record, when the writer has one, is written over instead (see
        :mod:`._spares`; one a killed writer leaves is collected once stale).
        """
        if not self.durable:
            return None
        if data is None:
            sync_files([self.root / k for k in sync])
            self.make_durable(sync)
            return None
        tmp = self._prepare_record(folder, data)
        try:
            sync_files([self.root / k for k in sync] + [tmp])
            # The objects' names must be durable; a prepared file's need not be (its
            # link is a new name, made durable by link_prepared).
            self.make_durable(sync)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _prepare_record(self, folder: str, data: bytes) -> Path:
        """A file holding ``data``, to be linked as a record (not yet durable): a spare
        record file written over (see :mod:`._spares`: no inode allocated), else a new
        file in ``folder``."""
        claimed = self._spares.claim(self._records)
        if claimed is not None:
            path, fd = claimed
            try:
                write_over(fd, data)
            except BaseException:
                os.close(fd)
                _unlink(path)
                raise
            os.close(fd)
            return Path(path)
        tmp = self.root / prepared_record_key(folder, secrets.token_hex(8))
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write_file(tmp, data, sync=False)
        return tmp

    def discard_prepared(self, prepared: Any) -> None:
        if isinstance(prepared, Path):
            prepared.unlink(missing_ok=True)

    def link_prepared(self, prepared: Path, key: str) -> None:
        """Create ``key`` as a hard link to the prepared file (ObjectExists when there
        is one), make it durable, and remove the prepared name."""
        fsync_dir(self._link(prepared, key).parent)

    def _link(self, prepared: Path, key: str) -> Path:
        """Hard-link ``key`` to the prepared file (ObjectExists when there is one) and
        remove the prepared name; return the key's path (not yet durable)."""
        dest = self.root / key
        try:
            place(os.fspath(prepared), os.fspath(dest))
        except FileNotFoundError:
            if not prepared.exists():
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            place(os.fspath(prepared), os.fspath(dest))
        except FileExistsError:
            raise ObjectExists(key) from None
        if key.startswith(MANIFESTS):
            self._spares.used(os.fspath(dest.parent))
        return dest

    def make_durable(self, keys: Sequence[str]) -> None:
        """fsync the folders holding ``keys``, deepest first, up to (not including) the
        root, whose own entries (``data/``, ``manifests/``) :meth:`open` made durable."""
        if not self.durable:
            return
        folders: set[Path] = set()
        for key in keys:
            folder = (self.root / key).parent
            while folder != self.root and folder not in folders:
                folders.add(folder)
                folder = folder.parent
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)

    def _write(
        self, key: str, source: Source, *, move: bool = False, checked: bool = False
    ) -> None:
        """Write to a temporary name beside ``key``, then rename it into place."""
        sync = self.durable
        early = sync and checked  # the final name first, durable later
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(_tmp_name(dest.name))
        try:
            if isinstance(source, Path):
                if move and try_rename(source, tmp):
                    if sync and not early:
                        fsync_file(tmp)
                else:
                    copy_file(source, tmp, sync=sync and not early)
            else:
                write_file(tmp, source, sync=sync and not early, start_writeback=early)
            # A checked object is renamed before it is durable (prepare_create makes it
            # so): one journal commit then covers its bytes, its name and its folder. A
            # crash in between can leave a short file under the final name: harmless,
            # nothing trusts it until a manifest names it.
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- reads --------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The file's bytes, read straight into one ``bytes`` object (one copy, where
        going through obstore costs two). A folder in the object's place is no object
        (as on an object store, where a "folder" is only a prefix of other keys)."""
        with _open_object(self.root / key) as f:
            return f.read()

    def get_buffer(self, key: str) -> bytes:
        """The file's bytes (a local read is its one copy)."""
        return self.get(key)

    def map(self, key: str) -> mmap.mmap | bytearray:
        """The file as a private, writable memory map: no copy is made, and a write to
        the map changes only this process's copy of that page, never the file (an empty
        file gives an empty ``bytearray``).

        The map stays valid when the file is deleted (retention): its pages live as
        long as the map. A file truncated in place while mapped would fault on access;
        asynccp never truncates a committed object.
        """
        with _open_object(self.root / key) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return bytearray()
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)

    def chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        return _file_chunks(self.root / key)

    def read_ranges(
        self, key: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None:
        """Each range read with ``preadv`` straight into its buffer (no copy between)."""
        with _open_object(self.root / key) as f:
            fd = f.fileno()
            for (start, end), buf in zip(ranges, out, strict=True):
                done = 0
                while done < end - start:
                    n = os.preadv(fd, [buf[done:]], start + done)
                    if n == 0:
                        raise EOFError(f"{key} ends before byte {end}")
                    done += n

    def list_objects(self, folder: str) -> list[ObjectInfo]:
        """Every regular file under ``root/folder``, as obstore would list it.

        Links are followed (a dangling one, or a loop, is skipped); sizes and
        modification times are the target's. An entry whose name is not UTF-8 cannot
        be a key: it is skipped, with a warning (once per entry), instead of failing the
        whole listing. Entries that vanish during the walk (another process deleting)
        are skipped; other errors, such as a folder that may not be read, propagate.
        """
        folder = folder.strip("/")
        top = os.path.join(self.root, folder) if folder else os.fspath(self.root)
        try:
            st = os.stat(top)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if not stat.S_ISDIR(st.st_mode):
            return []
        out: list[ObjectInfo] = []
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
        """Warn (once) that a listing skipped ``key``."""
        if key not in self._skipped:
            self._skipped.add(key)
            shown = os.fsencode(key) if _undecodable(key) else key
            log.warning("asynccp: %s: skipping %r: %s", self.description, shown, why)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete files, then the folders left empty (as an object store has none).

        A writer's records become spares, up to a point (:meth:`recycle_records`)."""
        for key in keys:
            path = os.path.join(self._root, key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if not self._spares.retire(path):
                    os.unlink(path)
        _prune_empty_dirs(self.root, keys)

    def recycle_records(self, on: bool) -> None:
        """Keep the records this store's writer deletes, to write its next records over
        them (``on``: see :mod:`._spares`); off: delete every spare (the writer is done)."""
        if on:
            self._spares.enabled = True
        else:
            self._spares.drop()


if TYPE_CHECKING:

    def _is_a_store(d: LocalDir) -> tuple[Store, LocalFiles, DurableCommits, RangedReads]:
        """(mypy checks that LocalDir has every method the protocols ask for)"""
        return d, d, d, d


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


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
#: Temporary names: this process's id and a counter (a clash, after a fork or with
#: another host sharing the folder, is caught by O_EXCL: the write fails and is retried
#: by the caller's store call like any other).
_counter = itertools.count()


def _tmp_name(name: str) -> str:
    tmp = f".{name}.{os.getpid():x}-{next(_counter):x}{TMP_SUFFIX}"
    if len(os.fsencode(tmp)) > 255:  # a long name: its temporary one must fit too
        tmp = f".{secrets.token_hex(8)}{TMP_SUFFIX}"
    return tmp


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _prune_empty_dirs(root: Path, keys: Sequence[str]) -> None:
    """Remove folders left empty by deletes, up to (not including) ``root`` and its top
    folders: :meth:`LocalDir.open` made their entries durable once, and every durable
    write counts on it (a top folder made again later would not be)."""
    base = os.fspath(root)
    inside = os.path.join(base, "")  # (strings: a retention round passes many keys)
    tops = {os.path.join(base, top) for top in TOP_FOLDERS}
    folders = {os.path.dirname(os.path.join(base, key)) for key in keys}
    for folder in sorted(folders, key=lambda p: p.count(os.sep), reverse=True):
        while folder not in tops and folder.startswith(inside) and folder != base:
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
