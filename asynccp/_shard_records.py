"""Sharded checkpoints on the store: part records, the step's manifest, generations.

A step written by ``n`` processes (``Checkpointer(..., shard=r, shards=n)``) is stored as:

- each part's payload in its own writer's folder, ``data/<step>-<writer>/`` (as a
  checkpoint of one process is);
- one *part record* per part, ``parts/<step>/<generation>/<r>-of-<n>.json``, created if
  absent: it names the part's payload folder, files, sizes and checksums;
- once every part is recorded, the step's manifest ``manifests/<step>.json`` (format 2),
  which embeds the ``n`` part records. Its bytes are a function of the part records
  alone (keys sorted, parts in shard order), so two shards that both find the step
  complete write identical manifests: whichever create lands, the commit is the same.

The protocol that writes them is :mod:`asynccp._shards`; this module is the format
(encode, decode, validate: every record is untrusted input) and the generation.

Generations: a *generation* names one launch of the ``n`` processes. Every shard of a
launch must compute the same generation, and no two launches may share one, without
any process talking to another. In order:

1. ``generation=`` passed to the ``Checkpointer``;
2. the ``ASYNCCP_GENERATION`` environment variable (any launcher: set it per launch);
3. torchrun / TorchElastic: ``TORCHELASTIC_RUN_ID`` and ``TORCHELASTIC_RESTART_COUNT``
   (the run id is random per ``torchrun --standalone``; the restart count grows with
   every elastic restart of the workers);
4. Slurm: ``SLURM_JOB_ID``, ``SLURM_STEP_ID`` and ``SLURM_RESTART_COUNT`` (a new
   ``srun`` step, or a requeued job, is a new generation);
5. with ``shards=1`` only: the writer's own random id (one process cannot disagree
   with itself);
6. otherwise the ``Checkpointer`` refuses to start, rather than guess.

Launcher values that are not safe key segments are replaced by a hash of themselves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._checks import is_int
from ._layout import GENERATION_RE, parse_part_key, parts_dir
from ._manifest import FORMAT, MAX_FORMAT, Manifest, decode_doc, encode_doc
from .errors import CorruptCheckpointError

__all__ = [
    "MAX_FORMAT",
    "MAX_SHARDS",
    "SHARDED_FORMAT",
    "Part",
    "ShardSpec",
    "ShardedManifest",
    "AnyManifest",
    "decode_record",
    "folders_of",
    "generation_from_env",
    "owned_prefixes",
    "sharding",
]

#: The manifest format of a sharded step (a checkpoint of one process stays format 1).
SHARDED_FORMAT = 2
assert SHARDED_FORMAT <= MAX_FORMAT
#: Part numbers are at most six digits in a part record's key.
MAX_SHARDS = 999_999
#: The file names of a sharded step, seen whole, start with this and the shard number.
SHARD_PREFIX = "shard-"


@dataclass(frozen=True)
class ShardSpec:
    """What a sharded checkpointer writes: part ``shard`` of ``shards``, in ``generation``."""

    shard: int
    shards: int
    generation: str


def _safe(value: str) -> str:
    """``value`` as a key segment: itself if it is one, else a hash of it."""
    if GENERATION_RE.match(value):
        return value
    return "h" + hashlib.sha256(value.encode()).hexdigest()[:24]


def generation_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The generation the launcher's environment names (see the module docstring), or None."""
    env = os.environ if environ is None else environ
    explicit = env.get("ASYNCCP_GENERATION", "").strip()
    if explicit:
        if not GENERATION_RE.match(explicit):
            raise ValueError(
                f"ASYNCCP_GENERATION={explicit!r} is not a generation: 1-64 characters "
                "from A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        return explicit
    run_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if run_id:
        return _safe(f"{run_id}.{env.get('TORCHELASTIC_RESTART_COUNT', '0').strip() or '0'}")
    job = env.get("SLURM_JOB_ID", "").strip()
    if job:
        step = env.get("SLURM_STEP_ID", "").strip() or "batch"
        restart = env.get("SLURM_RESTART_COUNT", "").strip() or "0"
        return _safe(f"slurm{job}.{step}.{restart}")
    return None


def sharding(shard: object, shards: object, generation: object, *, writer: str) -> ShardSpec | None:
    """Validate the sharding options of a ``Checkpointer``; None when it is not sharded."""
    if shard is None and shards is None:
        if generation is not None:
            raise TypeError("generation= only applies to a sharded Checkpointer (shard=, shards=)")
        return None
    if shard is None or shards is None:
        raise TypeError(
            "pass both shard= (this process's part, 0-based) and shards= (how many parts), "
            f"got shard={shard!r}, shards={shards!r}"
        )
    for name, value in (("shards", shards), ("shard", shard)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    assert isinstance(shard, int) and isinstance(shards, int)
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if not 0 <= shard < shards:
        raise ValueError(
            f"shard must be between 0 and shards - 1 = {shards - 1}, got {shard} "
            "(shards are numbered from 0, like torch.distributed ranks)"
        )
    if generation is not None:
        if is_int(generation) and generation >= 0:
            generation = str(generation)
        if not isinstance(generation, str) or not GENERATION_RE.match(generation):
            raise ValueError(
                f"generation must be 1-64 characters from A-Z a-z 0-9 . _ - (starting "
                f"with a letter or digit) or an int >= 0, got {generation!r}"
            )
        return ShardSpec(shard, shards, generation)
    found = generation_from_env()
    if found is None:
        if shards > 1:
            raise ValueError(
                f"a Checkpointer with shards={shards} needs a generation: a name for this "
                "launch that every shard computes alike and no other launch shares (so "
                "parts of different launches never mix). Pass generation=..., or set "
                "ASYNCCP_GENERATION for every process of the launch; under torchrun or "
                "Slurm it is found in their environment."
            )
        found = writer  # one shard cannot disagree with itself: a fresh one per open
    return ShardSpec(shard, shards, found)


def _bad(key: str, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"invalid record {key}: {why}")


@dataclass(frozen=True)
class Part:
    """One part record: part ``shard`` of ``shards`` of a step, in ``generation``."""

    shard: int
    shards: int
    generation: str
    manifest: Manifest  # its step, writer, payload folder, files, metadata

    def doc(self) -> dict[str, Any]:
        """The part as the step's manifest embeds it."""
        return {"shard": self.shard, **self.manifest.to_doc()}

    def encode(self) -> bytes:
        """The part record's bytes."""
        return encode_doc(
            {**self.doc(), "format": FORMAT, "shards": self.shards, "generation": self.generation}
        )

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> Part:
        """Parse and validate a part record stored at ``key`` (which says what it must be)."""
        where = parse_part_key(key)
        if where is None:
            raise _bad(key, "not a part record key")
        step, generation, shard, shards = where
        doc = decode_doc(raw, key=key)
        if doc.get("format") != FORMAT or isinstance(doc.get("format"), bool):
            raise _bad(key, f"format {doc.get('format')!r} is not {FORMAT}; upgrade asynccp")
        manifest = Manifest.from_doc(doc, key=key)
        found = (manifest.step, doc.get("generation"), doc.get("shard"), doc.get("shards"))
        if found != (step, generation, shard, shards):
            raise _bad(key, f"records (step, generation, shard, shards) {found}")
        return cls(shard, shards, generation, manifest)


@dataclass(frozen=True)
class ShardedManifest:
    """The manifest of a sharded step: its ``shards`` part records, in shard order."""

    step: int
    shards: int
    generation: str
    parts: tuple[Manifest, ...]

    @property
    def writer(self) -> str:
        """Part 0's writer: what tells this commit from another commit of the step."""
        return self.parts[0].writer

    @property
    def data(self) -> str:
        """The payload folders, for messages."""
        return ", ".join(p.data for p in self.parts)

    @classmethod
    def from_parts(cls, parts: Sequence[Part]) -> ShardedManifest:
        """The step's manifest from its part records (a function of them alone)."""
        ordered = sorted(parts, key=lambda p: p.shard)
        first = ordered[0]
        shape = (first.manifest.step, first.generation, first.shards)
        for p in ordered:
            if (p.manifest.step, p.generation, p.shards) != shape:
                raise ValueError(f"parts of different steps or launches: {shape}")
        if [p.shard for p in ordered] != list(range(first.shards)):
            raise ValueError(f"not every part of {first.shards}: {[p.shard for p in ordered]}")
        return cls(shape[0], first.shards, first.generation, tuple(p.manifest for p in ordered))

    def encode(self) -> bytes:
        """The manifest's bytes: the same part records always give the same bytes."""
        return encode_doc(
            {
                "format": SHARDED_FORMAT,
                "step": self.step,
                "shards": self.shards,
                "generation": self.generation,
                "parts": [_embedded(r, m) for r, m in enumerate(self.parts)],
            }
        )

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> ShardedManifest:
        """Parse and validate a sharded step's manifest stored at ``key``."""
        return cls.from_doc(decode_doc(raw, key=key), key=key)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], *, key: str) -> ShardedManifest:
        """Validate a sharded step's manifest, decoded from ``key``."""
        if doc.get("format") != SHARDED_FORMAT or isinstance(doc.get("format"), bool):
            raise _bad(key, f"format {doc.get('format')!r} is not {SHARDED_FORMAT}")
        shards, generation, raw_parts = doc.get("shards"), doc.get("generation"), doc.get("parts")
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise _bad(key, f"shards {shards!r} is not an int between 1 and {MAX_SHARDS}")
        if not isinstance(generation, str) or not GENERATION_RE.match(generation):
            raise _bad(key, f"generation {generation!r} is not a generation name")
        if not isinstance(raw_parts, list) or len(raw_parts) != shards:
            raise _bad(key, f"parts is not a list of {shards} part records")
        parts = []
        writers = set()
        for r, p in enumerate(raw_parts):
            if not isinstance(p, dict) or p.get("shard") != r or isinstance(p.get("shard"), bool):
                raise _bad(key, f"part {r} is not an object recording shard {r}")
            part = Manifest.from_doc({**p, "step": doc.get("step")}, key=key)
            if part.writer in writers:
                raise _bad(key, f"writer {part.writer} records two parts")
            writers.add(part.writer)
            parts.append(part)
        return cls(parts[0].step, shards, generation, tuple(parts))


def _embedded(shard: int, m: Manifest) -> dict[str, Any]:
    """Part ``shard`` as the step's manifest holds it (its step and format are the
    manifest's own)."""
    doc = m.to_doc()
    del doc["format"], doc["step"]
    return {"shard": shard, **doc}


#: A step's manifest: of one process, or of a sharded step.
AnyManifest = Manifest | ShardedManifest


def decode_record(raw: bytes, *, key: str) -> Manifest | ShardedManifest:
    """A step's manifest, of one process (format 1, or 3 with inline files) or sharded
    (format 2), validated."""
    doc = decode_doc(raw, key=key)
    if doc.get("format") == SHARDED_FORMAT:
        return ShardedManifest.from_doc(doc, key=key)
    return Manifest.from_record(doc, key=key)


def folders_of(m: Manifest | ShardedManifest) -> list[str]:
    """The payload folders a manifest names (none for a checkpoint whose every file is
    inside its record)."""
    parts = [m] if isinstance(m, Manifest) else m.parts
    return [p.data for p in parts if p.stored]


def owned_prefixes(m: AnyManifest) -> list[str]:
    """What deleting the step ``m`` commits removes after its record: its payload folders,
    and for a sharded step its part records (of every generation: the step is gone)."""
    if isinstance(m, Manifest):
        return folders_of(m)
    return [*folders_of(m), parts_dir(m.step).rstrip("/")]
