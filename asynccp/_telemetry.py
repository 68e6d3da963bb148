"""What asynccp does, as OpenTelemetry metrics and spans (when the API is there).

asynccp talks to the OpenTelemetry *API* only, imported lazily: with it installed and a
meter or tracer provider configured by the application (the SDK, an exporter: the
application's choice, never forced), every checkpointer records (:class:`Telemetry`)

- counters ``asynccp.saves``, ``asynccp.commits``, ``asynccp.failures``,
  ``asynccp.superseded`` (checkpoints) and ``asynccp.bytes.saved``,
  ``asynccp.bytes.committed`` (bytes);
- histograms ``asynccp.save.stall`` (seconds ``save()`` held its caller) and
  ``asynccp.commit.duration`` (seconds from the start of a checkpoint's upload to its
  commit);
- an observable gauge ``asynccp.queue.depth`` (checkpoints staged, not yet committed);
- spans ``asynccp.commit`` (one checkpoint's upload and commit) and ``asynccp.restore``
  (``load_latest``, ``read``, ``restore``),

each with the attributes ``asynccp.location`` and ``asynccp.writer``; and every autosave
(:class:`AutosaveTelemetry`, through the providers it was given or the global ones)

- counters ``asynccp.autosave.saves``, ``.skips``, ``.failures``, ``.replaced``;
- a histogram ``asynccp.autosave.duration`` (seconds from reading the state to the
  commit);
- spans ``asynccp.autosave.save`` and ``asynccp.autosave.restore``,

each with the attribute ``asynccp.location``. Without the API nothing is recorded and
nothing else changes; with the API but no SDK configured, the API's own no-op
providers make every call free.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

__all__ = ["AutosaveTelemetry", "EndSpan", "Instruments", "Telemetry"]

#: The queue depth of every live checkpointer, read by the one observable gauge.
_depths: weakref.WeakSet[Telemetry] = weakref.WeakSet()
_gauge_registered = False

_CHECKPOINT = "{checkpoint}"


class EndSpan(Protocol):
    """Ends a span :meth:`Instruments.open_span` started: with the error, if there was
    one, and attributes learnt meanwhile."""

    def __call__(self, error: BaseException | None = None, /, **attributes: Any) -> None: ...


class Instruments:
    """Counters, histograms (in seconds) and a tracer of the ``asynccp`` scope, each point
    carrying ``attributes``; no-ops when the OpenTelemetry API is missing.

    ``counters`` are ``(name, unit, description)``, ``histograms`` ``(name,
    description)``; an instrument is called ``prefix + name``. The providers default to
    the global ones.
    """

    def __init__(
        self,
        prefix: str,
        attributes: dict[str, str],
        counters: Iterable[tuple[str, str, str]],
        histograms: Iterable[tuple[str, str]],
        *,
        meter_provider: Any = None,
        tracer_provider: Any = None,
    ) -> None:
        self.attributes = attributes
        self._counters: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}
        self._tracer: Any = None
        #: The meter (None without the API).
        self.meter: Any = None
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            return
        from . import __version__

        meter = metrics.get_meter("asynccp", __version__, meter_provider=meter_provider)
        for name, unit, what in counters:
            self._counters[name] = meter.create_counter(
                f"{prefix}{name}", unit=unit, description=what
            )
        for name, what in histograms:
            self._histograms[name] = meter.create_histogram(
                f"{prefix}{name}", unit="s", description=what
            )
        self._tracer = trace.get_tracer("asynccp", __version__, tracer_provider=tracer_provider)
        self.meter = meter

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A span around the block (an error in it is recorded on the span)."""
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name, attributes=self._attrs(attributes)):
            yield

    def open_span(self, name: str, *, start_ns: int | None = None, **attributes: Any) -> EndSpan:
        """Start a span that is not the current one (several side by side: a group of
        checkpoints committed together; or one that began at ``start_ns``, before it
        was known to be worth one); call what this returns to end it."""
        if self._tracer is None:
            return _no_span
        span = self._tracer.start_span(
            name, start_time=start_ns, attributes=self._attrs(attributes)
        )

        def end(error: BaseException | None = None, /, **attributes: Any) -> None:
            for key, value in attributes.items():
                span.set_attribute(f"asynccp.{key}", value)
            if error is not None:
                from opentelemetry.trace import Status, StatusCode

                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

        return end

    def _attrs(self, attributes: dict[str, Any]) -> dict[str, Any]:
        return {**self.attributes, **{f"asynccp.{k}": v for k, v in attributes.items()}}

    def _add(self, name: str, value: int) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.add(value, self.attributes)

    def _record(self, name: str, value: float) -> None:
        histogram = self._histograms.get(name)
        if histogram is not None:
            histogram.record(value, self.attributes)


def _no_span(error: BaseException | None = None, /, **attributes: Any) -> None:
    """What ends a span when there is no tracer: nothing."""


class Telemetry(Instruments):
    """One checkpointer's instruments."""

    def __init__(self, location: str, writer: str, depth: Callable[[], int]) -> None:
        super().__init__(
            "asynccp.",
            {"asynccp.location": location, "asynccp.writer": writer},
            (
                ("saves", _CHECKPOINT, "Checkpoints staged by save()"),
                ("commits", _CHECKPOINT, "Checkpoints committed"),
                ("failures", _CHECKPOINT, "Checkpoints that failed to upload or commit"),
                ("superseded", _CHECKPOINT, "Checkpoints dropped for a newer one before upload"),
                ("bytes.saved", "By", "Bytes staged by save()"),
                ("bytes.committed", "By", "Bytes committed"),
            ),
            (
                ("save.stall", "Seconds save() held its caller"),
                ("commit.duration", "Seconds from a checkpoint's upload start to its commit"),
            ),
        )
        self._depth = depth
        if self.meter is not None:
            _register_gauge(self.meter)
            _depths.add(self)

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


class AutosaveTelemetry(Instruments):
    """One autosave's instruments (and its lifespan's restore span)."""

    def __init__(self, location: str, meter_provider: Any, tracer_provider: Any) -> None:
        super().__init__(
            "asynccp.autosave.",
            {"asynccp.location": location},
            (
                ("saves", _CHECKPOINT, "Autosaves committed"),
                ("skips", _CHECKPOINT, "Autosaves skipped: the state had not changed"),
                ("failures", _CHECKPOINT, "Autosaves that failed (state callable, save or upload)"),
                (
                    "replaced",
                    _CHECKPOINT,
                    "Autosaves replaced by a newer state before they were uploaded",
                ),
            ),
            (("duration", "Time from reading the state to the commit of an autosave"),),
            meter_provider=meter_provider,
            tracer_provider=tracer_provider,
        )

    def committed(self, seconds: float) -> None:
        """An autosave committed, ``seconds`` after its state was read."""
        self._add("saves", 1)
        self._record("duration", seconds)

    def skipped(self) -> None:
        """The state had not changed: not saved."""
        self._add("skips", 1)

    def failed(self) -> None:
        """An autosave failed (the state callable, the save or the upload)."""
        self._add("failures", 1)

    def replaced(self) -> None:
        """An autosave was replaced by a newer state before its upload."""
        self._add("replaced", 1)


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
