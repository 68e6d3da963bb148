"""Exception groups: task groups wrap child errors; callers want the error itself."""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["first_leaf"]


def first_leaf(e: BaseException) -> BaseException:
    """The first non-group exception inside ``e`` (``e`` itself when it is no group)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e
