"""SaveHandle: what ``save()`` returns, resolved when its checkpoint commits or fails."""

from __future__ import annotations

from collections.abc import Generator
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
        self._event = anyio.Event()
        self._result: Checkpoint | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "pending"
        if self._event.is_set():
            state = "committed" if self._error is None else f"failed: {type(self._error).__name__}"
        return f"<SaveHandle step={self.step} {state}>"

    def done(self) -> bool:
        """Whether the checkpoint has committed or failed."""
        return self._event.is_set()

    @property
    def superseded(self) -> bool:
        """Whether a newer checkpoint replaced this one before it was uploaded."""
        return isinstance(self._error, SupersededError)

    def exception(self) -> BaseException | None:
        """The failure, once done (None if it committed or is still pending)."""
        return self._error

    async def wait(self) -> Checkpoint:
        """Wait for the commit; return the checkpoint or raise its failure."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __await__(self) -> Generator[Any, None, Checkpoint]:
        return self.wait().__await__()


def resolve(handle: SaveHandle, result: Checkpoint) -> None:
    """The checkpoint committed: ``await handle`` returns ``result``."""
    handle._result = result
    handle._event.set()


def fail(handle: SaveHandle, error: BaseException) -> None:
    """The checkpoint did not commit: ``await handle`` raises ``error``."""
    handle._error = error
    handle._event.set()
