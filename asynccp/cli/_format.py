"""Text for people: byte sizes, figures, step lists, one-line error messages, plain-text
tables; and a command's output on stdout, for people or as one JSON document.

Shared by the ``asynccp`` commands and the benchmark report, so that a size, an error
and a table read the same in ``asynccp ls`` as in ``asynccp bench``.
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from collections.abc import Callable, Collection, Sequence
from typing import Any

__all__ = [
    "NA",
    "clip",
    "display_width",
    "emit",
    "fmt_ms",
    "fmt_num",
    "fmt_size",
    "fmt_steps",
    "one_line",
    "parse_size",
    "table",
    "to_json",
]

#: How a figure without samples (or without a finite value) is shown.
NA = "n/a"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
}


def fmt_size(n: float) -> str:
    """``n`` bytes in the largest binary unit reached: ``"64 MiB"``, ``"1.5 GiB"``, ``"12 B"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def parse_size(text: str) -> int:
    """``"64MiB"``, ``"16m"``, ``"4096"`` -> bytes; ValueError when it is not a positive size."""
    raw = text.strip().lower().replace("_", "")
    num = raw.rstrip("kmgib")
    unit = raw[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 64MiB, 512k, 4096)") from None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit in {text!r} (use k, M, G, KiB, MiB, GiB)")
    if not math.isfinite(value) or int(value * _SIZE_UNITS[unit]) <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return int(value * _SIZE_UNITS[unit])


def fmt_num(value: float | None, spec: str, unit: str = "", *, scale: float = 1.0) -> str:
    """``value * scale`` formatted with ``spec`` and followed by ``unit``; ``n/a`` when absent.

    A figure nothing was measured for is ``None`` in a result document (or, from an
    older document, not finite): it prints as ``n/a``, never as ``0.0 ms``.
    """
    if value is None or not math.isfinite(value):
        return NA
    return f"{value * scale:{spec}}{unit}"


def fmt_ms(value: float | None, unit: str = " ms") -> str:
    """Milliseconds with about three significant digits: ``0.0213 ms``, ``35.1 ms``; ``n/a``.

    A fixed number of decimals would print a measured 0.02 ms as ``0.0 ms``, which
    reads like nothing at all; this keeps small figures visible.
    """
    if value is None or not math.isfinite(value):
        return NA
    for limit, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f"), (0.1, ".3f")):
        if abs(value) >= limit:
            return f"{value:{spec}}{unit}"
    return f"{value:.4f}{unit}"


def fmt_steps(steps: list[int], n: int = 12) -> str:
    """The first ``n`` of ``steps``, comma-separated, and how many more there are."""
    s = ", ".join(map(str, steps[:n]))
    return s + (f", … ({len(steps) - n} more)" if len(steps) > n else "")


def one_line(e: BaseException, limit: int = 400) -> str:
    """The first non-blank line of an error's message (its type when there is none).

    Store errors carry multi-line reports (the whole HTTP exchange); a command prints
    one line of at most ``limit`` characters, cut in the middle: its start says what
    failed, and its end what to do (asynccp's advice comes last, after obstore's text).
    """
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    if len(msg) <= limit:
        return msg
    head = limit // 4
    return f"{msg[:head]} ... {msg[-(limit - head - 5) :]}"


def _cells(ch: str) -> int:
    """Terminal cells one character takes: 2 for wide East Asian characters and most
    emoji (``W``, ``F``), 0 for combining marks and invisible format characters, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """How many terminal cells ``text`` takes (``len`` counts code points: ``"模型"`` is 2
    code points and 4 cells). Sequences joined by ZWJ are counted per character."""
    return sum(_cells(ch) for ch in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` terminal cells, ``…`` marking the cut."""
    if display_width(text) <= width:
        return text
    out, used = [], 1  # the ellipsis takes one cell
    for ch in text:
        used += _cells(ch)
        if used > width:
            break
        out.append(ch)
    return "".join(out) + "…"


def table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    rule: bool = False,
) -> str:
    """Columns padded to their widest cell, two spaces apart, without trailing blanks.

    Widths are display widths (:func:`display_width`), so a cell of wide characters (a
    file name in Chinese, an emoji) keeps the columns after it aligned on a terminal.

    Args:
        right: indices of the columns aligned right (numbers); the others align left.
        rule: underline the head with dashes.
    """
    widths = [max(display_width(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        cells = []
        for i, (c, w) in enumerate(zip(row, widths, strict=True)):
            pad = " " * (w - display_width(str(c)))
            cells.append(pad + str(c) if i in right else str(c) + pad)
        return "  ".join(cells).rstrip()

    lines = [fmt(head)]
    if rule:
        lines.append(fmt(["-" * w for w in widths]))
    return "\n".join([*lines, *map(fmt, rows)])


def to_json(doc: Any, **options: Any) -> str:
    """``doc`` as JSON with its characters as written (``✓``, not ``\\u2713``).

    Escaped (``ensure_ascii``, still the same JSON) only where stdout could not print
    them: a lone surrogate in a manifest's metadata, an ASCII-only stdout.
    """
    text = json.dumps(doc, ensure_ascii=False, **options)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return json.dumps(doc, **options)
    return text


def emit(as_json: bool, doc: Any, text: Callable[[], str]) -> None:
    """A command's result on stdout: ``doc`` as JSON, or ``text()`` for people."""
    print(to_json(doc, indent=2) if as_json else text())
