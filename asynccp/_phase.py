"""Where a Checkpointer is in its life, and what each phase allows."""

from __future__ import annotations

import enum

from .errors import CheckpointClosedError

__all__ = ["Phase"]


class Phase(enum.Enum):
    """Where a Checkpointer is in its life; it is used for one ``async with`` only.

    Saves need it open; reads need it entered once (they keep working after its exit:
    a supervisor reads the newest step after an attempt closed).
    """

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"

    def check_open(self) -> None:
        """Raise :class:`CheckpointClosedError` unless the checkpointer is open."""
        if self is not Phase.OPEN:
            raise CheckpointClosedError(
                f"the Checkpointer is {self.value}; "
                "use it inside `async with Checkpointer(...) as cp`"
            )

    def check_readable(self) -> None:
        """Raise :class:`CheckpointClosedError` before the checkpointer was entered."""
        if self in (Phase.NEW, Phase.OPENING):
            raise CheckpointClosedError(
                f"the Checkpointer is {self.value}: read from it inside "
                "`async with Checkpointer(...) as cp`"
            )
