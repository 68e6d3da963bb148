"""Exception helpers: task groups wrap child errors; callers want the error itself."""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["add_note", "first_leaf"]


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
