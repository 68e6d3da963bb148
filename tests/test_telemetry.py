"""A checkpointer's OpenTelemetry metrics and spans, read with the SDK's in-memory reader.

OpenTelemetry's global providers can be set once per process, so each case runs in a
fresh process that configures the SDK as an application would, works with a
checkpointer, and prints what was recorded as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel test extra is not installed")

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import anyio
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)

    import asynccp

    async def main(location):
        limits = asynccp.Limits(max_pending=2, policy="latest")
        async with asynccp.Checkpointer(location, limits=limits) as cp:
            # one uploading, one waiting (policy="latest" keeps a slot for it): the
            # saves after it supersede the one waiting
            handles = [await cp.save(step, b"x" * 1000) for step in range(6)]
            await cp.flush()
            stats = cp.stats
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = await cp.load_latest(lambda c: c.read())
        return stats, found[0].step

    stats, resumed = anyio.run(main, sys.argv[1])
    points = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    value = getattr(p, "value", None)
                    if value is None:
                        value = {"count": p.count, "sum": p.sum}
                    points[m.name] = {"value": value, "attributes": dict(p.attributes)}
    print(json.dumps({
        "stats": {
            "saves": stats.saves, "committed": stats.committed,
            "superseded": stats.superseded, "bytes_committed": stats.bytes_committed,
        },
        "metrics": points,
        "spans": sorted({s.name for s in spans.get_finished_spans()}),
        "commit_spans": [dict(s.attributes) for s in spans.get_finished_spans()
                         if s.name == "asynccp.commit"],
    }))
    """
)


def run(script: str, location: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, str(location)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_metrics_and_spans_match_what_the_checkpointer_did(tmp_path: Path) -> None:
    proc = run(SCRIPT, tmp_path / "loc")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    stats, metrics = doc["stats"], doc["metrics"]
    assert metrics["asynccp.saves"]["value"] == 6
    assert metrics["asynccp.commits"]["value"] == stats["committed"] >= 1
    assert metrics["asynccp.superseded"]["value"] == stats["superseded"]
    assert stats["committed"] + stats["superseded"] == 6
    assert metrics["asynccp.bytes.saved"]["value"] == 6000
    assert metrics["asynccp.bytes.committed"]["value"] == stats["bytes_committed"]
    assert metrics["asynccp.save.stall"]["value"]["count"] == 6
    assert metrics["asynccp.commit.duration"]["value"]["count"] == stats["committed"]
    assert metrics["asynccp.queue.depth"]["value"] == 0  # read after the flush
    attrs = metrics["asynccp.saves"]["attributes"]
    assert attrs["asynccp.location"] == str(tmp_path / "loc")
    assert len(attrs["asynccp.writer"]) == 12
    assert doc["spans"] == ["asynccp.commit", "asynccp.restore"]
    assert len(doc["commit_spans"]) == stats["committed"]
    assert all(s["asynccp.bytes"] == 1000 for s in doc["commit_spans"])
    assert "asynccp.failures" not in metrics  # nothing failed: no point recorded


WITHOUT_API = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # as if not installed: every import of it fails
    import anyio, asynccp

    async def main(location):
        async with asynccp.Checkpointer(location) as cp:
            await (await cp.save(0, b"x"))
            found = await cp.load_latest(lambda c: c.read())
        print(cp.stats.committed, found[1].decode())

    anyio.run(main, sys.argv[1])
    """
)


def test_without_the_api_nothing_changes(tmp_path: Path) -> None:
    proc = run(WITHOUT_API, tmp_path / "loc")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "x"]
