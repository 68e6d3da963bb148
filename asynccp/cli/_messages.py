"""What the ``asynccp`` command says on stderr, and the two ways a command fails.

Everything said on stderr (errors, warnings, the library's log records) is one line
that starts with a single ``asynccp:``; warnings read ``asynccp: warning: ...``.
:class:`UsageError` ends a command with exit code 2, :class:`Failure` with 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from asynccp.errors import CorruptCheckpointWarning

from ._format import one_line

__all__ = ["PROG", "Failure", "UsageError", "messages", "say"]

PROG = "asynccp"
_PREFIX = f"{PROG}: "


class UsageError(Exception):
    """A bad argument: exit 2."""


class Failure(Exception):
    """The command ran and failed (nothing to restore, verification failed): exit 1."""


def _clean(message: str) -> str:
    """``message`` without the ``asynccp:`` prefixes the library puts on some of its own."""
    message = message.strip()
    while message.startswith(_PREFIX):
        message = message[len(_PREFIX) :].lstrip()
    return message


def say(message: str, label: str | None = None, *, debug: bool = False) -> None:
    """One line on stderr: ``asynccp: [label: ]message``, one prefix whatever the source."""
    text = _clean(message) if debug else one_line(Exception(_clean(message)))
    print(_PREFIX + (f"{label}: " if label else "") + text, file=sys.stderr, flush=True)


class _LogFormatter(logging.Formatter):
    """Log records as the command's other messages: ``asynccp: warning: ...``, one line."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = _clean(record.getMessage())
        if not self.debug:
            message = one_line(Exception(message))
        elif record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"{_PREFIX}{record.levelname.lower()}: {message}"


@contextlib.contextmanager
def messages(debug: bool) -> Iterator[None]:
    """For one command: warnings and log records go to stderr in the command's format.

    Undone on exit (the root logger's handler and level, the warning hooks), so that
    calling :func:`asynccp.cli.main` leaves a host process (a test, a notebook) as it found it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter(debug))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if debug:
        root.setLevel(logging.DEBUG)

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        say(str(message), "warning", debug=debug)

    try:
        with warnings.catch_warnings():
            # Shown, whatever the host's filters say: a command reports a skipped
            # checkpoint (every one) and goes on (under `-W error` it would fail instead).
            warnings.simplefilter("default")
            warnings.simplefilter("always", CorruptCheckpointWarning)
            warnings.showwarning = show
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
