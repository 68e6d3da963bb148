"""The manifest: the JSON record whose creation commits a checkpoint.

Encode, decode, validate; nothing else (where records live is :mod:`asynccp._layout`).
A manifest names its step, its writer, the payload folder (``data/<step>-<writer>``)
and every file with its size and CRC32C::

    {"format": 1, "step": 7, "writer": "3f2a…", "attempt": 0,
     "created_at": "2024-…+00:00", "data": "data/00000000000000000007-3f2a…",
     "metadata": {...}, "files": {"weights": {"size": 4096, "crc32c": "1a2b3c4d"}}}

A tiny checkpoint (at most :data:`INLINE_MAX` bytes in at most :data:`INLINE_FILES`
files) carries its bytes inside its record instead, base64 under each file's
``"inline"``: one object to create instead of a payload object and a record. Such a
record is format 3 (:data:`INLINE_FORMAT`), so that an asynccp that predates it
reports a record of a newer format instead of a checkpoint whose payload is missing;
every other record is still written as format 1, and both are read::

    {"format": 3, ..., "files": {"data": {"size": 16, "crc32c": "…", "inline": "MDAw…"}}}

An inline file's bytes are checked like any payload object's: their length against
``size`` when the record is decoded (a mismatch makes the record invalid, as a
truncated object makes a checkpoint incomplete), their CRC32C when they are read.

``metadata`` is the caller's, as :func:`check_metadata` made it JSON-ready: numpy
scalars as Python numbers, NaN and the infinities as ``{"$float": "nan"}`` (JSON has no
such numbers), read back as floats.

Every field is validated on read: a manifest is untrusted input (anyone with write
access to the bucket can edit it). A manifest whose ``format`` is newer than
:data:`FORMAT` was written by a newer asynccp (:func:`newer_format` tells it apart from
a broken one).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._layout import MAX_STEP, data_dir, parse_manifest_key, valid_writer
from ._names import check_names, validate_name
from .errors import CorruptCheckpointError, InvalidNameError

__all__ = [
    "FORMAT",
    "INLINE_FILES",
    "INLINE_FORMAT",
    "INLINE_MAX",
    "MAX_FORMAT",
    "FileInfo",
    "Manifest",
    "check_metadata",
    "decode_doc",
    "decode_metadata",
    "encode_doc",
    "encode_metadata",
    "newer_format",
]

FORMAT = 1
#: The format of a record that holds some of its files' bytes (see the module).
INLINE_FORMAT = 3
#: The newest manifest format this asynccp reads (2: a sharded step's, see
#: :mod:`asynccp._shard_records`; 3: a record with inline files).
MAX_FORMAT = 3
#: A checkpoint whose files hold at most this many bytes together, in at most
#: :data:`INLINE_FILES` buffers, is written inside its record.
INLINE_MAX = 4096
#: At most this many files of a checkpoint are written inside its record.
INLINE_FILES = 8
_CRC_RE = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True)
class FileInfo:
    """Size and CRC32C of one file of a checkpoint.

    ``crc32c`` is None only for a file another tool wrote, which a framework plugin
    reads as a checkpoint (flytekit's own, see :mod:`asynccp._foreign`): that tool
    recorded no checksum, so only the size is checked. A manifest always has one.

    ``inline`` holds the file's bytes when its record carries them (a tiny checkpoint,
    see :data:`INLINE_MAX`); None when they are a payload object. It takes no part in
    comparisons: a file is its size and checksum, wherever its bytes live.
    """

    size: int
    crc32c: int | None
    inline: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def checksum(self) -> str:
        """The checksum as written in the manifest: ``"crc32c:<8 hex digits>"``
        (``"none"`` for a file with none recorded)."""
        return "none" if self.crc32c is None else f"crc32c:{self.crc32c:08x}"


@dataclass(frozen=True)
class Manifest:
    """A decoded, validated manifest."""

    step: int
    writer: str
    attempt: int
    created_at: datetime
    metadata: Mapping[str, Any]
    files: Mapping[str, FileInfo]
    data: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", data_dir(self.step, self.writer))

    @property
    def format(self) -> int:
        """The record's format: :data:`INLINE_FORMAT` when a file is inline, else
        :data:`FORMAT` (what every asynccp reads)."""
        return INLINE_FORMAT if self.has_inline else FORMAT

    @property
    def has_inline(self) -> bool:
        """Whether some file's bytes are inside the record."""
        return any(f.inline is not None for f in self.files.values())

    @property
    def stored(self) -> dict[str, FileInfo]:
        """The files stored as payload objects (not inline), by name."""
        return {n: f for n, f in self.files.items() if f.inline is None}

    def encode(self) -> bytes:
        """The manifest as UTF-8 JSON."""
        return encode_doc(self.to_doc())

    def to_doc(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (a sharded step's manifest embeds these)."""
        return {
            "format": self.format,
            "step": self.step,
            "writer": self.writer,
            "attempt": self.attempt,
            "created_at": self.created_at.isoformat(),
            "data": self.data,
            "metadata": encode_metadata(self.metadata),
            "files": {name: _file_doc(info) for name, info in self.files.items()},
        }

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> Manifest:
        """Parse and validate ``raw``; raise CorruptCheckpointError naming ``key``."""
        return cls.from_record(decode_doc(raw, key=key), key=key)

    @classmethod
    def from_record(cls, doc: Mapping[str, Any], *, key: str) -> Manifest:
        """Validate a record decoded from ``key``: format 1, or 3 (inline files)."""
        fmt = doc.get("format")
        if fmt not in (FORMAT, INLINE_FORMAT) or isinstance(fmt, bool):
            why = f"format {fmt!r} is not {FORMAT} or {INLINE_FORMAT}; upgrade asynccp to read it"
            raise _bad(key, why)
        return cls.from_doc(doc, key=key, inline=fmt == INLINE_FORMAT)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], *, key: str, inline: bool = False) -> Manifest:
        """Validate a decoded manifest (or one part of a sharded step's): every field but
        ``format``. ``inline``: files may carry their bytes (format 3). Raises
        CorruptCheckpointError naming ``key``."""

        def bad(why: str) -> CorruptCheckpointError:
            return _bad(key, why)

        step = _int(doc, "step", bad)
        stored = parse_manifest_key(key)
        if stored is not None and step != stored[0]:
            raise bad(f"records step {step} but is stored as step {stored[0]}")
        writer = doc.get("writer")
        if not valid_writer(writer):
            raise bad(f"writer {writer!r} is not a lowercase alphanumeric id")
        attempt = _int(doc, "attempt", bad)
        try:
            created_at = datetime.fromisoformat(doc["created_at"])
        except (KeyError, TypeError, ValueError) as e:
            raise bad("created_at is missing or not an ISO 8601 time") from e
        if doc.get("data") != data_dir(step, writer):
            raise bad(f"data folder {doc.get('data')!r} does not belong to step {step}")
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict):
            raise bad("metadata is not an object")
        metadata = decode_metadata(metadata)
        raw_files = doc.get("files")
        if not isinstance(raw_files, dict):
            raise bad("files is not an object")
        files: dict[str, FileInfo] = {}
        try:
            for name, info in raw_files.items():
                validate_name(name)
                if not isinstance(info, dict):
                    raise bad(f"entry for {name!r} is not an object")
                size = _int(info, "size", bad)
                crc = info.get("crc32c")
                if not isinstance(crc, str) or not _CRC_RE.match(crc):
                    raise bad(f"crc32c of {name!r} is not 8 hex digits")
                body = _inline(info, name, size, bad) if inline else None
                files[name] = FileInfo(size, int(crc, 16), body)
            check_names(list(files))
        except InvalidNameError as e:
            raise bad(str(e)) from e
        return cls(step, writer, attempt, created_at, metadata, files)


def _recorded(crc: int | None) -> int:
    """A manifest's checksum (every file a writer commits has one)."""
    if crc is None:
        raise ValueError("a manifest records a checksum for every file")
    return crc


def _file_doc(info: FileInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {"size": info.size, "crc32c": f"{_recorded(info.crc32c):08x}"}
    if info.inline is not None:
        doc["inline"] = base64.b64encode(info.inline).decode("ascii")
    return doc


def _inline(
    info: Mapping[str, Any], name: str, size: int, bad: Callable[[str], CorruptCheckpointError]
) -> bytes | None:
    """The bytes of file ``name`` held in its record (None: a payload object)."""
    text = info.get("inline")
    if text is None:
        return None
    if not isinstance(text, str):
        raise bad(f"inline bytes of {name!r} are not a base64 string")
    try:
        body = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad(f"inline bytes of {name!r} are not base64 ({e})") from e
    if len(body) != size:
        raise bad(f"inline bytes of {name!r} are {len(body)} long, its size says {size}")
    return body


def _bad(key: str, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"invalid manifest {key}: {why}")


def decode_doc(raw: bytes, *, key: str) -> dict[str, Any]:
    """``raw`` as a JSON object; CorruptCheckpointError naming ``key`` if it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
        raise _bad(key, f"not JSON ({type(e).__name__}: {str(e)[:100]})") from e
    if not isinstance(doc, dict):
        raise _bad(key, "not a JSON object")
    return doc


def encode_doc(doc: Mapping[str, Any]) -> bytes:
    """A record as asynccp writes it: UTF-8 JSON, keys sorted (the same dict always gives
    the same bytes), compact — without indentation the standard library encodes in C,
    several times faster, and every checkpoint pays for it (people read records through
    ``asynccp show``)."""
    return json.dumps(doc, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()


def _int(doc: Mapping[str, Any], key: str, bad: Callable[[str], CorruptCheckpointError]) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STEP:
        raise bad(f"{key} {value!r} is not a non-negative integer")
    return value


def check_metadata(metadata: object) -> dict[str, Any]:
    """Validate user metadata; return a private copy of it, JSON-ready.

    Metadata is a mapping with str keys whose values are JSON values: str, int, float,
    bool, None, lists (or tuples) and mappings with str keys of those. Numbers from
    numerical code are accepted as they come: numpy integer, floating and bool scalars
    (``np.int64``, ``np.float32``, ``np.bool_``: detected as ``numbers.Integral`` /
    ``numbers.Real`` / numpy's bool without importing numpy) become the Python ``int``,
    ``float`` and ``bool`` they are equal to, which is what a reader gets back. NaN and
    the infinities are kept (a diverging run's ``loss`` is NaN: its save must not
    fail): JSON has no such numbers, so the record holds them as ``{"$float": "nan"}``,
    ``{"$float": "inf"}`` and ``{"$float": "-inf"}`` (standard JSON any tool reads),
    and asynccp's reader turns them back into floats. A mapping of that very shape in
    the caller's metadata would read back as a float, so it is refused.

    Raises:
        TypeError: not a mapping, a key that is not a str, a value of another type;
            each naming where in the metadata it is.
        ValueError: a str (key or value) that is not valid Unicode (a lone surrogate
            cannot be written as UTF-8), a ``{"$float": ...}`` mapping, or nesting too
            deep to write.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        plain = _plain(metadata, "metadata")
    except RecursionError:
        raise ValueError("metadata is nested too deeply to be written as JSON") from None
    assert isinstance(plain, dict)
    return plain


#: The key of the JSON object that stands for a float JSON cannot spell.
_FLOAT_TAG = "$float"
_FLOAT_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _plain(value: object, where: str) -> Any:
    """``value`` as plain Python JSON values (a new object), or the error naming
    ``where`` it is in the metadata."""
    if value is None or isinstance(value, (bool, int, float)):
        return value if type(value) in (bool, int, float, type(None)) else _scalar(value)
    if isinstance(value, str):
        _check_text(value, where)
        return str(value)
    if isinstance(value, Mapping):
        if set(value) == {_FLOAT_TAG}:
            raise ValueError(
                f"{where} is a mapping with the one key {_FLOAT_TAG!r}: asynccp writes NaN and "
                "infinities that way, so it would read back as a float; rename the key"
            )
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"metadata keys must be str: {where} has the key {key!r} ({type(key).__name__})"
                )
            _check_text(key, f"the key {key!r} of {where}")
            out[str(key)] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if _is_numpy_bool(value) or isinstance(value, numbers.Real):
        return _scalar(value)
    raise TypeError(
        f"metadata must be JSON-serialisable: {where} is a {type(value).__name__} "
        "(use str, int, float, bool, None, lists and mappings with str keys)"
    )


def _scalar(value: object) -> bool | int | float:
    """A number of another type (a numpy scalar, an int or float subclass) as the
    Python bool, int or float it stands for."""
    if isinstance(value, bool) or _is_numpy_bool(value):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    assert isinstance(value, numbers.Real)
    return float(value)


def _is_numpy_bool(value: object) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{where} ({text!r}) is not valid Unicode: it holds a lone surrogate, "
            "which cannot be written as UTF-8 (decode bytes with errors='replace', not "
            "'surrogateescape')"
        ) from None


def encode_metadata(metadata: Any) -> Any:
    """Metadata as the record holds it: NaN and the infinities as ``{"$float": ...}``."""
    if isinstance(metadata, float) and not math.isfinite(metadata):
        return {_FLOAT_TAG: "nan" if math.isnan(metadata) else ("inf" if metadata > 0 else "-inf")}
    if isinstance(metadata, dict):
        return {k: encode_metadata(v) for k, v in metadata.items()}
    if isinstance(metadata, list):
        return [encode_metadata(v) for v in metadata]
    return metadata


def decode_metadata(metadata: Any) -> Any:
    """The record's metadata as the caller saved it (``{"$float": "nan"}`` -> NaN)."""
    if isinstance(metadata, dict):
        if len(metadata) == 1 and metadata.get(_FLOAT_TAG) in _FLOAT_NAMES:
            return _FLOAT_NAMES[metadata[_FLOAT_TAG]]
        return {k: decode_metadata(v) for k, v in metadata.items()}
    if isinstance(metadata, list):
        return [decode_metadata(v) for v in metadata]
    return metadata


def newer_format(raw: bytes) -> bool:
    """Whether ``raw`` is a manifest of a newer format than this asynccp reads (so not
    a broken one: a newer asynccp wrote it)."""
    try:
        fmt = json.loads(raw).get("format")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > MAX_FORMAT
