"""Reading checkpoints back: list, find the latest complete one, read and verify.

Restore never trusts storage: manifests are validated before use, every byte read is
checked against the manifest's size and CRC32C, and downloads land in a private
folder inside the destination and are moved into place only once every file verified.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import crc32c

from . import _memory
from ._groups import first_leaf
from ._location import Location
from ._manifest import FileInfo, Manifest, manifest_key
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StoreError,
)

__all__ = ["Checkpoint"]

log = logging.getLogger("asynccp")
T = TypeVar("T")
#: Files of one checkpoint read (or downloaded) at once.
_READ_CONCURRENCY = 8


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One committed checkpoint: what was saved at ``step``, and how to read it back.

    Immutable. ``files`` maps each file name to its size and checksum; ``metadata`` is
    what was passed to ``save()``; ``attempt`` is the supervised attempt that wrote it.
    """

    step: int
    metadata: Mapping[str, Any]
    files: Mapping[str, FileInfo]
    created_at: datetime
    attempt: int
    writer: str
    _location: Location = field(repr=False)
    _data: str = field(repr=False)
    _key: str = field(repr=False, default="")  # the manifest object that commits it

    @classmethod
    def _from_manifest(cls, m: Manifest, location: Location, *, key: str = "") -> Checkpoint:
        return cls(
            step=m.step,
            metadata=MappingProxyType(dict(m.metadata)),
            files=MappingProxyType(dict(m.files)),
            created_at=m.created_at,
            attempt=m.attempt,
            writer=m.writer,
            _location=location,
            _data=m.data,
            _key=key or manifest_key(m.step),
        )

    @property
    def size(self) -> int:
        """Total payload bytes of the checkpoint."""
        return sum(f.size for f in self.files.values())

    def _name(self, name: str | None) -> str:
        if name is None:
            if len(self.files) != 1:
                raise CheckpointError(
                    f"checkpoint {self.step} holds {len(self.files)} files "
                    f"({sorted(self.files)[:5]}…); pass read(name=...)"
                )
            return next(iter(self.files))
        if name not in self.files:
            raise CheckpointNotFoundError(
                f"checkpoint {self.step} has no file {name!r}; it has {sorted(self.files)[:10]}"
            )
        return name

    async def read(self, name: str | None = None) -> bytes:
        """The bytes of one file, verified against the manifest's size and CRC32C.

        ``name`` may be left out when the checkpoint holds exactly one file.
        Raises :class:`CorruptCheckpointError` when the object is missing or differs.
        """
        name = self._name(name)
        return await anyio.to_thread.run_sync(self._read_verified, name)

    async def read_all(self) -> dict[str, bytes]:
        """Every file's bytes by name, each verified.

        Files are read in batches, one worker-thread trip per batch: many small files
        would cost a trip each. On a local disk one batch per ~4 MiB, up to four side by
        side (more only fight over the GIL); on a remote store eight (latency-bound).
        Raises :class:`CorruptCheckpointError` if any file is missing or differs.
        """
        names = list(self.files)
        width = _READ_CONCURRENCY
        if self._location.local_root is not None:  # CPU-bound: a thread per ~4 MiB, up to 4
            width = max(1, min(4, self.size // (4 << 20)))
        batches = [names[i::width] for i in range(min(width, len(names)))]
        out: dict[str, bytes] = {}

        def read_batch(batch: list[str]) -> None:
            for name in batch:
                out[name] = self._read_verified(name)

        try:
            async with anyio.create_task_group() as tg:
                for batch in batches:
                    tg.start_soon(partial(anyio.to_thread.run_sync, read_batch, batch))
        except Exception as e:  # a task group wraps its children's errors
            leaf = first_leaf(e)
            raise leaf from leaf.__cause__
        return {name: out[name] for name in names}

    def _read_verified(self, name: str) -> bytes:
        if self._location.local_root is None and self.files[name].size >= _memory.LANDING_FROM:
            # A large remote object is copied chunk by chunk into its bytes object as
            # it arrives (see _memory.Landing), checksummed on the way.
            return self._land(name, "bytes")  # type: ignore[no-any-return]
        key = f"{self._data}/{name}"
        try:
            data = self._location.get_buffer(key)  # obstore's buffer, not yet copied
        except FileNotFoundError as e:
            raise self._missing(key, e) from e
        except Exception as e:
            raise StoreError(f"checkpoint {self.step}: reading {key} failed: {e}") from e
        _check(self.step, name, self.files[name], len(data), crc32c.crc32c(data))
        return _memory.to_bytes(data)  # one copy without the GIL (none for local files)

    def _land(self, name: str, kind: str) -> Any:
        """File ``name`` streamed into a :class:`_memory.Landing` of ``kind``, verified."""
        info = self.files[name]
        landing = _memory.Landing(info.size, kind=kind)
        try:

            def sink(chunk: Any) -> None:
                try:
                    landing.write(chunk)
                except ValueError:
                    raise CorruptCheckpointError(
                        f"checkpoint {self.step}: file {name!r} has more than the "
                        f"{info.size} bytes the manifest says"
                    ) from None

            self._stream_verified(name, sink, chunk_size=_memory.LANDING_CHUNK)
            return landing.result()
        finally:
            landing.close()

    async def read_state(
        self, name: str = "state", *, framework: Literal["numpy", "torch"] = "numpy"
    ) -> dict[Any, Any]:
        """The training state saved with ``save(step, asynccp.State(...))``, verified.

        The same nesting comes back — dicts (int keys included), lists, tuples,
        scalars — with numpy arrays, or torch tensors with ``framework="torch"``, of
        the saved dtype and shape. They are views of the verified file, writable: a
        copy-on-write memory map on a local disk (no copy), one buffer elsewhere.
        ``name`` is the state's name when it was one value of a file mapping.

        Raises :class:`CheckpointNotFoundError` when the checkpoint holds no such state,
        :class:`CorruptCheckpointError` when its files fail verification (so
        ``load_latest`` falls back to an older checkpoint), and ``TypeError`` for a
        dtype numpy cannot hold (``bfloat16``, ``float8``: read those with torch).
        """
        from ._state import read_state

        return await read_state(self, name, framework=framework)  # type: ignore[no-any-return]

    def _missing(self, key: str, e: FileNotFoundError) -> CorruptCheckpointError:
        """A payload object that is not there: gone, or (on a local disk) a folder."""
        folder = isinstance(e.__cause__, IsADirectoryError)
        what = "is a folder, not a file" if folder else "is missing"
        return CorruptCheckpointError(f"checkpoint {self.step}: payload object {key} {what}")

    async def download(self, dest_dir: str | os.PathLike[str]) -> Path:
        """Write every file under ``dest_dir`` (created if needed), verified; return it.

        Files are downloaded into a hidden folder inside ``dest_dir`` and moved into
        place only once all of them verified, so ``dest_dir`` never holds a mix of a
        half-downloaded checkpoint. Existing files of the same names are replaced.

        Links inside ``dest_dir`` are never followed (``dest_dir`` itself may be one):
        a file whose place holds a symbolic link replaces the link, not what it points
        to; a link where the checkpoint needs a folder is a :class:`CheckpointError`
        naming it, raised before anything is moved (replacing the link would change the
        caller's tree, following it would write outside ``dest_dir``). So is a file
        where a folder is needed and a folder where a file goes.

        A name this destination cannot hold (a path over the system's length limit, a
        character its file system refuses, names that clash on a case-insensitive one)
        is a :class:`CheckpointError` naming the file: the checkpoint is not corrupt, so
        ``restore()`` does not fall back past it. Errors of the destination itself — a
        full disk, no permission, a read-only file system — propagate as the
        :class:`OSError` they are: they are the caller's to fix.
        """
        if not isinstance(dest_dir, (str, os.PathLike)):
            raise TypeError(f"dest_dir must be a path, got {type(dest_dir).__name__}")
        names = list(self.files)
        dest, tmp = await anyio.to_thread.run_sync(_make_tmp, os.fspath(dest_dir), names, self.step)
        try:
            limiter = anyio.CapacityLimiter(_READ_CONCURRENCY)
            try:
                async with anyio.create_task_group() as tg:
                    for name in self.files:
                        tg.start_soon(self._download_one_async, name, tmp, limiter)
            except Exception as e:  # a task group wraps its children's errors
                leaf = first_leaf(e)
                raise leaf from leaf.__cause__
            await anyio.to_thread.run_sync(_move_into_place, tmp, dest, names, self.step)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, tmp, True)
        return dest

    async def _download_one_async(
        self, name: str, tmp: Path, limiter: anyio.CapacityLimiter
    ) -> None:
        await anyio.to_thread.run_sync(self._download_one, name, tmp, limiter=limiter)

    def _download_one(self, name: str, tmp: Path) -> None:
        target = _inside(tmp, name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Exclusive: in a fresh folder, an existing file means two names clash.
            out = open(target, "xb")  # noqa: SIM115 - closed by the with below
        except OSError as e:
            raise _unwritable(self.step, name, tmp.parent, e) from e
        with out:
            self._stream_verified(name, out.write)

    async def verify(self) -> None:
        """Read every file and check it; raise :class:`CorruptCheckpointError` if one fails."""
        for name in self.files:
            await anyio.to_thread.run_sync(self._stream_verified, name, None)

    def _stream_verified(
        self, name: str, sink: Callable[[Any], Any] | None, *, chunk_size: int | None = None
    ) -> None:
        """Stream one file through ``sink`` (if any), checking size and CRC32C as it goes.

        Store errors become :class:`StoreError` (a missing object: corruption); errors
        of the sink, such as a full local disk, propagate as they are.
        """
        key = f"{self._data}/{name}"
        crc = size = 0
        with contextlib.closing(self._chunks(key, chunk_size)) as chunks:
            for chunk in chunks:
                crc = crc32c.crc32c(chunk, crc)
                size += len(chunk)
                if sink is not None:
                    sink(chunk)  # outside the store's error handling: its errors are its own
        _check(self.step, name, self.files[name], size, crc)

    def _chunks(self, key: str, chunk_size: int | None = None) -> Generator[Any, None, None]:
        """The object's chunks, its store's errors turned into asynccp's."""
        try:
            yield from self._location.chunks(key, chunk_size)
        except FileNotFoundError as e:
            raise self._missing(key, e) from e
        except Exception as e:
            raise StoreError(f"checkpoint {self.step}: reading {key} failed: {e}") from e


def _check(step: int, name: str, info: FileInfo, size: int, crc: int) -> None:
    if size != info.size:
        raise CorruptCheckpointError(
            f"checkpoint {step}: file {name!r} has {size} bytes, the manifest says {info.size}"
        )
    if crc != info.crc32c:
        raise CorruptCheckpointError(
            f"checkpoint {step}: file {name!r} fails its checksum "
            f"(crc32c {crc:08x}, the manifest says {info.crc32c:08x}); the stored bytes changed"
        )


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing any name that would land outside ``root``."""
    target = Path(os.path.normpath(root / name))
    if os.path.commonpath([root, target]) != str(root) or target == root:
        raise CorruptCheckpointError(f"file name {name!r} would be written outside {root}")
    return target


#: errno values of a name the destination cannot hold (too long, refused characters) or
#: of names that clash in it; every other OSError is the destination's own trouble.
_NAME_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EEXIST, errno.ENOTDIR, errno.EISDIR}
)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
#: Whether folders can be walked without following links (POSIX: openat, O_NOFOLLOW).
#: ``os.replace`` is missing from ``os.supports_dir_fd`` but takes ``dst_dir_fd``
#: wherever ``os.rename`` does (the same system call).
_AT_CALLS = (
    hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
    and {os.open, os.mkdir, os.rename} <= os.supports_dir_fd
)


def _unwritable(step: int, name: str, dest: Path, e: OSError) -> OSError | CheckpointError:
    """The error for writing file ``name`` under ``dest`` failing with ``e``.

    A name the destination cannot hold is a CheckpointError naming it; anything else
    (a full disk, no permission, a read-only file system) is ``e`` itself.
    """
    if e.errno not in _NAME_ERRNOS:
        return e
    why = e.strerror or str(e)
    if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        why += " (names that differ only in case clash on a case-insensitive file system)"
    return CheckpointError(
        f"checkpoint {step}: file {name!r} cannot be written under {dest}: {why}"
    )


def _check_dest(dest: Path, names: list[str], step: int) -> None:
    """Refuse, before anything is written, a destination a download would misuse.

    Each name's folders under ``dest`` must be absent or real folders (a symbolic link
    is never followed, a file is in the way), and its own place must not be a folder.
    A link or a file in a file's place is fine: it is replaced.
    """
    for name in names:
        parts = name.split("/")
        path = dest
        for i, part in enumerate(parts):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                break  # created by the move; nothing below it exists
            except OSError as e:
                raise _unwritable(step, name, dest, e) from e
            if i == len(parts) - 1:
                if stat.S_ISDIR(mode):
                    raise CheckpointError(
                        f"checkpoint {step}: cannot restore file {name!r}: {path} is a folder"
                    )
            elif stat.S_ISLNK(mode):
                raise CheckpointError(
                    f"checkpoint {step}: cannot restore file {name!r}: {path} is a symbolic "
                    "link, and links inside the destination are never followed; remove it "
                    "or restore elsewhere"
                )
            elif not stat.S_ISDIR(mode):
                raise CheckpointError(
                    f"checkpoint {step}: cannot restore file {name!r}: {path} is a file where "
                    "the checkpoint needs a folder"
                )


def _make_tmp(dest_dir: str, names: list[str], step: int) -> tuple[Path, Path]:
    """The absolute destination (created, checked for ``names``) and a private download
    folder inside it."""
    dest = Path(os.path.abspath(dest_dir))
    dest.mkdir(parents=True, exist_ok=True)
    _check_dest(dest, names, step)
    return dest, Path(tempfile.mkdtemp(dir=dest, prefix=".asynccp-download-"))


def _move_into_place(tmp: Path, dest: Path, names: list[str], step: int) -> None:
    """Move the verified files from ``tmp`` to their places under ``dest``.

    The destination is checked again first (it may have changed during the download),
    so a conflict moves nothing. Folders are then opened relative to their parent
    without following links (``openat`` with ``O_NOFOLLOW``), so a link planted while
    we move is refused too, not followed; ``rename`` replaces a link in a file's place.
    """
    _check_dest(dest, names, step)
    if not _AT_CALLS:  # pragma: no cover - Windows: no openat; rely on the check above
        for name in names:
            target = _inside(dest, name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(_inside(tmp, name), target)
            except OSError as e:
                raise _unwritable(step, name, dest, e) from e
        return
    top = os.open(dest, _DIR_FLAGS)  # dest itself may be a link: the caller chose it
    try:
        for name in names:
            *folders, leaf = name.split("/")
            fd = _open_folders(top, dest, folders, name, step)
            try:
                os.replace(_inside(tmp, name), leaf, dst_dir_fd=fd)
            except OSError as e:
                raise _unwritable(step, name, dest, e) from e
            finally:
                if fd != top:
                    os.close(fd)
    finally:
        os.close(top)


def _open_folders(top: int, dest: Path, folders: list[str], name: str, step: int) -> int:
    """A descriptor of ``dest/folders...`` (created as needed), never following a link."""
    fd, path = top, dest
    flags = _DIR_FLAGS | os.O_NOFOLLOW
    try:
        for part in folders:
            path = path / part
            try:
                try:
                    sub = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    sub = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    what = (
                        "a symbolic link (links inside the destination are never followed)"
                        if os.path.islink(path)
                        else "a file where the checkpoint needs a folder"
                    )
                    raise CheckpointError(
                        f"checkpoint {step}: cannot restore file {name!r}: {path} is {what}"
                    ) from e
                raise _unwritable(step, name, dest, e) from e
            if fd != top:
                os.close(fd)
            fd = sub
    except BaseException:
        if fd != top:
            os.close(fd)
        raise
    return fd
