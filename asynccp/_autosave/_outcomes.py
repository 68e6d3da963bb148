"""What became of each autosave: counted (:class:`AutosaveStats`), logged with
structured fields, recorded as telemetry; the give-up after ``max_failures`` in a row.

Log records carry ``extra=`` fields a log pipeline can index: ``event``, ``step``,
``location``, ``writer``, ``duration`` (seconds) and ``failures`` (in a row).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._checkpointer import Checkpointer
from .._telemetry import AutosaveTelemetry, EndSpan
from ..errors import AutosaveError
from ._options import AutosaveOptions

__all__ = ["AutosaveStats", "Outcomes", "log", "log_fields"]

log = logging.getLogger("asynccp")


@dataclass(frozen=True)
class AutosaveStats:
    """What an :class:`Autosave` has done so far (a snapshot)."""

    #: Autosaves committed.
    saves: int
    #: Times the state was found unchanged and not saved.
    skips: int
    #: Failed autosaves (the state callable raised, or the save or upload failed).
    failures: int
    #: Failures since the last commit; the autosave gives up at ``max_failures``.
    consecutive_failures: int
    #: Autosaves replaced by a newer state: dropped while waiting for room, or
    #: superseded in the queue (``policy="latest"``).
    replaced: int
    #: Autosaves staged in the checkpointer and not yet committed or failed.
    pending: int
    #: Step of the newest committed autosave (None before the first).
    last_step: int | None
    #: Changes reported through :meth:`Autosave.changed`.
    changes: int
    #: The ``changes`` count when the state of the newest committed autosave was read:
    #: every change reported before that is in the store.
    changes_committed: int
    #: The newest failure (None if there was none).
    last_error: BaseException | None


def log_fields(
    cp: Checkpointer, event: str, step: int | None, duration: float | None, failures: int
) -> dict[str, Any]:
    """The structured fields of an autosave's log record (``extra=``)."""
    return {
        "event": event,
        "step": step,
        "location": cp.location,
        "writer": cp.writer_id,
        "duration": duration,
        "failures": failures,
    }


class Outcomes:
    """One autosave's counts, log records and telemetry."""

    def __init__(self, cp: Checkpointer, options: AutosaveOptions) -> None:
        self._cp = cp
        self._limit = options.max_failures
        self.telemetry = AutosaveTelemetry(
            cp.location, options.meter_provider, options.tracer_provider
        )
        self.saves = self.skips = self.failures = self.consecutive = self.replaced_count = 0
        self.last_step: int | None = None
        self.last_error: BaseException | None = None

    def start(self, wall_ns: int, step: int, final: bool) -> EndSpan:
        """The span of one autosave, begun when its state was read."""
        return self.telemetry.open_span(
            "asynccp.autosave.save", start_ns=wall_ns, step=step, final=final
        )

    def stats(self, pending: int, changes: int, changes_committed: int) -> AutosaveStats:
        return AutosaveStats(  # in the order of its fields
            self.saves,
            self.skips,
            self.failures,
            self.consecutive,
            self.replaced_count,
            pending,
            self.last_step,
            changes,
            changes_committed,
            self.last_error,
        )

    def extra(self, event: str, step: int | None, duration: float | None = None) -> dict[str, Any]:
        """The structured fields of a log record (``extra=``)."""
        return log_fields(self._cp, event, step, duration, self.consecutive)

    def committed(self, step: int, size: int, started: float, end: Callable[..., None]) -> None:
        duration = time.perf_counter() - started
        self.last_step = step
        self.saves += 1
        self.consecutive = 0
        self.telemetry.committed(duration)
        end(outcome="committed", bytes=size)
        log.debug(
            "asynccp: autosaved step %d to %s in %.3f s",
            step,
            self._cp.location,
            duration,
            extra=self.extra("autosave.commit", step, duration),
        )

    def skipped(self, final: bool) -> None:
        self.skips += 1
        self.telemetry.skipped()
        log.debug(
            "asynccp: autosave to %s skipped: the state has not changed%s",
            self._cp.location,
            " (on exit)" if final else "",
            extra=self.extra("autosave.skip", None),
        )

    def replaced(self, step: int, end: Callable[..., None], *, superseded: bool) -> None:
        """An autosave was replaced by a newer state: it waited for room too long (the
        newer state is read instead), or the queue dropped it (``policy="latest"``)."""
        self.replaced_count += 1
        self.telemetry.replaced()
        end(outcome="superseded" if superseded else "replaced")
        log.debug(
            "asynccp: autosave of step %d to %s %s",
            step,
            self._cp.location,
            "was superseded by a newer one"
            if superseded
            else "waited for room; reading newer state",
            extra=self.extra("autosave.replaced", step),
        )

    def failed(
        self,
        error: BaseException,
        step: int,
        started: float,
        end: Callable[..., None],
        doing: str,
        *,
        closing: bool,
    ) -> None:
        """Log and count a failed autosave; :class:`AutosaveError` after ``max_failures``
        in a row (never while ``closing``: the exit reports its own failure)."""
        self.failures += 1
        self.consecutive += 1
        self.last_error = error
        limit = self._limit
        giving_up = limit is not None and self.consecutive >= limit and not closing
        duration = time.perf_counter() - started
        self.telemetry.failed()
        end(error, outcome="failed")
        log.log(
            logging.ERROR if giving_up or closing else logging.WARNING,
            "asynccp: autosave of step %d to %s failed while %s (%d in a row%s): %s: %s",
            step,
            self._cp.location,
            doing,
            self.consecutive,
            f", giving up at {limit}" if limit is not None and not closing else "",
            type(error).__name__,
            error,
            exc_info=error,
            extra=self.extra("autosave.failure", step, duration),
        )
        if giving_up:
            log.error(
                "asynccp: autosave to %s gave up after %d failures in a row",
                self._cp.location,
                self.consecutive,
                extra=self.extra("autosave.give_up", step),
            )
            raise AutosaveError(
                f"autosave to {self._cp.location} failed {self.consecutive} times in a row "
                f"(max_failures={limit}); the last failure: {type(error).__name__}: {error}",
                failures=self.consecutive,
            ) from error
