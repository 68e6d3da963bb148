"""Autosave: keep a service's in-memory state saved, with no checkpoint code in its handlers.

A training loop saves at each step; a service has no steps. :func:`autosave` owns the
cadence instead: every ``every`` seconds (and/or every ``every_changes`` changes the
service reports with :meth:`Autosave.changed`) it reads the state from a callable,
skips it when nothing changed, saves it under a generated step, and saves once more
when its block exits. :func:`lifespan` adds the other half a service needs: restore
the newest state that verifies at startup, then autosave until shutdown, in the shape
of a Starlette / FastAPI lifespan.

How it behaves:

- **Steps.** Generated: one more than the newest valid step at the location (or than
  the checkpointer's last committed one), then growing by one per save. The autosave
  owns the checkpointer's step numbers: do not ``save()`` on it yourself meanwhile.
- **Unchanged state is skipped.** ``skip="digest"`` (the default) compares the size and
  CRC32C of each file of the payload with the newest checkpoint committed or on its
  way (the manifest records exactly these, so this holds across restarts: a restored,
  untouched state is not saved again). ``skip="changes"`` does not even call the state
  callable while no change was reported since the last save (cheapest, but the
  service must call :meth:`Autosave.changed`). ``skip="never"`` saves every time.
- **Coalesced.** An autosave goes into the checkpointer's bounded queue and the next one
  is taken while it uploads; at most one more ever waits outside the queue (for room,
  under ``policy="block"``). A save that waits longer than an interval (or while
  ``every_changes`` more changes arrive) is dropped and the state read again, so what
  eventually goes in is the newest state, never a backlog. With ``policy="latest"``
  the queue itself supersedes autosaves not yet started.
- **Failures** (the state callable raising, an upload failing) are logged with their
  traceback on the ``asynccp`` logger, counted (:attr:`Autosave.stats`), and retried at
  the next interval: the service keeps running. After ``max_failures`` failures in a
  row the autosave gives up: :class:`AutosaveError` cancels the block's body and is
  raised from the ``async with``, and no task of the autosave outlives its block.
  A payload that can never be saved (a type the state callable must not return, an
  invalid file name) is raised at its first use, not retried.
- **Exit.** Leaving the block (normally, by an exception, or cancelled) stops the
  cadence, saves the state once more (unless unchanged) and waits for it and the
  autosaves in flight to commit, within ``final_timeout`` (default: the checkpointer's
  ``flush_timeout``); past it, the checkpointer's own exit flush takes over. A final
  save that fails is raised as :class:`AutosaveError` (or noted on the body's
  exception).

Log records carry structured fields (``extra=``) a log pipeline can index: ``event``
(``autosave.commit``, ``autosave.skip``, ``autosave.failure``, ``autosave.replaced``,
``autosave.give_up``, ``autosave.restore``), ``step``, ``location``, ``writer``,
``duration`` (seconds) and ``failures`` (in a row).

With the OpenTelemetry API installed (the ``otel`` extra), the autosave records
counters ``asynccp.autosave.saves``, ``.skips``, ``.failures``, ``.replaced``, a
histogram ``asynccp.autosave.duration`` (seconds from reading the state to the commit)
and spans ``asynccp.autosave.save`` and ``asynccp.autosave.restore``, through the
providers passed in or the global ones (no-ops until an SDK is configured). Without
it installed, nothing is recorded and nothing else changes.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union, cast

import anyio
import crc32c

from ._checkpointer import Checkpointer
from ._checks import check_seconds, is_int
from ._groups import first_leaf
from ._manifest import check_metadata
from ._options import CheckpointerOptions, Unpack, keywords, options_of
from .errors import (
    AutosaveError,
    CheckpointClosedError,
    CheckpointError,
    StepOrderError,
    SupersededError,
)

if TYPE_CHECKING:
    from ._checkpoint import Checkpoint
    from ._manifest import FileInfo
    from ._write import SaveHandle

__all__ = [
    "Autosave",
    "AutosaveError",
    "AutosaveStats",
    "Lifespan",
    "ServiceState",
    "autosave",
    "lifespan",
]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: What the state callable may return: bytes, str, a buffer, or a mapping of file
#: names to those (one file each).
StatePayload = Union[bytes, bytearray, memoryview, str, Mapping[str, Any], Any]  # noqa: UP007
Skip = Literal["digest", "changes", "never"]

#: The file name a payload that is not a mapping gets inside its checkpoint.
DEFAULT_NAME = "data"
#: Digests of payloads at least this large are computed in a worker thread.
_OFFLOAD_BYTES = 4 << 20
#: Our own failed saves are raised again by the next ``save()``; retried this often.
_RESUBMIT = 3
_SKIPS = ("digest", "changes", "never")


@dataclass(frozen=True)
class AutosaveStats:
    """What an :class:`Autosave` has done so far (a snapshot)."""

    #: Autosaves committed.
    saves: int
    #: Times the state was found unchanged and not saved.
    skips: int
    #: Failed autosaves (the state callable raised, or the save or upload failed).
    failures: int
    #: Failures since the last commit; the autosave gives up at ``max_failures``.
    consecutive_failures: int
    #: Autosaves replaced by a newer state: dropped while waiting for room, or
    #: superseded in the queue (``policy="latest"``).
    replaced: int
    #: Autosaves staged in the checkpointer and not yet committed or failed.
    pending: int
    #: Step of the newest committed autosave (None before the first).
    last_step: int | None
    #: Changes reported through :meth:`Autosave.changed`.
    changes: int
    #: The ``changes`` count when the state of the newest committed autosave was read:
    #: every change reported before that is in the store.
    changes_committed: int
    #: The newest failure (None if there was none).
    last_error: BaseException | None


@dataclass
class _Mark:
    """What a saved (or saving) state was: its files' sizes and CRC32Cs, and the change
    count when it was read."""

    digest: dict[str, tuple[int, int]] | None
    changes: int


@dataclass
class _Submitted:
    """An autosave staged in the checkpointer, waiting for its commit."""

    handle: SaveHandle
    step: int
    mark: _Mark
    started: float  # perf_counter() when its state was read
    span: Any  # an OpenTelemetry span, or None


class _Telemetry:
    """The autosave's OpenTelemetry instruments, or nothing when the API is missing."""

    def __init__(self, location: str, meter_provider: Any, tracer_provider: Any) -> None:
        self._attrs: dict[str, str] = {"asynccp.location": location}
        self._counters: dict[str, Any] = {}
        self._duration: Any = None
        self._tracer: Any = None
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            return
        from . import __version__

        meter = metrics.get_meter("asynccp", __version__, meter_provider=meter_provider)
        for name, what in (
            ("saves", "Autosaves committed"),
            ("skips", "Autosaves skipped: the state had not changed"),
            ("failures", "Autosaves that failed (state callable, save or upload)"),
            ("replaced", "Autosaves replaced by a newer state before they were uploaded"),
        ):
            self._counters[name] = meter.create_counter(
                f"asynccp.autosave.{name}", unit="{checkpoint}", description=what
            )
        self._duration = meter.create_histogram(
            "asynccp.autosave.duration",
            unit="s",
            description="Time from reading the state to the commit of an autosave",
        )
        self._tracer = trace.get_tracer("asynccp", __version__, tracer_provider=tracer_provider)

    def count(self, name: str) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.add(1, self._attrs)

    def duration(self, seconds: float) -> None:
        if self._duration is not None:
            self._duration.record(seconds, self._attrs)

    def start(self, name: str, start_ns: int, **attributes: Any) -> Any:
        """A span started at ``start_ns`` (ended by :meth:`end`), or None."""
        if self._tracer is None:
            return None
        attrs = {**self._attrs, **{f"asynccp.{k}": v for k, v in attributes.items()}}
        return self._tracer.start_span(name, start_time=start_ns, attributes=attrs)

    @staticmethod
    def end(span: Any, error: BaseException | None = None, **attributes: Any) -> None:
        if span is None:
            return
        for key, value in attributes.items():
            span.set_attribute(f"asynccp.{key}", value)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


def _add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note`` that also works on Python 3.10."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - 3.10 only
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _check_count(name: str, value: object, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    assert isinstance(value, int)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class _Options:
    """The autosave's arguments, checked (shared by :class:`Autosave` and :func:`lifespan`)."""

    every: float | None
    every_changes: int | None
    skip: Skip
    max_failures: int | None
    final_timeout: float | None
    metadata: dict[str, Any]
    meter_provider: Any
    tracer_provider: Any

    @classmethod
    def check(
        cls,
        *,
        every: float | timedelta | None,
        every_changes: int | None,
        skip: Skip,
        max_failures: int | None,
        final_timeout: float | timedelta | None,
        metadata: Mapping[str, Any] | None,
        meter_provider: Any,
        tracer_provider: Any,
    ) -> _Options:
        seconds = None
        if every is not None:
            seconds = check_seconds("every", every, finite=True, positive=True)
        changes = _check_count("every_changes", every_changes, allow_none=True)
        if seconds is None and changes is None:
            raise ValueError(
                "autosave needs a cadence: every= (seconds between saves) and/or "
                "every_changes= (changes reported with .changed() between saves)"
            )
        if skip not in _SKIPS:
            raise ValueError(f"skip must be one of {_SKIPS}, got {skip!r}")
        limit = _check_count("max_failures", max_failures, allow_none=True)
        timeout = None
        if final_timeout is not None:
            timeout = check_seconds("final_timeout", final_timeout)
        meta = check_metadata(metadata)
        return cls(seconds, changes, skip, limit, timeout, meta, meter_provider, tracer_provider)


def _as_file(value: object, what: str) -> bytes | memoryview:
    """One file of an autosave payload as bytes or a flat byte view; TypeError otherwise."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    hint = (
        "return bytes, str, a buffer (bytearray, memoryview, numpy array) or a flat "
        "mapping of file names to those: serialise the state (e.g. "
        "json.dumps(state).encode()); for files on disk, call cp.save() yourself"
    )
    if isinstance(value, Mapping):
        raise TypeError(f"{what} is a nested mapping; nest file names with '/' instead. {hint}")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what} is a {type(value).__name__}, which autosave cannot save: {hint}"
        ) from None
    if not view.c_contiguous:
        raise TypeError(f"{what} is a buffer that is not C-contiguous; {hint}")
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _payload_files(payload: object) -> dict[str, bytes | memoryview]:
    """The files of an autosave payload, by name (a single value is named ``"data"``)."""
    if isinstance(payload, Mapping):
        files: dict[str, bytes | memoryview] = {}
        for name, value in payload.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"state() returned a mapping with a {type(name).__name__} key {name!r}; "
                    "file names are str"
                )
            files[name] = _as_file(value, f"state()[{name!r}]")
        return files
    return {DEFAULT_NAME: _as_file(payload, "state()")}


def _crcs(files: Mapping[str, bytes | memoryview]) -> dict[str, tuple[int, int]]:
    return {name: (len(memoryview(data)), crc32c.crc32c(data)) for name, data in files.items()}


async def _digest(files: Mapping[str, bytes | memoryview]) -> dict[str, tuple[int, int]]:
    """Size and CRC32C of each file, as a manifest records them (large ones off the loop)."""
    if sum(len(memoryview(d)) for d in files.values()) >= _OFFLOAD_BYTES:
        return await anyio.to_thread.run_sync(_crcs, files)
    return _crcs(files)


def _manifest_digest(files: Mapping[str, FileInfo]) -> dict[str, tuple[int, int]]:
    return {name: (info.size, info.crc32c) for name, info in files.items()}


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, awaited when it returns an awaitable (sync and async callables)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Autosave:
    """Saves ``state()`` on a cadence while its ``async with`` block runs; see :func:`autosave`."""

    def __init__(
        self,
        cp: Checkpointer,
        state: Callable[[], StatePayload | Awaitable[StatePayload]],
        *,
        every: float | timedelta | None = None,
        every_changes: int | None = None,
        skip: Skip = "digest",
        max_failures: int | None = 10,
        final_timeout: float | timedelta | None = None,
        metadata: Mapping[str, Any] | None = None,
        meter_provider: Any = None,
        tracer_provider: Any = None,
    ) -> None:
        if not isinstance(cp, Checkpointer):
            raise TypeError(f"autosave needs an asynccp.Checkpointer, got {type(cp).__name__}")
        if not callable(state):
            raise TypeError(
                f"state must be a callable returning the payload to save (sync or async), "
                f"got {type(state).__name__}"
            )
        self._opts = _Options.check(
            every=every,
            every_changes=every_changes,
            skip=skip,
            max_failures=max_failures,
            final_timeout=final_timeout,
            metadata=metadata,
            meter_provider=meter_provider,
            tracer_provider=tracer_provider,
        )
        self._cp = cp
        self._state = state
        self._final_timeout = (
            cp.options.flush_timeout
            if self._opts.final_timeout is None
            else self._opts.final_timeout
        )
        self._telemetry = _Telemetry(cp.location, meter_provider, tracer_provider)
        self._phase = "new"
        self._closing = False
        self._step = 0
        self._changes = 0
        #: The newest committed state (before the first commit: the location's newest).
        self._committed = _Mark(None, 0)
        self._outstanding: deque[_Submitted] = deque()
        #: Failures of our own saves: the checkpointer raises them again on the next save.
        self._recent_errors: deque[BaseException] = deque(maxlen=32)
        self._waiting: anyio.CancelScope | None = None
        self._waiting_mark = 0
        #: The change count when the last attempt read the state (``every_changes``
        #: counts from there, whatever became of that attempt).
        self._attempt_mark = 0
        self._wake: anyio.Event | None = None
        self._final_handle: SaveHandle | None = None
        self._saves = self._skips = self._failures = self._consecutive = self._replaced = 0
        self._last_step: int | None = None
        self._last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Autosave {self._cp.location} {self._phase} next step {self._step}>"

    @property
    def checkpointer(self) -> Checkpointer:
        """The checkpointer the autosaves go to."""
        return self._cp

    @property
    def stats(self) -> AutosaveStats:
        """Counts so far: commits, skips, failures (and in a row), replaced, pending."""
        return AutosaveStats(
            saves=self._saves,
            skips=self._skips,
            failures=self._failures,
            consecutive_failures=self._consecutive,
            replaced=self._replaced,
            pending=len(self._outstanding),
            last_step=self._last_step,
            changes=self._changes,
            changes_committed=self._committed.changes,
            last_error=self._last_error,
        )

    def changed(self, n: int = 1) -> None:
        """Report ``n`` changes to the state (call it from the event loop's thread).

        Cheap (a counter): call it from request handlers. It makes ``every_changes``
        work and lets ``skip="changes"`` know the state is worth reading again.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"changed(n) takes an int n >= 1, got {n!r}")
        self._changes += n
        limit = self._opts.every_changes
        if limit is None or self._phase != "running":
            return
        if self._changes - self._attempt_mark >= limit and self._wake is not None:
            self._wake.set()
        if self._waiting is not None and self._changes - self._waiting_mark >= limit:
            self._waiting.cancel()  # a save waiting for room: read the newer state instead

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Autosave:
        if self._phase != "new":
            raise RuntimeError("an Autosave can be used in one `async with` block only")
        self._phase = "starting"
        try:
            prev = await self._cp.latest()
        except BaseException:
            self._phase = "closed"
            raise
        newest = [s for s in (self._cp.stats.last_committed_step,) if s is not None]
        if prev is not None:
            newest.append(prev.step)
        self._step = max(newest) + 1 if newest else 0
        if prev is not None:
            self._committed = _Mark(_manifest_digest(prev.files), 0)
        self._wake = anyio.Event()
        self._run_scope = anyio.CancelScope()
        self._watch_scope = anyio.CancelScope()
        self._run_done = anyio.Event()
        self._watch_done = anyio.Event()
        self._queued = anyio.Event()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run)
        self._tg.start_soon(self._watch)
        self._phase = "running"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._phase = "closing"
        final_error: BaseException | None = None
        fatal: BaseException | None = None
        with anyio.CancelScope(shield=True):
            self._run_scope.cancel()
            self._watch_scope.cancel()
            await self._run_done.wait()
            await self._watch_done.wait()
            with anyio.move_on_after(self._final_timeout) as bound:
                try:
                    # Staged at once: if the commits in flight outlast final_timeout, the
                    # checkpointer's exit flush still commits the newest state.
                    held = self._baseline()  # what a skip compares with (and updates)
                    final_error = await self._attempt(final=True)
                    await self._drain()
                    if (
                        self._final_handle is None
                        and final_error is None
                        and self._baseline() != held
                    ):
                        # Skipped for an autosave in flight that then failed: what is
                        # committed is older, so the state is saved now. (Skipped for a
                        # state already committed, or that committed since: done, one
                        # skip logged and counted.)
                        final_error = await self._attempt(final=True)
                        await self._drain()
                except Exception as e:  # a payload that can never be saved, a closed checkpointer
                    fatal = e
                handle = self._final_handle
                if final_error is None and handle is not None and handle.done():
                    final_error = handle.exception()
            if bound.cancelled_caught:
                log.warning(
                    "asynccp: autosave to %s: the final save did not commit within %g s; "
                    "the checkpointer's exit flush takes it from here",
                    self._cp.location,
                    self._final_timeout,
                    extra=self._extra("autosave.final_timeout", self._step - 1),
                )
        child: BaseException | None = None
        try:
            # Entered in __aenter__ (scopes nest): its tasks have ended, this returns at once.
            await self._tg.__aexit__(None, None, None)
        except BaseException as e:
            child = first_leaf(e)
        finally:
            self._phase = "closed"
        problem = child or fatal
        if problem is None and final_error is not None:
            problem = AutosaveError(
                f"the final autosave to {self._cp.location} failed: "
                f"{type(final_error).__name__}: {final_error}",
                failures=self._consecutive,
            )
            problem.__cause__ = final_error
        if exc is None or (child is not None and isinstance(exc, anyio.get_cancelled_exc_class())):
            # No body error, or the body was cancelled because the autosave gave up.
            if problem is not None:
                if problem is child and (fatal or final_error):
                    _add_note(
                        problem, f"asynccp: the final autosave failed too: {fatal or final_error}"
                    )
                raise problem from problem.__cause__
            return
        if problem is not None:
            _add_note(exc, f"asynccp: autosave: {type(problem).__name__}: {problem}")

    # -- the cadence ---------------------------------------------------------------------

    def _baseline(self) -> _Mark:
        """The state the next save is compared with: the newest in flight, else committed."""
        return self._outstanding[-1].mark if self._outstanding else self._committed

    async def _run(self) -> None:
        """Wait for the next interval (or enough changes), autosave, repeat."""
        every = self._opts.every
        try:
            with self._run_scope:
                next_at = math.inf if every is None else anyio.current_time() + every
                while True:
                    assert self._wake is not None
                    with anyio.CancelScope(deadline=next_at):
                        await self._wake.wait()
                    self._wake = anyio.Event()  # changes from here on wake the next round
                    started = anyio.current_time()
                    await self._attempt(final=False)
                    next_at = math.inf if every is None else started + every
        finally:
            self._run_done.set()

    async def _attempt(self, *, final: bool) -> BaseException | None:
        """One autosave: read the state, skip it if unchanged, stage it.

        Returns the failure, if any (it is logged and counted here). Raises what no
        retry can fix (a payload type that cannot be saved), and :class:`AutosaveError`
        when ``max_failures`` failures in a row are reached.
        """
        while True:
            base = self._baseline()
            mark = self._attempt_mark = self._changes
            if self._opts.skip == "changes" and mark <= base.changes:
                self._skipped(final)
                return None
            step = self._step
            wall, started = time.time_ns(), time.perf_counter()
            try:
                payload = await _call(self._state)
            except Exception as e:
                span = self._telemetry.start("asynccp.autosave.save", wall, step=step, final=final)
                self._failed(e, step, started, span, "reading the state")
                return e
            files = _payload_files(payload)
            digest = await _digest(files)
            if self._opts.skip == "digest" and digest == base.digest:
                base.changes = max(base.changes, mark)  # the same state covers these changes
                self._skipped(final)
                return None
            span = self._telemetry.start("asynccp.autosave.save", wall, step=step, final=final)
            try:
                handle, step = await self._submit(files, mark, final=final)
            except (TypeError, ValueError, CheckpointClosedError) as e:
                if not isinstance(e, StepOrderError):
                    self._telemetry.end(span, e)
                    raise  # no retry can fix these: the owner must hear at once
                self._failed(e, self._step, started, span, "saving")
                return e
            except Exception as e:
                self._failed(e, step, started, span, "saving")
                return e
            finally:
                del files  # release our views of the caller's buffers
            if handle is None:  # waited for room too long: read the newer state instead
                self._replaced += 1
                self._telemetry.count("replaced")
                self._telemetry.end(span, outcome="replaced")
                log.debug(
                    "asynccp: autosave of step %d to %s waited for room; reading newer state",
                    step,
                    self._cp.location,
                    extra=self._extra("autosave.replaced", step),
                )
                continue
            if span is not None:
                span.set_attribute("asynccp.step", step)
            self._step = step + 1
            if final:
                self._final_handle = handle
            self._outstanding.append(_Submitted(handle, step, _Mark(digest, mark), started, span))
            self._queued.set()
            return None

    async def _submit(
        self, files: dict[str, bytes | memoryview], mark: int, *, final: bool
    ) -> tuple[SaveHandle | None, int]:
        """Stage one autosave at the next step: ``(handle, step)``, the handle None when
        it waited for room until newer state came.

        ``save()`` raises earlier failures first: ours were counted already, so the save
        is tried again. A StepOrderError (someone else saved meanwhile) moves the step
        past what the location holds and tries again.
        """
        every = self._opts.every
        for attempt in range(_RESUBMIT):
            step = self._step
            try:
                if final:
                    return await self._cp.save(step, files, metadata=self._opts.metadata), step
                handle: SaveHandle | None = None
                deadline = math.inf if every is None else anyio.current_time() + every
                with anyio.CancelScope(deadline=deadline) as scope:
                    self._waiting, self._waiting_mark = scope, mark
                    try:
                        handle = await self._cp.save(step, files, metadata=self._opts.metadata)
                    finally:
                        self._waiting = None
                return handle, step
            except StepOrderError:
                await self._refresh_step()
                if attempt + 1 == _RESUBMIT:
                    raise
            except CheckpointError as e:
                if attempt + 1 == _RESUBMIT or not self._is_ours(e):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_ours(self, error: BaseException) -> bool:
        """Whether ``error`` is the failure of one of our own saves (reported already)."""
        return any(error is e for e in self._recent_errors) or any(
            error is s.handle.exception() for s in self._outstanding
        )

    async def _refresh_step(self) -> None:
        """After a StepOrderError: someone else saved; move past what the location holds."""
        candidates = [self._step + 1]
        try:
            prev = await self._cp.latest()
        except Exception as e:
            log.warning("asynccp: autosave could not read %s: %s", self._cp.location, e)
        else:
            if prev is not None:
                candidates.append(prev.step + 1)
        committed = self._cp.stats.last_committed_step
        if committed is not None:
            candidates.append(committed + 1)
        self._step = max(candidates)

    # -- outcomes ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Settle the autosaves in flight, in order, as they commit or fail."""
        try:
            with self._watch_scope:
                while True:
                    while not self._outstanding:
                        self._queued = anyio.Event()
                        await self._queued.wait()
                    await self._settle_next()
        finally:
            self._watch_done.set()

    async def _drain(self) -> None:
        """Settle every autosave in flight (on exit: the watcher has stopped)."""
        while self._outstanding:
            await self._settle_next()

    async def _settle_next(self) -> None:
        item = self._outstanding[0]
        try:
            ckpt = await item.handle.wait()
        except SupersededError:
            self._outstanding.popleft()
            self._replaced += 1
            self._telemetry.count("replaced")
            self._telemetry.end(item.span, outcome="superseded")
            log.debug(
                "asynccp: autosave of step %d to %s was superseded by a newer one",
                item.step,
                self._cp.location,
                extra=self._extra("autosave.replaced", item.step),
            )
            return
        except Exception as e:
            self._outstanding.popleft()
            self._recent_errors.append(e)
            self._failed(e, item.step, item.started, item.span, "uploading")
            return
        self._outstanding.popleft()
        duration = time.perf_counter() - item.started
        self._committed = _Mark(
            _manifest_digest(ckpt.files), max(item.mark.changes, self._committed.changes)
        )
        self._last_step = ckpt.step
        self._saves += 1
        self._consecutive = 0
        self._telemetry.count("saves")
        self._telemetry.duration(duration)
        self._telemetry.end(item.span, outcome="committed", bytes=ckpt.size)
        log.debug(
            "asynccp: autosaved step %d to %s in %.3f s",
            ckpt.step,
            self._cp.location,
            duration,
            extra=self._extra("autosave.commit", ckpt.step, duration),
        )

    def _skipped(self, final: bool) -> None:
        self._skips += 1
        self._telemetry.count("skips")
        log.debug(
            "asynccp: autosave to %s skipped: the state has not changed%s",
            self._cp.location,
            " (on exit)" if final else "",
            extra=self._extra("autosave.skip", None),
        )

    def _failed(
        self, error: BaseException, step: int, started: float, span: Any, doing: str
    ) -> None:
        """Log and count a failed autosave; give up after ``max_failures`` in a row."""
        self._failures += 1
        self._consecutive += 1
        self._last_error = error
        limit = self._opts.max_failures
        giving_up = limit is not None and self._consecutive >= limit and not self._closing
        duration = time.perf_counter() - started
        self._telemetry.count("failures")
        self._telemetry.end(span, error, outcome="failed")
        log.log(
            logging.ERROR if giving_up or self._closing else logging.WARNING,
            "asynccp: autosave of step %d to %s failed while %s (%d in a row%s): %s: %s",
            step,
            self._cp.location,
            doing,
            self._consecutive,
            f", giving up at {limit}" if limit is not None and not self._closing else "",
            type(error).__name__,
            error,
            exc_info=error,
            extra=self._extra("autosave.failure", step, duration),
        )
        if giving_up:
            assert limit is not None
            log.error(
                "asynccp: autosave to %s gave up after %d failures in a row",
                self._cp.location,
                self._consecutive,
                extra=self._extra("autosave.give_up", step),
            )
            raise AutosaveError(
                f"autosave to {self._cp.location} failed {self._consecutive} times in a row "
                f"(max_failures={limit}); the last failure: {type(error).__name__}: {error}",
                failures=self._consecutive,
            ) from error

    def _extra(self, event: str, step: int | None, duration: float | None = None) -> dict[str, Any]:
        """The structured fields of a log record (``extra=``)."""
        return {
            "event": event,
            "step": step,
            "location": self._cp.location,
            "writer": self._cp.writer_id,
            "duration": duration,
            "failures": self._consecutive,
        }


def autosave(
    cp: Checkpointer,
    state: Callable[[], StatePayload | Awaitable[StatePayload]],
    *,
    every: float | timedelta | None = None,
    every_changes: int | None = None,
    skip: Skip = "digest",
    max_failures: int | None = 10,
    final_timeout: float | timedelta | None = None,
    metadata: Mapping[str, Any] | None = None,
    meter_provider: Any = None,
    tracer_provider: Any = None,
) -> Autosave:
    """Save ``state()`` every ``every`` seconds while the ``async with`` block runs.

    Example::

        async with asynccp.Checkpointer("s3://bucket/svc", policy="latest", keep=3) as cp:
            async with asynccp.autosave(cp, lambda: json.dumps(counts), every=5.0) as saver:
                await serve()          # handlers may call saver.changed()

    Args:
        cp: an open :class:`~asynccp.Checkpointer` (the autosave owns its step numbers).
        state: returns the payload to save (``bytes``, ``str``, a buffer, or a mapping
            of file names to those); sync or async. It runs on the event loop: move a
            slow serialisation to a thread inside it.
        every: seconds between autosaves (a ``timedelta`` works too).
        every_changes: also autosave as soon as this many changes were reported with
            :meth:`Autosave.changed` since the last one.
        skip: how unchanged state is recognised — ``"digest"`` (size and CRC32C of each
            file against the newest checkpoint), ``"changes"`` (no change reported:
            the state is not even read), or ``"never"``.
        max_failures: failures in a row before :class:`AutosaveError` reaches the owner
            (None: never give up; failures are still logged and counted).
        final_timeout: seconds the exit may wait for the final save to commit (default:
            the checkpointer's ``flush_timeout``).
        metadata: JSON metadata recorded with every autosave.
        meter_provider: an OpenTelemetry meter provider (default: the global one);
            ignored when the OpenTelemetry API is not installed.
        tracer_provider: an OpenTelemetry tracer provider (default: the global one);
            ignored likewise.

    Raises at once: TypeError / ValueError for bad arguments. See the module docstring
    for steps, skipping, coalescing, failures and the exit.
    """
    return Autosave(
        cp,
        state,
        every=every,
        every_changes=every_changes,
        skip=skip,
        max_failures=max_failures,
        final_timeout=final_timeout,
        metadata=metadata,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
    )


class ServiceState(Generic[T]):
    """What :func:`lifespan` yields: the service's state and the autosave keeping it.

    ``value`` is the state object (restored, or made by ``initial``); the autosave
    saves ``dump(value)``, reading the attribute each time, so replacing ``value``
    works as well as mutating it.
    """

    def __init__(
        self,
        value: T,
        checkpoint: Checkpoint | None,
        checkpointer: Checkpointer,
    ) -> None:
        self.value = value
        #: The checkpoint the value was restored from (None: it came from ``initial``).
        self.checkpoint = checkpoint
        self.checkpointer = checkpointer
        self.autosave: Autosave  # set once the autosave is made

    def __repr__(self) -> str:
        step = None if self.checkpoint is None else self.checkpoint.step
        return f"<ServiceState restored from step {step} of {self.checkpointer.location}>"

    def changed(self, n: int = 1) -> None:
        """Report ``n`` changes to the autosave (see :meth:`Autosave.changed`)."""
        self.autosave.changed(n)


#: The keyword arguments of :func:`lifespan` itself (for "did you mean ...?").
_LIFESPAN_NAMES = frozenset(
    {
        "restore",
        "initial",
        "dump",
        "every",
        "every_changes",
        "skip",
        "max_failures",
        "final_timeout",
        "metadata",
        "meter_provider",
        "tracer_provider",
    }
)


class Lifespan(Generic[T]):
    """The async context manager :func:`lifespan` returns."""

    def __init__(
        self,
        location: Any,
        *,
        restore: Callable[[Checkpoint], T | Awaitable[T]],
        initial: Callable[[], T | Awaitable[T]],
        dump: Callable[[T], StatePayload | Awaitable[StatePayload]],
        options: _Options,
        checkpointer_options: CheckpointerOptions,
    ) -> None:
        for name, fn in (("restore", restore), ("initial", initial), ("dump", dump)):
            if not callable(fn):
                raise TypeError(f"{name} must be a callable, got {type(fn).__name__}")
        if isinstance(location, Checkpointer):
            if checkpointer_options:
                raise TypeError(
                    f"Checkpointer options {sorted(checkpointer_options)} were given with an "
                    "open Checkpointer: pass them to the Checkpointer, or pass a location"
                )
            self._cp, self._own = location, False
        else:
            # A service's defaults, where neither the shortcut nor its value says else.
            if "policy" not in checkpointer_options and "limits" not in checkpointer_options:
                checkpointer_options["policy"] = "latest"
            if "keep" not in checkpointer_options and "retention" not in checkpointer_options:
                checkpointer_options["keep"] = 3
            opts = options_of("lifespan()", checkpointer_options, also=_LIFESPAN_NAMES)
            self._cp, self._own = Checkpointer(location, **keywords(opts)), True
        self._restore = restore
        self._initial = initial
        self._dump = dump
        self._opts = options
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> ServiceState[T]:
        if self._stack is not None:
            raise RuntimeError("a lifespan can be used in one `async with` block only")
        async with AsyncExitStack() as stack:
            if self._own:
                await stack.enter_async_context(self._cp)
            found = await self._load()
            if found is None:
                service = ServiceState(cast(T, await _call(self._initial)), None, self._cp)
            else:
                service = ServiceState(found[1], found[0], self._cp)
            opts = self._opts
            service.autosave = Autosave(
                self._cp,
                lambda: self._dump(service.value),
                every=opts.every,
                every_changes=opts.every_changes,
                skip=opts.skip,
                max_failures=opts.max_failures,
                final_timeout=opts.final_timeout,
                metadata=opts.metadata,
                meter_provider=opts.meter_provider,
                tracer_provider=opts.tracer_provider,
            )
            await stack.enter_async_context(service.autosave)
            self._stack = stack.pop_all()
        return service

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        await self._stack.__aexit__(exc_type, exc, tb)  # never suppresses: ours do not

    async def _load(self) -> tuple[Checkpoint, T] | None:
        """The newest checkpoint that ``restore`` loads (falling back past corrupt ones)."""
        telemetry = _Telemetry(
            self._cp.location, self._opts.meter_provider, self._opts.tracer_provider
        )
        span = telemetry.start("asynccp.autosave.restore", time.time_ns())
        started = time.perf_counter()

        async def load(ckpt: Checkpoint) -> T:
            return cast(T, await _call(self._restore, ckpt))

        try:
            found = await self._cp.load_latest(load)
        except BaseException as e:
            telemetry.end(span, e if isinstance(e, Exception) else None, outcome="failed")
            raise
        duration = time.perf_counter() - started
        step = None if found is None else found[0].step
        if step is None:
            telemetry.end(span, outcome="none")
        else:
            telemetry.end(span, outcome="restored", step=step)
        extra = {
            "event": "autosave.restore",
            "step": step,
            "location": self._cp.location,
            "writer": self._cp.writer_id,
            "duration": duration,
            "failures": 0,
        }
        if found is None:
            log.info(
                "asynccp: no checkpoint to restore in %s: starting fresh",
                self._cp.location,
                extra=extra,
            )
        else:
            log.info(
                "asynccp: restored step %d from %s in %.3f s",
                step,
                self._cp.location,
                duration,
                extra=extra,
            )
        return found


def lifespan(
    location: Any,
    *,
    restore: Callable[[Checkpoint], T | Awaitable[T]],
    initial: Callable[[], T | Awaitable[T]],
    dump: Callable[[T], StatePayload | Awaitable[StatePayload]],
    every: float | timedelta | None = None,
    every_changes: int | None = None,
    skip: Skip = "digest",
    max_failures: int | None = 10,
    final_timeout: float | timedelta | None = None,
    metadata: Mapping[str, Any] | None = None,
    meter_provider: Any = None,
    tracer_provider: Any = None,
    **checkpointer_options: Unpack[CheckpointerOptions],
) -> Lifespan[T]:
    """A service's state: restored at startup, autosaved until shutdown.

    On entry it opens a :class:`~asynccp.Checkpointer` on ``location`` with the
    keyword arguments a Checkpointer takes (``policy="latest"`` unless ``policy`` or
    ``limits`` is given, ``keep=3`` unless ``keep`` or ``retention`` is; or
    uses an open ``Checkpointer`` passed as ``location``), restores the newest checkpoint
    that ``restore`` loads — falling back past corrupt ones, as ``load_latest`` does —
    or calls ``initial()`` when there is none, and starts an :func:`autosave` of
    ``dump(state.value)``. It yields a :class:`ServiceState`. On exit: the final save,
    then the checkpointer's flush.

    Starlette / FastAPI::

        @contextlib.asynccontextmanager
        async def app_lifespan(app):
            async with asynccp.lifespan(
                "s3://bucket/counter",
                restore=lambda ckpt: ckpt.read(),          # -> the state (sync or async)
                initial=lambda: b"",
                dump=lambda value: value,                   # -> bytes, str, buffer, mapping
                every=5.0,
            ) as kept:
                yield {"kept": kept}                        # request.state.kept.value

    ``restore(ckpt)`` raising :class:`~asynccp.CorruptCheckpointError` (any verified read
    of a corrupt checkpoint does) moves on to the next older checkpoint; any other error
    fails the startup. The other arguments are :func:`autosave`'s.
    """
    options = _Options.check(
        every=every,
        every_changes=every_changes,
        skip=skip,
        max_failures=max_failures,
        final_timeout=final_timeout,
        metadata=metadata,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
    )
    return Lifespan(
        location,
        restore=restore,
        initial=initial,
        dump=dump,
        options=options,
        checkpointer_options=CheckpointerOptions(**checkpointer_options),
    )
