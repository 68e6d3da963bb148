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

import contextlib
import mmap
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import crc32c

from .. import _memory
from .._memory import Deferred, Gather
from .._names import check_names, validate_name
from .._state import STATE_NAME, State, plan_state
from .._types import Payload
from ._staging import StagingFolder

__all__ = ["DEFAULT_NAME", "OFFLOAD_BYTES", "Part", "StagedFile", "Stager", "maybe_offload"]

#: The name a single-buffer payload gets inside its checkpoint.
DEFAULT_NAME = "data"

T = TypeVar("T")

#: Copies at least this large go to a worker thread instead of running on the loop
#: (smaller ones take well under a millisecond: less than the trip to a thread).
OFFLOAD_BYTES = 4 << 20
_COPY_CHUNK = 8 << 20
#: A pooled buffer is reused for a smaller file when it wastes at most this much.
_POOL_SLACK = 8 << 20


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
    owner: Any = None  # other memory ``data`` views (pinned host memory), dropped on discard
    #: Finishes ``data`` (a :class:`~asynccp._memory.Deferred`'s), in a worker thread,
    #: before anything reads it: the commit runs it first (see ``_commit.complete``).
    complete: Callable[[], None] | None = None


class Stager:
    """Owns what ``save()`` staged: a private folder for file copies (locked while it is
    in use, see :mod:`asynccp._write._staging`), and the memory holding copies of mutable
    buffers and training state.

    The memory strategy (measurements in :mod:`asynccp._memory`): fresh buffers are
    anonymous maps advised for transparent huge pages, so a first save does not pay a
    page fault per 4 KiB; copies into fresh memory are split across threads; buffers
    are kept for reuse after their upload — any free buffer at least as large as a new
    file and at most ``_POOL_SLACK`` larger serves it, so sizes that change a little
    between saves reuse memory too. Staged and pooled memory together stay within the
    staging budget: ``pool_room()`` is the room left in it (the budget less what is
    staged), pooled buffers are unmapped to make room for a fresh one, and a buffer
    that does not fit when it comes back is unmapped.
    """

    def __init__(self, pool_room: Callable[[], int]) -> None:
        self._staging: StagingFolder | None = None
        self._pool_room = pool_room
        self._free: list[mmap.mmap] = []
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

        Raises TypeError, ValueError, InvalidNameError or FileNotFoundError for what
        cannot be saved.
        """
        if isinstance(payload, State):
            parts = _state_parts(payload, STATE_NAME)
        elif isinstance(payload, Mapping):
            parts = []
            for key, value in payload.items():
                name = validate_name(key)
                if isinstance(value, State):
                    parts += _state_parts(value, name)
                    continue
                if isinstance(value, Mapping):
                    raise TypeError(
                        f"payload[{name!r}] is a mapping: nest file names with '/' "
                        "({'a/b': ...}), or save training state (tensors, arrays, numbers, "
                        "nested mappings) as asynccp.State(mapping)"
                    )
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
                if isinstance(part.value, Gather):
                    files.append(await self._stage_gather(part.name, part.value))
                elif isinstance(part.value, (bytes, memoryview)):
                    files.append(await self._stage_buffer(part.name, part.value))
            staged = {f.name: f.data for f in files}
            for part in parts:  # completed later, from the files staged here
                if isinstance(part.value, Deferred):
                    deferred = part.value
                    files.append(
                        StagedFile(
                            part.name,
                            part.size,
                            data=memoryview(deferred.body),
                            complete=partial(deferred.complete, staged),
                        )
                    )
        except BaseException:
            self.discard(files, counted=sum(f.size for f in files))
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
        if value.nbytes < OFFLOAD_BYTES:
            return StagedFile(name, value.nbytes, data=value.tobytes())
        return await self._stage_gather(name, Gather(value.nbytes, sources=[(0, value)]))

    async def _stage_gather(self, name: str, g: Gather) -> StagedFile:
        """Assemble ``g`` in staging memory: its head, then each source at its offset."""
        if g.allocate is not None:  # memory of the gather's own choosing (pinned)
            owner, data = await anyio.to_thread.run_sync(g.fill_own)
            return StagedFile(name, g.size, data=data, owner=owner)
        if g.size < OFFLOAD_BYTES:  # small: on the loop, quicker than a thread trip
            out = bytearray(g.size)
            g.fill(out, threads=1)
            return StagedFile(name, g.size, data=memoryview(out))
        buffer, data = await anyio.to_thread.run_sync(self._copy, g)
        return StagedFile(name, g.size, data=data, buffer=buffer)

    def _copy(self, g: Gather) -> tuple[mmap.mmap, memoryview]:
        """``g`` assembled in a pooled or fresh buffer (worker thread: the allocation
        and the copy, which faults fresh pages in, take time)."""
        buffer, fresh = self._take(g.size)
        try:
            g.fill(buffer, threads=_memory.copy_threads(g.size, fresh=fresh))
            return buffer, memoryview(buffer)[: g.size]
        except BaseException:
            self._give(buffer, 0)
            raise

    def _take(self, size: int) -> tuple[mmap.mmap, bool]:
        """A buffer of at least ``size`` bytes, and whether it is fresh (never touched).

        The smallest pooled buffer that fits without wasting more than ``_POOL_SLACK``;
        else fresh memory, after unmapping pooled buffers until the pool fits in the
        room the staging budget leaves (``size`` is already reserved in it).
        """
        with self._lock:
            fits = [b for b in self._free if size <= len(b) <= size + _POOL_SLACK]
            if fits:
                best = min(fits, key=len)
                self._free.remove(best)
                self._free_bytes -= len(best)
                return best, False
            evicted = []
            while self._free and self._free_bytes > max(0, self._pool_room()):
                victim = max(self._free, key=len)
                self._free.remove(victim)
                self._free_bytes -= len(victim)
                evicted.append(victim)
        for victim in evicted:
            victim.close()
        return _memory.anon(size), True

    def prepare(self, parts: list[Part]) -> int:
        """Pool staging buffers, faulted in, for saves of ``parts``' shape (worker thread).

        For each part that a snapshot would copy into a pooled buffer, unless a pooled
        buffer already fits it: a fresh one, touched page by page now rather than
        during that save's copy. Within the budget: a buffer that does not fit in the
        room ``pool_room()`` leaves is not made. Returns the bytes made ready.
        """
        made = 0
        for part in parts:
            size = _buffer_size(part)
            if size is None:
                continue
            with self._lock:
                if any(size <= len(b) <= size + _POOL_SLACK for b in self._free):
                    continue
                if self._free_bytes + size > self._pool_room():
                    continue
            buffer = _memory.anon(size)
            _memory.touch(buffer, size)
            with self._lock:
                if self._free_bytes + len(buffer) <= self._pool_room():
                    self._free.append(buffer)
                    self._free_bytes += len(buffer)
                    made += size
                    continue
            buffer.close()  # the room went to a save meanwhile
        return made

    def _give(self, buffer: mmap.mmap, counted: int) -> None:
        """Pool ``buffer`` if it fits in the budget's room, else unmap it.

        ``counted``: bytes of the checkpoint being released that the queue still counts
        as staged (they become free room as the checkpoint leaves the queue).
        """
        size = len(buffer)
        with self._lock:
            if self._free_bytes + size <= self._pool_room() + counted:
                self._free.append(buffer)
                self._free_bytes += size
                return
        buffer.close()

    def discard(self, files: list[StagedFile], *, counted: int = 0) -> None:
        """Release staged files: delete file copies, return buffers to the pool.

        ``counted``: how many of these files' bytes the queue still counts as staged
        (the caller gives that room back right after): the checkpoint's size when it is
        done or its snapshot failed, 0 when the queue already let it go (superseded,
        abandoned).
        """
        for f in files:
            if f.path is not None:
                f.path.unlink(missing_ok=True)
            if f.buffer is not None and isinstance(f.data, memoryview):
                try:
                    f.data.release()
                except BufferError:
                    pass  # still exported (an abandoned upload): never reuse it
                else:
                    self._give(f.buffer, counted)
            f.data = f.buffer = f.owner = None

    def close(self) -> None:
        """Remove the staging folder, release its lock, drop the pool (worker thread)."""
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        with self._lock:
            free, self._free = self._free, []
            self._free_bytes = 0
        for buffer in free:
            with contextlib.suppress(BufferError):
                buffer.close()


def _state_parts(state: State, name: str) -> list[Part]:
    """The files of a training state (see :mod:`asynccp._state`) as parts."""
    return [
        Part(n, v.size if isinstance(v, (Gather, Deferred)) else len(v), v)
        for n, v in plan_state(state, name)
    ]


def _buffer_size(part: Part) -> int | None:
    """The size of the pooled buffer a snapshot of ``part`` takes; None if it takes none."""
    value = part.value
    if isinstance(value, Gather):
        return None if value.allocate is not None or value.size < OFFLOAD_BYTES else value.size
    if isinstance(value, memoryview) and value.nbytes >= OFFLOAD_BYTES:
        return value.nbytes
    return None


@dataclass
class Part:
    """One file of a payload, validated and sized but not yet copied.

    ``value`` is immutable ``bytes`` (kept as is), a flat view of a mutable buffer (to
    copy), the path of a regular file (to copy into staging), a :class:`Gather`
    (a file assembled from several buffers: a training state's tensors), or a
    :class:`Deferred` (asynccp's own bytes, finished from the other staged files by the
    commit: a training state's JSON with its chunk checksums).
    """

    name: str
    size: int
    value: bytes | memoryview | Path | Gather | Deferred


async def _plan_one(value: object, name: str | None) -> list[Part]:
    if isinstance(value, bytes):
        return [Part(name or DEFAULT_NAME, len(value), value)]
    if isinstance(value, str):
        data = await maybe_offload(value.encode, len(value))
        return [Part(name or DEFAULT_NAME, len(data), data)]
    if isinstance(value, os.PathLike):
        return await anyio.to_thread.run_sync(_plan_path, Path(os.fspath(value)), name)
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        hint = ""
        if callable(getattr(value, "numpy", None)) or isinstance(value, (int, float)):
            # a torch / tf tensor, a number: training state
            hint = (
                "; to save tensors and numbers with their dtype and shape, wrap the "
                "state: save(step, asynccp.State({...}))"
            )
        where = f" (file {name!r})" if name else ""
        raise TypeError(
            f"unsupported payload type {type(value).__name__}{where}: pass bytes, a buffer "
            "(bytearray, memoryview, numpy array), str, a pathlib.Path to a file or "
            f"directory, or a mapping of names to those{hint}"
        ) from None
    if not view.c_contiguous:
        raise TypeError("payload buffer is not C-contiguous; pass numpy.ascontiguousarray(x)")
    flat = view.cast("B") if view.ndim != 1 or view.format != "B" else view
    return [Part(name or DEFAULT_NAME, flat.nbytes, flat)]


async def maybe_offload(fn: Callable[[], T], size: int) -> T:
    """``fn()``: in a worker thread when it works on ``size`` >= :data:`OFFLOAD_BYTES`
    bytes, else on the loop."""
    if size >= OFFLOAD_BYTES:
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
