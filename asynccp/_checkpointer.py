"""Checkpointer: the object users hold — a thin facade over the stages it wires together.

- options: validated once, into a frozen :class:`~asynccp._options.Options` (no I/O);
- the store: :func:`asynccp._store.resolve` (no I/O);
- the write path: a :class:`~asynccp._write.Pipeline` (bounded queue, stager, the worker
  that commits in order), the writer's lease (:class:`~asynccp._leases.LeaseKeeper`) and
  housekeeping (:class:`~asynccp._retention.Housekeeping`);
- the read path: a :class:`~asynccp._reader.Reader`, by default the catalog of its own
  location (:class:`~asynccp._reader.CatalogReader`); a framework plugin gives an
  attempt's checkpointer a reader along the earlier attempts (:meth:`_read_through`);
- what both know about steps: a :class:`~asynccp._write.StepOrder`.

Its lifecycle is a phase (:class:`Phase`) and one ``AsyncExitStack``: opening enters
the task group and registers, in order, what the exit undoes — the staging folder, the
report of flush errors onto an exception passing through, the task group, the flush.
Leaving the ``async with`` block flushes: every staged checkpoint commits (or its error
is raised) before the block is left, even when the body raised or was cancelled, within
``flush_timeout`` (or the deadline of :meth:`Checkpointer._flush_within`).

Reads work once the block is entered, and after it is left (a supervisor reads the
newest step after an attempt closed); before, they say to use ``async with``.

The supervisor and the plugins talk to a checkpointer through its public methods and
three package-internal ones (underscored: not the user's API): :meth:`_flush_within`,
:meth:`_continue_from` and :meth:`_read_through` (with :meth:`_own_reader`). Nothing
outside this module sets its attributes.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ._checkpoint import Checkpoint, checkpoint_from, part_checkpoint
from ._checks import check_bool, check_int, check_step
from ._groups import TaskGroupEntry
from ._housekeeping import Housekeeping
from ._leases import LeaseKeeper
from ._manifest import check_metadata
from ._options import Limits, Options, Retention, Sharding, StoreOptions, check_keywords, options
from ._phase import Phase
from ._reader import CatalogReader, Reader
from ._shard_records import ShardSpec
from ._shards import whole_step
from ._store import call, resolve
from ._tiers import Tiers
from ._types import LocationLike, Payload, Policy
from ._write import Committed, FlushResult, Pipeline, SaveHandle, Stats, StepOrder, open_staging
from ._write._commit import RecordHook
from ._write._shards import commit_part
from .errors import CheckpointClosedError

__all__ = ["Checkpointer", "Phase", "Stats"]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: Seconds the exit spends, at most, deleting this writer's lease.
_LEASE_RELEASE_SECONDS = 10.0


_C = TypeVar("_C", bound="Checkpointer")

#: The keyword arguments of :class:`Checkpointer` (set below the class).
_INIT_NAMES: frozenset[str] = frozenset()


class Checkpointer:
    """Save checkpoints without stalling, commit them atomically, restore the latest.

    Use it as ``async with Checkpointer(location, ...) as cp``. ``location`` is a
    path, a ``file://``, ``memory://``, ``s3://``, ``gs://`` or ``az://`` URL, or an
    obstore store object. Settings come as values, each checked when made:
    :class:`~asynccp.Limits`, :class:`~asynccp.Retention`,
    :class:`~asynccp.StoreOptions`, :class:`~asynccp.Sharding`; every entry point
    that opens a checkpointer (``supervise``, ``lifespan``, the plugins) takes the
    same ones.

    Args:
        keep: keep the newest ``keep`` committed checkpoints (None keeps all): the
            shortcut for ``retention=Retention(keep=...)``.
        policy: ``"block"`` (every save commits; a full queue makes ``save()`` wait)
            or ``"latest"`` (a full queue drops the oldest checkpoint not yet started):
            the shortcut for ``limits=Limits(policy=...)``.
        limits: how much is held uncommitted (:class:`~asynccp.Limits`).
        retention: what stays (:class:`~asynccp.Retention`).
        store: how the store is reached (:class:`~asynccp.StoreOptions`: durability,
            obstore's client and retry settings, a prefix in a store object...).
        sharding: this process writes one part of every step
            (:class:`~asynccp.Sharding`; ``docs/sharding.md``).
        flush_timeout: seconds the exit flush may take before pending work is
            abandoned and reported with ``FlushTimeoutError``.
        local: a local directory to commit to first: a handle resolves once the
            checkpoint is durable there, and it is replicated to ``location`` (the remote
            tier) in the background; reads see both tiers (``docs/tiers.md``).
        local_keep: checkpoints the local tier keeps (default 2; never one the remote
            tier does not hold yet); ``keep`` is the remote tier's.
        staging_dir: where file payloads are copied while they wait (a temp dir).
        attempt: recorded in each manifest; set by the supervisor.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument with a bad value.
    """

    def __new__(cls: type[_C], *args: Any, **kwargs: Any) -> _C:
        # Before Python binds the arguments: a keyword Checkpointer does not take gets an
        # error that helps (the closest name, or the value that holds it now), not
        # Python's bare "unexpected keyword argument".
        if cls is Checkpointer:
            check_keywords("Checkpointer()", kwargs, _INIT_NAMES)
        return super().__new__(cls)

    def __init__(
        self,
        location: LocationLike,
        *,
        keep: int | None = None,
        policy: Policy | None = None,
        limits: Limits | None = None,
        retention: Retention | None = None,
        store: StoreOptions | None = None,
        sharding: Sharding | None = None,
        flush_timeout: float | timedelta = 300.0,
        staging_dir: str | os.PathLike[str] | None = None,
        attempt: int = 0,
        local: str | os.PathLike[str] | None = None,
        local_keep: int | None = None,
    ) -> None:
        self._options = opts = options(
            keep=keep,
            policy=policy,
            limits=limits,
            retention=retention,
            store=store,
            sharding=sharding,
            flush_timeout=flush_timeout,
            staging_dir=staging_dir,
            local=local,
            local_keep=local_keep,
        )
        self._attempt = check_int("attempt", attempt, minimum=0)
        self._store = resolve(location, opts.store)
        self._location = self._store.description
        self._writer = secrets.token_hex(6)
        #: With ``local=``: the remote tier (``location``) behind the local directory the
        #: write path commits to (see :mod:`asynccp._tiers`).
        self._tiers = None if opts.local is None else Tiers(self._store, opts, writer=self._writer)
        if self._tiers is not None:
            self._store = self._tiers.local
        self._sharding: ShardSpec | None = (
            None if opts.sharding is None else opts.sharding.spec(self._writer)
        )
        #: Writer ids of this shard's earlier attempts (:meth:`_continue_from`): the parts
        #: they recorded are this shard's own.
        self._predecessors: tuple[str, ...] = ()
        self._state = Phase.NEW
        self._order = StepOrder(self._location) if self._tiers is None else self._tiers.order
        self._catalog_reader = CatalogReader(self._store, self._order)
        #: What the reads go through (:meth:`_read_through` changes it for a block).
        self._reader: Reader = self._catalog_reader if self._tiers is None else self._tiers.reader
        self._housekeeping = Housekeeping(
            self._store,
            retention=opts.retention,
            writer=self._writer,
            bad=self._order.bad,
            shard=self.shard,
            generation=self.generation,
        )
        self._pipeline = Pipeline(
            self._store,
            writer=self._writer,
            attempt=self._attempt,
            limits=opts.limits,
            order=self._order,
            checkpoint_of=self._checkpoint_of,
            after_commit=self._after_commit,
            record=self._record_hook,
        )
        self._lease = LeaseKeeper(self._store, self._writer, self.generation)
        self._stack = AsyncExitStack()
        #: An absolute time (anyio's clock) by which the exit must be over, once
        #: :meth:`_flush_within` set one.
        self._deadline = math.inf
        #: What the exit flush found (for the exit's report).
        self._exit_result = FlushResult()

    def __repr__(self) -> str:
        spec = self._sharding
        part = "" if spec is None else f" shard={spec.shard}/{spec.shards} gen={spec.generation}"
        reads = "" if self._reader is self._catalog_reader else f" reading {self._reader!r}"
        return (
            f"<Checkpointer {self.location} writer={self._writer}{part} {self._state.value}{reads}>"
        )

    @property
    def shard(self) -> int | None:
        """The part this process writes (None: it writes whole checkpoints)."""
        return None if self._sharding is None else self._sharding.shard

    @property
    def shards(self) -> int | None:
        """How many processes write the parts of each step (None: not sharded)."""
        return None if self._sharding is None else self._sharding.shards

    @property
    def generation(self) -> str | None:
        """The launch this sharded checkpointer's parts belong to (None: not sharded)."""
        return None if self._sharding is None else self._sharding.generation

    # -- options (read-only) --------------------------------------------------------------

    @property
    def location(self) -> str:
        """Where the checkpoints go (with ``local=``: the remote tier), as a string."""
        return self._location

    @property
    def writer_id(self) -> str:
        """This writer's id, part of its payload folder names."""
        return self._writer

    @property
    def attempt(self) -> int:
        """The supervised attempt this checkpointer belongs to (0, 1, 2...)."""
        return self._attempt

    @property
    def options(self) -> Options:
        """The settings it was opened with (limits, retention, store, sharding...)."""
        return self._options

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Checkpointer:
        if self._state is Phase.OPEN:
            raise CheckpointClosedError(
                "the Checkpointer is already open (asynccp.current() is, for its attempt): "
                "use it directly, not in `async with`"
            )
        if self._state is not Phase.NEW:
            raise CheckpointClosedError("a Checkpointer can be used in one `async with` block only")
        self._state = Phase.OPENING
        try:
            async with AsyncExitStack() as stack:
                await call(self._store, self._store.open, action="preparing the location")
                staging = await anyio.to_thread.run_sync(open_staging, self._options.staging_dir)
                stack.push_async_callback(self._pipeline.release)  # last: the staging folder
                stack.push_async_exit(self._report)  # after the task group (see there)
                tg = await stack.enter_async_context(TaskGroupEntry())
                stack.callback(self._lease.stop)  # before the task group waits for it
                tg.start_soon(self._lease.run)
                await self._pipeline.start(tg, staging, ready=self._lease.written)
                if self._tiers is not None:
                    stack.callback(self._tiers.stop)
                    await self._tiers.start(tg, self._pipeline.wait_quiet)
                stack.push_async_exit(self._drain)  # first: the flush
                # The location is read while the lease is first written, and the open
                # returns with the lease held: the first upload need not wait for it.
                await self._discover()
                await self._lease.written.wait()
                self._stack = stack.pop_all()
        except BaseException:
            self._state = Phase.CLOSED
            raise
        self._state = Phase.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Never suppresses the block's exception (every exit on the stack answers False),
        # and says so in its type: a type checker then knows that code after a block
        # which returns or raises is unreachable (with ``-> bool`` mypy reports a
        # "Missing return statement" in a function that returns inside the block).
        self._state = Phase.CLOSING
        try:
            await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._state = Phase.CLOSED

    async def _discover(self) -> None:
        """Find the location's newest valid step: the floor for new saves (a store that
        cannot be read now is logged: the create-if-absent commit still catches a step
        committed meanwhile)."""
        try:  # what it finds raises the floor
            await (self._catalog_reader.latest() if self._tiers is None else self._tiers.discover())
        except Exception as e:  # best effort (a warning turned into an error, too)
            log.warning("asynccp: could not read %s at open: %s", self.location, e)

    async def _drain(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """The exit flush; raise its first error when the body raised none."""
        start = anyio.current_time()
        seconds = max(0.0, min(self._options.flush_timeout, self._deadline - start))
        result = self._exit_result = await self._pipeline.close(seconds)
        if self._tiers is not None:  # the remote tier, within what is left
            left = max(0.0, seconds - (anyio.current_time() - start))
            result = self._exit_result = await self._tiers.close(result, left)
        self._lease.stop()
        if not result.timed_out:
            left = self._deadline - anyio.current_time()
            with anyio.CancelScope(shield=True):
                await self._lease.release(max(0.0, min(_LEASE_RELEASE_SECONDS, seconds, left)))
        error = result.error()
        if error is not None and exc is None:
            raise error
        return False

    async def _report(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Put the exit flush's errors, as notes, on the exception leaving the block
        (registered outside the task group: on asyncio a pending cancellation comes out
        of the task group as a new exception, and that is the one the caller sees)."""
        if exc is not None:
            self._exit_result.note_on(exc)
        return False

    # -- the write path -----------------------------------------------------------------

    def _checkpoint_of(self, committed: Committed) -> Checkpoint:
        if committed.part is not None:  # a sharded writer's outcome is its part
            return part_checkpoint(committed.part, self._store)
        return checkpoint_from(committed.manifest, self._store)

    async def _after_commit(self, committed: list[Committed], idle: Callable[[], bool]) -> None:
        if self._tiers is not None:  # replicated; local retention
            return await self._tiers.committed_locally(committed, idle)
        # A sharded writer's commit is its part, not the step: retention finds the step.
        commits = [(c.key, None if c.part is not None else c.manifest) for c in committed]
        await self._housekeeping.after_commit(commits, idle=idle)

    def _record_hook(self) -> RecordHook | None:
        """A sharded checkpointer records its part instead of committing the step."""
        spec = self._sharding
        if spec is None:
            return None
        return partial(commit_part, spec=spec, mine=self._predecessors)

    async def save(self, step: int, payload: Payload, *, metadata: Any = None) -> SaveHandle:
        """Stage checkpoint ``step`` and return at once; upload happens in the background.

        ``payload`` is ``bytes`` (kept, zero-copy), any buffer (copied once), ``str``
        (UTF-8 text), a path to a file or directory (copied to staging), or a mapping
        of file names to those. Returns a :class:`SaveHandle`; ``await`` it to wait for
        the commit. Raises any earlier background failure not yet reported.

        ``step`` is an int (a numpy integer too); ``metadata`` a JSON-like mapping,
        numpy scalars and NaN/infinities included (see
        :func:`~asynccp._manifest.check_metadata` for how they are recorded and read
        back).
        """
        self._state.check_open()
        step = check_step(step)
        meta = check_metadata(metadata)
        handle = await self._pipeline.save(step, payload, meta)
        self._reader.saved(step)
        return handle

    async def prepare(self, payload: Payload) -> int:
        """Get staging memory ready for saves of ``payload``'s shape, before the first.

        Fresh memory pays a page fault per page on first touch (a first save of 128 MiB
        was several times slower than the next ones here). ``prepare`` plans
        ``payload`` like ``save`` (validating it, copying nothing) and makes that memory
        now, in worker threads, within ``max_pending_bytes``: call it once after
        opening. Returns the bytes made ready (0: no room, or nothing to stage).
        """
        self._state.check_open()
        return await self._pipeline.prepare(payload)

    async def write(self, data: bytes) -> SaveHandle:
        """Flyte-style: save ``data`` as the next step (after the newest one saved or
        found)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() takes bytes, got {type(data).__name__}")
        self._state.check_open()
        return await self.save(self._reader.next_step(), data)

    async def flush(self) -> None:
        """Wait until every staged checkpoint has committed; raise unreported failures."""
        self._state.check_open()
        await self._pipeline.wait_idle()
        self._pipeline.raise_failures()
        if self._tiers is not None:  # and the remote tier holds them
            await self._tiers.flush()

    # -- the read path ------------------------------------------------------------------

    async def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint: its manifest valid and its payload complete.

        Cheap: a listing and metadata calls, no payload reads (so it may still fail
        verification when read: :meth:`load_latest` handles that). None when there is
        none. Checkpoints this checkpointer found not to verify are skipped.
        """
        self._state.check_readable()
        return await self._reader.latest()

    async def load_latest(
        self, loader: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """Resume: run ``await loader(ckpt)`` on the newest checkpoint that loads.

        ``loader`` is an async function: it reads the checkpoint, and reads are
        awaited. (``autosave`` and ``on_retry`` take plain functions too, since theirs
        need not read anything.)

        Starts with the newest valid checkpoint; when ``loader`` raises
        :class:`CorruptCheckpointError` (any read of the checkpoint that fails
        verification does), it warns with a :class:`CorruptCheckpointWarning` naming
        it and moves to the next older one. Returns ``(checkpoint, result)``, or None
        when no checkpoint loads. The skipped ones no longer count for the step order:
        saving their step again replaces them.

        A sharded checkpointer (``shard=``, ``shards=``) first checks that the step has
        as many parts as it has shards (:class:`ShardMismatchError` if not: no
        fallback) and that every part verifies (a corrupt part makes every shard fall
        back alike); ``loader`` gets the whole step, ``ckpt.shard(cp.shard)`` is this
        process's part.

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

        return await self._newest(self._whole_step(run))

    async def _newest(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> tuple[Checkpoint, T] | None:
        """``action`` on the newest checkpoint for which it verifies (the reader's)."""
        self._state.check_readable()
        with self._pipeline.telemetry.span("asynccp.restore"):
            return await self._reader.newest(action)

    async def list(self) -> list[Checkpoint]:
        """Every committed checkpoint with a valid manifest, oldest first."""
        self._state.check_readable()
        return await self._reader.list()

    async def get(self, step: int) -> Checkpoint:
        """The checkpoint committed at ``step``; CheckpointNotFoundError if there is none."""
        step = check_step(step)
        self._state.check_readable()
        return await self._reader.get(step)

    async def read(self) -> bytes | None:
        """The payload of the newest checkpoint that verifies (it must hold one file),
        past corrupt ones (a ``CorruptCheckpointWarning`` each); None when none does. A
        sharded checkpointer reads its own part (of the newest step wholly verified)."""
        found = await self._newest(self._whole_step(lambda c: self._own(c).read()))
        return None if found is None else found[1]

    async def restore(
        self, dest_dir: str | os.PathLike[str], *, overwrite: bool = False
    ) -> Path | None:
        """Download the newest checkpoint that verifies into ``dest_dir``; return it.

        Falls back past corrupt checkpoints with a warning; None when there is none.
        A sharded checkpointer downloads its own part. Files already in ``dest_dir``
        where the checkpoint's go are replaced only with ``overwrite=True``; otherwise
        that is a :class:`~asynccp.DestinationExistsError` naming the file, before
        anything is written (see :meth:`Checkpoint.download`).
        """
        if not isinstance(dest_dir, (str, os.PathLike)):
            raise TypeError(f"dest_dir must be a path, got {type(dest_dir).__name__}")
        check_bool("overwrite", overwrite)
        found = await self._newest(
            self._whole_step(lambda c: self._own(c).download(dest_dir, overwrite=overwrite))
        )
        return None if found is None else found[1]

    def _whole_step(
        self, action: Callable[[Checkpoint], Awaitable[T]]
    ) -> Callable[[Checkpoint], Awaitable[T]]:
        """``action``; for a sharded checkpointer, on a step found whole first."""
        spec = self._sharding
        return action if spec is None else whole_step(spec, self.location, action)

    def _own(self, ckpt: Checkpoint) -> Checkpoint:
        """This shard's part of ``ckpt`` (``ckpt`` itself for an unsharded checkpointer)."""
        return ckpt if self._sharding is None else ckpt.shard(self._sharding.shard)

    async def prev_exists(self) -> bool:
        """Whether a complete committed checkpoint exists at this location."""
        return await self.latest() is not None

    @property
    def stats(self) -> Stats:
        """Counts, bytes, queue depth, caller stall and upload time so far (and the
        remote tier's lag, with ``local=``)."""
        stats = self._pipeline.stats()
        return stats if self._tiers is None else replace(stats, replication=self._tiers.stats())

    # -- for the supervisor and the plugins (package-internal) ---------------------------

    async def _flush_within(self, seconds: float) -> FlushResult:
        """Flush within ``seconds`` (``math.inf``: no limit) and say what happened.

        Waits for every staged checkpoint and housekeeping (with ``local=``: the local
        tier, then the remote one); past ``seconds``, abandons what is left (handles fail
        with :class:`FlushTimeoutError`). Raises nothing: the failures are in the
        result, and the exit keeps to the same deadline. For the supervisor: a
        pre-empted attempt's flush gets ``grace`` seconds, whatever its ``flush_timeout``.
        """
        self._state.check_open()
        start = anyio.current_time()
        if not math.isinf(seconds):
            self._deadline = min(self._deadline, start + seconds)
        result = await self._pipeline.flush_within(seconds)
        if self._tiers is None:
            return result
        return await self._tiers.flush_within(result, seconds - (anyio.current_time() - start))

    def _continue_from(self, writers: Iterable[str]) -> None:
        """Take the writer ids of the earlier attempts of the same supervisor (before
        it opens): a sharded attempt's predecessors' parts are its own (recording them
        again keeps them, no :class:`ShardConflictError`). Unsharded: ignored."""
        if self._state is not Phase.NEW:
            raise CheckpointClosedError(
                f"the Checkpointer is {self._state.value}: the earlier attempts' writers "
                "are given before it opens"
            )
        self._predecessors = tuple(writers)

    def _own_reader(self) -> CatalogReader:
        """The reader of its own location (with ``local=``: of the local tier), whatever
        it reads through now: what another reader reads the own location with."""
        return self._catalog_reader

    @contextmanager
    def _read_through(self, reader: Reader) -> Iterator[Checkpointer]:
        """Read through ``reader`` inside the block; saves are unchanged (a plugin's
        attempt reads along the earlier attempts' prefixes while the task body runs)."""
        previous, self._reader = self._reader, reader
        try:
            yield self
        finally:
            self._reader = previous


_INIT_NAMES = frozenset(inspect.signature(Checkpointer.__init__).parameters) - {"self", "location"}
