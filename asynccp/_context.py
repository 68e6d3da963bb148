"""Which Checkpointer :func:`asynccp.current` returns: the attempt's, for a block of code.

The supervisor sets it for each attempt. A framework plugin runs its attempt inside
the supervisor, then narrows it to a view of the same Checkpointer that also reads the
earlier attempts' checkpoints; :func:`use_current` is the one way either does so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from .errors import CheckpointClosedError

if TYPE_CHECKING:
    from ._checkpointer import Checkpointer

__all__ = ["CURRENT", "current", "use_current"]

#: The checkpointer of the supervised attempt running this code (None: none).
CURRENT: ContextVar[Checkpointer | None] = ContextVar("asynccp_current", default=None)


def current() -> Checkpointer:
    """The :class:`~asynccp.Checkpointer` of the supervised attempt running this code.

    The counterpart of Flyte's ``current_context().checkpoint``: deep inside a
    supervised job, reach the checkpointer without passing it down. Works in tasks
    started from the attempt too (they inherit its context).

    Raises:
        CheckpointClosedError: outside a supervised attempt.
    """
    cp = CURRENT.get()
    if cp is None:
        raise CheckpointClosedError(
            "asynccp.current() was called outside a supervised attempt: call it from "
            "code run by asynccp.supervise() or an @asynccp.checkpointed function"
        )
    return cp


@contextmanager
def use_current(cp: Checkpointer) -> Iterator[Checkpointer]:
    """Make ``asynccp.current()`` return ``cp`` inside the block (and in tasks and worker
    threads started from it, which inherit the context); the previous value after it."""
    token = CURRENT.set(cp)
    try:
        yield cp
    finally:
        CURRENT.reset(token)
