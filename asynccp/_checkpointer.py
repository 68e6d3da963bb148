"""Checkpointer: the object users hold. It wires the stages together and owns them.

``save()`` validates, reserves room in the bounded queue, snapshots, and returns; the
worker task (in the checkpointer's own task group) takes checkpoints in save order,
uploads the payloads of up to two at once and commits them strictly in order, then
applies retention. Leaving the
``async with`` block flushes: every staged checkpoint commits (or its error is
raised) before the block is left, even when the body raised or was cancelled.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from . import _catalog as catalog
from ._catalog import Bad
from ._handle import SaveHandle
from ._leases import RENEW_SECONDS as LEASE_RENEW_SECONDS
from ._leases import drop as drop_lease
from ._leases import renew as renew_lease
from ._location import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_IO_ATTEMPTS,
    DEFAULT_PART_CONCURRENCY,
    Location,
    resolve,
)
from ._manifest import MAX_STEP, check_metadata, now
from ._payload import Payload, Stager
from ._queue import Policy, StagingQueue
from ._restore import Checkpoint
from ._retention import apply_retention, collect_orphans
from ._staging import open_staging
from ._upload import Pending, upload
from ._validate import check_seconds, is_int
from .errors import (
    CheckpointClosedError,
    CheckpointError,
    CorruptCheckpointError,
    FlushTimeoutError,
    StepOrderError,
    SupersededError,
)

__all__ = ["Checkpointer", "Stats"]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: Checkpoints uploading at once: one committing, the next one's payload under way.
_PIPELINE = 2
#: Only checkpoints smaller than this overlap the previous one's commit: for them the
#: commit's fixed cost (fsyncs, a request) is what pipelining hides. Large ones are
#: bound by the store's bandwidth, and running two at once only adds threads competing
#: for the GIL (event-loop lag p99 at 64 MiB: 2-4 ms alone, 5-7 ms overlapped).
_PIPELINE_BELOW = 8 << 20


@dataclass(frozen=True)
class Stats:
    """A snapshot of what a :class:`Checkpointer` has done so far."""

    saves: int
    committed: int
    failed: int
    superseded: int
    bytes_saved: int
    bytes_committed: int
    queue_depth: int
    queue_bytes: int
    stall_seconds: float
    max_stall_seconds: float
    upload_seconds: float
    last_committed_step: int | None


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note`` that also works on Python 3.10."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - 3.10 only
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _positive_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


class Checkpointer:
    """Save checkpoints without stalling, commit them atomically, restore the latest.

    Use it as ``async with Checkpointer(location, ...) as cp``. ``location`` is a
    path, a ``file://``, ``memory://``, ``s3://``, ``gs://`` or ``az://`` URL, or an
    obstore store object (with ``prefix=``). Extra keyword arguments go to
    ``obstore.store.from_url`` for URLs (``client_options``, ``retry_config``,
    credentials...).

    Args:
        max_pending: checkpoints staged but not yet committed before ``save()`` has
            to wait (``policy="block"``) or supersede (``policy="latest"``).
        max_pending_bytes: bytes staged but not yet committed (memory bound). One
            checkpoint larger than this is accepted alone, once the queue is empty.
        policy: ``"block"`` (backpressure) or ``"latest"`` (drop the oldest
            checkpoint not yet started; its handle raises ``SupersededError``).
        keep: keep the newest ``keep`` committed checkpoints (None keeps all).
        keep_every: also keep every step divisible by this (milestones).
        attempt: recorded in each manifest; set by the supervisor.
        durable: fsync local writes before a checkpoint counts as committed.
        flush_timeout: seconds the exit flush may take before pending work is
            abandoned and reported with ``FlushTimeoutError``.
        max_concurrency: files of one checkpoint uploaded at once.
        chunk_size, part_concurrency: multipart part size and parallel parts for
            large objects on remote stores.
        io_attempts: attempts per store call on connection-level errors, on top of
            the retries obstore makes itself (its ``retry_config``).
        orphan_grace: seconds before an uncommitted payload folder is collected.
        staging_dir: where file payloads are copied while they wait (a temp dir).
    """

    def __init__(
        self,
        location: Any,
        *,
        prefix: str | None = None,
        max_pending: int = 4,
        max_pending_bytes: int = 1 << 30,
        policy: Policy = "block",
        keep: int | None = None,
        keep_every: int | None = None,
        attempt: int = 0,
        durable: bool = True,
        flush_timeout: float | timedelta = 300.0,
        max_concurrency: int = 8,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        part_concurrency: int = DEFAULT_PART_CONCURRENCY,
        io_attempts: int = DEFAULT_IO_ATTEMPTS,
        orphan_grace: float | timedelta = 3600.0,
        staging_dir: str | os.PathLike[str] | None = None,
        **store_options: Any,
    ) -> None:
        _positive_int("max_pending", max_pending)
        _positive_int("max_pending_bytes", max_pending_bytes)
        _positive_int("keep", keep, allow_none=True)
        _positive_int("keep_every", keep_every, allow_none=True)
        _positive_int("attempt", attempt, minimum=0)
        _positive_int("max_concurrency", max_concurrency)
        if policy not in ("block", "latest"):
            raise ValueError(f"policy must be 'block' or 'latest', got {policy!r}")
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, got {type(durable).__name__}")
        self._location: Location = resolve(
            location,
            prefix=prefix,
            durable=durable,
            chunk_size=chunk_size,
            part_concurrency=part_concurrency,
            io_attempts=io_attempts,
            **store_options,
        )
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.policy: Policy = policy
        self.keep = keep
        self.keep_every = keep_every
        self.attempt = attempt
        self.flush_timeout = check_seconds("flush_timeout", flush_timeout)
        self.orphan_grace = check_seconds("orphan_grace", orphan_grace)
        self.max_concurrency = max_concurrency
        self._staging_parent = None if staging_dir is None else os.fspath(staging_dir)
        #: This writer's id, part of its payload folder names.
        self.writer_id = secrets.token_hex(6)
        self._state = "new"
        self._failures: list[CheckpointError] = []
        self._last_step: int | None = None
        #: The newest valid step at the location that is not known to be bad: saving at
        #: or below it is a StepOrderError. Found at open, refined by every read.
        self._floor: int | None = None
        #: Checkpoints this checkpointer found not to verify: never counted, replaced
        #: when their step is saved again.
        self._bad: set[Bad] = set()
        #: Records found valid (retention checks each once).
        self._valid_keys: set[str] = set()
        self._orphans_collected = False
        self._counts = {"saves": 0, "committed": 0, "failed": 0, "superseded": 0}
        self._bytes_saved = self._bytes_committed = 0
        self._stall = self._max_stall = self._upload_time = 0.0
        self._last_committed: int | None = None

    def __repr__(self) -> str:
        return f"<Checkpointer {self._location.description} writer={self.writer_id} {self._state}>"

    @property
    def location(self) -> str:
        """Where the checkpoints go, as a readable string."""
        return self._location.description

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Checkpointer:
        if self._state != "new":
            raise CheckpointClosedError("a Checkpointer can be used in one `async with` block only")
        self._state = "opening"
        try:
            await anyio.to_thread.run_sync(self._location.open)
        except Exception as e:
            self._state = "closed"
            raise CheckpointError(f"cannot open {self._location.description}: {e}") from e
        try:
            # The lease is written while the location is read: open returns with it
            # held, so the first upload need not wait for it.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._discover)
                tg.start_soon(self._write_lease)
        except BaseException:  # cancelled while opening
            self._state = "closed"
            raise
        folder = await anyio.to_thread.run_sync(open_staging, self._staging_parent)
        self._queue: StagingQueue[Pending] = StagingQueue(
            self.max_pending, self.max_pending_bytes, self.policy, self._supersede
        )
        self._stager = Stager(folder, lambda: self.max_pending_bytes - self._queue.staged_bytes)
        self._save_lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(self.max_concurrency)
        self._worker_scope = anyio.CancelScope(shield=True)
        self._worker_done = anyio.Event()
        self._in_flight = anyio.Semaphore(_PIPELINE)
        self._housekeeping_lock = anyio.Lock()
        # Shielded: the lease must outlive a cancelled body while the exit flush runs;
        # the exit cancels it once the flush is over.
        self._aux_scope = anyio.CancelScope(shield=True)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._auxiliary)
        self._tg.start_soon(self._worker)
        self._state = "open"
        return self

    async def _auxiliary(self) -> None:
        """The open checkpointer's helper task: it holds the lease until the exit."""
        with self._aux_scope:
            await self._keep_lease()

    async def _discover(self) -> None:
        """Find the location's newest valid step: the floor for new saves.

        A store that cannot be read now is logged, not fatal: the floor is then unknown,
        and a step committed meanwhile is still caught by the create-if-absent commit.
        """
        try:
            found = await catalog.latest(self._location, skip=self._bad)
        except Exception as e:
            log.warning("asynccp: could not read %s at open: %s", self.location, e)
        else:
            if found is not None:
                self._raise_floor(found.step)

    async def _keep_lease(self) -> None:
        """Hold this writer's lease while open, so no collector takes its uploads.

        The first write happens while opening (a failed one is logged: a writer without
        a lease only risks its slow commits being checked afterwards); this renews it.
        """
        while True:
            await anyio.sleep(LEASE_RENEW_SECONDS)
            await self._write_lease()

    async def _write_lease(self) -> None:
        try:
            await renew_lease(self._location, self.writer_id)
        except Exception as e:
            log.warning("asynccp: could not write the lease of %r: %s", self, e)

    def _raise_floor(self, step: int) -> None:
        self._floor = step if self._floor is None else max(self._floor, step)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closing"
        self._queue.close()
        errors: list[CheckpointError] = []
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.flush_timeout) as flush_scope:
                await self._queue.wait_idle()
                await self._worker_done.wait()  # retention after the last commit, too
            errors += self._take_failures()
            self._aux_scope.cancel()
            if flush_scope.cancelled_caught:
                self._location.abandoned.set()
                if self._queue.idle:  # only housekeeping was left: it can wait for next time
                    log.warning(
                        "asynccp: retention cut short by flush_timeout in %s", self.location
                    )
                    self._worker_scope.cancel()
                else:
                    errors.append(self._abandon())
            else:
                await self._release_lease()
        notes = [f"asynccp: while flushing checkpoints: {type(e).__name__}: {e}" for e in errors]
        if exc is not None:
            for note in notes:
                add_note(exc, note)
        try:
            # The task group was entered in __aenter__, so it is exited last (scopes
            # nest). Its worker has finished or been cancelled: this returns at once.
            await self._tg.__aexit__(None, None, None)
        except BaseException as e:
            # asyncio re-raises a pending cancellation as a new exception here: it must
            # carry the flush errors too.
            if e is not exc:
                for note in notes:
                    add_note(e, note)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stager.close)
            self._state = "closed"
        if errors and exc is None:
            first = errors[0]
            for err in errors[1:]:
                add_note(first, f"also: {type(err).__name__}: {err}")
            raise first

    async def _release_lease(self) -> None:
        """Delete this writer's lease (briefly: an expired lease is harmless too)."""
        with anyio.move_on_after(min(self.flush_timeout, 10.0)):
            try:
                await drop_lease(self._location, self.writer_id)
            except Exception as e:
                log.info("asynccp: could not delete the lease of %r: %s", self, e)

    def _abandon(self) -> FlushTimeoutError:
        """Give up on pending work after ``flush_timeout``: fail every handle, stop the worker."""
        pending = self._queue.drain()
        err = FlushTimeoutError(
            f"flush did not finish within {self.flush_timeout:g} s: "
            f"{len(pending)} staged checkpoint(s) were abandoned, and the one in flight "
            "(which may still commit if its last request lands) "
            f"(steps {[p.step for p in pending][:10]}); the latest committed step is "
            f"{self._last_committed}"
        )
        for item in pending:
            item.handle._fail(err)
            self._stager.discard(item.files)
        self._worker_scope.cancel()
        return err

    def _check_open(self) -> None:
        if self._state != "open":
            raise CheckpointClosedError(
                f"the Checkpointer is {self._state}; "
                "use it inside `async with Checkpointer(...) as cp`"
            )

    # -- saving -------------------------------------------------------------------------

    async def save(self, step: int, payload: Payload, *, metadata: Any = None) -> SaveHandle:
        """Stage checkpoint ``step`` and return at once; upload happens in the background.

        ``payload`` is ``bytes`` (kept, zero-copy), any buffer (copied once), ``str``
        (UTF-8 text), a path to a file or directory (copied to staging), or a mapping
        of file names to those. Returns a :class:`SaveHandle`; ``await`` it to wait for
        the commit. Raises any earlier background failure not yet reported.
        """
        self._check_open()
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if not 0 <= step <= MAX_STEP:
            raise ValueError(f"step must be between 0 and {MAX_STEP}, got {step}")
        meta = check_metadata(metadata)
        async with self._save_lock:
            started = time.perf_counter()
            self._raise_failures()
            if self._last_step is not None and step <= self._last_step:
                raise StepOrderError(
                    f"step {step} is not greater than the previous step {self._last_step}; "
                    "steps must grow"
                )
            if self._floor is not None and step <= self._floor:
                raise StepOrderError(
                    f"step {step} is at or below the newest valid checkpoint, step "
                    f"{self._floor}, in {self.location}: resume from it "
                    f"(`await cp.load_latest(...)`) and save step {self._floor + 1} or later"
                )
            parts = await self._stager.plan(payload)  # validates: nothing waits for room yet
            size = sum(p.size for p in parts)
            await self._queue.reserve(size)
            try:
                files = await self._stager.snapshot(parts)
            except BaseException:
                self._queue.unreserve(size)
                raise
            item = Pending(step, files, meta, now(), SaveHandle(step))
            self._queue.add(item, reserved=size)
            self._last_step = step
            stall = time.perf_counter() - started
        self._counts["saves"] += 1
        self._bytes_saved += item.size
        self._stall += stall
        self._max_stall = max(self._max_stall, stall)
        return item.handle

    async def prepare(self, payload: Payload) -> int:
        """Get staging memory ready for saves of ``payload``'s shape, before the first.

        A save copies mutable buffers and training state into staging memory. Memory
        reused from an earlier save is copied into at memory speed; fresh memory pays a
        page fault per page on first touch, which made a first save of 128 MiB several
        times slower than the next ones here (far more in a VM whose host backs guest
        memory lazily). ``prepare`` plans ``payload`` like ``save`` (validating it,
        copying nothing) and makes that memory now, in worker threads, within
        ``max_pending_bytes``: call it once after opening, with the state you will
        save. Returns the bytes made ready (0 when the budget has no room, or when
        the payload needs no staging memory: ``bytes`` and files).
        """
        self._check_open()
        parts = await self._stager.plan(payload)
        return await anyio.to_thread.run_sync(self._stager.prepare, parts)

    async def write(self, data: bytes) -> SaveHandle:
        """Flyte-style: save ``data`` as the next step (latest committed + 1)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() takes bytes, got {type(data).__name__}")
        self._check_open()
        newest = max(s for s in (-1, self._last_step, self._floor) if s is not None)
        return await self.save(newest + 1, data)

    async def flush(self) -> None:
        """Wait until every staged checkpoint has committed; raise unreported failures."""
        self._check_open()
        await self._queue.wait_idle()
        self._raise_failures()

    def _take_failures(self) -> list[CheckpointError]:
        failures, self._failures = self._failures, []
        return failures

    def _raise_failures(self) -> None:
        failures = self._take_failures()
        if failures:
            first = failures[0]
            for err in failures[1:]:
                add_note(first, f"also: {type(err).__name__}: {err}")
            raise first

    def _supersede(self, item: Pending) -> None:
        item.handle._fail(
            SupersededError(f"checkpoint {item.step} was superseded by a newer one before upload")
        )
        if any(f.path is not None for f in item.files):
            # Staged file copies are deleted off the loop: this runs inside save().
            self._tg.start_soon(partial(anyio.to_thread.run_sync, self._stager.discard, item.files))
        else:
            self._stager.discard(item.files)  # buffers only: nothing touches the disk
        self._counts["superseded"] += 1

    async def _worker(self) -> None:
        """Take checkpoints in save order; upload up to ``_PIPELINE`` at once, commit in order.

        While one checkpoint's manifest commits (and its fsyncs run), the next small one's
        payload already uploads: the commit's fixed cost is hidden behind the next
        payload instead of adding to it. Each commit still waits for the previous one.
        """
        try:
            with self._worker_scope:
                async with anyio.create_task_group() as tg:
                    previous: anyio.Event | None = None
                    while True:
                        await self._in_flight.acquire()  # before get(): an item is never held
                        item = await self._queue.get()
                        if item is None:
                            break
                        committed = anyio.Event()
                        tg.start_soon(self._process, item, previous, committed)
                        previous = committed
        finally:
            self._worker_done.set()

    async def _process(
        self, item: Pending, previous: anyio.Event | None, committed: anyio.Event
    ) -> None:
        """Upload one checkpoint, commit it after ``previous``; free its room before its
        handle resolves; then retention — after ``committed`` is set, so the next
        checkpoint's commit does not wait for it (one retention runs at a time)."""
        try:
            if previous is not None and item.size >= _PIPELINE_BELOW:
                await previous.wait()
            ok = await self._upload_and_commit(item, previous)
            committed.set()
            if ok:
                async with self._housekeeping_lock:
                    await self._housekeeping()
        finally:
            committed.set()
            self._in_flight.release()

    async def _upload_and_commit(self, item: Pending, previous: anyio.Event | None) -> bool:
        """Upload and commit ``item``, resolve its handle; True when it committed."""
        started = time.perf_counter()
        outcome: Checkpoint | CheckpointError
        try:
            outcome = await upload(
                self._location,
                item,
                writer=self.writer_id,
                attempt=self.attempt,
                limiter=self._limiter,
                turn=None if previous is None else previous.wait,
                bad=self._bad,
            )
        except CheckpointError as e:
            outcome = e
        except anyio.get_cancelled_exc_class():
            item.handle._fail(FlushTimeoutError(f"checkpoint {item.step} was abandoned mid-upload"))
            self._queue.done(item)
            raise
        finally:
            self._upload_time += time.perf_counter() - started
            if any(f.path is not None or f.buffer is not None for f in item.files):
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(
                        partial(self._stager.discard, item.files, counted=item.size)
                    )
            else:  # bytes only: nothing to unmap or delete, no thread trip
                self._stager.discard(item.files, counted=item.size)
        self._queue.done(item)
        if isinstance(outcome, CheckpointError):
            self._counts["failed"] += 1
            self._failures.append(outcome)
            item.handle._fail(outcome)
            return False
        self._counts["committed"] += 1
        self._bytes_committed += item.size
        self._last_committed = item.step
        self._raise_floor(item.step)
        self._valid_keys.add(outcome._key)
        item.handle._resolve(outcome)
        return True

    async def _housekeeping(self) -> None:
        """Retention after a commit, orphan collection once per checkpointer; never fatal.

        Orphan collection (a lease write, listings, deletes) waits for a commit after
        which nothing else is staged: on a local disk its writes would take turns in
        the journal with the commits of checkpoints still pending.
        """
        try:
            if self.keep is not None:
                await apply_retention(
                    self._location, self.keep, self.keep_every, known_valid=self._valid_keys
                )
            if not self._orphans_collected and self._queue.idle:
                self._orphans_collected = True
                await collect_orphans(
                    self._location, timedelta(seconds=self.orphan_grace), writer=self.writer_id
                )
        except Exception as e:
            log.warning(
                "asynccp: retention in %s failed (will retry next commit): %s", self.location, e
            )

    # -- reading ------------------------------------------------------------------------

    async def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint: its manifest valid and its payload complete.

        Cheap: a listing and metadata calls, no payload reads (so it may still fail
        verification when read: :meth:`load_latest` handles that). None when there is
        none. Checkpoints this checkpointer found not to verify are skipped.
        """
        ckpt = await catalog.latest(self._location, skip=self._bad)
        if ckpt is not None:
            self._raise_floor(ckpt.step)
        return ckpt

    async def load_latest(
        self, loader: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """Resume: run ``await loader(ckpt)`` on the newest checkpoint that loads.

        Starts with the newest valid checkpoint; when ``loader`` raises
        :class:`CorruptCheckpointError` (any read of the checkpoint that fails
        verification does), it warns with a :class:`CorruptCheckpointWarning` naming
        it and moves to the next older one. Returns ``(checkpoint, result)``, or None
        when no checkpoint loads. The skipped ones no longer count for the step order:
        saving their step again replaces them.

        Example::

            async def load(ckpt):
                return np.frombuffer(await ckpt.read("weights"), np.float32)

            found = await cp.load_latest(load)
            start = found[0].step + 1 if found else 0
        """
        if not callable(loader):
            raise TypeError(f"loader must be an async function of a Checkpoint, got {loader!r}")

        async def run(ckpt: Checkpoint) -> T:
            result = loader(ckpt)
            if not inspect.isawaitable(result):
                raise TypeError(
                    f"loader returned {type(result).__name__}, not an awaitable: "
                    "pass an async function (`async def loader(ckpt): ...`)"
                )
            return await result

        return await self._newest(run)

    async def _newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """``action`` on the newest checkpoint for which it verifies; the ones skipped
        are remembered as bad, and the floor is the one found."""

        def skipped(ckpt: Checkpoint | None, step: int, error: CorruptCheckpointError) -> None:
            if ckpt is not None:
                self._bad.add((ckpt.step, ckpt.writer))

        found = await catalog.newest(
            self._location, action, skip=self._bad, on_corrupt=skipped, stacklevel=4
        )
        # Everything above the one found was invalid or bad: they do not bound new steps.
        self._floor = None if found is None else found[0].step
        if self._last_committed is not None:
            self._raise_floor(self._last_committed)
        return found

    async def list(self) -> list[Checkpoint]:
        """Every committed checkpoint with a valid manifest, oldest first."""
        return await catalog.list_checkpoints(self._location)

    async def get(self, step: int) -> Checkpoint:
        """The checkpoint committed at ``step``; CheckpointNotFoundError if there is none."""
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if not 0 <= step <= MAX_STEP:
            raise ValueError(f"step must be between 0 and {MAX_STEP}, got {step}")
        return await catalog.load(self._location, step)

    async def read(self) -> bytes | None:
        """The payload of the newest checkpoint that verifies (it must hold one file).

        Falls back past corrupt checkpoints with a ``CorruptCheckpointWarning``.
        None when no checkpoint verifies.
        """
        found = await self._newest(lambda c: c.read())
        return None if found is None else found[1]

    async def restore(self, dest_dir: str | os.PathLike[str]) -> Path | None:
        """Download the newest checkpoint that verifies into ``dest_dir``; return it.

        Falls back past corrupt checkpoints with a warning; None when there is none.
        """
        if not isinstance(dest_dir, (str, os.PathLike)):
            raise TypeError(f"dest_dir must be a path, got {type(dest_dir).__name__}")
        found = await self._newest(lambda c: c.download(dest_dir))
        return None if found is None else found[1]

    async def prev_exists(self) -> bool:
        """Whether a complete committed checkpoint exists at this location."""
        return await self.latest() is not None

    @property
    def stats(self) -> Stats:
        """Counts, bytes, queue depth, caller stall and upload time so far."""
        queue = getattr(self, "_queue", None)
        return Stats(
            saves=self._counts["saves"],
            committed=self._counts["committed"],
            failed=self._counts["failed"],
            superseded=self._counts["superseded"],
            bytes_saved=self._bytes_saved,
            bytes_committed=self._bytes_committed,
            queue_depth=queue.depth if queue else 0,
            queue_bytes=queue.staged_bytes if queue else 0,
            stall_seconds=self._stall,
            max_stall_seconds=self._max_stall,
            upload_seconds=self._upload_time,
            last_committed_step=self._last_committed,
        )
