"""The worker threads store calls run in on asyncio: one trip to a thread, and back.

``anyio.to_thread.run_sync`` costs the event loop ~85 microseconds per call on a busy
2-core machine (a pass of the loop before the call, another to take a limiter token,
a cancel scope, a copied context), against ~45 for the trip itself; a loop of tiny
checkpoints makes a few store calls per checkpoint, so that difference was a third of
what each one cost the loop. On asyncio, :func:`run` makes the trip directly: the
limiter token taken without a pass of the loop when one is free, the function run by
an idle daemon thread of a pool, its outcome handed back with
``loop.call_soon_threadsafe``. The semantics are anyio's with ``abandon_on_cancel``:
a cancelled caller stops waiting at once, and the thread finishes on its own (its
outcome is dropped). Elsewhere (trio) :func:`run` is anyio's ``run_sync``.

The threads are daemons: a call abandoned while its request hangs does not hold the
interpreter's exit (the request stops when the process does).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ["run"]

T = TypeVar("T")

#: Idle threads kept for the next calls (more are started when all are busy; the
#: limiter bounds how many run at once).
_KEEP_IDLE = 16

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class _Pool:
    """Daemon threads waiting for jobs; a thread is started when none is idle.

    The thread idle most recently takes the next job (last in, first out, as anyio's
    own pool does): a steady caller keeps using the same few threads, whose memory
    (each thread's malloc arena) stays warm, while the others stay idle. Handing jobs
    round-robin to every idle thread made a long run of large reads keep freed memory
    in each thread's arena (a consolidation's peak memory grew by three quarters).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The idle threads' inboxes, the most recently idle last.
        self._idle: list[SimpleQueue[_Job]] = []

    def submit(self, job: _Job) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = SimpleQueue()
            threading.Thread(
                target=self._work, args=(inbox,), name="asynccp store", daemon=True
            ).start()
        inbox.put(job)

    def _work(self, inbox: SimpleQueue[_Job]) -> None:
        while True:
            fn, loop, future = inbox.get()
            try:
                outcome: tuple[bool, Any] = (True, fn())
            except BaseException as e:  # handed to the waiting task
                outcome = (False, e)
            del fn
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, outcome)
            del loop, future, outcome
            with self._lock:
                if len(self._idle) >= _KEEP_IDLE:
                    return
                self._idle.append(inbox)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_POOL = _Pool()


async def run(fn: Callable[[], T], *, limiter: anyio.CapacityLimiter | None) -> T:
    """``fn()`` in a worker thread, abandoned if the caller is cancelled (see the
    module); at most ``limiter``'s tokens (anyio's default limiter when None) at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio)
        return await anyio.to_thread.run_sync(fn, limiter=limiter, abandon_on_cancel=True)
    tokens = limiter if limiter is not None else anyio.to_thread.current_default_thread_limiter()
    try:
        tokens.acquire_nowait()
    except anyio.WouldBlock:
        await tokens.acquire()
    try:
        future: asyncio.Future[T] = loop.create_future()
        _POOL.submit((fn, loop, future))
        return await future
    finally:
        tokens.release()
