"""What the framework plugins share: their options, and how one task call runs.

A task call runs under :func:`asynccp.supervise` on the attempt's own checkpoint
prefix. Each attempt of the supervisor (one per task call on a cluster, where the
orchestrator retries; several in a local run, where the supervisor retries):

1. follows the attempt records back from the previous attempt's prefix (the lineage;
   reads only: earlier prefixes are never written to);
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
from ._options import (
    CheckpointerOptions,
    Options,
    Retention,
    StoreOptions,
    Unpack,
    keywords,
    options_of,
)
from ._supervise import DEFAULT_GRACE
from ._supervise._notices import check_notices
from ._supervise._retry_policy import DEFAULT_BACKOFF, backoff_function, callbacks, classifier
from ._supervise._supervisor import _Supervisor
from ._types import BackoffSpec, OnRetry, Recoverable

__all__ = ["DEFAULT_KEEP", "Attempt", "PluginOptions", "run_task"]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: The checkpoints a plugin keeps per attempt's prefix unless told otherwise (``keep=N``,
#: ``keep=None`` for all, or ``retention=``): the frameworks' own checkpointers keep
#: one (each write overwrites the last); a few more leave room to fall back past a
#: corrupt one.
DEFAULT_KEEP = 3


def _default_options() -> Options:
    return Options(retention=Retention(keep=DEFAULT_KEEP))


@dataclass(frozen=True)
class PluginOptions:
    """A plugin's options, checked when the task is declared (no I/O).

    ``checkpointer`` is what each attempt's :class:`Checkpointer` is opened with (the
    same values a Checkpointer takes: ``keep``, ``limits``, ``store``...; its store
    options reach every prefix of the lineage too); the rest goes to
    :func:`asynccp.supervise`.

    Storage is bounded by default: ``keep`` is :data:`DEFAULT_KEEP` unless ``keep`` is
    given (``keep=None``: every checkpoint is kept) or ``retention`` is (then its
    ``keep`` holds, whose default None keeps all).
    """

    recoverable: Recoverable = ()
    backoff: BackoffSpec = DEFAULT_BACKOFF
    on_retry: OnRetry = None
    grace: float = DEFAULT_GRACE
    handle_signals: bool = True
    checkpointer: Options = field(default_factory=_default_options)
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
        if "keep" not in checkpointer and checkpointer.get("retention") is None:
            checkpointer["keep"] = DEFAULT_KEEP
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
    """``opts`` as keyword arguments, the plugin's defaults left out: ``keep=5``, not a
    whole ``Retention(...)`` whose other fields are the defaults."""
    parts = []
    defaults = _default_options()
    for f in fields(Options):
        value, default = getattr(opts, f.name), getattr(defaults, f.name)
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
    foreign: str | None = None,
    earlier: Callable[[str], str | None] | None = None,
    resume: str | None = None,
) -> T:
    """Run a task call: ``await body(attempt)`` under :func:`asynccp.supervise`.

    ``own`` is the attempt's checkpoint prefix, ``previous`` the previous attempt's
    (as the orchestrator gives them). ``retries`` are the supervisor's (local runs);
    0 when the orchestrator retries. ``name`` (the task's) is what logs call it.
    ``also_recoverable`` adds the framework's own
    "retry me" errors to ``options.recoverable``. ``foreign`` names the framework
    whose own checkpoints an earlier prefix may hold, ``earlier`` is the orchestrator's
    naming of the attempt before a prefix (both: see :class:`Lineage`), and ``resume``
    says what resumes from what the task committed, in the messages of a pre-emption
    and of retries run out (by default: running it again on ``own``).

    Raises:
        RetriesExhausted: a recoverable error on the last attempt (with ``retries=0``:
            on the only one; the plugin turns it into what its orchestrator retries).
    """
    user = classifier(options.recoverable)

    def recoverable(exc: Exception) -> bool:
        return isinstance(exc, also_recoverable) or user(exc)

    async def attempt(cp: Checkpointer) -> T:
        lineage = await Lineage.open(
            cp, own, _not_own(previous, own), options.store, foreign=foreign, earlier=earlier
        )
        return await _attempt(cp, lineage, options=options, body=body)

    attempt.__qualname__ = attempt.__name__ = name
    # asynccp.supervise, with the plugin's words for what resumes.
    supervisor = _Supervisor(
        own,
        caller="the plugin",
        retries=retries,
        recoverable=recoverable,
        backoff=options.backoff,
        on_retry=options.on_retry,
        handle_signals=options.handle_signals,
        grace=options.grace,
        preemptions=0,
        checkpointer_options=keywords(options.checkpointer),
        notices=options.notices,
        notice_endpoint=options.notice_endpoint,
        resume=resume,
    )
    return await supervisor.run(attempt, (), {})


def _not_own(previous: str | None, own: str) -> str | None:
    """``previous``, unless the orchestrator points the attempt at its own prefix."""
    if previous is not None and previous.rstrip("/") == own.rstrip("/"):
        return None
    return previous


async def _attempt(
    cp: Checkpointer,
    lineage: Lineage,
    *,
    options: PluginOptions,
    body: Callable[[Attempt], Awaitable[T]],
) -> T:
    own = lineage.own_prefix
    previous = lineage.earlier[0].prefix if lineage.earlier else None
    async with AsyncExitStack() as stack:
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
