"""asynccp's performance targets, and a result document judged against them.

Each target is checked on the largest payload size measured; a target whose figure
has no samples (``None``) is not met: nothing shows it is.
"""

from __future__ import annotations

from typing import Any

from ._format import fmt_size

__all__ = ["TARGETS", "targets"]

#: asynccp's performance targets; each is checked on the largest payload size measured.
TARGETS = {
    "stall_bytes": 0.01,  # asynccp stall / sync write, bytes payload
    "stall_bytearray": 1.5,  # asynccp stall / memory copy, bytearray payload
    "throughput": 0.90,  # asynccp committed throughput / raw obstore puts
    "small_saves": 5.0,  # asynccp saves/s / sync writes/s, policy="latest"
    "lag_p99_ms": 5.0,  # event-loop lag p99 while large checkpoints upload
    "restore": 0.90,  # asynccp restore throughput / raw obstore gets
    "memory_slack_mib": 100,  # peak RSS growth <= max_pending_bytes + this
}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """asynccp's targets (:data:`TARGETS`), each checked on the largest size measured.

    A target whose figure has no samples (``None``) is not met: nothing shows it is.
    """
    out: list[dict[str, Any]] = []
    cases = doc["cases"]
    largest = max(c["size"] for c in cases)
    top = {c["kind"]: c for c in cases if c["size"] == largest}

    def add(name: str, value: float | None, limit: float, op: str, unit: str) -> None:
        met = value is not None and (value <= limit if op == "<=" else value >= limit)
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "unit": unit, "met": met}
        )

    def at_most(name: str, value: float | None, limit: float, unit: str = "x") -> None:
        add(name, value, limit, "<=", unit)

    def at_least(name: str, value: float | None, limit: float, unit: str = "x") -> None:
        add(name, value, limit, ">=", unit)

    size = fmt_size(largest)
    if "bytes" in top:
        r = top["bytes"]["stall_ms"]["ratio"]
        at_most(f"stall, {size} bytes / sync write", r, TARGETS["stall_bytes"])
    if "bytearray" in top:
        r = top["bytearray"]["stall_ms"]["ratio_to_copy"]
        at_most(f"stall, {size} bytearray / memory copy", r, TARGETS["stall_bytearray"])
    for kind, c in top.items():
        r = c["throughput_mib_s"]["ratio"]
        at_least(f"throughput, {size} {kind} / raw puts", r, TARGETS["throughput"])
    small = doc.get("small_saves")
    if small:
        at_least("small saves (latest) / sync writes", small["ratio"], TARGETS["small_saves"])
    for kind, c in top.items():
        p99 = c["loop_lag_ms"]["asynccp"]["p99"]
        at_most(f"loop lag p99, {size} {kind} uploading", p99, TARGETS["lag_p99_ms"], "ms")
    for kind, c in top.items():
        r = c["restore_mib_s"]["ratio"]
        at_least(f"restore, {size} {kind} / raw gets", r, TARGETS["restore"])
    mem = doc.get("memory")
    if mem:
        name = "peak RSS growth / max_pending_bytes + 100 MiB"
        at_most(name, mem["growth_mib"], mem["bound_mib"], "MiB")
    return out
