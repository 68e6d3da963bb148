"""Which Checkpointer :func:`asynccp.current` returns: the attempt's, for a block of code.

The supervisor sets :data:`CURRENT` for each attempt. A framework plugin runs its
attempt inside the supervisor and leaves it as it is: it has the same Checkpointer read
along the earlier attempts' checkpoints for the task body
(``Checkpointer._read_through``).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from .errors import CheckpointClosedError

if TYPE_CHECKING:
    from ._checkpointer import Checkpointer

__all__ = ["CURRENT", "current"]

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
