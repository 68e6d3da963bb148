"""Synchronous code saving through an async Checkpointer, without waiting for uploads.

Framework checkpoint interfaces are synchronous (``checkpoint.write(b)``), and so are
most task bodies. The plugins run the attempt's Checkpointer on an event loop and the
task body beside it (a ``def`` body in a worker thread; an ``async def`` body on the
loop itself); a :class:`SyncBridge` carries the body's saves over:

- ``put(bytes)`` hands the bytes over and returns at once: the caller's thread only
  appends to a queue (and wakes the loop when it sleeps); the loop side passes each
  item to ``Checkpointer.save`` in order. With ``policy="latest"`` an item that a newer
  one overtakes before the loop takes it is superseded, like a queued checkpoint.
  With ``policy="block"`` the hand-over queue is bounded like the Checkpointer's
  (``max_pending`` items, ``max_pending_bytes``): a caller that outruns the uploads
  waits, on its own thread.
- ``put_path(path)`` returns once the file or folder is staged (copied): the caller may
  change it right after.
- ``call(fn)`` runs a coroutine function on the loop and waits for its result (reads).

A background failure is raised by the next ``put`` and when the attempt ends.

Called on the loop's own thread (a synchronous interface used inside ``async def``),
nothing can wait for the loop: ``put`` never blocks there (the hand-over queue may
grow past its bound, with a warning), ``put_path`` copies the file first, and
``call`` runs the coroutine on a private event loop in a helper thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import sniffio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal

from ._checkpointer import Checkpointer
from ._groups import add_note
from ._supervise._signals import MainThreadLoan
from .errors import CheckpointClosedError

__all__ = ["SyncBridge", "run_blocking", "run_in_thread"]

log = logging.getLogger("asynccp")
T = TypeVar("T")


def run_blocking(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``await fn()`` to completion from synchronous code; return its result.

    On this thread when no event loop runs in it (so a supervisor started here, in the
    main thread, handles SIGTERM); otherwise in a helper thread with its own loop and a
    copy of this thread's context, while this thread waits — lending itself, when it is
    the main thread, to the signal handling of a supervisor in the helper thread (a
    local ``async def`` task under ``asyncio.run`` or ``pyflyte run`` exits 75 on
    SIGTERM, flushed, as in a pod).
    """
    if _loop_runs_here():
        return _in_helper_thread(fn)
    return contextvars.copy_context().run(_new_loop, fn)


def _loop_runs_here() -> bool:
    """Whether an event loop runs in this thread: asyncio's, or trio's (which marks its
    thread for sniffio; a new loop cannot start under it either)."""
    if sniffio.thread_local.name is not None:
        return True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _new_loop(fn: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(fn)`` in the current context, which must be a private copy: a context
    copied from a task on another loop still names that loop's library to sniffio."""
    sniffio.current_async_library_cvar.set(None)
    return anyio.run(fn)


def _in_helper_thread(fn: Callable[[], Awaitable[T]]) -> T:
    context = contextvars.copy_context()
    outcome: list[Any] = []
    loan = MainThreadLoan()

    def target() -> None:
        try:
            outcome.append((True, context.run(_new_loop, fn)))
        except BaseException as e:  # handed to the waiting thread
            outcome.append((False, e))
        finally:
            loan.finish()

    thread = threading.Thread(target=target, name="asynccp-blocking", daemon=True)
    with loan:
        thread.start()
        loan.serve()  # the main thread installs the helper's signal handlers, and runs them
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


async def run_in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn()`` (a synchronous task body) in a new daemon thread; await its result.

    The thread gets a copy of this context (``asynccp.current()``, the framework's
    context). Cancelling the await abandons the thread: it is a daemon, so a body still
    computing never holds up the exit of a pre-empted process (anyio's worker threads
    would).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def report(ok: bool, value: Any) -> None:
        if not done.done():
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    def target() -> None:
        try:
            outcome: tuple[bool, Any] = (True, context.run(fn))
        except StopIteration as e:  # a future refuses it (the await would hang): as PEP 479
            error = RuntimeError("the task body raised StopIteration")
            error.__cause__ = e
            outcome = (False, error)
        except BaseException as e:  # handed to the awaiting task
            outcome = (False, e)
        with contextlib.suppress(RuntimeError):  # the loop closed: the body was abandoned
            loop.call_soon_threadsafe(report, *outcome)

    threading.Thread(target=target, name="asynccp-task-body", daemon=True).start()
    return await done


@dataclass(eq=False)
class _Item:
    """One checkpoint handed over by synchronous code, waiting for the loop."""

    step: int
    payload: Any
    metadata: Any
    size: int
    staged: concurrent.futures.Future[None] | None = None  # put_path waits for it
    cleanup: Path | None = None  # a private copy to delete once saved


async def _set(event: anyio.Event) -> None:
    event.set()


class SyncBridge:
    """Carries saves from synchronous code to the attempt's Checkpointer (see module doc).

    Created on the event loop's thread, inside the attempt; :meth:`run` (the loop side)
    runs in the attempt's task group until :meth:`close` and the queue is empty.
    ``steps()`` hands out each save's step on the caller's thread (thread-safe: the
    attempt's ``LineageReader.next_step``).
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        portal: BlockingPortal,
        *,
        steps: Callable[[], int],
        latest: bool,
        max_items: int,
        max_bytes: int,
        grace: float,
    ) -> None:
        self._cp = checkpointer
        self._steps = steps
        self._portal = portal
        self._latest = latest
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._grace = grace
        self._loop_thread = threading.get_ident()
        self._cond = threading.Condition()
        self._items: deque[_Item] = deque()
        self._count = 0  # handed over, not yet saved or dropped (queued or being saved)
        self._bytes = 0
        self._closed = False
        self._errors: list[Exception] = []
        self._idle: anyio.Event | None = None
        self._warned = False
        #: Checkpoints a newer one overtook before the loop took them (policy="latest").
        self.superseded = 0
        if sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
            self._wake: Callable[[anyio.Event], object] = lambda ev: loop.call_soon_threadsafe(
                ev.set
            )
        else:
            self._wake = lambda ev: portal.start_task_soon(_set, ev)

    @property
    def on_loop(self) -> bool:
        """Whether the caller runs on the event loop's thread (it must not wait for it)."""
        return threading.get_ident() == self._loop_thread

    # -- the caller's side ------------------------------------------------------------

    def put(self, payload: bytes | Mapping[str, bytes], *, metadata: Any = None) -> int:
        """Hand over an immutable payload (bytes, or a mapping of names to bytes).

        Returns its step at once, without waiting for the upload (with
        ``policy="block"``, after waiting for room in the hand-over queue).
        """
        size = len(payload) if isinstance(payload, bytes) else sum(map(len, payload.values()))
        return self._enqueue(payload, metadata, size, None)

    def put_path(self, path: Path, *, name: str | None = None, metadata: Any = None) -> int:
        """Hand over a file or a folder; return once it is staged (the caller may change
        it right after). ``name`` stores a file under that name instead of its own."""
        if not path.exists():
            raise FileNotFoundError(f"checkpoint source path does not exist: {path}")
        if self.on_loop:
            copy = _private_copy(path)
            target = copy / path.name
            payload: Any = {name: target} if name else target
            return self._enqueue(payload, metadata, 0, None, cleanup=copy)
        staged: concurrent.futures.Future[None] = concurrent.futures.Future()
        step = self._enqueue({name: path} if name else path, metadata, 0, staged)
        staged.result()
        return step

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the event loop (or, from its own thread, on a private
        loop in a helper thread); wait for the result."""
        with self._cond:
            if self._closed:
                raise self._closed_error()
        if self.on_loop:
            return _in_helper_thread(lambda: fn(*args))
        return self._portal.call(fn, *args)

    def _enqueue(
        self,
        payload: Any,
        metadata: Any,
        size: int,
        staged: concurrent.futures.Future[None] | None,
        *,
        cleanup: Path | None = None,
    ) -> int:
        with self._cond:
            self._raise_errors()
            if not self._latest and self._full(size):
                if self.on_loop:
                    self._warn_overflow()
                else:
                    while self._full(size) and not self._closed and not self._errors:
                        self._cond.wait()
                    self._raise_errors()
            if self._closed:
                raise self._closed_error()
            item = _Item(self._steps(), payload, metadata, size, staged, cleanup)
            self._items.append(item)
            self._count += 1
            self._bytes += size
            dropped = []
            if self._latest:
                while len(self._items) > self._max_items:
                    dropped.append(self._items.popleft())
            event, self._idle = self._idle, None
        for old in dropped:
            self._supersede(old)
        if event is not None:
            if self.on_loop:
                event.set()
            else:
                self._wake(event)
        return item.step

    def _full(self, size: int) -> bool:
        return self._count > 0 and (
            self._count >= self._max_items or self._bytes + size > self._max_bytes
        )

    def _warn_overflow(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "asynccp: synchronous checkpoint saves from the event loop's thread cannot "
                "wait for room: the hand-over queue grows past max_pending. In an async "
                "task, `await asynccp.current().save(...)` waits for room instead."
            )

    def _closed_error(self) -> CheckpointClosedError:
        return CheckpointClosedError(
            "the task attempt this checkpoint belongs to has ended; save from inside the task"
        )

    def _raise_errors(self) -> None:
        """Raise (once) the failures of earlier hand-overs (caller holds the lock)."""
        if self._errors:
            first, *rest = self._errors
            self._errors = []
            for err in rest:
                add_note(first, f"also: {type(err).__name__}: {err}")
            raise first

    # -- the loop's side --------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Save what the caller hands over, in order, until closed and empty.

        Cancelled (the attempt is pre-empted), it takes no more hand-overs but goes on
        for up to ``grace`` seconds with those it has, as it would have: the save under
        way, then, in order, every one queued (``policy="latest"``: the newest, the
        others being superseded). Every save that returned to the caller before the
        signal thus reaches the Checkpointer, whose flush then commits it; a save cut
        off here would be lost although the caller was told it was handed over.
        """
        task_status.started()
        handover = anyio.CancelScope(shield=True)
        finished = False

        async def stop_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                if not finished:  # cancelled from outside: hand over what is here, in time
                    handover.deadline = anyio.current_time() + self._grace
                    self.close()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_cancelled)
                with handover:
                    await self._hand_over()
                finished = True
                tg.cancel_scope.cancel()
        finally:
            with self._cond:
                self._closed = True
                left = list(self._items)
                self._items.clear()
                self._cond.notify_all()
            for old in left:  # the grace ran out before these were handed over
                self._release(old, self._closed_error())

    async def _hand_over(self) -> None:
        """Pass the queued items to the Checkpointer in order, until closed and empty."""
        while True:
            with self._cond:
                if not self._items:
                    if self._closed:
                        return
                    self._idle = event = anyio.Event()
                    item = None
                elif self._latest:
                    *overtaken, item = self._items
                    self._items.clear()
                else:
                    overtaken, item = [], self._items.popleft()
            if item is None:
                await event.wait()
                continue
            for old in overtaken:
                self._supersede(old)
            await self._save(item)

    async def _save(self, item: _Item) -> None:
        error: Exception | None = None
        saved = False
        try:
            await self._cp.save(item.step, item.payload, metadata=item.metadata)
            saved = True
        except Exception as e:  # the Checkpointer's errors, or a payload it refused
            error = e
        finally:
            if item.cleanup is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, item.cleanup, True)
            if error is not None and item.staged is None:
                with self._cond:
                    self._errors.append(error)
            # cancelled mid-save: whoever waits for the staging learns the attempt ended
            self._release(item, None if saved else error or self._closed_error())

    def _supersede(self, item: _Item) -> None:
        self.superseded += 1
        if item.cleanup is not None:
            shutil.rmtree(item.cleanup, ignore_errors=True)
        self._release(item, None)

    def _release(self, item: _Item, error: Exception | None) -> None:
        with self._cond:
            self._count -= 1
            self._bytes -= item.size
            self._cond.notify_all()
        if item.staged is not None and not item.staged.done():
            if error is None:
                item.staged.set_result(None)
            else:
                item.staged.set_exception(error)

    def close(self) -> None:
        """No more hand-overs; :meth:`run` returns once the queue is empty (loop thread)."""
        with self._cond:
            self._closed = True
            event, self._idle = self._idle, None
            self._cond.notify_all()
        if event is not None:
            event.set()

    def raise_errors(self) -> None:
        """Raise the failures not yet reported (when the attempt ends)."""
        with self._cond:
            self._raise_errors()

    def note_errors(self, exc: BaseException) -> None:
        """Attach the failures not yet reported to ``exc`` (the body's own error)."""
        with self._cond:
            errors, self._errors = self._errors, []
        for err in errors:
            add_note(exc, f"asynccp: while saving checkpoints: {type(err).__name__}: {err}")


def _private_copy(path: Path) -> Path:
    """Copy a file or folder into a new temporary folder; return that folder."""
    folder = Path(tempfile.mkdtemp(prefix="asynccp-handover-"))
    try:
        if path.is_dir():
            shutil.copytree(path, folder / path.name)
        else:
            shutil.copy2(path, folder / path.name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
