"""The replicator: a local tier's committed checkpoints copied to the remote tier.

Every checkpoint commits first in the local directory (the write pipeline, on a
:class:`~asynccp._store.LocalDir`); the replicator then commits it again in the remote
location through the same commit protocol (:func:`asynccp._write._commit.commit`:
payload first, then the record by create-if-absent), one checkpoint at a time, oldest
first. The remote record is the local one's twin: same step, writer, attempt, time,
metadata and files, so a commit retried after a crash or a lost answer finds its own
record there ("ours") and succeeds.

What is sent is what was verified: each local file is mapped (no copy, no anonymous
memory), its CRC32C checked against the local manifest, and the same mapping uploaded.
A local copy that does not verify is never replicated (the failure is reported; reads
fall back to an older step).

Failures:

- a store failure (the remote is down, throttling, answering 503 past obstore's
  retries) is retried, with backoff, until the checkpoint commits or the checkpointer
  closes: the local copy stays meanwhile (it is held from local retention), and a
  relaunch on the same directory replicates it;
- a failure that retrying cannot cure (another writer's checkpoint at that step in the
  remote, a local copy that does not verify) is reported once, by ``flush()``, the exit
  or a supervisor's flush, and the replicator goes on with the next step.

The replicator gives way to the caller: before it reads, checks and uploads a
checkpoint it waits until the write pipeline has had nothing staged for
:data:`SETTLE` seconds (``quiet``: a burst of saves is over, not just paused between
two saves), for at most as long as its previous checkpoint took to replicate
(:data:`FIRST_DEFER` for the first). A save stages a copy of the caller's state while
the caller waits; on a machine with few cores the replicator's work (a CRC32C over the
file, the S3 client's payload hash) would otherwise run beside that copy and lengthen
it. A loop that never pauses still has its checkpoints replicated, at no less than half
the pace it would otherwise get.

After a crash (a SIGKILL), a relaunch on the same local directory finds the local steps
newer than the newest step of the remote tier (one listing and a few metadata calls) and
replicates them, in the background, oldest first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from datetime import datetime, timezone
from typing import Any

import anyio
import crc32c
from anyio.abc import TaskStatus

from .. import _catalog as catalog
from .._catalog import Bad
from .._layout import MAX_STEP, data_dir, payload_key
from .._manifest import Manifest
from .._retry import Backoff
from .._store import LocalFiles, Store, call
from .._write import Replication
from .._write._commit import Committed, Item, commit
from .._write._stager import StagedFile
from .._write._turns import CommitContext
from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StepAlreadyCommittedError,
    StoreError,
    UploadError,
)

__all__ = ["Replicator", "Replication"]

log = logging.getLogger("asynccp")

#: The longest the replicator waits for the pipeline to have nothing staged before its
#: first checkpoint (then: as long as the previous checkpoint took to replicate).
FIRST_DEFER = 0.5

#: How long the pipeline must have had nothing staged before the replicator starts: the
#: next save of a burst (a loop awaiting its handles, then saving again) comes sooner.
SETTLE = 0.05

#: The wait between the attempts to replicate one checkpoint: 0.5 s, 1 s... up to 30 s.
RETRY_BACKOFF = Backoff(initial=0.5, max=30.0, jitter=0.25)


class _Held(Collection[int]):
    """The steps local retention must leave: every step except those known to be in the
    remote tier (at or below ``floor``, the remote's newest when the replicator started,
    or replicated since). A step committed locally that the replicator has not been told
    of yet is held too: the pipeline tells it after each commit, not in step order."""

    def __init__(self, floor: int, replicated: Collection[int]) -> None:
        self._floor = floor
        self._replicated = frozenset(replicated)

    def __contains__(self, step: object) -> bool:
        if not isinstance(step, int):
            return False
        return step > self._floor and step not in self._replicated

    def __iter__(self) -> Iterator[int]:
        return (s for s in range(self._floor + 1, MAX_STEP + 1) if s not in self._replicated)

    def __len__(self) -> int:
        return MAX_STEP - self._floor - sum(1 for s in self._replicated if s > self._floor)


class Replicator:
    """Replicates a local tier's committed checkpoints to a remote store, oldest first.

    :meth:`add` is told of each local commit; :meth:`run` (a task in the checkpointer's
    task group) does the copying; :meth:`wait_caught_up` waits until nothing is behind.
    """

    def __init__(
        self,
        local: Store,
        remote: Store,
        *,
        limiter: anyio.CapacityLimiter,
        bad: set[Bad],
        local_bad: Callable[[Bad], None],
        after_commit: Callable[[Committed, Manifest], Awaitable[None]],
        ready: anyio.Event,
    ) -> None:
        if not isinstance(local, LocalFiles):
            raise TypeError("the local tier must be a local directory")
        self.local = local
        self.remote = remote
        self._limiter = limiter
        self._bad = bad  # the remote checkpoints known not to verify (replaced when sent)
        self._local_bad = local_bad
        self._after_commit = after_commit
        self._ready = ready  # the remote lease is written
        #: ``quiet(seconds)`` returns once the write pipeline has had nothing staged for
        #: ``seconds`` (None: never waited for).
        self.quiet: Callable[[float], Awaitable[None]] | None = None
        self._last_took = FIRST_DEFER  # the previous replication's seconds
        #: Local checkpoints not yet in the remote tier, by step (None: not known yet).
        self._behind: dict[int, Manifest] = {}
        self._known = False
        self._tidying = False
        #: The steps it committed in the remote tier (local retention may take them).
        self._done: set[int] = set()
        #: The remote tier's newest step, when the checkpointer's open read it.
        self._remote_newest: int | None = None
        self._remote_read = False
        self._changed = anyio.Event()
        self._failures: list[CheckpointError] = []
        self.replicated = 0
        self.bytes_replicated = 0
        self.failed = 0
        self.last_replicated: int | None = None

    def __repr__(self) -> str:
        return f"<Replicator {self.local.description} -> {self.remote.description}>"

    # -- what the checkpointer tells it -----------------------------------------------------

    def remote_newest(self, step: int | None) -> None:
        """The checkpointer's open read the remote tier: ``step`` is its newest (None:
        it is empty), so the local steps after it are the ones to replicate."""
        self._remote_newest = step
        self._remote_read = True

    def add(self, manifest: Manifest) -> None:
        """A checkpoint committed locally: replicate it."""
        self._behind[manifest.step] = manifest
        self._wake()

    def hold(self) -> Collection[int]:
        """The local steps local retention must keep: those not yet in the remote tier
        (every step, while that is not known)."""
        if not self._known:
            return _Held(-1, ())
        return _Held(-1 if self._remote_newest is None else self._remote_newest, self._done)

    def take_failures(self) -> list[CheckpointError]:
        """The failures not reported yet (each is reported once)."""
        out, self._failures = self._failures, []
        return out

    def stats(self) -> Replication:
        behind = list(self._behind.values())
        oldest = min((m.created_at for m in behind), default=None)
        seconds = 0.0
        if oldest is not None:
            seconds = max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
        return Replication(
            remote=self.remote.description,
            steps_behind=len(behind) if self._known else None,
            bytes_behind=sum(info.size for m in behind for info in m.files.values()),
            seconds_behind=seconds,
            replicated=self.replicated,
            bytes_replicated=self.bytes_replicated,
            failed=self.failed,
            last_replicated_step=self.last_replicated,
        )

    @property
    def caught_up(self) -> bool:
        """Nothing committed locally waits for the remote tier (and the backlog a
        relaunch found is known)."""
        return self._known and not self._behind and not self._tidying

    @property
    def nothing_behind(self) -> bool:
        """Nothing committed locally is still to be sent (the housekeeping of the one
        just sent may be under way): the remote tier's retention rounds are due."""
        return self._known and not self._behind

    async def wait_caught_up(self) -> None:
        """Wait until :attr:`caught_up` (each checkpoint replicated, or failed)."""
        while not self.caught_up:
            await self._changed.wait()

    def behind(self) -> list[int]:
        """The steps not yet replicated, oldest first."""
        return sorted(self._behind)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- the task -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Find the backlog of an earlier launch, then replicate until cancelled."""
        task_status.started()
        await self._ready.wait()
        await self._find_backlog()
        retry = 0
        while True:
            if not self._behind:
                await self._changed.wait()
                continue
            await self._give_way()
            step = min(self._behind)
            manifest = self._behind[step]
            try:
                committed = await self._replicate(manifest)
            except (StoreError, UploadError) as e:  # transient: the remote is behind
                retry += 1
                wait = RETRY_BACKOFF.delay(retry)
                (log.warning if retry == 1 else log.info)(
                    "asynccp: could not replicate checkpoint %d to %s (retrying in %.2g s, "
                    "try %d; it is safe in %s): %s",
                    step,
                    self.remote.description,
                    wait,
                    retry,
                    self.local.description,
                    e,
                )
                await anyio.sleep(wait)
                continue
            except CheckpointError as e:  # permanent: reported, the next step goes on
                retry = 0
                if isinstance(e, CorruptCheckpointError):  # its local copy: reads skip it
                    self._local_bad((manifest.step, manifest.writer))
                self._fail(step, e)
                continue
            retry = 0
            self._tidying = True  # not caught up before its housekeeping is done
            try:
                del self._behind[step]
                self._done.add(step)
                self.replicated += 1
                self.bytes_replicated += sum(info.size for info in manifest.files.values())
                self.last_replicated = step
                await self._after_commit(committed, manifest)
            finally:
                self._tidying = False
                self._wake()

    async def _give_way(self) -> None:
        """Wait until the pipeline has had nothing staged for :data:`SETTLE`, for at
        most as long as the previous replication took (see the module's docstring)."""
        if self.quiet is None:
            return
        with anyio.move_on_after(self._last_took):
            await self.quiet(SETTLE)

    def _fail(self, step: int, error: CheckpointError) -> None:
        log.error(
            "asynccp: checkpoint %d cannot be replicated from %s to %s: %s",
            step,
            self.local.description,
            self.remote.description,
            error,
        )
        self._behind.pop(step, None)
        self.failed += 1
        self._failures.append(error)
        self._wake()

    async def _find_backlog(self) -> None:
        """The local steps newer than the remote tier's newest: committed locally by an
        earlier launch and never replicated (retried until the remote answers)."""
        retry = 0
        while not self._known:
            try:
                if not self._remote_read:
                    await call(self.remote, self.remote.open, action="preparing the location")
                    newest = await catalog.latest(self.remote, skip=self._bad)
                    self.remote_newest(None if newest is None else newest.step)
                floor = -1 if self._remote_newest is None else self._remote_newest
                for record in await catalog.records(self.local):
                    if record.step <= floor or record.step in self._behind:
                        continue
                    try:
                        manifest = await catalog.validate(self.local, record)
                    except (CorruptCheckpointError, CheckpointNotFoundError):
                        continue  # never valid here: nothing to replicate
                    if isinstance(manifest, Manifest):
                        self._behind[record.step] = manifest
            except StoreError as e:
                retry += 1
                wait = RETRY_BACKOFF.delay(retry)
                (log.warning if retry == 1 else log.info)(
                    "asynccp: could not read %s to find what it lacks (retrying in %.2g s): %s",
                    self.remote.description,
                    wait,
                    e,
                )
                await anyio.sleep(wait)
                continue
            self._known = True
            if self._behind:
                log.info(
                    "asynccp: %d checkpoint(s) of %s are not in %s yet (steps %s): "
                    "replicating them",
                    len(self._behind),
                    self.local.description,
                    self.remote.description,
                    sorted(self._behind),
                )
            self._wake()

    async def _replicate(self, manifest: Manifest) -> Committed:
        """Commit the local checkpoint ``manifest`` in the remote tier."""
        started = time.monotonic()
        files = await call(
            self.local,
            _mapped,
            self.local,
            manifest,
            key=manifest.data,
            action="reading",
            map_errors=False,
        )
        try:
            item = Item(manifest.step, files, manifest.metadata, manifest.created_at)
            ctx = CommitContext(
                writer=manifest.writer,
                attempt=manifest.attempt,
                limiter=self._limiter,
                bad=self._bad,
            )
            return await commit(self.remote, item, ctx)
        except StepAlreadyCommittedError as e:
            raise StepAlreadyCommittedError(
                f"checkpoint {manifest.step} is in {self.local.description} but another "
                f"writer's checkpoint holds that step in {self.remote.description}: {e}"
            ) from e
        finally:
            _unmap(files)
            self._last_took = time.monotonic() - started
            log.debug(
                "asynccp: replicating checkpoint %d took %.3f s", manifest.step, self._last_took
            )


def _mapped(local: Any, manifest: Manifest) -> list[StagedFile]:
    """The local checkpoint's files mapped and verified (worker thread): what is sent
    is what was checked. A file missing or different is a CorruptCheckpointError. A
    tiny checkpoint's bytes are in its record (and stay there in the remote tier's)."""
    folder = data_dir(manifest.step, manifest.writer)
    out: list[StagedFile] = []
    try:
        for name, info in manifest.files.items():
            key = payload_key(folder, name)
            try:
                buf = local.map(key) if info.inline is None else info.inline
            except FileNotFoundError:
                raise CorruptCheckpointError(
                    f"checkpoint {manifest.step} in {local.description}: {name!r} is missing"
                ) from None
            view = memoryview(buf)
            out.append(StagedFile(name, info.size, data=view, crc32c=info.crc32c, owner=buf))
            if len(view) != info.size or crc32c.crc32c(view) != info.crc32c:
                raise CorruptCheckpointError(
                    f"checkpoint {manifest.step} in {local.description}: {name!r} does not "
                    "match its manifest (size or CRC32C): its local copy is damaged"
                )
    except BaseException:
        _unmap(out)
        raise
    return out


def _unmap(files: list[StagedFile]) -> None:
    """Let the maps go (a call abandoned mid-upload may still read one: then the
    collector unmaps it once that call is over)."""
    for f in files:
        try:
            if isinstance(f.data, memoryview):
                f.data.release()
            close = getattr(f.owner, "close", None)
            if close is not None:
                close()
        except BufferError:
            pass
        f.data = None
        f.owner = None
