"""Plain file system calls for :class:`~asynccp._store.LocalDir`'s durable writes.

A file written and fsynced (:func:`write_file`), moved to a name only if that name is
free (:func:`place`: ``renameat2(RENAME_NOREPLACE)`` on Linux, a hard link elsewhere),
several files made durable in one journal commit (:func:`sync_files`, with
``sync_file_range``), a folder's entries made durable (:func:`fsync_dir`), a copy, a
rename that may cross file systems. Linux-only calls are found once through ctypes and
fall back to plain POSIX where absent.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "copy_file",
    "fsync_dir",
    "fsync_file",
    "linux_call",
    "place",
    "sync_files",
    "try_rename",
    "write_fd",
    "write_file",
    "writeback",
]

_COPY_CHUNK = 8 << 20

# renameat2(2) with RENAME_NOREPLACE (Linux 3.15+, glibc 2.28+): move a file to a name
# only if the name is free, in one call; elsewhere a hard link, then the old name removed.
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_renameat2: Any = None


def linux_call(name: str, *argtypes: Any) -> Any:
    """The C library's function ``name`` (returning an int, ``errno`` kept), or False
    where it does not exist (not Linux, an older C library)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return False
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def place(src: str, dest: str) -> None:
    """Move ``src`` to ``dest`` if ``dest`` does not exist (FileExistsError if it does,
    and ``src`` stays)."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = linux_call(
            "renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
        )
    if _renameat2:
        a, b = os.fsencode(src), os.fsencode(dest)
        if _renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), dest)
        _renameat2 = False  # this file system (or kernel) cannot: hard links from now on
    os.link(src, dest)
    os.unlink(src)


def write_fd(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file(
    path: Path, data: bytes | memoryview, *, sync: bool, start_writeback: bool = False
) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_fd(fd, data)
        if sync:
            os.fsync(fd)
        elif start_writeback:
            writeback(fd, wait=False)
    finally:
        os.close(fd)


# sync_file_range(2) (Linux): start writing a file's dirty pages, or wait until they are.
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4
_sync_file_range: Any = None


def writeback(fd: int, *, wait: bool) -> bool:
    """Write a file's data out (``wait``: and wait for it) without a journal commit.

    Returns False where ``sync_file_range`` does not exist (the caller's fsync then
    does everything). Data written out this way is carried by the next journal commit
    of the file system, whichever file's fsync triggers it.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = linux_call(
            "sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint
        )
    if not _sync_file_range:
        return False
    flags = _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER if wait else _SFR_WRITE
    return bool(_sync_file_range(fd, 0, 0, flags) == 0)


def sync_files(paths: list[Path]) -> None:
    """Make several files durable in (usually) one journal commit.

    Each file's data is written out and waited for first (``sync_file_range``): the
    block allocations and the data then all belong to the running journal transaction,
    so the first ``fsync`` commits every file, and the ones after it find their
    changes committed already. Without ``sync_file_range``, plain fsyncs.
    """
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        for fd in fds:
            writeback(fd, wait=False)
        for fd in fds:
            writeback(fd, wait=True)
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def copy_file(src: Path, dest: Path, *, sync: bool) -> None:
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)
        fout.flush()
        if sync:
            os.fsync(fout.fileno())


def try_rename(src: Path, dest: Path) -> bool:
    try:
        os.rename(src, dest)
        return True
    except OSError as e:
        if e.errno == errno.EXDEV:
            return False
        raise


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (POSIX; Windows has no directory fsync)."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
