"""What the framework plugins share: their options, and how one task call runs.

A task call runs under :func:`asynccp.supervise` on the attempt's own checkpoint
prefix. Each attempt of the supervisor (one per task call on a cluster, where the
orchestrator retries; several in a local run, where the supervisor retries):

1. follows the attempt records back from the previous attempt's prefix (the lineage);
2. writes its own record (previous prefix, the newest valid checkpoint found);
3. gives the supervisor's Checkpointer (``asynccp.current()``) a
   :class:`LineageReader` for the task body (it reads along the lineage, and saves to
   its own prefix as always) and starts a :class:`SyncBridge` for synchronous saves;
4. runs the task body; whether it returns or raises, every checkpoint the body handed
   over reaches the Checkpointer before the attempt ends, and the supervisor then
   flushes it — before the body's error goes on to the framework.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._bridge import SyncBridge
from ._checkpoint import Checkpoint
from ._checkpointer import Checkpointer
from ._checks import check_seconds
from ._lineage import AttemptRecord, Lineage, LineageReader, write_record
from ._options import CheckpointerOptions, Options, StoreOptions, Unpack, keywords, options_of
from ._supervise import DEFAULT_GRACE, supervise
from ._supervise._notices import check_notices
from ._supervise._retry_policy import DEFAULT_BACKOFF, backoff_function, callbacks, classifier
from ._types import BackoffSpec, OnRetry, Recoverable

__all__ = ["Attempt", "PluginOptions", "run_task"]

log = logging.getLogger("asynccp")
T = TypeVar("T")


@dataclass(frozen=True)
class PluginOptions:
    """A plugin's options, checked when the task is declared (no I/O).

    ``checkpointer`` is what each attempt's :class:`Checkpointer` is opened with (the
    same values a Checkpointer takes: ``keep``, ``limits``, ``store``...; its store
    options reach every prefix of the lineage too); the rest goes to
    :func:`asynccp.supervise`.
    """

    recoverable: Recoverable = ()
    backoff: BackoffSpec = DEFAULT_BACKOFF
    on_retry: OnRetry = None
    grace: float = DEFAULT_GRACE
    handle_signals: bool = True
    checkpointer: Options = field(default_factory=Options)
    notices: str | None = None
    notice_endpoint: str | None = None

    @classmethod
    def check(
        cls,
        *,
        recoverable: Recoverable = (),
        backoff: BackoffSpec = DEFAULT_BACKOFF,
        on_retry: OnRetry = None,
        grace: float | timedelta = DEFAULT_GRACE,
        handle_signals: bool = True,
        notices: str | None = None,
        notice_endpoint: str | None = None,
        **checkpointer: Unpack[CheckpointerOptions],
    ) -> PluginOptions:
        """Validate the options (the Checkpointer's as values: no checkpointer made)."""
        opts = options_of(
            "the plugin",
            checkpointer,
            also=(
                "recoverable",
                "backoff",
                "on_retry",
                "grace",
                "handle_signals",
                "notices",
                "notice_endpoint",
            ),
        )
        if opts.store.prefix is not None:
            raise TypeError(
                "StoreOptions(prefix=...) is set by the plugin from the task's checkpoint paths"
            )
        # The supervisor checks the rest; asking it now fails at declaration, not at run.
        classifier(recoverable)
        backoff_function(backoff)
        callbacks(on_retry)
        if not isinstance(handle_signals, bool):
            raise TypeError(f"handle_signals must be a bool, got {type(handle_signals).__name__}")
        seconds = check_seconds("grace", grace, finite=True, positive=True)
        kind, endpoint = check_notices(notices, notice_endpoint)
        return cls(
            recoverable,
            backoff,
            on_retry,
            seconds,
            handle_signals,
            opts,
            kind,
            None if notice_endpoint is None else endpoint,
        )

    @property
    def store(self) -> StoreOptions:
        """How every prefix of the lineage is reached."""
        return self.checkpointer.store

    def describe(self) -> str:
        """The options that differ from the defaults, as they would be written."""
        parts = _written(self.checkpointer)
        if self.recoverable != ():
            parts.append(f"recoverable={self.recoverable!r}")
        if self.backoff is not DEFAULT_BACKOFF:
            parts.append(f"backoff={self.backoff!r}")
        if self.grace != DEFAULT_GRACE:
            parts.append(f"grace={self.grace:g}")
        if not self.handle_signals:
            parts.append("handle_signals=False")
        if self.notices is not None:
            parts.append(f"notices={self.notices!r}")
        return ", ".join(parts)


def _written(opts: Options) -> list[str]:
    """``opts`` as keyword arguments, defaults left out: ``keep=3``, not a whole
    ``Retention(...)`` whose other fields are the defaults."""
    parts = []
    for f in fields(Options):
        value, default = getattr(opts, f.name), getattr(Options(), f.name)
        if value == default:
            continue
        if not is_dataclass(value):
            parts.append(f"{f.name}={value!r}")
            continue
        changed = {
            g.name: getattr(value, g.name)
            for g in fields(value)
            if default is None or getattr(value, g.name) != getattr(default, g.name)
        }
        shortcut = {"retention": "keep", "limits": "policy"}.get(f.name)
        if shortcut is not None and set(changed) == {shortcut}:
            parts.append(f"{shortcut}={changed[shortcut]!r}")
        else:
            inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
            parts.append(f"{f.name}={type(value).__name__}({inner})")
    return parts


@dataclass(frozen=True)
class Attempt:
    """One attempt of a checkpointed task, as the plugin's task body sees it."""

    #: ``asynccp.current()``: the attempt's Checkpointer, reading along the lineage
    #: (through ``reader``) while the body runs.
    checkpointer: Checkpointer
    #: What the checkpointer reads through: the lineage, and the steps of numbered saves.
    reader: LineageReader
    #: Synchronous saves and reads.
    bridge: SyncBridge
    #: The newest valid checkpoint when the attempt started (what it resumes from,
    #: unless that fails verification), or None.
    resume: Checkpoint | None


async def run_task(
    options: PluginOptions,
    body: Callable[[Attempt], Awaitable[T]],
    *,
    own: str,
    previous: str | None,
    retries: int,
    name: str,
    also_recoverable: tuple[type[Exception], ...] = (),
) -> T:
    """Run a task call: ``await body(attempt)`` under :func:`asynccp.supervise`.

    ``own`` is the attempt's checkpoint prefix, ``previous`` the previous attempt's
    (as the orchestrator gives them). ``retries`` are the supervisor's (local runs);
    0 when the orchestrator retries. ``name`` (the task's) is what logs call it.
    ``also_recoverable`` adds the framework's own
    "retry me" errors to ``options.recoverable``.

    Raises:
        RetriesExhausted: a recoverable error on the last attempt (with ``retries=0``:
            on the only one; the plugin turns it into what its orchestrator retries).
    """
    user = classifier(options.recoverable)

    def recoverable(exc: Exception) -> bool:
        return isinstance(exc, also_recoverable) or user(exc)

    async def attempt(cp: Checkpointer) -> T:
        return await _attempt(cp, options=options, body=body, own=own, previous=previous)

    attempt.__qualname__ = attempt.__name__ = name
    return await supervise(
        attempt,
        own,
        retries=retries,
        recoverable=recoverable,
        backoff=options.backoff,
        on_retry=options.on_retry,
        grace=options.grace,
        handle_signals=options.handle_signals,
        notices=options.notices,
        notice_endpoint=options.notice_endpoint,
        **keywords(options.checkpointer),
    )


async def _attempt(
    cp: Checkpointer,
    *,
    options: PluginOptions,
    body: Callable[[Attempt], Awaitable[T]],
    own: str,
    previous: str | None,
) -> T:
    if previous is not None and previous.rstrip("/") == own.rstrip("/"):
        previous = None  # the orchestrator points the attempt at its own prefix
    async with AsyncExitStack() as stack:
        lineage = await Lineage.open(cp, own, previous, options.store, stack)
        found = await lineage.newest_valid()
        resume = None if found is None else found[1]
        newest = await lineage.newest_step()
        record = AttemptRecord(
            prefix=own,
            previous=previous,
            resume_from=None if found is None else (found[0], found[1].step),
            writer=cp.writer_id,
            created_at=datetime.now(timezone.utc),
        )
        await write_record(record, options.store)
        if record.resume_from is None:
            log.info("asynccp: attempt in %s starts from scratch", own)
        else:
            log.info("asynccp: attempt in %s resumes from step %d in %s", own, *found_at(record))
        reader = LineageReader(lineage, 0 if newest is None else newest + 1)
        portal = await stack.enter_async_context(BlockingPortal())
        bridge = SyncBridge(
            cp,
            portal,
            steps=reader.next_step,
            latest=cp.options.limits.policy == "latest",
            max_items=cp.options.limits.max_pending,
            max_bytes=cp.options.limits.max_pending_bytes,
            grace=options.grace,
        )
        error: Exception | None = None
        value: Any = None
        with cp._read_through(reader):
            async with anyio.create_task_group() as tg:
                await tg.start(bridge.run)
                try:
                    value = await body(Attempt(cp, reader, bridge, resume))
                except Exception as exc:  # the body's error, raised below once handed over
                    error = exc
                finally:
                    bridge.close()
    # Raised outside the exit stack: the portal's task group would wrap it in a group.
    if error is not None:
        bridge.note_errors(error)
        raise error
    bridge.raise_errors()
    return value  # type: ignore[no-any-return]


def found_at(record: AttemptRecord) -> tuple[int, str]:
    """``(step, prefix)`` the record resumes from (which must be set)."""
    assert record.resume_from is not None
    prefix, step = record.resume_from
    return step, prefix
