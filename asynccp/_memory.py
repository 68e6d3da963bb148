"""Memory at memory speed: staging buffers that do not fault per page, GIL-free copies.

A snapshot of mutable state is one copy, and the caller waits for it. Measured here
(2-core VM, Linux 6.18, 128 MiB, medians): a copy into fresh anonymous memory took
~100 ms, because every 4 KiB page faults and is zeroed on first touch; into the same
memory advised for transparent huge pages (``MADV_HUGEPAGE``: one fault per 2 MiB)
21 ms with one thread and 14 ms split across two threads (the kernel zeroes the
pages of each half in parallel); into memory touched before, 13-16 ms, one thread or
two (the bus is the limit then). Pre-faulting with ``MAP_POPULATE`` alone took 63 ms.
So: fresh buffers are anonymous maps advised for huge pages, and copies into fresh
memory are split across threads; copies into reused memory run on one.

Copies go through ``ctypes.memmove``, which releases the GIL (``bytes(view)`` and
slice assignment hold it for the whole copy, freezing the event loop meanwhile).
Addresses of arbitrary buffers — read-only ones included, such as ``bytes`` or
obstore's ``Bytes`` — come from the buffer protocol (``PyObject_GetBuffer``), which
also keeps the exporter from resizing or freeing them during the copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HUGE_PAGE",
    "Deferred",
    "Gather",
    "Landing",
    "address",
    "anon",
    "copy_spans",
    "copy_threads",
    "to_bytes",
    "touch",
    "writable_copy",
]

#: The transparent huge page size on x86-64 and most arm64 kernels.
HUGE_PAGE = 2 << 20
#: Below this, a buffer is not worth a huge page (its first touch would fault in 2 MiB).
_HUGE_FROM = 4 << 20
#: Copies into fresh memory at least this large are split across threads.
_SPLIT_FROM = 16 << 20
#: No thread gets less than this much to copy.
_MIN_SHARE = 8 << 20
#: At most this many threads copy at once (the kernel zeroing pages is what scales).
_MAX_THREADS = 4
#: Objects smaller than this are turned into ``bytes`` the plain way.
_BYTES_FROM = 1 << 20
#: Remote objects at least this large are streamed into their landing (see Landing);
#: smaller ones are received whole and copied the plain way after it.
LANDING_FROM = 1 << 20
#: The chunk a landing is filled with. Measured on the moto server, the time of a raw
#: get over that of streaming into a landing (12 interleaved rounds): 1 MiB chunks
#: 0.92 at 2 MiB, 0.93 at 16 MiB, 1.18 at 64 MiB; 4 MiB chunks 0.77 at 16 MiB (fewer,
#: larger receive buffers, fresh memory each: their page faults are the download's);
#: 256 KiB chunks 0.74 at 2 MiB (a pass through Python per chunk).
LANDING_CHUNK = 1 << 20
_CPYTHON = sys.implementation.name == "cpython"


class _PyBuffer(ctypes.Structure):
    """``Py_buffer`` (the buffer protocol's view struct), for ``PyObject_GetBuffer``."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


if _CPYTHON:
    _get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    _get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
    _get_buffer.restype = ctypes.c_int
    _release_buffer = ctypes.pythonapi.PyBuffer_Release
    _release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
    _release_buffer.restype = None
    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    _new_bytes.restype = ctypes.py_object
    _bytes_data = ctypes.pythonapi.PyBytes_AsString
    _bytes_data.argtypes = (ctypes.py_object,)
    _bytes_data.restype = ctypes.c_void_p

_PyBUF_WRITABLE = 0x0001
_PyBUF_C_CONTIGUOUS = 0x0038  # 0x0020 | PyBUF_STRIDES (0x0010 | PyBUF_ND 0x0008)

_libc: Any = None


def _madvise(addr: int, length: int, advice: int) -> None:
    """``madvise`` on a raw range (best effort: advice only)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), ctypes.c_int(advice))


@contextlib.contextmanager
def address(obj: Any, *, writable: bool = False) -> Iterator[tuple[int, int]]:
    """``(address, length)`` of a C-contiguous buffer, held exported while in the block.

    Works for read-only buffers too (``bytes``, obstore's ``Bytes``, a read-only
    ``memoryview``), which ``ctypes.c_char.from_buffer`` refuses.
    """
    if not _CPYTHON:  # pragma: no cover - other interpreters: writable buffers only
        flat = memoryview(obj).cast("B")
        arr = (ctypes.c_char * flat.nbytes).from_buffer(flat)
        try:
            yield ctypes.addressof(arr), flat.nbytes
        finally:
            del arr
            flat.release()
        return
    flags = _PyBUF_C_CONTIGUOUS | (_PyBUF_WRITABLE if writable else 0)
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), flags) != 0:  # pragma: no cover - raised above
        raise TypeError(f"{type(obj).__name__} is not a C-contiguous buffer")
    try:
        yield view.buf or 0, view.len
    finally:
        _release_buffer(ctypes.byref(view))


def anon(size: int) -> mmap.mmap:
    """Fresh anonymous memory of at least ``size`` bytes, advised for huge pages.

    Large maps are rounded up to whole huge pages (the untouched tail costs nothing)
    so the kernel can back all of them with 2 MiB pages; where transparent huge pages
    are off (``never``), this is plain memory and faults per 4 KiB page.
    """
    # Private: ``mmap.mmap(-1, n)`` alone makes a *shared* anonymous map, which is
    # shmem, where huge pages follow ``shmem_enabled`` (usually ``never``).
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20)
    if size < _HUGE_FROM:
        return mmap.mmap(-1, max(size, 1), flags=flags)
    rounded = -(-size // HUGE_PAGE) * HUGE_PAGE
    buf = mmap.mmap(-1, rounded, flags=flags)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):
            buf.madvise(advice)
    return buf


def touch(buf: mmap.mmap, size: int) -> None:
    """Fault in the first ``size`` bytes of a fresh map (worker thread), split across
    threads like a copy into it would be, so a later copy into it runs at memory speed.
    """
    with address(buf, writable=True) as (addr, room):
        n = min(size, room)
        threads = copy_threads(n, fresh=True)
        if threads <= 1:
            ctypes.memset(addr, 0, n)
            return
        share = -(-n // threads)
        helpers = [
            threading.Thread(target=ctypes.memset, args=(addr + off, 0, min(share, n - off)))
            for off in range(share, n, share)
        ]
        for t in helpers:
            t.start()
        try:
            ctypes.memset(addr, 0, min(share, n))
        finally:
            for t in helpers:
                t.join()


def copy_threads(size: int, *, fresh: bool) -> int:
    """How many threads should copy ``size`` bytes (into fresh or reused memory)."""
    if not fresh or size < _SPLIT_FROM:
        return 1
    cpus = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, cpus, size // _MIN_SHARE))


def copy_spans(dst: int, spans: Sequence[tuple[int, int, int]], threads: int = 1) -> None:
    """Copy each ``(offset, source address, length)`` span to ``dst + offset``.

    With ``threads > 1`` the bytes are split evenly (spans cut where needed) and all
    but the first share run on short-lived threads; the GIL is released throughout.
    Worker-thread code: this blocks until every share is copied.
    """
    total = sum(n for _, _, n in spans)
    if threads <= 1 or total < 2 * _MIN_SHARE:
        for off, src, n in spans:
            ctypes.memmove(dst + off, src, n)
        return
    share = -(-total // threads)
    shares: list[list[tuple[int, int, int]]] = [[]]
    room = share
    for off, src, n in spans:
        while n:
            take = min(n, room)
            shares[-1].append((off, src, take))
            off, src, n, room = off + take, src + take, n - take, room - take
            if room == 0 and len(shares) < threads:
                shares.append([])
                room = share
    errors: list[BaseException] = []

    def run(part: list[tuple[int, int, int]]) -> None:
        try:
            for off, src, n in part:
                ctypes.memmove(dst + off, src, n)
        except BaseException as e:  # pragma: no cover - memmove does not raise
            errors.append(e)

    helpers = [threading.Thread(target=run, args=(part,), daemon=True) for part in shares[1:]]
    for t in helpers:
        t.start()
    try:
        run(shares[0])
    finally:
        for t in helpers:
            t.join()
    if errors:  # pragma: no cover
        raise errors[0]


def to_bytes(buffer: Any) -> bytes:
    """``buffer`` as ``bytes``: itself when it is ``bytes``; else one GIL-free copy.

    ``bytes(buffer)`` (or obstore's ``Bytes.to_bytes()``) copies holding the GIL, into
    memory that faults per page: 64 MiB froze the event loop for ~60 ms here. This
    copies into a new ``bytes`` object without the GIL, its memory advised for huge
    pages and the copy split across threads (about 18 ms for 64 MiB here).

    The new object is made with ``PyBytes_FromStringAndSize(NULL, n)`` and filled
    before anything else can see it — what the C API documents for building a
    ``bytes`` in place.
    """
    if type(buffer) is bytes:
        return buffer
    with address(buffer) as (src, n):
        if not _CPYTHON or n < _BYTES_FROM:
            return bytes(memoryview(buffer).cast("B"))
        out: bytes = _new_bytes(None, n)
        dst = _bytes_data(out)
        lo = -(-dst // HUGE_PAGE) * HUGE_PAGE
        hi = (dst + n) // HUGE_PAGE * HUGE_PAGE
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None and hi - lo >= _HUGE_FROM:
            _madvise(lo, hi - lo, advice)
        copy_spans(dst, [(0, src, n)], copy_threads(n, fresh=True))
    return out


def writable_copy(buffer: Any) -> Any:
    """A writable copy of ``buffer`` in fresh memory (one GIL-free copy)."""
    with address(buffer) as (src, n):
        if n == 0:
            return bytearray()
        out = anon(n)
        with address(out, writable=True) as (dst, _):
            copy_spans(dst, [(0, src, n)], copy_threads(n, fresh=True))
    return memoryview(out)[:n]


class Landing:
    """Memory for an object of known size, filled chunk by chunk as it downloads.

    A remote read must hand back ``bytes`` (or, for ``read_state``, a writable buffer),
    so the body is copied once out of what obstore received. Copying a whole body at
    the end doubled the time of ``read()`` from the moto S3 server here: the copy
    into fresh memory paid a page fault per page (in this VM, whose host backs guest
    memory lazily, 0.1-1.5 s for 128 MiB under load), after the download instead of
    during it. A landing is made before the request; each chunk (1 MiB) is copied in
    as it arrives, without the GIL, while the next one is on its way; a helper thread
    faults the pages in ahead of the copies (``MADV_POPULATE_WRITE``, which never
    changes what is in them). Measured here: a raw get of 16 MiB took 0.93 the time,
    against 0.68 for a copy after the download (see :data:`LANDING_CHUNK`).

    ``kind="bytes"``: a new ``bytes`` object (CPython), filled before anything else
    sees it. ``kind="map"``: anonymous memory advised for huge pages, writable (the
    arrays ``read_state`` builds on it may be changed). Use :meth:`write` for each
    chunk in order, :meth:`result` at the end, :meth:`close` always.
    """

    def __init__(self, size: int, *, kind: str) -> None:
        self.size = size
        self.filled = 0
        self._arr: Any = None
        self._out: Any
        if kind == "bytes":
            if not _CPYTHON:  # pragma: no cover
                raise ValueError("a bytes landing needs CPython")
            self._out = _new_bytes(None, size)
            self._addr: int = _bytes_data(self._out)
            lo = -(-self._addr // HUGE_PAGE) * HUGE_PAGE
            hi = (self._addr + size) // HUGE_PAGE * HUGE_PAGE
            advice = getattr(mmap, "MADV_HUGEPAGE", None)
            if advice is not None and hi - lo >= _HUGE_FROM:
                _madvise(lo, hi - lo, advice)
        else:
            self._out = anon(size)
            self._arr = (ctypes.c_char * size).from_buffer(self._out)
            self._addr = ctypes.addressof(self._arr)
        self._helper = threading.Thread(target=_populate, args=(self._addr, size), daemon=True)
        self._helper.start()

    def write(self, chunk: Any) -> None:
        """Copy the next chunk in; ValueError if it would run past ``size``."""
        with address(chunk) as (src, n):
            if self.filled + n > self.size:
                raise ValueError(f"more than the {self.size} bytes expected arrived")
            ctypes.memmove(self._addr + self.filled, src, n)
        self.filled += n

    def result(self) -> Any:
        """The filled ``bytes``, or a writable view of the map."""
        if self.filled != self.size:
            raise ValueError(f"{self.filled} bytes arrived, {self.size} expected")
        self._helper.join()
        if isinstance(self._out, bytes):
            return self._out
        self._arr = None  # the map's export: the view below keeps the map alive instead
        return memoryview(self._out)[: self.size]

    def close(self) -> None:
        """Wait for the helper thread; the memory goes with the last reference to it."""
        self._helper.join()
        self._arr = None


_MADV_POPULATE_WRITE = 23  # Linux 5.14+; Python 3.11's mmap module has no name for it


def _populate(addr: int, size: int) -> None:
    """Fault in the whole pages of ``[addr, addr + size)`` without writing to them
    (a no-op where the kernel does not know ``MADV_POPULATE_WRITE``)."""
    lo = -(-addr // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = (addr + size) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo and sys.platform.startswith("linux"):
        _madvise(lo, hi - lo, _MADV_POPULATE_WRITE)


@dataclass(eq=False)
class Gather:
    """One file assembled at snapshot time: ``head``, then each source at its offset.

    A source is ``(offset, buffer)`` — any C-contiguous buffer, exported while it is
    copied — or ``(offset, address, length)``: raw memory kept valid by an object in
    ``keep``, the address an ``int`` or a function that returns it when the copy
    starts (a tensor's storage, checked then: it may have been resized meanwhile).
    ``allocate``, when set, makes the file in memory of the gather's choosing (pinned
    host memory, for GPU tensors): it returns ``(owner, writable buffer)``, and
    ``device`` then copies what lives on a device into that buffer.
    """

    size: int
    head: bytes = b""
    sources: list[tuple[int, Any] | tuple[int, Any, int]] = field(default_factory=list)
    keep: list[Any] = field(default_factory=list)
    allocate: Callable[[int], tuple[Any, Any]] | None = None
    device: Callable[[Any], None] | None = None

    def fill(self, out: Any, *, threads: int) -> None:
        """Write the file into the writable buffer ``out`` (at least ``size`` bytes)."""
        with contextlib.ExitStack() as stack:
            dst, room = stack.enter_context(address(out, writable=True))
            if room < self.size:
                raise ValueError(f"a staging buffer of {room} bytes for {self.size}")
            spans: list[tuple[int, int, int]] = []
            if self.head:
                addr, n = stack.enter_context(address(self.head))
                spans.append((0, addr, n))
            for source in self.sources:
                if len(source) == 3:
                    off, where, n = source
                    spans.append((off, where if isinstance(where, int) else where(), n))
                else:
                    off, buf = source
                    addr, n = stack.enter_context(address(buf))
                    spans.append((off, addr, n))
            end = max((off + n for off, _, n in spans), default=0)
            if end > self.size:
                raise ValueError(f"sources end at byte {end}, past the file's {self.size}")
            copy_spans(dst, spans, threads)

    def fill_own(self) -> tuple[Any, memoryview]:
        """The file in memory from ``allocate``, device sources copied too (worker thread)."""
        assert self.allocate is not None
        owner, out = self.allocate(self.size)
        self.fill(out, threads=1)
        if self.device is not None:
            self.device(out)
        return owner, memoryview(out).cast("B")[: self.size]


@dataclass
class Deferred:
    """A file whose bytes are completed after the snapshot, off the caller's path.

    ``body`` (``size`` bytes, asynccp's own: never the caller's) is staged as it is, and
    ``complete(staged)`` — given the checkpoint's other staged files by name — finishes
    it in a worker thread before anything reads it (the upload). A training state's JSON
    is one: its chunk checksums come from the staged copy of its tensors.
    """

    size: int
    body: bytearray
    complete: Callable[[Mapping[str, Any]], None]
