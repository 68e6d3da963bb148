"""The manifest: the JSON record whose creation commits a checkpoint.

Layout under a location::

    data/<step:020d>-<writer>/<file name>   payload objects, written first
    manifests/<step:020d>.json              the commit record, created last, if absent
    manifests/<step:020d>.<rev>.json        a later revision of that record (rev >= 1)
    quarantine/<...>.json                   manifests moved aside, kept for inspection
    writers/<writer>.json                   leases of live writers (orphan collection)
    parts/<step:020d>/<generation>/<r>-of-<n>.json
                                            part records of a sharded step (see
                                            :mod:`asynccp._shards`), created if absent

The manifest names its payload folder, so payload written by a losing or crashed
writer never mixes with a committed checkpoint.

A step's commit record is its *highest* revision. Revisions exist because an invalid
record (one that does not decode, or names missing payload) must never block its step,
yet a store has no conditional delete: two writers that both moved the invalid record
aside and re-created the key could delete each other's good commit. Instead the
replacement is created, with create-if-absent, at the next revision; exactly one writer
wins it, and the records below it are only ever moved to ``quarantine/``.

Every field is validated on read: a manifest is untrusted input (anyone with write
access to the bucket can edit it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._payload import check_names, validate_name
from .errors import CorruptCheckpointError, InvalidNameError

__all__ = [
    "FORMAT",
    "MANIFESTS",
    "QUARANTINE",
    "WRITERS",
    "PARTS",
    "FileInfo",
    "Manifest",
    "data_dir",
    "manifest_key",
    "part_key",
    "parse_part_key",
    "parts_dir",
    "parse_manifest_key",
    "step_of_manifest_key",
]

FORMAT = 1
MANIFESTS = "manifests/"
DATA = "data/"
QUARANTINE = "quarantine/"
WRITERS = "writers/"
PARTS = "parts/"
_MANIFEST_RE = re.compile(r"^manifests/(\d{20})(?:\.([1-9]\d{0,5}))?\.json$")
_DATA_DIR_RE = re.compile(r"^data/(\d{20})-([0-9a-z]{1,64})$")
_WRITER_RE = re.compile(r"^[0-9a-z]{1,64}$")
_CRC_RE = re.compile(r"^[0-9a-f]{8}$")
MAX_STEP = 10**20 - 1
#: A generation names one launch of a sharded job: a key segment, so a safe one.
GENERATION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_PART_RE = re.compile(
    r"^parts/(\d{20})/([0-9A-Za-z][0-9A-Za-z._-]{0,63})/(0|[1-9]\d{0,5})-of-([1-9]\d{0,5})\.json$"
)


def manifest_key(step: int, rev: int = 0) -> str:
    """The key of revision ``rev`` of the manifest that commits ``step``."""
    return f"{MANIFESTS}{step:020d}.json" if rev == 0 else f"{MANIFESTS}{step:020d}.{rev}.json"


def parse_manifest_key(key: str) -> tuple[int, int] | None:
    """``(step, revision)`` of a manifest key, or None when ``key`` is not a manifest."""
    m = _MANIFEST_RE.match(key)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def step_of_manifest_key(key: str) -> int | None:
    """The step a manifest key commits, or None when ``key`` is not a manifest."""
    parsed = parse_manifest_key(key)
    return parsed[0] if parsed else None


def data_dir(step: int, writer: str) -> str:
    """The folder holding one writer's payload objects for ``step``."""
    return f"{DATA}{step:020d}-{writer}"


def parse_data_dir(folder: str) -> tuple[int, str] | None:
    """``(step, writer)`` of a payload folder name, or None when it is not one."""
    m = _DATA_DIR_RE.match(folder.rstrip("/"))
    return (int(m.group(1)), m.group(2)) if m else None


def parts_dir(step: int, generation: str | None = None) -> str:
    """The folder of the part records of ``step`` (of one ``generation``, if given)."""
    top = f"{PARTS}{step:020d}/"
    return top if generation is None else f"{top}{generation}/"


def part_key(step: int, generation: str, shard: int, shards: int) -> str:
    """The key of the record of part ``shard`` of ``shards`` of ``step`` in ``generation``."""
    return f"{parts_dir(step, generation)}{shard}-of-{shards}.json"


def parse_part_key(key: str) -> tuple[int, str, int, int] | None:
    """``(step, generation, shard, shards)`` of a part record key, or None."""
    m = _PART_RE.match(key)
    if not m:
        return None
    return int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))


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
        expected = step_of_manifest_key(key)
        if expected is not None and step != expected:
            raise bad(f"records step {step} but is stored as step {expected}")
        writer = doc.get("writer")
        if not isinstance(writer, str) or not _WRITER_RE.match(writer):
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


def _int(doc: Mapping[str, Any], key: str, bad: Any) -> int:
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
        copy = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"metadata must be JSON-serialisable (str keys, finite numbers): {e}"
        ) from e
    if any(not isinstance(k, str) for k in metadata):
        raise TypeError("metadata keys must be str")
    return copy  # type: ignore[no-any-return]


def now() -> datetime:
    """The current UTC time, as manifests record it."""
    return datetime.now(timezone.utc)
