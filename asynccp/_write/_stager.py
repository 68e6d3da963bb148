"""Turn what the caller passes to ``save()`` into staged files asynccp owns.

Two steps, so that room in the queue is reserved before anything is copied: ``plan``
validates the payload (its names by :mod:`asynccp._names`) and sizes it, ``snapshot``
takes ownership. The snapshot is taken before ``save()`` returns, so the caller may reuse
its buffers and files at once: immutable ``bytes`` are kept as they are (zero-copy),
mutable buffers are copied once, files are copied into a private staging folder
(:mod:`asynccp._write._staging`). Large copies run in a worker thread so the event loop
keeps running.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import crc32c

from .._names import check_names, validate_name
from .._types import Payload
from ._staging import StagingFolder

__all__ = ["DEFAULT_NAME", "Part", "StagedFile", "Stager"]

#: The name a single-buffer payload gets inside its checkpoint.
DEFAULT_NAME = "data"

#: Copies at least this large go to a worker thread instead of running on the loop
#: (smaller ones take well under a millisecond: less than the trip to a thread).
_OFFLOAD_BYTES = 4 << 20
_COPY_CHUNK = 8 << 20


@dataclass
class StagedFile:
    """One file of a checkpoint, owned by asynccp until it is uploaded.

    Exactly one of ``data`` (bytes in memory) and ``path`` (a staged copy on disk) is set.
    ``crc32c`` is filled in when the bytes have been read once (during a file copy,
    or by the uploader for buffers).
    """

    name: str
    size: int
    data: bytes | memoryview | None = None
    path: Path | None = None
    crc32c: int | None = None
    buffer: mmap.mmap | None = None  # the pooled memory ``data`` views, if any


class Stager:
    """Owns what ``save()`` staged: a private folder for file copies (locked while it is
    in use, see :mod:`asynccp._write._staging`), and a pool of buffers for copies of mutable
    memory.

    A training loop saves same-sized state step after step. A fresh 64 MiB buffer
    costs page faults on every first touch (a copy into one took 3-4x longer than
    into a reused one here), so buffers of sizes seen before are kept for reuse — no
    more of them than ``pool_room()`` allows (the room left in the staging budget).
    """

    def __init__(self, pool_room: Callable[[], int]) -> None:
        self._staging: StagingFolder | None = None
        self._pool_room = pool_room
        self._free: dict[int, list[mmap.mmap]] = {}
        self._free_bytes = 0
        self._lock = threading.Lock()  # buffers come back from worker threads

    def open(self, staging: StagingFolder) -> None:
        """Start staging file copies into ``staging`` (the open checkpointer's folder)."""
        self._staging = staging

    @property
    def folder(self) -> Path:
        """The staging folder file copies go to."""
        if self._staging is None:
            raise RuntimeError("the stager has no staging folder yet (not open)")
        return self._staging.path

    async def plan(self, payload: Payload) -> list[Part]:
        """Validate ``payload`` and size it, copying nothing (so room can be reserved first).

        Raises TypeError, InvalidNameError or FileNotFoundError for what cannot be saved.
        """
        if isinstance(payload, Mapping):
            parts: list[Part] = []
            for key, value in payload.items():
                name = validate_name(key)
                if isinstance(value, Mapping):
                    raise TypeError(f"payload[{name!r}] is a mapping; nest names with '/'")
                parts += await _plan_one(value, name)
        else:
            parts = await _plan_one(payload, None)
        check_names([p.name for p in parts])
        return parts

    async def snapshot(self, parts: list[Part]) -> list[StagedFile]:
        """Take ownership of the planned parts' bytes: after this the caller may reuse
        its buffers and files."""
        files: list[StagedFile] = []
        try:
            # All file copies in one worker-thread trip: a folder of many small files
            # would otherwise pay a trip per file.
            paths = [p for p in parts if isinstance(p.value, Path)]
            if paths:
                files += await anyio.to_thread.run_sync(self._stage_files, paths)
            for part in parts:
                if not isinstance(part.value, Path):
                    files.append(await self._stage_buffer(part.name, part.value))
        except BaseException:
            self.discard(files)
            raise
        order = {p.name: i for i, p in enumerate(parts)}
        return sorted(files, key=lambda f: order[f.name])

    def _stage_files(self, parts: list[Part]) -> list[StagedFile]:
        staged: list[StagedFile] = []
        try:
            for part in parts:
                assert isinstance(part.value, Path)
                staged.append(_stage_file(part.value, part.name, self.folder))
        except BaseException:
            self.discard(staged)
            raise
        return staged

    async def _stage_buffer(self, name: str, value: bytes | memoryview) -> StagedFile:
        if isinstance(value, bytes):
            return StagedFile(name, len(value), data=value)
        if value.nbytes < _OFFLOAD_BYTES:
            return StagedFile(name, value.nbytes, data=value.tobytes())
        buffer, data = await anyio.to_thread.run_sync(self._copy, value)
        return StagedFile(name, value.nbytes, data=data, buffer=buffer)

    def _copy(self, view: memoryview) -> tuple[mmap.mmap, memoryview]:
        """A private copy of ``view`` in a pooled buffer (worker thread: both the
        allocation and the copy, which faults the pages in, take time)."""
        buffer = self._take(view.nbytes)
        try:
            return buffer, _copy_into(buffer, view)
        except BaseException:
            self._give(buffer)
            raise

    def _take(self, size: int) -> mmap.mmap:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._free_bytes -= size
                return free.pop()
        # Anonymous memory: no zero-fill pass under the GIL, pages faulted in by the copy.
        # (MAP_POPULATE pre-faults faster, but holds the GIL or the address-space lock
        # meanwhile: loop lag p99 went from ~5 to ~16 ms at 64 MiB.)
        return mmap.mmap(-1, size)

    def _give(self, buffer: mmap.mmap) -> None:
        size = len(buffer)
        with self._lock:
            if self._free_bytes + size <= self._pool_room():
                self._free.setdefault(size, []).append(buffer)
                self._free_bytes += size

    def discard(self, files: list[StagedFile]) -> None:
        """Release staged files: delete file copies, return buffers to the pool."""
        for f in files:
            if f.path is not None:
                f.path.unlink(missing_ok=True)
            if f.buffer is not None and isinstance(f.data, memoryview):
                try:
                    f.data.release()
                except BufferError:
                    pass  # still exported (an abandoned upload): never reuse it
                else:
                    self._give(f.buffer)
            f.data = f.buffer = None

    def close(self) -> None:
        """Remove the staging folder, release its lock, drop the pool (worker thread)."""
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        with self._lock:
            self._free.clear()
            self._free_bytes = 0


def _copy_into(buffer: mmap.mmap, view: memoryview) -> memoryview:
    """Copy ``view`` into ``buffer`` without holding the GIL (worker thread).

    ``memoryview.tobytes`` holds the GIL for the whole copy, freezing the event loop
    for as long (about 30 ms for 64 MiB here); ``ctypes.memmove`` releases it.
    """
    n = view.nbytes
    out = memoryview(buffer)
    try:
        src = (ctypes.c_char * n).from_buffer(view)
    except TypeError:  # a read-only source: copy in slices, the GIL held per slice only
        for i in range(0, n, _COPY_CHUNK):
            out[i : i + _COPY_CHUNK] = view[i : i + _COPY_CHUNK]
        return out
    dst = (ctypes.c_char * n).from_buffer(buffer)
    ctypes.memmove(dst, src, n)
    del dst, src  # release the exports, so the buffer can be reused later
    return out


@dataclass
class Part:
    """One file of a payload, validated and sized but not yet copied.

    ``value`` is immutable ``bytes`` (kept as is), a flat view of a mutable buffer (to
    copy), or the path of a regular file (to copy into staging).
    """

    name: str
    size: int
    value: bytes | memoryview | Path


async def _plan_one(value: object, name: str | None) -> list[Part]:
    if isinstance(value, bytes):
        return [Part(name or DEFAULT_NAME, len(value), value)]
    if isinstance(value, str):
        data = await _maybe_offload(value.encode, len(value))
        return [Part(name or DEFAULT_NAME, len(data), data)]
    if isinstance(value, os.PathLike):
        return await anyio.to_thread.run_sync(_plan_path, Path(os.fspath(value)), name)
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        hint = ""
        if callable(getattr(value, "numpy", None)):  # a torch / tf tensor
            hint = " (for a tensor, pass tensor.numpy() — on the CPU — or its serialised bytes)"
        raise TypeError(
            f"unsupported payload type {type(value).__name__}: pass bytes, a buffer "
            "(bytearray, memoryview, numpy array), str, a pathlib.Path to a file or "
            f"directory, or a mapping of names to those{hint}"
        ) from None
    if not view.c_contiguous:
        raise TypeError("payload buffer is not C-contiguous; pass numpy.ascontiguousarray(x)")
    flat = view.cast("B") if view.ndim != 1 or view.format != "B" else view
    return [Part(name or DEFAULT_NAME, flat.nbytes, flat)]


async def _maybe_offload(fn: Callable[[], bytes], size: int) -> bytes:
    if size >= _OFFLOAD_BYTES:
        return await anyio.to_thread.run_sync(fn)
    return fn()


def _plan_path(src: Path, name: str | None) -> list[Part]:
    """The regular files at ``src`` (a file, or every file under a folder), sized (thread)."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"payload path {str(src)!r} does not exist") from None
    if stat.S_ISREG(st.st_mode):
        return [Part(validate_name(name or src.name), st.st_size, src)]
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"payload path {str(src)!r} is neither a regular file nor a directory")
    parts: list[Part] = []
    for root, dirs, filenames in os.walk(src):
        dirs.sort()
        for fn in sorted(filenames):
            path = Path(root, fn)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # a dangling link, or a file deleted while we walk
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, fifos: not checkpoint data
            rel = path.relative_to(src).as_posix()
            parts.append(Part(validate_name(f"{name}/{rel}" if name else rel), st.st_size, path))
    return parts


def _stage_file(src: Path, name: str, staging: Path) -> StagedFile:
    """Copy one file into staging, computing its CRC32C in the same pass."""
    fd, tmp = tempfile.mkstemp(dir=staging, prefix="staged-")
    crc = 0
    size = 0
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(_COPY_CHUNK):
                crc = crc32c.crc32c(chunk, crc)
                fout.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return StagedFile(name, size, path=Path(tmp), crc32c=crc)
