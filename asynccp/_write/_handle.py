"""SaveHandle: what ``save()`` returns, resolved when its checkpoint commits or fails."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import SupersededError

if TYPE_CHECKING:
    from .._checkpoint import Checkpoint

__all__ = ["SaveHandle", "fail", "resolve"]


class SaveHandle:
    """A staged checkpoint on its way to the store.

    ``await handle`` returns the committed :class:`~asynccp.Checkpoint`, or raises why
    it did not commit (:class:`~asynccp.UploadError`, :class:`~asynccp.SupersededError`,
    ...). Awaiting is optional: failures also reach the next ``save()`` and the exit of
    the ``async with`` block.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._done = False
        #: Made by the first waiter (a loop of saves that never awaits its handles
        #: makes none), set when the checkpoint settles.
        self._event: anyio.Event | None = None
        #: Makes the committed checkpoint, once, when it is first asked for.
        self._make: Callable[[], Checkpoint] | None = None
        self._result: Checkpoint | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "pending"
        if self._done:
            state = "committed" if self._error is None else f"failed: {type(self._error).__name__}"
        return f"<SaveHandle step={self.step} {state}>"

    def done(self) -> bool:
        """Whether the checkpoint has committed or failed."""
        return self._done

    @property
    def superseded(self) -> bool:
        """Whether a newer checkpoint replaced this one before it was uploaded."""
        return isinstance(self._error, SupersededError)

    def exception(self) -> BaseException | None:
        """The failure, once done (None if it committed or is still pending)."""
        return self._error

    async def wait(self) -> Checkpoint:
        """Wait for the commit; return the checkpoint or raise its failure."""
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._committed()

    def _committed(self) -> Checkpoint:
        """The committed checkpoint (made once, when first asked for; done, no error)."""
        if self._result is None:
            assert self._make is not None
            self._result, self._make = self._make(), None
        return self._result

    def __await__(self) -> Generator[Any, None, Checkpoint]:
        return self.wait().__await__()


def resolve(handle: SaveHandle, make: Callable[[], Checkpoint]) -> None:
    """The checkpoint committed: ``await handle`` returns what ``make()`` returns
    (called once, when first awaited)."""
    handle._make = make
    _settle(handle)


def fail(handle: SaveHandle, error: BaseException) -> None:
    """The checkpoint did not commit: ``await handle`` raises ``error``."""
    handle._error = error
    _settle(handle)


def _settle(handle: SaveHandle) -> None:
    handle._done = True
    if handle._event is not None:
        handle._event.set()
