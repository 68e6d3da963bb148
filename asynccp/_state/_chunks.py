"""The safetensors file seen in pieces: its header, and a CRC32C per chunk of tensor data.

A whole file is verified against the manifest's size and CRC32C; a partial read (some
tensors, or a slice of one) cannot use that checksum. So a state file records, in its
``<name>.json`` (format version 2, see :mod:`._schema`):

- ``header``: the size and CRC32C of the file's first ``8 + n`` bytes (the length and
  the JSON header). They are known when the state is planned, before any tensor byte is
  copied. A partial reader fetches them with one ranged request and checks them before
  it trusts an offset;
- ``chunks``: one CRC32C per :data:`~._schema.CHUNK` bytes of every tensor's data (the
  tensors in the order of their data in the file, each tensor's last chunk shorter),
  computed from the staged copy of the file by the commit, in the background, and
  written into the JSON's reserved place (:func:`chunk_table`; the JSON is a
  :class:`~asynccp._memory.Deferred`).

A read fetches whole chunks — at most one extra chunk at each end of every contiguous
run of bytes it needs — and checks each one; a flipped byte anywhere it fetched is a
:class:`~asynccp.CorruptCheckpointError`. Bytes it did not fetch are not checked: they
are not used either. The JSON itself is read whole, against the manifest.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import crc32c

from ._schema import CHUNK, ITEMSIZE

__all__ = [
    "Entry",
    "combined",
    "FileLayout",
    "chunk_count",
    "chunk_table",
    "parse_header",
    "table_length",
]


def chunk_count(nbytes: int, chunk: int = CHUNK) -> int:
    """How many chunks ``nbytes`` of one tensor's data make."""
    return -(-nbytes // chunk)


def table_length(sizes: Sequence[int], chunk: int = CHUNK) -> int:
    """Characters of the base64 chunk table of tensors of ``sizes`` bytes."""
    return 4 * -(-4 * sum(chunk_count(n, chunk) for n in sizes) // 3)


def chunk_table(buf: Any, spans: Sequence[tuple[int, int]], chunk: int = CHUNK) -> bytes:
    """The base64 chunk table of the tensors at ``spans`` (file offset, bytes) of the
    file in ``buf``, in that order (worker thread: one CRC32C call per chunk)."""
    view = memoryview(buf).cast("B")
    crcs: list[int] = []
    for begin, nbytes in spans:
        for at in range(begin, begin + nbytes, chunk):
            crcs.append(crc32c.crc32c(view[at : min(at + chunk, begin + nbytes)]))
    return base64.b64encode(struct.pack(f"<{len(crcs)}I", *crcs))


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: dtype, shape, its data at ``[begin, end)`` of
    the file, and the index of its first chunk in the chunk table."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    first_chunk: int

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]


def parse_header(
    raw: bytes | memoryview, size: int, bad: Any, chunk: int = CHUNK
) -> dict[str, Entry]:
    """Every tensor entry of a safetensors file of ``size`` bytes, from its first
    ``8 + n`` bytes ``raw``, each checked (``bad(why)`` makes the error to raise); their
    first chunks counted in ``chunk`` bytes."""
    view = memoryview(raw).cast("B")
    if len(view) < 8:
        raise bad("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", view[:8])
    if n > len(view) - 8:
        raise bad(f"its header length {n} runs past the end")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    start = 8 + n
    found: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"tensor {key!r} has a bad entry {entry!r}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        ok = (
            dtype in ITEMSIZE
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        )
        if not ok:
            raise bad(f"tensor {key!r} has a bad entry {entry!r}")
        assert isinstance(dtype, str) and isinstance(shape, list) and isinstance(offsets, list)
        begin, end = offsets[0] + start, offsets[1] + start
        if not (start <= begin <= end <= size) or end - begin != math.prod(shape) * ITEMSIZE[dtype]:
            raise bad(f"tensor {key!r} has offsets {offsets} that do not fit")
        found.append((begin, end, key, dtype, tuple(shape)))
    found.sort()
    entries: dict[str, Entry] = {}
    first = 0
    previous_end = start
    for begin, end, key, dtype, shape in found:
        if begin < previous_end:
            raise bad(f"tensor {key!r} overlaps the one before it")
        previous_end = end
        entries[key] = Entry(key, dtype, shape, begin, end, first)
        first += chunk_count(end - begin, chunk)
    return entries


@dataclass(frozen=True)
class FileLayout:
    """What the state's JSON says about its safetensors file (format version 2)."""

    header_size: int
    header_crc: int
    chunk: int
    crcs: tuple[int, ...] | None  # None: no table (version 1: the file is read whole)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], bad: Any) -> FileLayout | None:
        """The layout recorded in a state's JSON; None for a version 1 file."""
        header: Any = doc.get("header")
        chunks: Any = doc.get("chunks")
        if header is None and chunks is None:
            return None
        try:
            size, crc = header["size"], header["crc32c"]
            chunk, table = chunks["size"], chunks["crc32c"]
            ints = (size, crc, chunk)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
                raise TypeError
            raw = base64.b64decode(table, validate=True)
        except (KeyError, TypeError, ValueError):
            raise bad("has a bad header or chunk record") from None
        if size < 8 or chunk < 1 or len(raw) % 4:
            raise bad("has a bad header or chunk record")
        return cls(size, crc, chunk, struct.unpack(f"<{len(raw) // 4}I", raw))


# -- many chunks checked with one pass -----------------------------------------------
#
# Checking a run of whole chunks one CRC32C call each costs a call per 4 KiB. CRC32C is
# linear, so the checksum of the whole run follows from the chunks' recorded ones —
# ``crc(A + B) = shift(crc(A), len(B)) ^ crc(B)``, where ``shift`` multiplies by
# ``x ** (8 * len(B))`` modulo the polynomial (zlib's crc32_combine) — and the run is
# checked with one call over its bytes against that. The chunks are combined pairwise,
# level by level (numpy, one table lookup per byte of the 32-bit values), so a level's
# right-hand halves all have the same length and one shift table. Only when the run
# fails are its chunks checked one by one, to name the first that differs.

_POLY = 0x82F63B78  # CRC32C, reflected


def _times(op: Sequence[int], vec: int) -> int:
    """The 32x32 bit matrix ``op`` (its columns) applied to ``vec``."""
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= op[i]
        vec >>= 1
        i += 1
    return out


def _square(op: Sequence[int]) -> list[int]:
    return [_times(op, op[n]) for n in range(32)]


_ZERO_BYTE: list[int] = []  # the operator of one zero byte (set below)


def _zero_byte() -> list[int]:
    op = [_POLY] + [1 << (n - 1) for n in range(1, 32)]  # one zero bit
    for _ in range(3):  # 2, 4, 8 bits
        op = _square(op)
    return op


_OPS: dict[int, list[int]] = {}  # length in bytes -> its shift operator


def _op(nbytes: int) -> list[int]:
    """The shift operator of ``nbytes`` zero bytes (cached)."""
    found = _OPS.get(nbytes)
    if found is not None:
        return found
    if not _ZERO_BYTE:
        _ZERO_BYTE.extend(_zero_byte())
    if nbytes % 2 == 0 and nbytes // 2 in _OPS:
        op = _square(_OPS[nbytes // 2])
    else:
        op, base, n = list(1 << i for i in range(32)), _ZERO_BYTE, nbytes
        while n:
            if n & 1:
                op = [_times(base, c) for c in op]
            n >>= 1
            if n:
                base = _square(base)
    _OPS[nbytes] = op
    return op


_TABLES: dict[int, Any] = {}


def _table(nbytes: int) -> Any:
    """The shift by ``nbytes`` as four 256-entry lookup tables, one per byte of a CRC."""
    found = _TABLES.get(nbytes)
    if found is None:
        import numpy as np

        op = _op(nbytes)
        tables = []
        for b in range(4):
            tab = [0]
            for i in range(8):  # the table of a byte from its 8 bits' images
                col = op[8 * b + i]
                tab += [t ^ col for t in tab]
            tables.append(tab)
        found = _TABLES[nbytes] = np.array(tables, dtype=np.uint32)
    return found


def _shift(values: Any, nbytes: int) -> Any:
    t = _table(nbytes)
    return (
        t[0][values & 0xFF]
        ^ t[1][(values >> 8) & 0xFF]
        ^ t[2][(values >> 16) & 0xFF]
        ^ t[3][values >> 24]
    )


def combined(crcs: Sequence[int], chunk: int) -> int:
    """The CRC32C of the concatenation of chunks of ``chunk`` bytes each, from theirs."""
    import numpy as np

    level = np.asarray(crcs, dtype=np.uint32)
    carries: list[tuple[int, int]] = []  # (crc, bytes) of the right ends set aside
    size = chunk
    while len(level) > 1:
        if len(level) % 2:
            carries.append((int(level[-1]), size))
            level = level[:-1]
        level = _shift(level[0::2], size) ^ level[1::2]
        size *= 2
    crc = int(level[0]) if len(level) else 0
    for value, nbytes in reversed(carries):
        crc = int(_shift(np.array([crc], dtype=np.uint32), nbytes)[0]) ^ value
    return crc
