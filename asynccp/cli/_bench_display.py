"""What ``asynccp bench`` shows while it runs: a rich console, the progress.

A progress bar on a terminal (with rich), plain ``[n/total] label`` lines on stderr
otherwise, nothing with ``-q``; the engine only calls the step function it is given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "rich_console"]


def rich_console() -> Any:
    """A rich console for stdout (120 columns when it is not a terminal); None without rich."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(width=None if sys.stdout.isatty() else 120)


class Progress:
    """rich progress bar on a terminal; plain lines on stderr otherwise; nothing if quiet."""

    def __init__(self, console: Any, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.done = 0
        self.bar: Any = None
        if not quiet and console is not None and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]asynccp bench[/]"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> Callable[[str], None]:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("starting", total=self.total)
        return self.step

    def step(self, label: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            if self.done:
                self.bar.advance(self.task)
            self.bar.update(self.task, description=label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)
        self.done += 1

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
