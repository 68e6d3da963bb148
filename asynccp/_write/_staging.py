"""Staging folders: where an open Checkpointer keeps its copies of file payloads.

Each open Checkpointer has a private folder ``asynccp-staging-*`` in its ``staging_dir``
(the temp dir by default), removed when it closes. A process killed with SIGKILL never
closes: its folder, with partial copies of the files it was saving, would stay for
good. So every folder holds a lock file, ``.lock``, locked (``flock``, exclusive) for
as long as its Checkpointer is open; the kernel drops the lock when the process dies,
however it dies. When a Checkpointer opens, it looks at the other staging folders of
the same parent and removes those whose lock it can take: their owner is gone.

- The lock file is locked under a temporary name and only then renamed to ``.lock``, so
  a folder whose ``.lock`` can be locked by someone else never belongs to a live owner.
- A folder with no ``.lock`` at all comes from an asynccp that predates these lock files
  (or is being created at this very moment). Whether its owner still runs cannot be
  known, so it is removed only when nothing in it has changed for :data:`UNLOCKED_AGE`
  (a day): a live process of that older asynccp touches its folder only when it stages
  a file, and a job that checkpoints files every few hours must not lose its folder.
- A ``.lock`` that cannot be locked for another reason (a file system without
  ``flock``) means "cannot tell": the folder is kept.
- Only folders of the current user are looked at (the others could not be removed),
  never through a symlink, at most :data:`MAX_EXAMINED` a time (in random order, so
  that repeated opens get through any number of them), and in a worker thread. Nothing
  here ever fails the open: a problem is logged and the folder left for another time.
- Where there is no ``fcntl`` (Windows), folders are neither locked nor collected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "PREFIX", "UNLOCKED_AGE", "StagingFolder", "open_staging"]

log = logging.getLogger("asynccp")

#: Name prefix of every staging folder.
PREFIX = "asynccp-staging-"
#: The lock file in each staging folder, locked for as long as its Checkpointer is open.
LOCK_NAME = ".lock"
#: Seconds a staging folder without a lock file must have been left untouched before it
#: is removed (its owner, of an asynccp without lock files, cannot be asked).
UNLOCKED_AGE = 24 * 3600.0
#: Staging folders looked at, at most, when a Checkpointer opens.
MAX_EXAMINED = 64
#: Entries of a folder without a lock file whose modification times are looked at.
_MAX_ENTRIES = 1000

_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class StagingFolder:
    """One open Checkpointer's staging folder, and the lock that says its owner lives.

    The lock is held by an open file object: closing it (or the process ending, or the
    object being garbage collected) releases it.
    """

    def __init__(self, path: Path, lock: io.FileIO | None) -> None:
        self.path = path
        self._lock = lock

    def close(self) -> None:
        """Remove the folder, then release the lock (blocking: call in a worker thread).

        Lock file last: were this process killed half-way, the folder would still be
        recognised as one with a lock, and collected by the next Checkpointer.
        """
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if entry.name != LOCK_NAME:
                        _remove(Path(entry.path))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / LOCK_NAME)
            os.rmdir(self.path)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None


def open_staging(parent: str | None) -> StagingFolder:
    """Create and lock a new staging folder in ``parent`` (the temp dir when None), then
    remove the folders there that processes now gone left behind (blocking: call in a
    worker thread).

    Raises OSError when the folder cannot be created (as ``tempfile.mkdtemp`` does);
    neither locking it nor collecting the others ever fails the open.
    """
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    try:
        lock = _lock(path)
    except OSError as e:  # a full disk, say: staging may still work, without a lock
        log.warning("asynccp: cannot create the lock file of the staging folder %s: %s", path, e)
        lock = None
    collect_staging(path.parent)
    return StagingFolder(path, lock)


def _lock(folder: Path) -> io.FileIO | None:
    """Create ``folder/.lock`` already locked; return the open file holding the lock.

    Locked under a temporary name first: between creating a file and locking it,
    another process could lock it, and would take the folder for an abandoned one.
    None where there is no ``fcntl``. Where ``flock`` fails, the file is put in place
    unlocked all the same: other processes then cannot lock it either, and keep the
    folder (it is not collected, as before lock files).
    """
    if fcntl is None:
        return None
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lock-")
    lock = os.fdopen(fd, "r+b", buffering=0)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            log.debug(
                "asynccp: cannot lock the staging folder %s (%s): if this process is "
                "killed, no other will remove it",
                folder,
                e,
            )
        # Who holds it, for whoever looks at the folder.
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.rename(tmp, folder / LOCK_NAME)
    except BaseException:
        lock.close()
        raise
    return lock


def collect_staging(parent: Path) -> int:
    """Remove the staging folders in ``parent`` whose owners are gone; return how many.

    Never raises: an error is logged at WARNING and the folder left for another time.
    At most :data:`MAX_EXAMINED` folders are looked at.
    """
    if fcntl is None:
        return 0
    try:
        with os.scandir(parent) as entries:
            names = [e.name for e in entries if e.name.startswith(PREFIX)]
    except OSError as e:
        log.warning("asynccp: cannot look for abandoned staging folders in %s: %s", parent, e)
        return 0
    if len(names) > MAX_EXAMINED:
        names = random.sample(names, MAX_EXAMINED)
    removed = 0
    now = time.time()
    for name in names:
        path = parent / name
        try:
            removed += _collect_one(path, now)
        except FileNotFoundError:
            continue  # removed meanwhile (by its owner, or by another collector)
        except Exception as e:
            log.warning("asynccp: cannot collect the staging folder %s: %s", path, e)
    return removed


def _collect_one(path: Path, now: float) -> bool:
    """Remove ``path`` if it is a staging folder whose owner is gone; True if removed."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False  # a symlink or a file by that name, or another user's folder
    try:
        fd = os.open(path / LOCK_NAME, _OPEN_FLAGS)
    except FileNotFoundError:
        if now - _newest_mtime(path, st.st_mtime) < UNLOCKED_AGE:
            return False  # may belong to a live process that has no lock file
        return _remove_folder(path, "untouched for a day, without a lock file")
    with os.fdopen(fd, "r+b", buffering=0):
        assert fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its Checkpointer is open
        except OSError as e:
            log.debug("asynccp: cannot tell whether %s is abandoned: %s", path, e)
            return False
        # Ours now: removed while locked, so that no other collector works on it too.
        return _remove_folder(path, "its process is gone")


def _remove_folder(path: Path, why: str) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("asynccp: could not remove the abandoned staging folder %s (%s)", path, why)
        return False
    log.info("asynccp: removed the abandoned staging folder %s (%s)", path, why)
    return True


def _newest_mtime(path: Path, mtime: float) -> float:
    """The newest modification time of ``path`` (whose own is ``mtime``) and its entries."""
    with os.scandir(path) as entries:
        for i, entry in enumerate(entries):
            if i >= _MAX_ENTRIES:
                break
            with contextlib.suppress(OSError):
                mtime = max(mtime, entry.stat(follow_symlinks=False).st_mtime)
    return mtime


def _remove(path: Path) -> None:
    """Remove one entry of a staging folder (staged copies are files; be lenient)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
