"""The bounded staging queue between ``save()`` and the uploader.

It bounds two things at once: how many checkpoints are staged but not yet committed
(``max_pending``) and how many bytes they hold (``max_pending_bytes``). A checkpoint
counts against both from the moment it is staged until it commits or fails, so
memory stays bounded while uploads run. When there is no room, ``"block"`` makes the
saver wait; ``"latest"`` drops the oldest checkpoint not yet started (a checkpoint
exists to be superseded). A checkpoint larger than the whole byte budget is accepted
when the queue is empty, so one oversized save waits instead of deadlocking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import anyio

from .._types import Policy

__all__ = ["Changes", "StagingQueue"]


class Changes:
    """Wakes the tasks waiting for a change. The event they wait on is made by the first
    of them: a change nobody waits for (most of them, in a loop of saves) costs nothing."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class _Sized(Protocol):
    size: int


T = TypeVar("T", bound=_Sized)


class StagingQueue(Generic[T]):
    """FIFO of staged checkpoints with a count and byte budget (single event loop)."""

    def __init__(
        self,
        max_pending: int,
        max_pending_bytes: int,
        policy: Policy,
        on_superseded: Callable[[T], None],
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.policy = policy
        self._on_superseded = on_superseded
        self._waiting: deque[T] = deque()
        self._count = 0
        self._bytes = 0
        self._closed = False
        self._changed = Changes()
        self._idle_since = 0.0  # (anyio's clock) when the last item was done

    @property
    def depth(self) -> int:
        """Checkpoints staged and not yet committed or failed (started ones included)."""
        return self._count

    @property
    def staged_bytes(self) -> int:
        """Bytes those checkpoints hold."""
        return self._bytes

    @property
    def waiting(self) -> int:
        """Checkpoints staged and not started yet."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing staged or in flight."""
        return self._count == 0

    def _notify(self) -> None:
        self._changed.notify()

    def _has_room(self, size: int) -> bool:
        if self._count == 0:
            return True
        return self._count < self.max_pending and self._bytes + size <= self.max_pending_bytes

    async def reserve(self, size: int) -> None:
        """Take a slot and ``size`` bytes of room, waiting (``block``) or superseding
        (``latest``) until they fit. Room is taken *before* the snapshot, so staged
        copies never exceed the budget."""
        while not self._has_room(size):
            if self.policy == "latest" and self._waiting:
                victim = self._waiting.popleft()
                self._count -= 1
                self._bytes -= victim.size
                self._on_superseded(victim)
                continue
            await self._changed.wait()
        self._count += 1
        self._bytes += size
        self._notify()

    def add(self, item: T, reserved: int) -> None:
        """Queue ``item`` in the room reserved for it (its staged size may differ a
        little from the reservation: a file that changed between the two)."""
        self._bytes += item.size - reserved
        self._waiting.append(item)
        self._notify()

    def unreserve(self, size: int) -> None:
        """Give back a reservation that never became an item (the snapshot failed)."""
        self._count -= 1
        self._bytes -= size
        self._settled()

    async def get(self) -> T | None:
        """The next item to upload, in save order; None once closed and drained."""
        while not self._waiting:
            if self._closed:
                return None
            await self._changed.wait()
        return self._waiting.popleft()

    def take_while(self, accept: Callable[[T], bool], limit: int) -> list[T]:
        """The items waiting now, in save order, as long as ``accept`` takes them and
        at most ``limit`` of them (no waiting: those saved since the last ``get``)."""
        taken: list[T] = []
        while self._waiting and len(taken) < limit and accept(self._waiting[0]):
            taken.append(self._waiting.popleft())
        return taken

    def done(self, item: T) -> None:
        """``item`` committed or failed: give its room back."""
        self._count -= 1
        self._bytes -= item.size
        self._settled()

    def _settled(self) -> None:
        if self._count == 0:
            self._idle_since = anyio.current_time()
        self._notify()

    async def changed(self) -> None:
        """Wait for the next change (an item staged, taken, done, superseded)."""
        await self._changed.wait()

    async def wait_idle(self) -> None:
        """Wait until every staged item is done."""
        while self._count:
            await self._changed.wait()

    async def wait_quiet(self, seconds: float) -> None:
        """Wait until every staged item is done and nothing has been staged since, for
        ``seconds`` (a burst of saves is over)."""
        while True:
            await self.wait_idle()
            left = self._idle_since + seconds - anyio.current_time()
            if left <= 0:
                return
            await anyio.sleep(left)  # then: still idle, or idle again since

    def close(self) -> None:
        """Accept no more items; ``get`` returns None once the queue is drained."""
        self._closed = True
        self._notify()

    def drain(self) -> list[T]:
        """Remove and return every item not yet started (used when abandoning work)."""
        items = list(self._waiting)
        self._waiting.clear()
        for item in items:
            self._count -= 1
            self._bytes -= item.size
        self._settled()
        return items
