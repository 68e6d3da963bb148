"""asynccp's performance targets, and a result document judged against them.

Each target is checked on the largest payload size measured, against the spread of its
figure over the rounds (the lowest and highest per-round value): ``met`` when the whole
spread meets the goal, ``missed`` when the whole spread misses it, ``noise`` when the
goal lies within the spread (this machine's noise decides, not asynccp). A target whose
figure has no samples (``None``) is missed: nothing shows it is met.
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
    "small_block_saves": 1.0,  # the same with policy="block": every save committed
    "lag_p99_ms": 5.0,  # event-loop lag p99 while large checkpoints upload
    "restore": 0.90,  # asynccp restore throughput / raw obstore gets
    "memory_slack_mib": 100,  # peak RSS growth <= max_pending_bytes + this
}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """asynccp's targets (:data:`TARGETS`), each checked on the largest size measured.

    Each entry: the figure's median ``value``, its spread (``low``, ``high``), the goal
    (``op``, ``limit``), ``status`` (``met``, ``noise`` or ``missed``: see the module)
    and ``met`` (False only when missed).
    """
    out: list[dict[str, Any]] = []
    cases = doc["cases"]
    largest = max(c["size"] for c in cases)
    top = {c["kind"]: c for c in cases if c["size"] == largest}

    def add(name: str, figure: tuple[Any, Any, Any], limit: float, op: str, unit: str) -> None:
        value, low, high = figure
        low = value if low is None else low
        high = value if high is None else high

        def ok(x: float) -> bool:
            return x <= limit if op == "<=" else x >= limit

        if value is None:
            status = "missed"
        elif ok(low) and ok(high):
            status = "met"
        elif not ok(low) and not ok(high):
            status = "missed"
        else:
            status = "noise"
        out.append(
            {
                "target": name,
                "value": value,
                "low": low,
                "high": high,
                "op": op,
                "limit": limit,
                "unit": unit,
                "status": status,
                "met": status != "missed",
            }
        )

    def fig(d: dict[str, Any], key: str = "ratio") -> tuple[Any, Any, Any]:
        return d.get(key), d.get(f"{key}_low"), d.get(f"{key}_high")

    size = fmt_size(largest)
    if "bytes" in top:
        add(f"stall, {size} bytes / sync write", fig(top["bytes"]["stall_ms"]),
            TARGETS["stall_bytes"], "<=", "x")  # fmt: skip
    if "bytearray" in top:
        add(f"stall, {size} bytearray / memory copy",
            fig(top["bytearray"]["stall_ms"], "ratio_to_copy"), TARGETS["stall_bytearray"],
            "<=", "x")  # fmt: skip
    for kind, c in top.items():
        add(f"throughput, {size} {kind} / raw puts", fig(c["throughput_mib_s"]),
            TARGETS["throughput"], ">=", "x")  # fmt: skip
    small = doc.get("small_saves")
    if small:
        add("small saves (latest) / sync writes", fig(small), TARGETS["small_saves"], ">=", "x")
    block = doc.get("small_block_saves")
    if block:
        add("small saves (block, every one committed) / sync writes", fig(block),
            TARGETS["small_block_saves"], ">=", "x")  # fmt: skip
    for kind, c in top.items():
        add(f"loop lag p99, {size} {kind} uploading", fig(c["loop_lag_ms"]["asynccp"], "p99"),
            TARGETS["lag_p99_ms"], "<=", "ms")  # fmt: skip
    for kind, c in top.items():
        add(f"restore, {size} {kind} / raw gets", fig(c["restore_mib_s"]),
            TARGETS["restore"], ">=", "x")  # fmt: skip
    mem = doc.get("memory")
    if mem:
        name = "peak RSS growth / max_pending_bytes + 100 MiB"
        add(name, (mem["growth_mib"], None, None), mem["bound_mib"], "<=", "MiB")
    return out
