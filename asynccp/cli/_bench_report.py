"""What ``asynccp bench`` shows: its result document as tables, a verdict, a figure.

:func:`asynccp.cli._bench.run` returns a plain dict (the ``--json`` document); this
module only reads it. :func:`render_text` prints plain tables (for logs, or without
rich), :func:`render_rich` the same tables on a terminal, :func:`verdict` the closing
line, :func:`plot` stall and throughput against payload size (with matplotlib). Keeping
them apart from the engine keeps rich and matplotlib out of the measurement (both are
imported only inside the functions that draw), and lets a saved document be shown again.

Every figure goes through :func:`~asynccp.cli._format.fmt_num`: one with no samples
prints ``n/a``, never ``0.0 ms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ._bench_options import KINDS, MiB
from ._format import NA, fmt_ms, fmt_num, fmt_size, table

__all__ = ["RATIO_NOTE", "figure", "plot", "render_rich", "render_text", "verdict"]


#: The columns of the main table (:func:`_rows`).
_HEAD = ["payload", "measure", "asynccp", "baseline", "median ratio (range)"]

#: What the last column is (printed under the table).
RATIO_NOTE = (
    "median ratio: asynccp / baseline within each round (the two run back to back), "
    "the median over the rounds; it need not equal the ratio of the two medians shown; "
    "(range): the lowest and highest round's ratio, this machine's noise"
)


def _spread(d: dict[str, Any], key: str, spec: str, unit: str, scale: float = 1.0) -> str:
    """A figure and its range over the rounds: ``0.93 x (0.81-1.02)``; ``n/a``."""
    text = fmt_num(d.get(key), spec, unit, scale=scale)
    low, high = d.get(f"{key}_low"), d.get(f"{key}_high")
    if low is None or high is None or d.get(key) is None:
        return text
    return f"{text} ({fmt_num(low, spec, '', scale=scale)}-{fmt_num(high, spec, '', scale=scale)})"


#: The throughput rows of a case: its figures, the measure, the raw baseline.
_RATES = (
    ("throughput_mib_s", "committed throughput", "raw puts"),
    ("restore_mib_s", "restore throughput", "raw gets"),
)


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
            fmt_ms(s["asynccp"]),
            f"sync write {fmt_ms(s['sync_write'])}",
            _spread(s, "ratio", ".2f", " %", scale=100),
        ]
        if "memory_copy" in s:
            yield [
                "",
                "",
                "",
                f"memory copy {fmt_ms(s['memory_copy'])}",
                _spread(s, "ratio_to_copy", ".2f", " x"),
            ]
        for key, measure, baseline in _RATES:
            t = c[key]
            yield [
                "",
                measure,
                fmt_num(t["asynccp"], ".0f", " MiB/s"),
                f"{baseline} {fmt_num(t['raw_obstore'], '.0f', ' MiB/s')}",
                _spread(t, "ratio", ".0f", " %", scale=100),
            ]
        la, ls = c["loop_lag_ms"]["asynccp"], c["loop_lag_ms"]["sync_writer"]
        yield [
            "",
            "loop lag p50 / p99",
            _pair(la),
            f"sync writer {_pair(ls)}",
            _p99_range(la),
        ]
    for key in ("small_saves", "small_block_saves"):
        small = doc.get(key)
        if small:
            yield [
                f"16 B x {small['saves']}",
                f"saves per second ({small['policy']})",
                fmt_num(small["asynccp_saves_per_s"], ",.0f", "/s"),
                f"sync writes {fmt_num(small['sync_writes_per_s'], ',.0f', '/s')}",
                _spread(small, "ratio", ".2f", " x"),
            ]
    mem = doc.get("memory")
    if mem:
        peak = fmt_num(mem["peak_rss_mib"], ".0f", " MiB")
        yield [
            f"bytearray {fmt_size(mem['size'])} x {mem['saves']}",
            "peak RSS growth",
            f"{fmt_num(mem['growth_mib'], '.0f', ' MiB')} (peak {peak})",
            f"max_pending_bytes {mem['max_pending_bytes'] / MiB:.0f} MiB",
            "",
        ]


def _pair(lag: dict[str, Any]) -> str:
    """``"p50 / p99 ms"`` of a loop-lag summary; ``n/a`` when the ticker never ticked."""
    if lag["p50"] is None or lag["p99"] is None:
        return NA
    return f"{fmt_ms(lag['p50'], '')} / {fmt_ms(lag['p99'])}"


def _p99_range(lag: dict[str, Any]) -> str:
    """The range of the per-round p99 loop lags (empty when unknown)."""
    low, high = lag.get("p99_low"), lag.get("p99_high")
    if low is None or high is None:
        return ""
    return f"p99 by round {fmt_ms(low, '')}-{fmt_ms(high)}"


def _summary(doc: dict[str, Any]) -> list[str]:
    """The lines above the tables: what was measured, where, on what machine."""
    m = doc["machine"]
    return [
        f"asynccp {m['asynccp']} on {doc['location']['kind']} {doc['location']['description']}",
        f"machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, obstore {m['obstore']}; {doc['seconds']} s; "
        f"figures are medians of {doc['options']['rounds']} to "
        f"{doc['options'].get('max_rounds', doc['options']['rounds'])} interleaved rounds "
        "(more while a new round widens the range)",
    ]


def _target_rows(doc: dict[str, Any]) -> Iterator[list[str]]:
    """The targets table: target, measured value (its range), goal, the judgement."""
    for t in doc["targets"]:
        unit = t["unit"]
        if unit == "x" and t["limit"] < 1:
            spec, suffix, scale, lim = ".2f", " %", 100.0, f"{t['limit'] * 100:.0f} %"
        elif unit == "x":
            spec, suffix, scale, lim = ".2f", " x", 1.0, f"{t['limit']:g} x"
        elif unit == "ms":
            spec, suffix, scale, lim = ".1f", " ms", 1.0, f"{t['limit']:g} ms"
        else:
            spec, suffix, scale, lim = ".1f", f" {unit}", 1.0, f"{t['limit']:.0f} {unit}"
        val = _spread(
            {"v": t["value"], "v_low": t.get("low"), "v_high": t.get("high")},
            "v",
            spec,
            suffix,
            scale,
        )
        if t.get("low") == t.get("high"):
            val = fmt_num(t["value"], spec, suffix, scale=scale)
        yield [t["target"], val, f"{t['op']} {lim}", _status(t)]


def _status(target: dict[str, Any]) -> str:
    """``met`` (the whole range), ``MISSED`` (the whole range), ``within noise`` (the
    goal inside the range), or ``no samples`` (missed: nothing shows it is met)."""
    if target["value"] is None:
        return "no samples"
    status = target.get("status", "met" if target["met"] else "missed")
    return {"met": "met", "missed": "MISSED", "noise": "within noise"}[status]


def verdict(doc: dict[str, Any], fail_on_miss: bool) -> tuple[str, int]:
    """The closing line (targets met or missed, and the exit code) and that exit code.

    A missed target is a finding, not a failure of the command: the exit code is 0
    unless ``--fail-on-miss`` asked for 1 on a miss.
    """
    total = len(doc["targets"])
    missed = [t for t in doc["targets"] if not t["met"]]
    noise = [t for t in doc["targets"] if t.get("status") == "noise"]
    code = 1 if missed and fail_on_miss else 0
    if not missed and not noise:
        return f"verdict: all {total} targets met; exit code 0", 0
    if not missed:
        return (
            f"verdict: no target missed: {total - len(noise)} met, {len(noise)} within "
            "noise (the goal inside the range of the rounds); exit code 0",
            0,
        )
    unmeasured = sum(1 for t in missed if t["value"] is None)
    detail = f", {unmeasured} of them without samples" if unmeasured else ""
    policy = "--fail-on-miss" if fail_on_miss else "a miss exits 1 only with --fail-on-miss"
    within = f", {len(noise)} within noise" if noise else ""
    return (
        f"verdict: {len(missed)} of {total} targets missed (the whole range of the rounds)"
        f"{detail}{within}; exit code {code} ({policy})",
        code,
    )


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
            RATIO_NOTE,
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
    t.caption = RATIO_NOTE
    t.caption_justify = "left"
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
    """Stall and throughput against payload size, asynccp beside its baselines, saved
    to ``path`` (PNG, or whatever its suffix names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(doc)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(doc: dict[str, Any]) -> Any:
    """The matplotlib figure :func:`plot` saves (the caller closes it)."""
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
    for axis in (ax1.xaxis, ax1.yaxis, ax2.xaxis):
        _plain_log_ticks(axis)
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"asynccp bench — {doc['location']['kind']}, {doc['machine']['cpus']} CPUs")
    fig.tight_layout()
    return fig


def _plain(value: float) -> str:
    """A tick value as people write it: ``2``, ``0.05``, ``1000`` (not ``2 x 10^0``)."""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text if text not in ("", "0", "-0") else f"{value:g}"


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis with plain numbers: every power of ten, and in between 2 and 5
    (or every minor tick when the view spans less than a decade) unless the view spans
    more than two decades, where the in-between labels would crowd.

    matplotlib's default log formatter writes ``10^0`` and, on short axes, ``2 x 10^0``.
    """
    from matplotlib.ticker import FuncFormatter

    def major(value: float, _pos: int | None) -> str:
        return _plain(value)

    def minor(value: float, _pos: int | None) -> str:
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0:
            return ""
        decades = math.log10(high / low)
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
        if decades <= 1 or (decades <= 2 and mantissa in (2, 5)):
            return _plain(value)
        return ""

    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor))
