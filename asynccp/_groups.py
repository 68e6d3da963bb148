"""Task-group helpers: task groups wrap child errors, callers want the error itself; a
task group held open across an ``AsyncExitStack``."""

from __future__ import annotations

import sys
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["TaskGroupEntry", "add_note", "first_leaf"]


def first_leaf(e: BaseException) -> BaseException:
    """The first non-group exception inside ``e`` (``e`` itself when it is no group)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note`` that also works on Python 3.10."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - 3.10 only
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


class TaskGroupEntry:
    """A task group as one entry of an ``AsyncExitStack`` that closes it later.

    Its exit never takes in the exception leaving the owner's block: the owner makes
    sure every task in it is over first (a checkpointer's flush has run, its lease
    stopped), and anyio would wrap that exception in an ``ExceptionGroup`` the caller
    does not expect.
    """

    def __init__(self) -> None:
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> TaskGroup:
        return await self._tg.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self._tg.__aexit__(None, None, None)
        return False  # (trio's nursery answers True for "no error": that is no suppression)
