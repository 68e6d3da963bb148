"""Choose the Checkpointer that :func:`asynccp.current` returns, for a block of code.

The supervisor sets it for each attempt. A framework plugin runs its attempt inside
the supervisor, then narrows it to a view of the same Checkpointer that also reads the
earlier attempts' checkpoints; this is the one way it does so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._supervise._supervisor import _current

if TYPE_CHECKING:
    from ._checkpointer import Checkpointer

__all__ = ["use_current"]


@contextmanager
def use_current(cp: Checkpointer) -> Iterator[Checkpointer]:
    """Make ``asynccp.current()`` return ``cp`` inside the block (and in tasks and worker
    threads started from it, which inherit the context); the previous value after it."""
    token = _current.set(cp)
    try:
        yield cp
    finally:
        _current.reset(token)
