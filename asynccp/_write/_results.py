"""What the write pipeline reports: its :class:`Stats` (with a tiered checkpointer's
:class:`Replication` lag) and the typed outcome of a flush, :class:`FlushResult`."""

from __future__ import annotations

from dataclasses import dataclass

from .._groups import add_note
from ..errors import CheckpointError

__all__ = ["FlushResult", "Replication", "Stats"]


@dataclass(frozen=True)
class Replication:
    """A tiered checkpointer's remote tier (``cp.stats.replication``; ``docs/tiers.md``).

    Attributes:
        remote: the remote location, as a readable string.
        steps_behind: checkpoints committed locally, not yet in the remote tier (None
            until the remote tier has been read).
        bytes_behind: their payload bytes.
        seconds_behind: how long ago the oldest of them was saved (0.0: none).
        replicated: checkpoints this checkpointer committed in the remote tier.
        bytes_replicated: their payload bytes.
        failed: checkpoints that cannot be replicated (reported by ``flush()``).
        last_replicated_step: the newest step it committed there, or None.
    """

    remote: str
    steps_behind: int | None
    bytes_behind: int
    seconds_behind: float
    replicated: int
    bytes_replicated: int
    failed: int
    last_replicated_step: int | None


@dataclass(frozen=True)
class Stats:
    """A snapshot of what a :class:`~asynccp.Checkpointer` has done so far
    (``replication``: a tiered checkpointer's remote tier, else None)."""

    saves: int
    committed: int
    failed: int
    superseded: int
    bytes_saved: int
    bytes_committed: int
    queue_depth: int
    queue_bytes: int
    stall_seconds: float
    max_stall_seconds: float
    upload_seconds: float
    last_committed_step: int | None
    replication: Replication | None = None


@dataclass(frozen=True)
class FlushResult:
    """What a flush found.

    Attributes:
        errors: failures not reported before (by a handle awaited or a ``save()``
            that raised), in step order (the earliest step first); a
            :class:`FlushTimeoutError` last when pending work was abandoned.
        abandoned: the steps given up on at the deadline, each once, in order: those
            uploading (which may still commit) and those staged, not yet started.
        timed_out: the deadline passed before everything was done.
        last_committed: the newest step this checkpointer committed, if any.
    """

    errors: tuple[CheckpointError, ...] = ()
    abandoned: tuple[int, ...] = ()
    timed_out: bool = False
    last_committed: int | None = None

    def error(self) -> CheckpointError | None:
        """The first error, with the others as notes; None when there is none."""
        if not self.errors:
            return None
        first = self.errors[0]
        for other in self.errors[1:]:
            add_note(first, f"also: {type(other).__name__}: {other}")
        return first

    def note_on(self, exc: BaseException) -> None:
        """Put the errors, as notes, on ``exc`` (an exception leaving a checkpointer's
        block, which the first of them is not)."""
        if self.errors and exc is not self.errors[0]:
            for err in self.errors:
                add_note(exc, f"asynccp: while flushing checkpoints: {type(err).__name__}: {err}")
