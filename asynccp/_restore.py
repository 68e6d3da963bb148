"""Reading checkpoints back: list, find the latest complete one, read and verify.

Restore never trusts storage: manifests are validated before use, every byte read is
checked against the manifest's size and CRC32C, and downloads land in a private
folder inside the destination and are moved into place only once every file verified.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import crc32c

from ._groups import first_leaf
from ._location import Location
from ._manifest import FileInfo, Manifest, manifest_key
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StoreError,
)

__all__ = ["Checkpoint"]

log = logging.getLogger("asynccp")
T = TypeVar("T")
#: Files of one checkpoint read (or downloaded) at once.
_READ_CONCURRENCY = 8


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One committed checkpoint: what was saved at ``step``, and how to read it back.

    Immutable. ``files`` maps each file name to its size and checksum; ``metadata`` is
    what was passed to ``save()``; ``attempt`` is the supervised attempt that wrote it.
    """

    step: int
    metadata: Mapping[str, Any]
    files: Mapping[str, FileInfo]
    created_at: datetime
    attempt: int
    writer: str
    _location: Location = field(repr=False)
    _data: str = field(repr=False)
    _key: str = field(repr=False, default="")  # the manifest object that commits it

    @classmethod
    def _from_manifest(cls, m: Manifest, location: Location, *, key: str = "") -> Checkpoint:
        return cls(
            step=m.step,
            metadata=MappingProxyType(dict(m.metadata)),
            files=MappingProxyType(dict(m.files)),
            created_at=m.created_at,
            attempt=m.attempt,
            writer=m.writer,
            _location=location,
            _data=m.data,
            _key=key or manifest_key(m.step),
        )

    @property
    def size(self) -> int:
        """Total payload bytes of the checkpoint."""
        return sum(f.size for f in self.files.values())

    def _name(self, name: str | None) -> str:
        if name is None:
            if len(self.files) != 1:
                raise CheckpointError(
                    f"checkpoint {self.step} holds {len(self.files)} files "
                    f"({sorted(self.files)[:5]}…); pass read(name=...)"
                )
            return next(iter(self.files))
        if name not in self.files:
            raise CheckpointNotFoundError(
                f"checkpoint {self.step} has no file {name!r}; it has {sorted(self.files)[:10]}"
            )
        return name

    async def read(self, name: str | None = None) -> bytes:
        """The bytes of one file, verified against the manifest's size and CRC32C.

        ``name`` may be left out when the checkpoint holds exactly one file.
        Raises :class:`CorruptCheckpointError` when the object is missing or differs.
        """
        name = self._name(name)
        return await anyio.to_thread.run_sync(self._read_verified, name)

    async def read_all(self) -> dict[str, bytes]:
        """Every file's bytes by name, each verified.

        Files are read in batches, one worker-thread trip per batch: many small files
        would cost a trip each. On a local disk one batch per ~4 MiB, up to four side by
        side (more only fight over the GIL); on a remote store eight (latency-bound).
        Raises :class:`CorruptCheckpointError` if any file is missing or differs.
        """
        names = list(self.files)
        width = _READ_CONCURRENCY
        if self._location.local_root is not None:  # CPU-bound: a thread per ~4 MiB, up to 4
            width = max(1, min(4, self.size // (4 << 20)))
        batches = [names[i::width] for i in range(min(width, len(names)))]
        out: dict[str, bytes] = {}

        def read_batch(batch: list[str]) -> None:
            for name in batch:
                out[name] = self._read_verified(name)

        try:
            async with anyio.create_task_group() as tg:
                for batch in batches:
                    tg.start_soon(partial(anyio.to_thread.run_sync, read_batch, batch))
        except Exception as e:  # a task group wraps its children's errors
            leaf = first_leaf(e)
            raise leaf from leaf.__cause__
        return {name: out[name] for name in names}

    def _read_verified(self, name: str) -> bytes:
        key = f"{self._data}/{name}"
        try:
            data = self._location.get(key)
        except FileNotFoundError as e:
            raise CorruptCheckpointError(
                f"checkpoint {self.step}: payload object {key} is missing"
            ) from e
        except Exception as e:
            raise StoreError(f"checkpoint {self.step}: reading {key} failed: {e}") from e
        _check(self.step, name, self.files[name], len(data), crc32c.crc32c(data))
        return data

    async def download(self, dest_dir: str | os.PathLike[str]) -> Path:
        """Write every file under ``dest_dir`` (created if needed), verified; return it.

        Files are downloaded into a hidden folder inside ``dest_dir`` and moved into
        place only once all of them verified, so ``dest_dir`` never holds a mix of a
        half-downloaded checkpoint. Existing files of the same names are replaced.
        """
        if not isinstance(dest_dir, (str, os.PathLike)):
            raise TypeError(f"dest_dir must be a path, got {type(dest_dir).__name__}")
        dest, tmp = await anyio.to_thread.run_sync(_make_tmp, os.fspath(dest_dir))
        try:
            limiter = anyio.CapacityLimiter(_READ_CONCURRENCY)
            try:
                async with anyio.create_task_group() as tg:
                    for name in self.files:
                        tg.start_soon(self._download_one_async, name, tmp, limiter)
            except Exception as e:  # a task group wraps its children's errors
                leaf = first_leaf(e)
                raise leaf from leaf.__cause__
            await anyio.to_thread.run_sync(_move_into_place, tmp, dest, list(self.files))
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, tmp, True)
        return dest

    async def _download_one_async(
        self, name: str, tmp: Path, limiter: anyio.CapacityLimiter
    ) -> None:
        await anyio.to_thread.run_sync(self._download_one, name, tmp, limiter=limiter)

    def _download_one(self, name: str, tmp: Path) -> None:
        target = _inside(tmp, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            self._stream_verified(name, out.write)

    async def verify(self) -> None:
        """Read every file and check it; raise :class:`CorruptCheckpointError` if one fails."""
        for name in self.files:
            await anyio.to_thread.run_sync(self._stream_verified, name, None)

    def _stream_verified(self, name: str, sink: Callable[[Any], Any] | None) -> None:
        """Stream one file through ``sink`` (if any), checking size and CRC32C as it goes.

        Store errors become :class:`StoreError` (a missing object: corruption); errors
        of the sink, such as a full local disk, propagate as they are.
        """
        key = f"{self._data}/{name}"
        crc = size = 0
        try:
            chunks = self._location.chunks(key)
            for chunk in chunks:
                crc = crc32c.crc32c(chunk, crc)
                size += len(chunk)
                if sink is not None:
                    sink(chunk)
        except FileNotFoundError as e:
            raise CorruptCheckpointError(
                f"checkpoint {self.step}: payload object {key} is missing"
            ) from e
        except OSError:
            raise
        except Exception as e:
            raise StoreError(f"checkpoint {self.step}: reading {key} failed: {e}") from e
        _check(self.step, name, self.files[name], size, crc)


def _check(step: int, name: str, info: FileInfo, size: int, crc: int) -> None:
    if size != info.size:
        raise CorruptCheckpointError(
            f"checkpoint {step}: file {name!r} has {size} bytes, the manifest says {info.size}"
        )
    if crc != info.crc32c:
        raise CorruptCheckpointError(
            f"checkpoint {step}: file {name!r} fails its checksum "
            f"(crc32c {crc:08x}, the manifest says {info.crc32c:08x}); the stored bytes changed"
        )


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing any name that would land outside ``root``."""
    target = Path(os.path.normpath(root / name))
    if os.path.commonpath([root, target]) != str(root) or target == root:
        raise CorruptCheckpointError(f"file name {name!r} would be written outside {root}")
    return target


def _make_tmp(dest_dir: str) -> tuple[Path, Path]:
    """The absolute destination (created) and a private download folder inside it."""
    dest = Path(os.path.abspath(dest_dir))
    dest.mkdir(parents=True, exist_ok=True)
    return dest, Path(tempfile.mkdtemp(dir=dest, prefix=".asynccp-download-"))


def _move_into_place(tmp: Path, dest: Path, names: list[str]) -> None:
    for name in names:
        target = _inside(dest, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(_inside(tmp, name), target)
