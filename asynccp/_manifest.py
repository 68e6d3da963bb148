"""The manifest: the JSON record whose creation commits a checkpoint.

Encode, decode, validate; nothing else (where records live is :mod:`asynccp._layout`).
A manifest names its step, its writer, the payload folder (``data/<step>-<writer>``)
and every file with its size and CRC32C::

    {"format": 1, "step": 7, "writer": "3f2a…", "attempt": 0,
     "created_at": "2024-…+00:00", "data": "data/00000000000000000007-3f2a…",
     "metadata": {...}, "files": {"weights": {"size": 4096, "crc32c": "1a2b3c4d"}}}

Every field is validated on read: a manifest is untrusted input (anyone with write
access to the bucket can edit it). A manifest whose ``format`` is newer than
:data:`FORMAT` was written by a newer asynccp (:func:`newer_format` tells it apart from
a broken one).
"""

from __future__ import annotations

import json
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
    "MAX_FORMAT",
    "FileInfo",
    "Manifest",
    "check_metadata",
    "decode_doc",
    "encode_doc",
    "newer_format",
]

FORMAT = 1
#: The newest manifest format this asynccp reads (2: a sharded step's, see
#: :mod:`asynccp._shard_records`).
MAX_FORMAT = 2
_CRC_RE = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True)
class FileInfo:
    """Size and CRC32C of one file of a checkpoint."""

    size: int
    crc32c: int

    @property
    def checksum(self) -> str:
        """The checksum as written in the manifest: ``"crc32c:<8 hex digits>"``."""
        return f"crc32c:{self.crc32c:08x}"


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

    def encode(self) -> bytes:
        """The manifest as UTF-8 JSON."""
        return encode_doc(self.to_doc())

    def to_doc(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (a sharded step's manifest embeds these)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "writer": self.writer,
            "attempt": self.attempt,
            "created_at": self.created_at.isoformat(),
            "data": self.data,
            "metadata": self.metadata,
            "files": {
                name: {"size": info.size, "crc32c": f"{info.crc32c:08x}"}
                for name, info in self.files.items()
            },
        }

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> Manifest:
        """Parse and validate ``raw``; raise CorruptCheckpointError naming ``key``."""
        doc = decode_doc(raw, key=key)
        fmt = doc.get("format")
        if fmt != FORMAT or isinstance(fmt, bool):
            raise _bad(key, f"format {fmt!r} is not {FORMAT}; upgrade asynccp to read it")
        return cls.from_doc(doc, key=key)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], *, key: str) -> Manifest:
        """Validate a decoded manifest (or one part of a sharded step's): every field but
        ``format``. Raises CorruptCheckpointError naming ``key``."""

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
                files[name] = FileInfo(size, int(crc, 16))
            check_names(list(files))
        except InvalidNameError as e:
            raise bad(str(e)) from e
        return cls(step, writer, attempt, created_at, metadata, files)


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
    the same bytes)."""
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()


def _int(doc: Mapping[str, Any], key: str, bad: Callable[[str], CorruptCheckpointError]) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STEP:
        raise bad(f"{key} {value!r} is not a non-negative integer")
    return value


def check_metadata(metadata: object) -> dict[str, Any]:
    """Validate user metadata: a JSON-serialisable mapping with str keys (a copy)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        # Round-trip: a private copy the caller cannot mutate, and proof it is JSON.
        copy: dict[str, Any] = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"metadata must be JSON-serialisable (str keys, finite numbers): {e}"
        ) from e
    if any(not isinstance(k, str) for k in metadata):
        raise TypeError("metadata keys must be str")
    return copy


def newer_format(raw: bytes) -> bool:
    """Whether ``raw`` is a manifest of a newer format than this asynccp reads (so not
    a broken one: a newer asynccp wrote it)."""
    try:
        fmt = json.loads(raw).get("format")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > MAX_FORMAT
