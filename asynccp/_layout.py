"""The storage layout: every object key and name asynccp uses under a location.

One place, so that the writer, the readers, retention, the orphan collector and the
command line cannot disagree about where things are::

    data/<step:020d>-<writer>/<file name>    payload objects, written first
    manifests/<step:020d>.json               the commit record, created last, if absent
    manifests/<step:020d>.<rev>.json         a later revision of that record (rev >= 1)
    quarantine/<step:020d>[.<rev>]-<random>.json
                                             records moved aside, kept for inspection
    writers/<writer>.json                    leases of live writers (orphan collection)
    parts/<step:020d>/<generation>/<r>-of-<n>.json
                                             part records of a sharded step, created if
                                             absent (see :mod:`asynccp._shards`)
    .<name>.<random>.asynccp-tmp             a local write in progress (beside its target)
    data/<step:020d>-<writer>/.manifest.<random>.asynccp-tmp
                                             a local commit's record, ready to be linked
    asynccp-attempt.json                     a plugin attempt's record (see
                                             :mod:`asynccp._lineage`)

A step is committed when a record for it exists; its commit record is its *highest*
revision. Revisions exist because an invalid record must never block its step, while a
store has no conditional delete: the replacement is created, create-if-absent, at the
next revision (one writer wins it), and records below it only ever move to
``quarantine/``. The record names its payload folder, so payload written by a losing or
crashed writer never mixes with a committed checkpoint.
"""

from __future__ import annotations

import re
from typing import TypeGuard

__all__ = [
    "ATTEMPT_RECORD",
    "DATA",
    "MANIFESTS",
    "GENERATION_RE",
    "MAX_STEP",
    "PARTS",
    "QUARANTINE",
    "TMP_SUFFIX",
    "TOP_FOLDERS",
    "WRITERS",
    "data_dir",
    "is_layout_key",
    "is_temporary",
    "lease_key",
    "manifest_key",
    "parse_data_dir",
    "parse_lease_key",
    "parse_manifest_key",
    "parse_part_key",
    "part_key",
    "parts_dir",
    "payload_key",
    "prepared_record_key",
    "quarantine_key",
    "step_of_quarantine_key",
    "valid_writer",
]

#: Payload folders, one per (step, writer).
DATA = "data/"
#: Commit records (manifests), one or more revisions per step.
MANIFESTS = "manifests/"
#: Records moved aside (replaced invalid ones, or removed by ``asynccp gc``).
QUARANTINE = "quarantine/"
#: Leases of open writers.
WRITERS = "writers/"
#: Part records of sharded steps.
PARTS = "parts/"
#: A framework plugin's attempt record, at the root of the attempt's prefix.
ATTEMPT_RECORD = "asynccp-attempt.json"
#: The folders a durable local location creates (and fsyncs) once, when it opens.
TOP_FOLDERS = ("data", "manifests")
#: The end of every temporary file name a local write uses (the orphan collector's mark).
TMP_SUFFIX = ".asynccp-tmp"
#: The largest step: 20 decimal digits, so that keys sort by step.
MAX_STEP = 10**20 - 1

_MANIFEST_RE = re.compile(r"^manifests/(\d{20})(?:\.([1-9]\d{0,5}))?\.json$")
_DATA_DIR_RE = re.compile(r"^data/(\d{20})-([0-9a-z]{1,64})$")
_WRITER_RE = re.compile(r"^[0-9a-z]{1,64}$")
#: A generation names one launch of a sharded job: a key segment, so a safe one.
GENERATION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_PART_RE = re.compile(
    r"^parts/(\d{20})/([0-9A-Za-z][0-9A-Za-z._-]{0,63})/(0|[1-9]\d{0,5})-of-([1-9]\d{0,5})\.json$"
)


def valid_writer(writer: object) -> TypeGuard[str]:
    """Whether ``writer`` is a writer id (1-64 lowercase letters and digits)."""
    return isinstance(writer, str) and _WRITER_RE.match(writer) is not None


def manifest_key(step: int, rev: int = 0) -> str:
    """The key of revision ``rev`` of the record that commits ``step``."""
    return f"{MANIFESTS}{step:020d}.json" if rev == 0 else f"{MANIFESTS}{step:020d}.{rev}.json"


def parse_manifest_key(key: str) -> tuple[int, int] | None:
    """``(step, revision)`` of a record key, or None when ``key`` is not one."""
    m = _MANIFEST_RE.match(key)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def data_dir(step: int, writer: str) -> str:
    """The folder (no trailing ``/``) holding ``writer``'s payload objects for ``step``."""
    return f"{DATA}{step:020d}-{writer}"


def parse_data_dir(folder: str) -> tuple[int, str] | None:
    """``(step, writer)`` of a payload folder name, or None when it is not one."""
    m = _DATA_DIR_RE.match(folder.rstrip("/"))
    return (int(m.group(1)), m.group(2)) if m else None


def payload_key(folder: str, name: str) -> str:
    """The key of file ``name`` of a checkpoint whose payload folder is ``folder``."""
    return f"{folder}/{name}"


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


def prepared_record_key(folder: str, token: str) -> str:
    """Where a local commit writes its record's bytes before linking them into place:
    in the checkpoint's payload folder ``folder`` (``token``: random)."""
    return f"{folder}/.manifest.{token}{TMP_SUFFIX}"


def lease_key(writer: str) -> str:
    """The key of ``writer``'s lease."""
    return f"{WRITERS}{writer}.json"


def parse_lease_key(key: str) -> str | None:
    """The writer a lease key belongs to, or None when ``key`` is not a lease."""
    if not key.startswith(WRITERS) or not key.endswith(".json"):
        return None
    return key[len(WRITERS) : -len(".json")]


def quarantine_key(record: str, token: str) -> str:
    """Where the record ``record`` goes when it is moved aside (``token``: random)."""
    name = record.rsplit("/", 1)[-1].removesuffix(".json")
    return f"{QUARANTINE}{name}-{token}.json"


def step_of_quarantine_key(key: str) -> int | None:
    """The step a quarantined record was for, or None when ``key`` is not one."""
    head = key[len(QUARANTINE) : len(QUARANTINE) + 20]
    if not key.startswith(QUARANTINE) or len(head) != 20 or not head.isdigit():
        return None
    return int(head)


def is_temporary(key: str) -> bool:
    """Whether ``key`` is the temporary file of a local write (finished or interrupted)."""
    return key.endswith(TMP_SUFFIX)


def is_layout_key(key: str) -> bool:
    """Whether ``key`` is one of asynccp's objects: a record (commit, part, quarantined,
    attempt), a lease, a payload object in a writer's folder, or a temporary file.
    (What another tool wrote beside them is not: see :mod:`asynccp._foreign`.)"""
    top = key.split("/", 2)
    return (
        key == ATTEMPT_RECORD
        or parse_manifest_key(key) is not None
        or parse_part_key(key) is not None
        or parse_lease_key(key) is not None
        or step_of_quarantine_key(key) is not None
        or (len(top) == 3 and parse_data_dir("/".join(top[:2])) is not None)
        or is_temporary(key)
    )
