"""Record files that retention removed, kept to be written over by the next records.

A loop of tiny checkpoints creates one record and, through retention, deletes one per
checkpoint. Creating a file allocates an inode (and a block); deleting one frees them.
Both cost the file system far more than the bytes do: ext4 without a journal checks,
for every new inode, each one freed in the last seconds before it takes one, and a
mount with ``discard`` trims every block freed. A writer's :class:`~._local.LocalDir`
therefore moves a record retention deletes to a temporary name (which removes the
record as atomically as unlinking it does) and prepares its next record — tiny or
beside payload files, committed in a group or alone — in it, written over: no inode or
block is allocated or freed for the record.

A spare is an ordinary temporary file (its name ends with ``TMP_SUFFIX``): readers and
listings skip it, and the orphan collector takes one that a killed writer left, once it
is stale (as any temporary file of an interrupted write). One the collector takes while
it waits is simply gone: the writer writes a new file instead.

A reader that opened a record just before retention retired it, and reads it after the
writer wrote the next record over it, reads that next record (or a mix of the two),
where a deleted file would have kept its old bytes. It cannot take it for the step it
opened: a record holds its own step, which must match its name, and JSON that does not
parse is refused (:meth:`~asynccp._manifest.Manifest.from_doc`). The record it wanted
was being deleted anyway.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections import deque

from .._layout import TMP_SUFFIX

__all__ = ["SPARES_MAX", "Spares", "write_over"]

#: At most this many spares per folder (a retention round deletes a few dozen records).
SPARES_MAX = 64
_WRITE = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)


class Spares:
    """A writer's pool of spare record files, per records folder (thread-safe: deque's
    append and pop are atomic, and a file is claimed by the one thread that popped it).

    Off until :attr:`enabled` (a writer turns it on, and :meth:`drop` off at its end, so
    that no spare outlives it); only folders :meth:`used` for records take spares.
    """

    def __init__(self) -> None:
        self._by_folder: dict[str, deque[str]] = {}
        self.enabled = False
        # Spare names: this pool's random prefix and a counter (no system call per
        # name; a name another writer's pool picks never clashes with one of ours).
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def used(self, folder: str) -> None:
        """Records are created in ``folder``: those retention deletes there may be kept."""
        if folder not in self._by_folder:
            self._by_folder.setdefault(folder, deque())

    def retire(self, path: str) -> bool:
        """Take the file at ``path`` out of its key by renaming it to a spare's name;
        False (nothing done) when the pool is off, its folder holds no records of this
        writer, or the folder's pool is full."""
        if not self.enabled or path.endswith(TMP_SUFFIX):
            return False
        folder = os.path.dirname(path)
        pool = self._by_folder.get(folder)
        if pool is None or len(pool) >= SPARES_MAX:
            return False
        spare = os.path.join(folder, f".spare.{self._prefix}-{next(self._count):x}{TMP_SUFFIX}")
        try:
            os.rename(path, spare)
        except FileNotFoundError:
            return True  # gone already: as deleted as it gets
        pool.append(spare)
        return True

    def claim(self, folder: str) -> tuple[str, int] | None:
        """A spare of ``folder`` opened for writing (its path and descriptor), or None."""
        pool = self._by_folder.get(folder)
        while pool:
            try:
                spare = pool.pop()
            except IndexError:  # (another thread took the last one)
                return None
            try:
                return spare, os.open(spare, _WRITE)
            except FileNotFoundError:  # the orphan collector took it
                continue
        return None

    def drop(self) -> None:
        """Turn the pool off and delete every spare (the writer is done)."""
        self.enabled = False
        for pool in self._by_folder.values():
            while pool:
                try:
                    spare = pool.pop()
                except IndexError:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spare)


def write_over(fd: int, data: bytes | memoryview) -> None:
    """Write ``data`` as the whole content of the open file ``fd`` (a spare's)."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)
    os.ftruncate(fd, len(view))
