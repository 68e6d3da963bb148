"""The save order of commits: each commit's :class:`Turn`, and the :class:`CommitContext`
every commit of a writer shares.

Checkpoints commit in the order they were saved: a record is created only once the
previous checkpoint's commit is over. That wait happens where the next record is
created. On the event loop (:meth:`Turn.wait`) when the commit goes through several
steps there; inside the worker thread that creates the record
(:meth:`Turn.wait_in_thread`) when a small commit is one worker-thread trip: that trip
starts while the previous commit is still running — its payload is written meanwhile
— and the thread that finishes the previous commit wakes it at once
(:meth:`Turn.set_in_thread`), without a round trip through the event loop in between.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass

import anyio

from .._catalog import Bad
from .._store import abandoned
from ..errors import Abandoned

__all__ = ["CommitContext", "Turn"]


#: How often a thread waiting for its turn looks whether it was abandoned.
_POLL = 0.05


class Turn:
    """The end of one commit (a checkpoint's, or a group's), which the next waits for.

    Set by the event loop when the commit is over whatever its outcome (:meth:`set`),
    and earlier, by the worker thread that made every record of the commit durable
    (:meth:`set_in_thread`), for a next commit waiting in its own thread.
    """

    __slots__ = ("_done", "_event")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._done = threading.Event()

    def set(self) -> None:
        """The commit is over (event loop only)."""
        self._done.set()
        self._event.set()

    def set_in_thread(self) -> None:
        """Every record of the commit is durable: a next commit waiting in its thread
        may go on (any thread)."""
        self._done.set()

    def is_set(self) -> bool:
        return self._done.is_set()

    def over(self) -> bool:
        """Whether :meth:`set` was called (the event loop knows the commit is over)."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Wait until the commit is over, on the event loop."""
        await self._event.wait()

    def wait_in_thread(self) -> None:
        """Wait in a worker thread until the commit's records are durable; raise
        :class:`Abandoned` if the call running in this thread is given up on meanwhile."""
        while not self._done.wait(_POLL):
            if abandoned():
                raise Abandoned


@dataclass(frozen=True)
class CommitContext:
    """What one writer's commits share, and where each stands in the save order.

    ``writer`` and ``attempt`` go into every record; ``limiter`` bounds the upload
    threads of a large checkpoint; ``bad`` (the step order's set) lists checkpoints
    known not to verify: one found at the step is replaced. ``previous`` is the
    previous commit's turn: a record is created only once it is over (None: nothing
    to wait for); ``this`` is this commit's, which its worker thread sets as soon as
    every record it created is durable.
    """

    writer: str
    attempt: int
    limiter: anyio.CapacityLimiter
    bad: Collection[Bad] = ()
    previous: Turn | None = None
    this: Turn | None = None

    def after(self, previous: Turn | None, this: Turn | None = None) -> CommitContext:
        """This context for a commit that follows ``previous`` (and ends ``this``)."""
        return CommitContext(self.writer, self.attempt, self.limiter, self.bad, previous, this)

    def turn_taken(self) -> bool:
        """Whether the previous commit is over (a record may be created right away)."""
        return self.previous is None or self.previous.is_set()

    async def turn(self) -> None:
        """Wait for the previous commit, on the event loop (no pass of the loop when it
        is over already)."""
        if self.previous is not None and not self.previous.over():
            await self.previous.wait()

    def turn_in_thread(self) -> None:
        """Wait for the previous commit in the worker thread that creates the record
        (see :meth:`Turn.wait_in_thread`); raise :class:`Abandoned` if the call was
        given up on (its payload written meanwhile, say): an abandoned commit creates
        no record."""
        if self.previous is not None:
            self.previous.wait_in_thread()
        if abandoned():
            raise Abandoned

    def done_in_thread(self) -> None:
        """Every record of this commit is durable (see :meth:`Turn.set_in_thread`)."""
        if self.this is not None:
            self.this.set_in_thread()
