"""Checkpoint: one committed checkpoint, and reading it back, verified.

Restore never trusts storage: every byte read is checked against the manifest's size and
CRC32C, and a download lands in a private folder inside the destination and is moved
into place only once every file verified (:mod:`asynccp._dest`). Every store call goes
through :func:`asynccp._store.call`: a store failure is a :class:`~asynccp.StoreError`
naming the object and the location, whichever method hit it; a payload object that is
missing or differs is a :class:`~asynccp.CorruptCheckpointError`.

A Checkpoint holds its store, not its checkpointer: it can be read after the
checkpointer that found it closed (or gave up on its own pending work).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

import anyio
import anyio.to_thread
import crc32c

from . import _memory
from ._checks import check_bool
from ._dest import inside, make_tmp, move_into_place, unwritable
from ._groups import first_leaf
from ._layout import data_dir, payload_key
from ._manifest import FileInfo, Manifest
from ._shard_records import SHARD_PREFIX, AnyManifest, Part
from ._store import RangedReads, Store, call, local_files, local_root, store_errors
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ShardMismatchError,
)

__all__ = ["Checkpoint", "checkpoint_from", "part_checkpoint"]

#: Files of one checkpoint read (or downloaded) at once from a remote store.
_READ_CONCURRENCY = 8


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One committed checkpoint: what was saved at ``step``, and how to read it back.

    Immutable. ``files`` maps each file name to its size and checksum; ``metadata`` is
    what was passed to ``save()``; ``attempt`` is the supervised attempt that wrote it.

    A step written by many processes (``Checkpointer(..., shard=r, shards=n)``) has
    ``shards == n`` and ``generation`` (the launch that wrote it); ``shard(r)`` is its
    part ``r``, itself a ``Checkpoint`` (``read``, ``read_all``, ``download``,
    ``verify``) holding that part's files, metadata and writer. The whole step's
    ``files`` are every part's, named ``shard-<r>/<name>``: ``verify()`` checks every
    part and ``download()`` writes each part into ``shard-<r>/``. Its ``metadata``,
    ``attempt`` and ``writer`` are part 0's; ``created_at`` is the newest part's. A
    checkpoint written by one process has ``shards == 1`` and ``shard(0)`` is itself.
    """

    step: int
    metadata: Mapping[str, Any]
    files: Mapping[str, FileInfo]
    created_at: datetime
    attempt: int
    writer: str
    _store: Store = field(repr=False)
    #: Parts of the step: 1 for a checkpoint written by one process.
    shards: int = 1
    #: For one part of a sharded step (``ckpt.shard(r)``): ``r``; else None.
    part: int | None = None
    #: The launch that wrote a sharded step (None for a checkpoint of one process).
    generation: str | None = None
    _parts: tuple[Checkpoint, ...] = field(repr=False, default=())
    #: Set on a step handed to a launch with another number of processes (see
    #: ``_shards.whole_step``): why ``shard(r)`` is not that process's part.
    _foreign: str | None = field(repr=False, default=None)

    @property
    def size(self) -> int:
        """Total payload bytes of the checkpoint."""
        return sum(f.size for f in self.files.values())

    def shard(self, r: int) -> Checkpoint:
        """Part ``r`` of a step written by ``shards`` processes (``0 <= r < shards``).

        The part is a ``Checkpoint`` of its own: ``read``, ``read_all``, ``download`` and
        ``verify`` touch that part's files only. For a checkpoint written by one process,
        ``shard(0)`` is the checkpoint itself.
        """
        if not isinstance(r, int) or isinstance(r, bool):
            raise TypeError(f"shard must be an int, got {type(r).__name__}")
        if self._foreign is not None:
            raise ShardMismatchError(self._foreign.format(r=r))
        if not 0 <= r < self.shards:
            raise ShardMismatchError(
                f"checkpoint {self.step} has {self.shards} shard(s) (0..{self.shards - 1}); "
                f"there is no shard {r}"
            )
        if self._parts:
            return self._parts[r]
        if self.part is not None and self.part != r:
            raise ShardMismatchError(
                f"this is part {self.part} of checkpoint {self.step}, not part {r}: take "
                f"part {r} from the whole step (`ckpt.shard({r})` on what `latest()` returns)"
            )
        return self

    def _key(self, name: str) -> str:
        """The key of file ``name`` (a sharded step's names start with ``shard-<r>/``)."""
        if self._parts:
            head, _, rest = name.partition("/")
            return self._parts[int(head.removeprefix(SHARD_PREFIX))]._key(rest)
        return payload_key(data_dir(self.step, self.writer), name)

    def _name(self, name: str | None) -> str:
        if name is None:
            if len(self.files) != 1:
                raise CheckpointError(
                    f"checkpoint {self.step} holds {len(self.files)} files "
                    f"({sorted(self.files)[:5]}…); pass read(name=...)"
                )
            return next(iter(self.files))
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if name not in self.files:
            raise CheckpointNotFoundError(
                f"checkpoint {self.step} has no file {name!r}; it has {sorted(self.files)[:10]}"
            )
        return name

    async def read(self, name: str | None = None) -> bytes:
        """The bytes of one file, verified against the manifest's size and CRC32C.

        ``name`` may be left out when the checkpoint holds exactly one file.
        Raises :class:`CorruptCheckpointError` when the object is missing or differs,
        :class:`StoreError` when the store fails.
        """
        name = self._name(name)
        if self.files[name].inline is not None:  # in the record: no store call, no thread
            return self._read_verified(name)
        return await call(self._store, self._read_verified, name, map_errors=False)

    async def read_all(self) -> dict[str, bytes]:
        """Every file's bytes by name, each verified.

        Files are read in batches, one worker-thread trip per batch: many small files
        would cost a trip each. On a local disk one batch per ~4 MiB, up to four side by
        side (more only fight over the GIL); on a remote store eight (latency-bound).
        Raises :class:`CorruptCheckpointError` if any file is missing or differs.
        """
        names = list(self.files)
        width = _READ_CONCURRENCY
        if local_root(self._store) is not None:  # CPU-bound: a thread per ~4 MiB, up to 4
            width = max(1, min(4, self.size // (4 << 20)))
        batches = [names[i::width] for i in range(min(width, len(names)))]
        out: dict[str, bytes] = {}

        def read_batch(batch: list[str]) -> None:
            for name in batch:
                out[name] = self._read_verified(name)

        try:
            async with anyio.create_task_group() as tg:
                for batch in batches:
                    tg.start_soon(partial(call, self._store, read_batch, batch, map_errors=False))
        except Exception as e:  # a task group wraps its children's errors
            leaf = first_leaf(e)
            raise leaf from leaf.__cause__
        return {name: out[name] for name in names}

    def _read_verified(self, name: str) -> bytes:
        """One file's bytes, checked (worker thread)."""
        inline = self._inline(name)
        if inline is not None:
            return inline
        if self.files[name].size >= _memory.LANDING_FROM and local_root(self._store) is None:
            # A large remote object is copied chunk by chunk into its bytes object as
            # it arrives (see _memory.Landing), checksummed on the way.
            data: bytes = self._land(name, "bytes")
            return data
        key = self._key(name)
        try:
            with store_errors(self._store, key, "reading"):
                buf = self._store.get_buffer(key)  # obstore's buffer, not yet copied
        except FileNotFoundError as e:
            raise self._missing(key, e) from e
        _check(self.step, name, self.files[name], len(buf), crc32c.crc32c(buf))
        return _memory.to_bytes(buf)  # one copy without the GIL (none for local files)

    def _land(self, name: str, kind: str) -> Any:
        """File ``name`` streamed into a :class:`_memory.Landing` of ``kind``, verified."""
        info = self.files[name]
        landing = _memory.Landing(info.size, kind=kind)
        try:
            self._stream_verified(
                name, _Filler(landing, self.step, name), chunk_size=_memory.LANDING_CHUNK
            )
            return landing.result()
        finally:
            landing.close()

    async def _read_buffer(self, name: str) -> Any:
        """File ``name`` as a writable buffer, its size and CRC32C checked.

        On a local disk a private (copy-on-write) memory map of the file: no copy.
        Elsewhere streamed, as it arrives, into fresh writable memory
        (:class:`asynccp._memory.Landing`): the one copy out of obstore's buffers.
        """
        return await call(self._store, self._buffer_verified, name, map_errors=False)

    def _buffer_verified(self, name: str) -> Any:
        inline = self._inline(name)
        if inline is not None:
            return bytearray(inline)
        info = self.files[name]
        key = self._key(name)
        try:
            with store_errors(self._store, key, "reading"):
                files = local_files(self._store)  # (found once per store: see there)
                buf = files.map(key) if files is not None else None
        except FileNotFoundError as e:
            raise self._missing(key, e) from e
        if buf is None and info.size >= _memory.LANDING_FROM:  # streamed into memory
            return self._land(name, "map")
        if buf is None:  # a small remote object: received whole, then one copy
            try:
                with store_errors(self._store, key, "reading"):
                    body = self._store.get_buffer(key)
            except FileNotFoundError as e:
                raise self._missing(key, e) from e
            _check(self.step, name, info, len(body), crc32c.crc32c(body))
            return _memory.writable_copy(body)
        _check(self.step, name, info, len(buf), crc32c.crc32c(buf))
        return buf

    async def read_state(
        self,
        name: str = "state",
        *,
        framework: Literal["numpy", "torch"] = "numpy",
        keys: Iterable[str] | None = None,
        slices: Mapping[str, slice | tuple[slice, ...]] | None = None,
    ) -> dict[Any, Any]:
        """The training state saved with ``save(step, asynccp.State(...))``, verified.

        The same nesting comes back — dicts (int keys included), lists, tuples,
        scalars — with numpy arrays, or torch tensors with ``framework="torch"``, of
        the saved dtype and shape. Read whole, they are views of the verified file,
        writable: a copy-on-write memory map on a local disk (no copy), one buffer
        elsewhere. ``name`` is the state's name when it was one value of a file mapping.

        ``keys`` (paths such as ``"model/w"`` or ``"optim"``: keys joined by ``/``)
        reads only the values at or under them; ``slices`` (path → a slice or a tuple
        of slices, in global coordinates) reads only that region of a tensor. Only the
        bytes they need are fetched (ranged reads, in 4 KiB chunks), and each chunk
        fetched is checked against the CRC32C the save recorded for it.

        On a whole step saved by many processes, values saved as
        :class:`~asynccp.Shard` come back as the global tensor (or the region
        ``slices`` names) assembled from every part's blocks, fetching only the blocks
        it overlaps; other values are taken from the first part that holds them. On
        one part (``ckpt.shard(r)``) a ``Shard`` value comes back as a ``Shard`` of
        that part's block. See ``docs/loading.md``.

        Raises :class:`CheckpointNotFoundError` when the checkpoint holds no such state
        (or a key names nothing), :class:`CorruptCheckpointError` when what it reads
        fails verification (so ``load_latest`` falls back to an older checkpoint), and
        ``TypeError`` for a dtype numpy cannot hold (``bfloat16``, ``float8``: read
        those with torch).
        """
        if keys is None and slices is None and not self._parts:
            from ._state import read_state

            state: dict[Any, Any] = await read_state(self, name, framework=framework)
            return state
        from ._state import read_partial

        partial: dict[Any, Any] = await read_partial(
            self, name, framework=framework, keys=keys, slices=slices
        )
        return partial

    async def load_into(
        self, target: Mapping[Any, Any], name: str = "state", *, strict: bool = True
    ) -> list[str]:
        """Copy the saved state into ``target``'s own tensors and arrays, in place.

        ``target`` is a nested mapping like the one saved — a model's or an
        optimizer's ``state_dict()``, ``{"model": ..., "optim": ...}`` — whose tensors
        (torch, CPU or CUDA) and numpy arrays receive the saved values: no second copy
        of the state is made (each tensor goes through a staging buffer of at most its
        own size). A :class:`~asynccp.Shard` in ``target`` receives its region of the
        saved global tensor: a job restarted on another number of processes loads
        each process's share only. Scalars (an epoch, a learning rate) are set in
        their mapping or list.

        Returns the paths loaded (``"model/w"``...). Every value is checked before a
        byte is fetched: a tensor whose shape or dtype differs, a value of another
        kind, and — with ``strict`` (the default) — a path in one and not the other
        are a ``ValueError`` naming the path. Reads are verified as in
        :meth:`read_state`.
        """
        check_bool("strict", strict)
        from ._state import load_into

        return await load_into(self, target, name, strict=strict)

    @property
    def _ranged(self) -> bool:
        """Whether the store reads byte ranges (else a partial read reads files whole)."""
        return isinstance(self._store, RangedReads)

    async def _read_ranges(
        self, name: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None:
        """Read byte ranges of file ``name`` into ``out`` (unverified: the caller
        checks them against the state's chunk checksums)."""
        info = self.files[name]
        for start, end in ranges:
            if not 0 <= start <= end <= info.size:
                raise CorruptCheckpointError(
                    f"checkpoint {self.step}: bytes {start}-{end} of file {name!r} are past "
                    f"its {info.size} bytes"
                )
        if info.inline is not None:  # in the record: no store call
            for (start, end), view in zip(ranges, out, strict=True):
                view[:] = info.inline[start:end]
            return
        await call(self._store, self._ranges_now, name, ranges, out, map_errors=False)

    def _ranges_now(
        self, name: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None:
        key = self._key(name)
        store = self._store
        assert isinstance(store, RangedReads)
        try:
            with store_errors(self._store, key, "reading"):
                try:
                    store.read_ranges(key, ranges, out)
                except EOFError:
                    raise CorruptCheckpointError(
                        f"checkpoint {self.step}: file {name!r} is shorter than the "
                        f"{self.files[name].size} bytes the manifest says"
                    ) from None
        except FileNotFoundError as e:
            raise self._missing(key, e) from e

    def _inline(self, name: str) -> bytes | None:
        """The bytes of file ``name`` when its record holds them, checked; else None."""
        info = self.files[name]
        if info.inline is None:
            return None
        _check(self.step, name, info, len(info.inline), crc32c.crc32c(info.inline))
        return info.inline

    def _missing(self, key: str, e: FileNotFoundError) -> CorruptCheckpointError:
        """A payload object that is not there: gone, or (on a local disk) a folder."""
        folder = isinstance(e.__cause__, IsADirectoryError)
        what = "is a folder, not a file" if folder else "is missing"
        return CorruptCheckpointError(
            f"checkpoint {self.step}: payload object {key} {what} (in {self._store.description})"
        )

    async def verify(self) -> None:
        """Read every file and check it; raise :class:`CorruptCheckpointError` if one fails."""
        for name in self.files:
            if self.files[name].inline is not None:  # in the record: checked here
                self._inline(name)
            else:
                await call(self._store, self._stream_verified, name, None, map_errors=False)

    async def download(self, dest_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write every file under ``dest_dir`` (created if needed), verified; return it.

        Files are downloaded into a hidden folder inside ``dest_dir`` and moved into
        place only once all of them verified, so ``dest_dir`` never holds a mix of a
        half-downloaded checkpoint. ``dest_dir`` may exist and hold other files; a file
        already where one of the checkpoint's goes is replaced only with
        ``overwrite=True``: otherwise it is a :class:`DestinationExistsError` naming
        it (a ``FileExistsError`` too), raised before anything is downloaded.

        Links inside ``dest_dir`` are never followed (``dest_dir`` itself may be one):
        a file whose place holds a symbolic link replaces the link, not what it points
        to; a link where the checkpoint needs a folder is a :class:`CheckpointError`
        naming it, raised before anything is moved (replacing the link would change the
        caller's tree, following it would write outside ``dest_dir``). So is a file
        where a folder is needed and a folder where a file goes.

        A name this destination cannot hold (a path over the system's length limit, a
        character its file system refuses, names that clash on a case-insensitive one)
        is a :class:`CheckpointError` naming the file: the checkpoint is not corrupt, so
        ``restore()`` does not fall back past it. Errors of the destination itself — a
        full disk, no permission, a read-only file system — propagate as the
        :class:`OSError` they are: they are the caller's to fix. Errors of the store are
        a :class:`StoreError`.
        """
        if not isinstance(dest_dir, (str, os.PathLike)):
            raise TypeError(f"dest_dir must be a path, got {type(dest_dir).__name__}")
        check_bool("overwrite", overwrite)
        names = list(self.files)
        dest, tmp = await anyio.to_thread.run_sync(
            make_tmp, os.fspath(dest_dir), names, self.step, overwrite
        )
        try:
            limiter = anyio.CapacityLimiter(_READ_CONCURRENCY)
            try:
                async with anyio.create_task_group() as tg:
                    for name in names:
                        # Not abandoned on cancel: the files go into ``tmp``, removed below.
                        tg.start_soon(
                            partial(
                                call,
                                self._store,
                                self._download_one,
                                name,
                                tmp,
                                limiter=limiter,
                                abandon=False,
                                map_errors=False,
                            )
                        )
            except Exception as e:  # a task group wraps its children's errors
                leaf = first_leaf(e)
                raise leaf from leaf.__cause__
            await anyio.to_thread.run_sync(move_into_place, tmp, dest, names, self.step, overwrite)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, tmp, True)
        return dest

    def _download_one(self, name: str, tmp: Path) -> None:
        """Stream one file into ``tmp``, checked (worker thread)."""
        target = inside(tmp, name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Exclusive: in a fresh folder, an existing file means two names clash.
            out = open(target, "xb")  # noqa: SIM115 - closed by the with below
        except OSError as e:
            raise unwritable(self.step, name, tmp.parent, e) from e
        with out:
            self._stream_verified(name, out)

    def _stream_verified(
        self, name: str, out: _Writable | None, *, chunk_size: int | None = None
    ) -> None:
        """Stream one file into ``out`` (if any), checking size and CRC32C as it goes.

        The store's errors become :class:`StoreError` (a missing object: corruption);
        errors of ``out``, such as a full local disk, propagate as they are.
        """
        inline = self._inline(name)
        if inline is not None:
            if out is not None:
                out.write(inline)
            return
        key = self._key(name)
        crc = size = 0
        with contextlib.closing(self._chunks(key, chunk_size)) as chunks:
            for chunk in chunks:
                crc = crc32c.crc32c(chunk, crc)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)  # outside the store's error handling: its errors are its own
        _check(self.step, name, self.files[name], size, crc)

    def _chunks(self, key: str, chunk_size: int | None = None) -> Generator[bytes, None, None]:
        """The object's chunks, its store's errors turned into asynccp's."""
        try:
            with store_errors(self._store, key, "reading"):
                yield from self._store.chunks(key, chunk_size)
        except FileNotFoundError as e:
            raise self._missing(key, e) from e


class _Writable(Protocol):
    """Where a streamed read goes: a file, or a landing."""

    def write(self, chunk: bytes, /) -> Any: ...


class _Filler:
    """A landing as a stream's destination: more bytes than the manifest says is
    corruption, not a caller's error."""

    def __init__(self, landing: _memory.Landing, step: int, name: str) -> None:
        self._landing, self._step, self._name = landing, step, name

    def write(self, chunk: bytes) -> None:
        try:
            self._landing.write(chunk)
        except ValueError:
            raise CorruptCheckpointError(
                f"checkpoint {self._step}: file {self._name!r} has more than the "
                f"{self._landing.size} bytes the manifest says"
            ) from None


def checkpoint_from(manifest: AnyManifest, store: Store) -> Checkpoint:
    """The checkpoint a (validated) manifest in ``store`` describes (a sharded step's
    holds its parts)."""
    if isinstance(manifest, Manifest):
        return _one(manifest, store)
    n, gen = manifest.shards, manifest.generation
    parts = tuple(
        _one(p, store, shards=n, part=r, generation=gen) for r, p in enumerate(manifest.parts)
    )
    files = {
        f"{SHARD_PREFIX}{r}/{name}": info
        for r, part in enumerate(parts)
        for name, info in part.files.items()
    }
    first = parts[0]
    return Checkpoint(
        step=manifest.step,
        metadata=first.metadata,
        files=MappingProxyType(files),
        created_at=max(p.created_at for p in parts),
        attempt=first.attempt,
        writer=first.writer,
        _store=store,
        shards=n,
        generation=gen,
        _parts=parts,
    )


def part_checkpoint(part: Part, store: Store) -> Checkpoint:
    """One recorded part as a :class:`Checkpoint` (what a shard's save handle gives)."""
    return _one(
        part.manifest, store, shards=part.shards, part=part.shard, generation=part.generation
    )


def _one(
    manifest: Manifest,
    store: Store,
    *,
    shards: int = 1,
    part: int | None = None,
    generation: str | None = None,
) -> Checkpoint:
    return Checkpoint(
        step=manifest.step,
        metadata=MappingProxyType(dict(manifest.metadata)),
        files=MappingProxyType(dict(manifest.files)),
        created_at=manifest.created_at,
        attempt=manifest.attempt,
        writer=manifest.writer,
        _store=store,
        shards=shards,
        part=part,
        generation=generation,
    )


def _check(step: int, name: str, info: FileInfo, size: int, crc: int) -> None:
    """Raise :class:`CorruptCheckpointError` unless the bytes read match ``info`` (the
    size alone for a file with no checksum recorded: another tool's, see
    :mod:`asynccp._foreign`)."""
    if size != info.size:
        raise CorruptCheckpointError(
            f"checkpoint {step}: file {name!r} has {size} bytes, the manifest says {info.size}"
        )
    if info.crc32c is not None and crc != info.crc32c:
        raise CorruptCheckpointError(
            f"checkpoint {step}: file {name!r} fails its checksum "
            f"(crc32c {crc:08x}, the manifest says {info.crc32c:08x}); the stored bytes changed"
        )
