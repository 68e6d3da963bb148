"""Fetch regions of saved tensors: only the chunks they overlap, each one verified.

A :class:`Job` copies the overlap of one saved block (an entry of one part's
safetensors file, at an offset in its global tensor) with a region of the global
tensor into a destination array — a new array for ``read_state``, the caller's own
tensor for ``load_into``. Its bytes in the file are one or more contiguous *runs* (a
slice along the first dimension is one run; along another, one per row); each run is
widened to whole chunks (:data:`~._schema.CHUNK` bytes of the tensor's data), touching
chunk ranges are merged, and those ranges are read with ranged requests
(:class:`RangedSource`: ``pread`` locally, range requests on object stores) into one
staging buffer per block, the *span* from its first to its last range (pages it skips
are never touched). Every chunk read is checked against the CRC32C the save recorded
(:mod:`._chunks`), then the overlap is copied out of the buffer with one strided copy.

A file without a chunk table (format version 1), or a store that cannot read ranges,
is read whole once, verified against the manifest, and copied from.

Memory: every job's staging buffer is taken from a byte budget (8 MiB, or the largest
job's: one job always fits; :mod:`._partial` cuts a job that stages more than 4 MiB
into pieces of rows). A job whose overlap is one run of the file and one stretch of
its destination is read straight into the destination: only the partial chunks at its
two ends are staged. Jobs of one file are fetched together, one request list per
file, up to :data:`_BATCH` bytes of staging at a time; files side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.to_thread
import crc32c

from .._groups import first_leaf
from ..errors import CorruptCheckpointError
from ._chunks import Entry, FileLayout, combined, parse_header

__all__ = ["Job", "RangedSource", "SavedFile", "raw_dtype", "run_jobs"]

#: Bytes of staging buffers fetched in one request list (one thread trip).
_BATCH = 64 << 20
#: Runs of at least this many whole chunks are checked with one call (:func:`combined`).
_COMBINE_FROM = 16
#: Files fetched side by side.
_FILES_AT_ONCE = 8
#: Staging buffers that may exist at once, at least (more when one job needs more):
#: two pieces of ``_partial.STAGING_PIECE``, so that one is checked and copied while
#: the next is read.
_STAGING_AT_ONCE = 8 << 20


class RangedSource(Protocol):
    """A checkpoint (or one part of a sharded step) as the fetcher reads it; a
    :class:`~asynccp.Checkpoint` is one."""

    @property
    def step(self) -> int: ...

    @property
    def files(self) -> Mapping[str, Any]: ...

    @property
    def _ranged(self) -> bool: ...

    async def _read_ranges(
        self, name: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None: ...

    async def _read_buffer(self, name: str) -> Any: ...


def raw_dtype(itemsize: int) -> Any:
    """The numpy integer dtype of ``itemsize`` bytes: what bytes are copied as (any
    dtype, bfloat16 and float8 included, moves as integers of its size)."""
    import numpy as np

    return {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[itemsize]


@dataclass
class SavedFile:
    """One part's safetensors file: its entries, its chunk table, how to read it."""

    source: RangedSource
    name: str
    layout: FileLayout | None
    entries: dict[str, Entry] = field(default_factory=dict)
    _whole: Any = None  # the verified file, when it is read whole

    def bad(self, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"checkpoint {self.source.step}: {self.name!r} is not a valid safetensors file: {why}"
        )

    @property
    def ranged(self) -> bool:
        return self.layout is not None and self.layout.crcs is not None and self.source._ranged

    async def open(self) -> None:
        """Read and check the header: one ranged read checked against the JSON's
        record of it, or the whole file (verified) when it cannot be read in ranges."""
        size = self.source.files[self.name].size
        if self.ranged:
            assert self.layout is not None
            n = self.layout.header_size
            if n > size:
                raise self.bad(f"its header of {n} bytes is longer than the file")
            head = memoryview(bytearray(n))
            await self.source._read_ranges(self.name, [(0, n)], [head])
            if crc32c.crc32c(head) != self.layout.header_crc:
                raise CorruptCheckpointError(
                    f"checkpoint {self.source.step}: the header of {self.name!r} fails its "
                    "checksum; the stored bytes changed"
                )
        else:
            self._whole = await self.source._read_buffer(self.name)
            head = memoryview(self._whole)
        chunk = self.layout.chunk if self.layout is not None else 1
        self.entries = parse_header(head, size, self.bad, chunk)
        if self.layout is not None and self.layout.crcs is not None and self.entries:
            last = max(self.entries.values(), key=lambda e: e.first_chunk)
            need = last.first_chunk + -(-(last.end - last.begin) // chunk)
            if len(self.layout.crcs) != need:
                raise self.bad(f"its chunk table has {len(self.layout.crcs)} checksums, not {need}")

    def entry(self, name: str) -> Entry:
        found = self.entries.get(name)
        if found is None:
            raise self.bad(f"it has no tensor {name!r}")
        return found


@dataclass
class Job:
    """Copy the overlap of a saved block with ``region`` (global coordinates) into
    ``dest``, whose element 0 sits at ``origin`` (global coordinates)."""

    file: SavedFile
    entry: Entry
    offset: tuple[int, ...]  # the block's place in the global tensor
    region: tuple[tuple[int, int], ...]  # [start, stop) per dimension
    dest: Any  # a writable numpy array of raw_dtype(itemsize)
    origin: tuple[int, ...]
    key: str  # the path, for messages
    # worked out by plan():
    lo: tuple[int, ...] = ()
    hi: tuple[int, ...] = ()
    ranges: list[tuple[int, int]] = field(default_factory=list)  # tensor-relative
    _direct: tuple[int, int, memoryview] | None = None

    def plan(self) -> bool:
        """Work out the overlap and its chunk ranges; False when there is no overlap."""
        shape = self.entry.shape
        lo, hi = [], []
        for o, b, (r0, r1) in zip(self.offset, shape, self.region, strict=True):
            a, z = max(o, r0), min(o + b, r1)
            if a >= z:
                return False
            lo.append(a - o)
            hi.append(z - o)
        self.lo, self.hi = tuple(lo), tuple(hi)
        self.ranges = _chunk_ranges(shape, self.lo, self.hi, self.entry.itemsize, self._chunk)
        self._direct = self._direct_run()
        return True

    @property
    def _chunk(self) -> int:
        layout = self.file.layout
        return layout.chunk if layout is not None and self.file.ranged else 1 << 62

    @property
    def _where(self) -> tuple[slice, ...]:
        """The overlap's place in ``dest``."""
        return tuple(
            slice(o + a - g, o + z - g)
            for o, a, z, g in zip(self.offset, self.lo, self.hi, self.origin, strict=True)
        )

    def _direct_run(self) -> tuple[int, int, memoryview] | None:
        """When the overlap is one run of the file and one contiguous stretch of
        ``dest``: that run (tensor-relative bytes) and ``dest``'s memory for it — read
        there directly, with no staging copy (only the chunks' edges are staged)."""
        shape, itemsize = self.entry.shape, self.entry.itemsize
        strides = [itemsize * math.prod(shape[d + 1 :]) for d in range(len(shape))]
        k = len(shape) - 1
        while k > 0 and self.lo[k] == 0 and self.hi[k] == shape[k]:
            k -= 1
        if any(self.hi[d] - self.lo[d] != 1 for d in range(k)):
            return None  # several runs
        view = self.dest[self._where]
        if not (view.flags.c_contiguous and view.flags.writeable) or not view.size:
            return None
        start = sum(lo * s for lo, s in zip(self.lo, strides, strict=True))
        return start, start + view.nbytes, view.reshape(-1).view("u1").data

    @property
    def span(self) -> tuple[int, int]:
        return self.ranges[0][0], self.ranges[-1][1]

    @property
    def staging(self) -> int:
        """Bytes of staging buffers the job needs (a direct read: the chunks' edges)."""
        if self._direct is not None:
            start, end, _ = self._direct
            return (start - self.span[0]) + (self.span[1] - end)
        start, end = self.span
        return end - start

    def buffers(self) -> list[tuple[int, int, memoryview]]:
        """Where each fetched byte goes: ``(start, end, buffer)``, tensor-relative, in
        order, covering ``ranges`` exactly."""
        import numpy as np

        if self._direct is not None:
            (first, last), (start, end, into) = self.span, self._direct
            head = memoryview(bytearray(start - first))
            tail = memoryview(bytearray(last - end))
            parts = [(first, start, head), (start, end, into), (end, last, tail)]
            return [p for p in parts if p[1] > p[0]]
        span = self.span[0]
        bounce = np.empty(self.staging, dtype=np.uint8).data
        return [(a, z, bounce[a - span : z - span]) for a, z in self.ranges]

    def finish(self, segments: list[tuple[int, int, memoryview]]) -> None:
        """Check every chunk fetched, then copy the overlap into ``dest`` unless it was
        read there directly (worker thread)."""
        if self.file.ranged:
            self._verify(segments)
        if self._direct is not None:
            return
        import numpy as np

        shape, itemsize = self.entry.shape, self.entry.itemsize
        strides = [itemsize * math.prod(shape[d + 1 :]) for d in range(len(shape))]
        first_byte = sum(lo * s for lo, s in zip(self.lo, strides, strict=True)) - self.span[0]
        bounce: Any = segments[0][2].obj  # the one staging buffer all segments view
        src = np.ndarray(
            tuple(z - a for a, z in zip(self.lo, self.hi, strict=True)),
            dtype=raw_dtype(itemsize),
            buffer=bounce,
            offset=first_byte,
            strides=tuple(strides),
        )
        self.dest[self._where] = src

    def _verify(self, segments: list[tuple[int, int, memoryview]]) -> None:
        """Check every chunk the segments hold: those inside one segment together
        (:meth:`_check_inside`), those across two (a direct read's edges) chained."""
        layout = self.file.layout
        assert layout is not None and layout.crcs is not None
        chunk, crcs, first = layout.chunk, layout.crcs, self.entry.first_chunk
        size = self.entry.end - self.entry.begin
        split: dict[int, list[tuple[int, memoryview]]] = {}
        for start, end, view in segments:
            k0 = -(-start // chunk)  # the first chunk that starts inside
            k1 = end // chunk if end < size else -(-end // chunk)  # past the last inside
            if k1 > k0:
                self._check_inside(view, k0 * chunk - start, k0, k1)
            # the pieces of chunks this segment holds only part of
            if start % chunk and start < min(k0 * chunk, end):
                split.setdefault(start // chunk, []).append(
                    (start, view[: min(k0 * chunk, end) - start])
                )
            tail = max(k1, k0) * chunk
            if tail < end:
                split.setdefault(tail // chunk, []).append((tail, view[tail - start :]))
        for k, pieces in split.items():
            crc = 0
            for _, piece in sorted(pieces, key=lambda p: p[0]):
                crc = crc32c.crc32c(piece, crc)
            if crc != crcs[first + k]:
                self._corrupt(k * chunk, chunk)

    def _check_inside(self, view: memoryview, base: int, k0: int, k1: int) -> None:
        """Chunks ``k0`` to ``k1`` (exclusive), whole in ``view`` from ``base``: a long
        run with one CRC32C call, against the chunks' checksums combined (see
        :func:`~._chunks.combined`); a short one, or one that fails, chunk by chunk."""
        layout = self.file.layout
        assert layout is not None and layout.crcs is not None
        chunk, crcs, first = layout.chunk, layout.crcs, self.entry.first_chunk
        size = self.entry.end - self.entry.begin
        full = k1 if k1 * chunk <= size else k1 - 1  # the tensor's last chunk is shorter
        if full - k0 >= _COMBINE_FROM:
            run = view[base : base + (full - k0) * chunk]
            whole = crc32c.crc32c(run) == combined(crcs[first + k0 : first + full], chunk)
            last = (
                full == k1
                or crc32c.crc32c(view[base + (full - k0) * chunk : base + size - k0 * chunk])
                == crcs[first + full]
            )
            if whole and last:
                return
        for k in range(k0, k1):
            at = base + (k - k0) * chunk
            if crc32c.crc32c(view[at : at + min(chunk, size - k * chunk)]) != crcs[first + k]:
                self._corrupt(k * chunk, chunk)

    def _corrupt(self, at: int, chunk: int) -> None:
        end = min(at + chunk, self.entry.end - self.entry.begin)
        raise CorruptCheckpointError(
            f"checkpoint {self.file.source.step}: tensor {self.key!r} ({self.file.name!r}, "
            f"bytes {at}-{end} of its data) fails its checksum; the stored bytes changed"
        )


def _chunk_ranges(
    shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...], itemsize: int, chunk: int
) -> list[tuple[int, int]]:
    """The tensor-relative byte ranges, widened to whole chunks and merged where they
    touch, that hold the box ``[lo, hi)`` of a C-contiguous tensor of ``shape``."""
    import numpy as np

    nbytes = math.prod(shape) * itemsize
    ndim = len(shape)
    # Dimensions after k are taken whole: each run is contiguous from dimension k on.
    k = ndim - 1
    while k > 0 and lo[k] == 0 and hi[k] == shape[k]:
        k -= 1
    strides = [itemsize * math.prod(shape[d + 1 :]) for d in range(ndim)]
    if ndim == 0:
        return [(0, min(nbytes, chunk))] if nbytes else []
    run = (hi[k] - lo[k]) * strides[k]
    starts = np.array([lo[k] * strides[k]], dtype=np.int64)
    for d in range(k - 1, -1, -1):
        steps = np.arange(lo[d], hi[d], dtype=np.int64) * strides[d]
        starts = np.add.outer(steps, starts).reshape(-1)
    first = starts // chunk * chunk
    last = np.minimum(-(-(starts + run) // chunk) * chunk, nbytes)
    # A new range where a run's first chunk starts after everything before it ended.
    reach = np.maximum.accumulate(last)
    new = np.ones(len(first), dtype=bool)
    new[1:] = first[1:] > reach[:-1]
    begins = first[new]
    ends = np.append(reach[np.flatnonzero(new)[1:] - 1], reach[-1])
    return list(zip(begins.tolist(), ends.tolist(), strict=True))


class _Budget:
    """Bytes of staging buffers that may exist at once (used on the event loop only)."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._changed = anyio.Event()

    def try_take(self, n: int) -> bool:
        if self.free < n:
            return False
        self.free -= n
        return True

    async def take(self, n: int) -> None:
        while not self.try_take(n):
            await self._changed.wait()

    def give(self, n: int) -> None:
        self.free += n
        self._changed.set()
        self._changed = anyio.Event()


async def run_jobs(jobs: Sequence[Job]) -> None:
    """Run every job (already planned): per file, batches of jobs fetched with one
    request list each; files side by side; staging within a byte budget."""
    if not jobs:
        return
    by_file: dict[int, list[Job]] = {}
    files: dict[int, SavedFile] = {}
    for job in jobs:
        by_file.setdefault(id(job.file), []).append(job)
        files[id(job.file)] = job.file
    budget = _Budget(max(max(job.staging for job in jobs), _STAGING_AT_ONCE))
    limiter = anyio.CapacityLimiter(_FILES_AT_ONCE)

    async def batch(file: SavedFile, group: list[Job], size: int) -> None:
        try:
            segments = [job.buffers() for job in group]
            ranges: list[tuple[int, int]] = []
            outs: list[memoryview] = []
            for job, parts in zip(group, segments, strict=True):
                for a, z, view in parts:
                    ranges.append((job.entry.begin + a, job.entry.begin + z))
                    outs.append(view)
            if file.ranged:
                await file.source._read_ranges(file.name, ranges, outs)
            else:  # read whole (verified against the manifest) once: copied from there
                whole = memoryview(file._whole).cast("B")

                def copy() -> None:
                    for (a, z), out in zip(ranges, outs, strict=True):
                        out[:] = whole[a:z]

                await anyio.to_thread.run_sync(copy)

            def finish() -> None:
                for job, parts in zip(group, segments, strict=True):
                    job.finish(parts)

            await anyio.to_thread.run_sync(finish)
        finally:
            budget.give(size)

    async def one_file(key: int) -> None:
        async with limiter:
            group: list[Job] = []
            size = 0
            for job in sorted(by_file[key], key=lambda j: (j.entry.begin, j.span[0])):
                # A batch never waits for room while it holds some: it is fetched
                # first (so files waiting on each other cannot all hold part of it).
                need = job.staging
                if group and (size + need > _BATCH or not budget.try_take(need)):
                    await batch(files[key], group, size)
                    group, size = [], 0
                if not group:
                    await budget.take(need)
                group.append(job)
                size += need
            if group:
                await batch(files[key], group, size)

    try:
        async with anyio.create_task_group() as tg:
            for key in by_file:
                tg.start_soon(one_file, key)
    except Exception as e:  # a task group wraps its children's errors
        leaf = first_leaf(e)
        raise leaf from leaf.__cause__
