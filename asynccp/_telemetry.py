"""What a checkpointer does, as OpenTelemetry metrics and spans (when the API is there).

asynccp talks to the OpenTelemetry *API* only, imported lazily: with it installed and a
meter or tracer provider configured by the application (the SDK, an exporter: the
application's choice, never forced), every checkpointer records

- counters ``asynccp.saves``, ``asynccp.commits``, ``asynccp.failures``,
  ``asynccp.superseded`` (checkpoints) and ``asynccp.bytes.saved``,
  ``asynccp.bytes.committed`` (bytes);
- histograms ``asynccp.save.stall`` (seconds ``save()`` held its caller) and
  ``asynccp.commit.duration`` (seconds from the start of a checkpoint's upload to its
  commit);
- an observable gauge ``asynccp.queue.depth`` (checkpoints staged, not yet committed);
- spans ``asynccp.commit`` (one checkpoint's upload and commit) and ``asynccp.restore``
  (``load_latest``, ``read``, ``restore``),

each with the attributes ``asynccp.location`` and ``asynccp.writer``. Without the API
nothing is recorded and nothing else changes; with the API but no SDK configured, the
API's own no-op providers make every call free.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Telemetry"]

#: The queue depth of every live checkpointer, read by the one observable gauge.
_depths: weakref.WeakSet[Telemetry] = weakref.WeakSet()
_gauge_registered = False


class Telemetry:
    """One checkpointer's instruments, or no-ops when the OpenTelemetry API is missing."""

    def __init__(self, location: str, writer: str, depth: Callable[[], int]) -> None:
        self.attributes: dict[str, str] = {"asynccp.location": location, "asynccp.writer": writer}
        self._depth = depth
        self._counters: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}
        self._tracer: Any = None
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            return
        from . import __version__

        meter = metrics.get_meter("asynccp", __version__)
        for name, unit, what in (
            ("saves", "{checkpoint}", "Checkpoints staged by save()"),
            ("commits", "{checkpoint}", "Checkpoints committed"),
            ("failures", "{checkpoint}", "Checkpoints that failed to upload or commit"),
            ("superseded", "{checkpoint}", "Checkpoints dropped for a newer one before upload"),
            ("bytes.saved", "By", "Bytes staged by save()"),
            ("bytes.committed", "By", "Bytes committed"),
        ):
            self._counters[name] = meter.create_counter(
                f"asynccp.{name}", unit=unit, description=what
            )
        for name, what in (
            ("save.stall", "Seconds save() held its caller"),
            ("commit.duration", "Seconds from a checkpoint's upload start to its commit"),
        ):
            self._histograms[name] = meter.create_histogram(
                f"asynccp.{name}", unit="s", description=what
            )
        _register_gauge(meter)
        _depths.add(self)
        self._tracer = trace.get_tracer("asynccp", __version__)

    def saved(self, size: int, stall: float) -> None:
        """``save()`` staged ``size`` bytes, holding its caller ``stall`` seconds."""
        self._add("saves", 1)
        self._add("bytes.saved", size)
        self._record("save.stall", stall)

    def committed(self, size: int, seconds: float) -> None:
        """A checkpoint of ``size`` bytes committed, ``seconds`` after its upload began."""
        self._add("commits", 1)
        self._add("bytes.committed", size)
        self._record("commit.duration", seconds)

    def failed(self) -> None:
        """A checkpoint failed to upload or commit."""
        self._add("failures", 1)

    def superseded(self) -> None:
        """A checkpoint was dropped for a newer one before its upload."""
        self._add("superseded", 1)

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A span around the block (an error in it is recorded on the span)."""
        if self._tracer is None:
            yield
            return
        attrs = {**self.attributes, **{f"asynccp.{k}": v for k, v in attributes.items()}}
        with self._tracer.start_as_current_span(name, attributes=attrs):
            yield

    def open_span(self, name: str, **attributes: Any) -> Callable[[BaseException | None], None]:
        """Start a span that is not the current one (several side by side: a group of
        checkpoints committed together); call what this returns, with the error if
        there was one, to end it."""
        if self._tracer is None:
            return lambda error: None
        attrs = {**self.attributes, **{f"asynccp.{k}": v for k, v in attributes.items()}}
        span = self._tracer.start_span(name, attributes=attrs)

        def end(error: BaseException | None) -> None:
            if error is not None:
                from opentelemetry.trace import Status, StatusCode

                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

        return end

    def _add(self, name: str, value: int) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.add(value, self.attributes)

    def _record(self, name: str, value: float) -> None:
        histogram = self._histograms.get(name)
        if histogram is not None:
            histogram.record(value, self.attributes)


def _register_gauge(meter: Any) -> None:
    """One observable gauge for the process, reading every live checkpointer's queue."""
    global _gauge_registered
    if _gauge_registered:
        return
    from opentelemetry.metrics import Observation

    def observe(_options: Any) -> list[Any]:
        return [Observation(t._depth(), t.attributes) for t in list(_depths)]

    meter.create_observable_gauge(
        "asynccp.queue.depth",
        callbacks=[observe],
        unit="{checkpoint}",
        description="Checkpoints staged and not yet committed",
    )
    _gauge_registered = True
