"""Unit tests of ``asynccp._memory``: anonymous maps, buffer addresses, GIL-free copies
(split across threads, odd sizes), ``to_bytes``, ``writable_copy``, ``Gather`` and
``Landing``.

Sizes straddle the thresholds where the code changes course: ``_BYTES_FROM`` (1 MiB,
``to_bytes`` copies without the GIL), ``_HUGE_FROM`` (4 MiB, maps rounded to huge
pages) and ``2 * _MIN_SHARE`` / ``_SPLIT_FROM`` (16 MiB, copies split across threads).
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os

import numpy as np
import obstore
import pytest
from obstore.store import MemoryStore

from asynccp import _memory
from asynccp._memory import (
    HUGE_PAGE,
    Gather,
    Landing,
    address,
    anon,
    copy_spans,
    copy_threads,
    to_bytes,
    writable_copy,
)

MiB = 1 << 20
#: Large enough that copy_spans really splits a copy (at least 2 * _MIN_SHARE).
SPLIT = 2 * _memory._MIN_SHARE


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes where every position differs from its neighbours (a shifted or
    dropped span shows)."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# -- anon -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4 * MiB - 1])
def test_anon_small_maps_are_the_size_asked_for(size: int) -> None:
    buf = anon(size)
    try:
        assert len(buf) == max(size, 1)  # an empty map is not allowed: one byte
        assert buf[:16] == bytes(min(16, len(buf)))  # fresh memory is zero
    finally:
        buf.close()


@pytest.mark.parametrize("size", [4 * MiB, 4 * MiB + 1, 5 * HUGE_PAGE - 3])
def test_anon_large_maps_are_whole_huge_pages(size: int) -> None:
    buf = anon(size)
    try:
        assert len(buf) >= size and len(buf) % HUGE_PAGE == 0
        assert len(buf) - size < HUGE_PAGE
        buf[size - 1] = 7  # writable, all of it
        assert buf[size - 1] == 7 and buf[0] == 0
    finally:
        buf.close()


def test_touch_zero_fills_the_part_asked_for() -> None:
    for n in (10, SPLIT + 3):
        buf = anon(n)
        try:
            _memory.touch(buf, n)
            assert buf[:8] == bytes(8) and buf[n - 8 : n] == bytes(8)
        finally:
            buf.close()


# -- address ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda d: d,  # bytes: read-only
        bytearray,
        lambda d: memoryview(d),  # read-only view
        lambda d: np.frombuffer(d, dtype=np.uint8).reshape(4, -1),  # 2-D, read-only
    ],
    ids=["bytes", "bytearray", "memoryview", "ndarray"],
)
def test_address_gives_the_buffer_s_own_bytes(make: object) -> None:
    data = pattern(4096)
    obj = make(data)  # type: ignore[operator]
    with address(obj) as (addr, n):
        assert n == len(data)
        assert ctypes.string_at(addr, n) == data


def test_address_of_an_empty_buffer() -> None:
    with address(b"") as (addr, n):
        assert n == 0
        assert isinstance(addr, int)


def test_address_keeps_the_buffer_exported() -> None:
    buf = bytearray(b"0123456789")
    with address(buf, writable=True) as (addr, _):
        with pytest.raises(BufferError):
            buf.extend(b"more")  # it cannot move or be freed while its address is in use
        ctypes.memmove(addr, b"ab", 2)
    assert buf == bytearray(b"ab23456789")
    buf.extend(b"!")  # released after the block
    assert len(buf) == 11


def test_address_writable_refuses_a_read_only_buffer() -> None:
    with pytest.raises(BufferError), address(b"immutable", writable=True):
        pass


def test_address_refuses_a_non_contiguous_buffer() -> None:
    arr = np.arange(100, dtype=np.uint8)[::2]
    with pytest.raises(ValueError, match="not C-contiguous"), address(arr):
        pass


def test_address_refuses_what_is_no_buffer() -> None:
    with pytest.raises(TypeError), address("a str is no buffer"):
        pass


# -- copy_threads, copy_spans ---------------------------------------------------------------


def test_copy_threads_only_splits_large_copies_into_fresh_memory() -> None:
    assert copy_threads(1 << 30, fresh=False) == 1
    assert copy_threads(_memory._SPLIT_FROM - 1, fresh=True) == 1
    big = copy_threads(1 << 30, fresh=True)
    assert 1 <= big <= min(_memory._MAX_THREADS, os.cpu_count() or 1)
    # no thread gets less than _MIN_SHARE
    assert copy_threads(_memory._SPLIT_FROM, fresh=True) <= (
        _memory._SPLIT_FROM // _memory._MIN_SHARE
    )


def spans_copy(total: int, cuts: list[int], threads: int, seed: int = 1) -> None:
    """Copy ``pattern(total)`` cut into spans at ``cuts``, in reverse order, and each to
    the same offset it has in the source; check every byte, and nothing past ``total``."""
    src = bytearray(pattern(total, seed))
    bounds = [0, *cuts, total]
    dst = bytearray(total + 64)
    dst[total:] = b"\xee" * 64  # a guard: the copy must stop at total
    with address(src) as (s, _), address(dst, writable=True) as (d, _):
        spans = [(lo, s + lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
        copy_spans(d, spans[::-1], threads)
    assert dst[:total] == src
    assert dst[total:] == b"\xee" * 64


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 7])
def test_copy_spans_split_across_threads_cuts_spans_correctly(threads: int) -> None:
    total = SPLIT + 12345  # not a multiple of any thread count: uneven shares
    cuts = [1, 3 * MiB + 1, 8 * MiB, 8 * MiB + 1, SPLIT - 5]  # some across share borders
    spans_copy(total, cuts, threads)


@pytest.mark.parametrize("threads", [2, 4])
def test_copy_spans_when_the_shares_end_exactly_at_span_borders(threads: int) -> None:
    total = SPLIT  # shares of total / threads, exactly where the spans are cut
    spans_copy(total, [total // threads * k for k in range(1, threads)], threads)


def test_copy_spans_with_one_large_span_and_odd_size() -> None:
    spans_copy(SPLIT + 1, [], threads=3)


def test_copy_spans_below_the_split_size_and_with_empty_spans() -> None:
    spans_copy(1001, [0, 0, 500, 500, 1001], threads=4)  # empty spans included
    spans_copy(SPLIT - 1, [7], threads=4)  # just below: copied on this thread


def test_copy_spans_places_each_span_at_its_own_offset() -> None:
    a, b = pattern(3000, 2), pattern(5000, 3)
    dst = bytearray(10_000)
    with address(a) as (pa, na), address(b) as (pb, nb), address(dst, writable=True) as (d, _):
        copy_spans(d, [(7000, pa, na), (100, pb, nb)])
    assert dst[100:5100] == b and dst[7000:10_000] == a
    assert dst[:100] == bytes(100) and dst[5100:7000] == bytes(1900)


def test_copy_spans_with_nothing_to_copy() -> None:
    copy_spans(0, [], threads=4)  # no address is touched


# -- to_bytes, writable_copy ---------------------------------------------------------------


def test_to_bytes_returns_bytes_themselves() -> None:
    data = pattern(2 * MiB)
    assert to_bytes(data) is data


@pytest.mark.parametrize("size", [0, 1, _memory._BYTES_FROM - 1, _memory._BYTES_FROM, SPLIT + 3])
def test_to_bytes_copies_any_buffer(size: int) -> None:
    data = pattern(size)
    for source in (bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        out = to_bytes(source)
        assert type(out) is bytes
        assert out == data


def test_to_bytes_is_a_copy() -> None:
    source = bytearray(pattern(2 * MiB))
    out = to_bytes(source)
    source[0] ^= 0xFF
    assert out[0] != source[0]


def test_to_bytes_of_a_multi_byte_array_is_its_raw_memory() -> None:
    arr = np.arange(300_000, dtype=np.float64).reshape(1000, 300)  # 2.4 MB, 2-D
    assert to_bytes(arr) == arr.tobytes()
    small = np.arange(10, dtype=np.int32)
    assert to_bytes(small) == small.tobytes()


def test_to_bytes_of_obstore_bytes() -> None:
    store = MemoryStore()
    data = pattern(3 * MiB + 5)
    obstore.put(store, "k", data)
    body = obstore.get(store, "k").bytes()  # obstore's read-only Bytes
    assert to_bytes(body) == data


def test_to_bytes_refuses_a_non_contiguous_array() -> None:
    with pytest.raises(ValueError, match="not C-contiguous"):
        to_bytes(np.zeros((2 * MiB, 2), dtype=np.uint8)[:, 0])


@pytest.mark.parametrize("size", [1, 4095, 5 * MiB + 1, SPLIT + 7])
def test_writable_copy_is_a_writable_copy_of_exactly_the_size(size: int) -> None:
    data = pattern(size)
    out = writable_copy(data)
    view = memoryview(out)
    assert not view.readonly
    assert len(view) == size  # not the map's rounded size
    assert view == data
    view[0] ^= 0xFF  # its own memory: the source is unchanged
    assert data[0] != view[0]


def test_writable_copy_of_nothing_is_an_empty_writable_buffer() -> None:
    out = writable_copy(b"")
    assert len(out) == 0 and not memoryview(out).readonly


# -- Gather -----------------------------------------------------------------------------


def test_gather_assembles_head_buffers_and_raw_addresses() -> None:
    head = b"HEAD:"
    a = pattern(1000, 4)
    b = np.frombuffer(pattern(777, 5), dtype=np.uint8)
    raw = bytearray(pattern(333, 6))  # kept valid by ``keep``
    raw_addr = ctypes.addressof((ctypes.c_char * len(raw)).from_buffer(raw))
    g = Gather(
        size=5 + 1000 + 777 + 333 + 10,
        head=head,
        sources=[(5, a), (1005, b), (1782, raw_addr, 333)],
        keep=[raw],
    )
    out = bytearray(g.size)
    g.fill(out, threads=1)
    assert out == head + a + b.tobytes() + raw + bytes(10)


def test_gather_asks_for_a_raw_address_when_the_copy_starts() -> None:
    """An address given as a function is read at fill time (a tensor may have been
    resized, and its storage moved, since the plan)."""
    holder: dict[str, bytearray] = {"buf": bytearray(b"old!")}
    calls: list[int] = []

    def where() -> int:
        calls.append(1)
        return ctypes.addressof((ctypes.c_char * 4).from_buffer(holder["buf"]))

    g = Gather(size=4, sources=[(0, where, 4)], keep=[holder])
    holder["buf"] = bytearray(b"new!")  # moved after the plan
    assert calls == []
    out = bytearray(4)
    g.fill(out, threads=1)
    assert out == b"new!" and calls == [1]


def test_gather_fill_split_across_threads() -> None:
    parts = [pattern(n, i) for i, n in enumerate([3, 9 * MiB + 1, 1, 8 * MiB - 7, 12345])]
    offsets = [0]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + len(p))
    g = Gather(size=sum(map(len, parts)), sources=list(zip(offsets, parts, strict=True)))
    out = anon(g.size)
    try:
        g.fill(out, threads=4)
        assert out[: g.size] == b"".join(parts)
    finally:
        out.close()


def test_gather_refuses_a_buffer_too_small() -> None:
    g = Gather(size=10, head=b"0123456789")
    with pytest.raises(ValueError, match="a staging buffer of 9 bytes for 10"):
        g.fill(bytearray(9), threads=1)


def test_gather_refuses_sources_past_the_end_and_writes_nothing() -> None:
    g = Gather(size=10, head=b"abc", sources=[(5, b"123456")])
    out = bytearray(b"\x01" * 12)  # room enough: the file's own size is the limit
    with pytest.raises(ValueError, match="sources end at byte 11, past the file's 10"):
        g.fill(out, threads=1)
    assert out == bytearray(b"\x01" * 12)


def test_gather_refuses_a_read_only_destination() -> None:
    with pytest.raises(BufferError):
        Gather(size=3, head=b"abc").fill(b"xyz", threads=1)


def test_gather_of_an_empty_file() -> None:
    out = bytearray()
    Gather(size=0).fill(out, threads=2)
    assert out == bytearray()


def test_gather_fill_own_uses_its_allocator_and_device_copy() -> None:
    made: list[bytearray] = []

    def allocate(n: int) -> tuple[object, bytearray]:
        buf = bytearray(n + 8)  # an allocator may give more than asked
        made.append(buf)
        return ("owner", buf)

    def device(out: bytearray) -> None:
        out[3:6] = b"dev"

    g = Gather(size=9, head=b"abc", sources=[(6, b"xyz")], allocate=allocate, device=device)
    owner, view = g.fill_own()
    assert owner == "owner"
    assert len(view) == 9 and view.format == "B"
    assert bytes(view) == b"abcdevxyz"
    assert view.obj is made[0]


# -- Landing ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "map"])
def test_landing_filled_chunk_by_chunk(kind: str) -> None:
    data = pattern(5 * MiB + 3)
    landing = Landing(len(data), kind=kind)
    try:
        for lo in range(0, len(data), _memory.LANDING_CHUNK):
            landing.write(memoryview(data)[lo : lo + _memory.LANDING_CHUNK])
        assert landing.filled == len(data)
        out = landing.result()
    finally:
        landing.close()
    if kind == "bytes":
        assert type(out) is bytes and out == data
    else:
        view = memoryview(out)
        assert not view.readonly and len(view) == len(data)
        assert view == data
        view[0] ^= 0xFF  # writable: read_state's arrays may be changed


@pytest.mark.parametrize("kind", ["bytes", "map"])
def test_landing_refuses_more_than_its_size(kind: str) -> None:
    landing = Landing(10, kind=kind)
    try:
        landing.write(b"0123456")
        with pytest.raises(ValueError, match="more than the 10 bytes expected arrived"):
            landing.write(b"7890")
        assert landing.filled == 7  # the refused chunk is not counted
        landing.write(b"789")
        assert bytes(landing.result()) == b"0123456789"
    finally:
        landing.close()


@pytest.mark.parametrize("kind", ["bytes", "map"])
def test_landing_result_before_it_is_full_is_an_error(kind: str) -> None:
    landing = Landing(10, kind=kind)
    try:
        landing.write(b"01234")
        with pytest.raises(ValueError, match="5 bytes arrived, 10 expected"):
            landing.result()
    finally:
        landing.close()


@pytest.mark.parametrize("kind", ["bytes", "map"])
def test_an_empty_landing(kind: str) -> None:
    landing = Landing(0, kind=kind)
    try:
        landing.write(b"")
        assert bytes(landing.result()) == b""
    finally:
        landing.close()


def test_landing_map_result_outlives_the_landing() -> None:
    landing = Landing(4096, kind="map")
    landing.write(b"z" * 4096)
    out = landing.result()
    landing.close()
    del landing
    assert bytes(out) == b"z" * 4096
    assert isinstance(out.obj, mmap.mmap)
