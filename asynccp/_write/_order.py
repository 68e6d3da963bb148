"""The step order: which steps a checkpointer may still save.

Steps must grow within a checkpointer, and a step at or below the location's newest
valid checkpoint is refused too (resume from it instead). The newest valid step — the
*floor* — is found when the checkpointer opens and refined by every read; a checkpoint
found not to verify (one ``load_latest`` skipped) is *bad*: it no longer counts, and
saving its step again replaces it (the commit moves the old record to quarantine).
"""

from __future__ import annotations

from .._catalog import Bad
from ..errors import StepOrderError

__all__ = ["StepOrder"]


class StepOrder:
    """What one checkpointer knows about the steps at its location."""

    def __init__(self, where: str) -> None:
        self.where = where
        #: The last step ``save()`` accepted.
        self.last_saved: int | None = None
        #: The last step this checkpointer committed.
        self.last_committed: int | None = None
        #: The newest valid step at the location not known to be bad.
        self.floor: int | None = None
        #: Checkpoints found not to verify: never counted, replaced when saved again.
        self.bad: set[Bad] = set()

    def check(self, step: int) -> None:
        """Raise :class:`StepOrderError` unless ``step`` may be saved next."""
        if self.last_saved is not None and step <= self.last_saved:
            raise StepOrderError(
                f"step {step} is not greater than the previous step {self.last_saved}; "
                "steps must grow"
            )
        if self.floor is not None and step <= self.floor:
            raise StepOrderError(
                f"step {step} is at or below the newest valid checkpoint, step "
                f"{self.floor}, in {self.where}: resume from it "
                f"(`await cp.load_latest(...)`) and save step {self.floor + 1} or later"
            )

    def next_step(self) -> int:
        """The step after everything saved or found (for ``write()``)."""
        return max(s for s in (-1, self.last_saved, self.floor) if s is not None) + 1

    def saved(self, step: int) -> None:
        self.last_saved = step

    def committed(self, step: int) -> None:
        self.last_committed = step
        self.raise_floor(step)

    def raise_floor(self, step: int) -> None:
        """A valid checkpoint at ``step`` was seen."""
        self.floor = step if self.floor is None else max(self.floor, step)

    def found_newest(self, step: int | None) -> None:
        """A read found ``step`` to be the newest checkpoint that verifies (None: none
        does): everything above it was invalid or bad, so it is the floor now."""
        self.floor = step
        if self.last_committed is not None:
            self.raise_floor(self.last_committed)

    def skip(self, bad: Bad) -> None:
        """A read found the checkpoint ``bad`` not to verify."""
        self.bad.add(bad)
