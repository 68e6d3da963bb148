"""What ``asynccp bench`` shows: its result document as tables or a figure.

:func:`asynccp.cli._bench.run` returns a plain dict (the ``--json`` document); this
module only reads it. :func:`render_text` prints plain tables (for logs, or without rich),
:func:`render_rich` the same tables on a terminal, :func:`plot` stall and throughput
against payload size (with matplotlib). Keeping them apart from the engine keeps rich
and matplotlib out of the measurement (both are imported only inside the functions
that draw), and lets a saved document be shown again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._bench import KINDS, MiB
from ._format import fmt_size, table

__all__ = ["plot", "render_rich", "render_text"]


#: The columns of the main table (:func:`_rows`).
_HEAD = ["payload", "measure", "asynccp", "baseline", "ratio"]


def _rows(doc: dict[str, Any]) -> Iterator[list[str]]:
    """The main table, a few rows per case: measure, asynccp, baseline, ratio."""
    for c in doc["cases"]:
        label = f"{c['kind']} {fmt_size(c['size'])}"
        if c["kind"] == "files":
            label += f" ({c['files']} files)"
        s = c["stall_ms"]
        yield [
            label,
            "caller stall",
            f"{s['asynccp']:.3f} ms",
            f"sync write {s['sync_write']:.1f} ms",
            f"{s['ratio'] * 100:.2f} %",
        ]
        if "memory_copy" in s:
            yield [
                "",
                "",
                "",
                f"memory copy {s['memory_copy']:.1f} ms",
                f"{s['ratio_to_copy']:.2f} x",
            ]
        t = c["throughput_mib_s"]
        yield [
            "",
            "committed throughput",
            f"{t['asynccp']:.0f} MiB/s",
            f"raw puts {t['raw_obstore']:.0f} MiB/s",
            f"{t['ratio'] * 100:.0f} %",
        ]
        r = c["restore_mib_s"]
        yield [
            "",
            "restore throughput",
            f"{r['asynccp']:.0f} MiB/s",
            f"raw gets {r['raw_obstore']:.0f} MiB/s",
            f"{r['ratio'] * 100:.0f} %",
        ]
        la, ls = c["loop_lag_ms"]["asynccp"], c["loop_lag_ms"]["sync_writer"]
        yield [
            "",
            "loop lag p50 / p99",
            f"{la['p50']:.2f} / {la['p99']:.2f} ms",
            f"sync writer {ls['p50']:.1f} / {ls['p99']:.1f} ms",
            "",
        ]
    small = doc.get("small_saves")
    if small:
        yield [
            f"16 B x {small['saves']}",
            "saves per second (latest)",
            f"{small['asynccp_saves_per_s']:,.0f}/s",
            f"sync writes {small['sync_writes_per_s']:,.0f}/s",
            f"{small['ratio']:.1f} x",
        ]
    mem = doc.get("memory")
    if mem:
        yield [
            f"bytearray {fmt_size(mem['size'])} x {mem['saves']}",
            "peak RSS growth",
            f"{mem['growth_mib']:.0f} MiB",
            f"max_pending_bytes {mem['max_pending_bytes'] / MiB:.0f} MiB",
            f"peak {mem['peak_rss_mib']:.0f} MiB",
        ]


def _summary(doc: dict[str, Any]) -> list[str]:
    """The lines above the tables: what was measured, where, on what machine."""
    m = doc["machine"]
    return [
        f"asynccp {m['asynccp']} on {doc['location']['kind']} {doc['location']['description']}",
        f"machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, obstore {m['obstore']}; {doc['seconds']} s; "
        f"medians of {doc['options']['rounds']} interleaved rounds",
    ]


def _target_rows(doc: dict[str, Any]) -> Iterator[list[str]]:
    """The targets table: target, measured value, goal, met or MISSED."""
    for t in doc["targets"]:
        unit = t["unit"]
        if unit == "x" and t["limit"] < 1:
            val, lim = f"{t['value'] * 100:.2f} %", f"{t['limit'] * 100:.0f} %"
        elif unit == "x":
            val, lim = f"{t['value']:.2f} x", f"{t['limit']:g} x"
        else:
            val, lim = f"{t['value']:.1f} {unit}", f"{t['limit']:.0f} {unit}"
        op = (
            "<="
            if ("stall" in t["target"] or "lag" in t["target"] or "RSS" in t["target"])
            else ">="
        )
        yield [t["target"], val, f"{op} {lim}", "met" if t["met"] else "MISSED"]


def render_text(doc: dict[str, Any]) -> str:
    """Plain-text tables (when rich is not installed, or for logs)."""
    targets_head = ["target", "measured", "goal", ""]
    return "\n".join(
        [
            *_summary(doc),
            "",
            "asynccp bench",
            "",
            table(_HEAD, list(_rows(doc)), rule=True),
            "",
            "targets",
            "",
            table(targets_head, list(_target_rows(doc)), rule=True),
        ]
    )


def render_rich(doc: dict[str, Any], console: Any) -> None:
    """The same tables as :func:`render_text`, on a rich console (misses in red)."""
    from rich.table import Table

    for line in _summary(doc):
        console.print(line, highlight=False)
    t = Table(*_HEAD, title="asynccp bench", title_justify="left")
    for col in t.columns[2:]:
        col.justify = "right"
    last = None
    for row in _rows(doc):
        if row[0] and last is not None:
            t.add_section()
        last = row
        t.add_row(*row)
    console.print(t)
    tt = Table("target", "measured", "goal", "", title="targets", title_justify="left")
    for row in _target_rows(doc):
        style = "green" if row[3] == "met" else "bold red"
        tt.add_row(*row[:3], f"[{style}]{row[3]}[/]")
    console.print(tt)


#: The lines :func:`plot` draws for each payload kind: the panel (0: stall, 1:
#: throughput), the measure and series in a case, line style, opacity, legend label.
_LINES: tuple[tuple[int, str, str, str, float | None, str], ...] = (
    (0, "stall_ms", "asynccp", "o-", None, "asynccp save ({kind})"),
    (0, "stall_ms", "sync_write", "s--", 0.6, "sync write ({kind})"),
    (0, "stall_ms", "memory_copy", "^:", 0.6, "memory copy ({kind})"),  # bytearray only
    (1, "throughput_mib_s", "asynccp", "o-", None, "asynccp ({kind})"),
    (1, "throughput_mib_s", "raw_obstore", "s--", 0.6, "raw obstore puts ({kind})"),
)


def plot(doc: dict[str, Any], path: str) -> None:
    """Stall and throughput against payload size, asynccp beside its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = sorted({c["kind"] for c in doc["cases"]}, key=KINDS.index)
    colors = dict(zip(KINDS, ["C0", "C1", "C2", "C3"], strict=True))
    for kind in kinds:
        cs = sorted((c for c in doc["cases"] if c["kind"] == kind), key=lambda c: c["size"])
        x = [c["size"] / MiB for c in cs]
        for panel, measure, series, style, alpha, label in _LINES:
            if series == "memory_copy" and kind != "bytearray":
                continue
            (ax1, ax2)[panel].plot(
                x,
                [c[measure][series] for c in cs],
                style,
                color=colors[kind],
                alpha=alpha,
                label=label.format(kind=kind),
            )
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="payload size (MiB)",
        ylabel="caller stall (ms)",
        title="caller stall per save",
    )
    ax2.set(
        xscale="log",
        xlabel="payload size (MiB)",
        ylabel="MiB/s",
        title="committed write throughput",
    )
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"asynccp bench — {doc['location']['kind']}, {doc['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
