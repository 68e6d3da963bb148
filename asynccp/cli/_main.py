"""The ``asynccp`` command: ``bench``, ``ls``, ``show``, ``verify``, ``restore``,
``consolidate``, ``gc``.

:func:`main` parses (:mod:`._parser`), runs the command, and turns its end into an exit
code. Output is for people; ``--json`` prints one JSON document instead. A bad argument
or an unreachable location prints one line on stderr (:mod:`._messages`) and exits
non-zero, without a traceback (set ``ASYNCCP_DEBUG=1`` to see one).

Exit codes: 0 success, 1 failure (a checkpoint failed verification, nothing to
restore, a store error), 2 bad usage, 130 interrupted, 141 the reader of stdout went
away (``asynccp ls | head``: quietly, as a Unix tool). ``bench`` exits 0 when a
target is missed unless ``--fail-on-miss`` is given (its last line says which).

The bench engine (and with it rich and matplotlib) is imported only by ``bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from asynccp.errors import CheckpointError

from ._bench_command import cmd_bench
from ._consolidate import cmd_consolidate
from ._gc import cmd_gc
from ._inspect import cmd_ls, cmd_show, cmd_verify
from ._messages import Failure, UsageError, messages, say
from ._parser import build_parser
from ._restore import cmd_restore

__all__ = ["COMMANDS", "EXIT_BROKEN_PIPE", "main"]

#: What runs each command of the parser (``args.command``).
COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "bench": cmd_bench,
    "ls": cmd_ls,
    "show": cmd_show,
    "verify": cmd_verify,
    "restore": cmd_restore,
    "consolidate": cmd_consolidate,
    "gc": cmd_gc,
}


#: The exit code when stdout's reader went away (``asynccp ls | head``): 128 + SIGPIPE,
#: what ``cat`` or ``git`` in the same pipeline report, so ``set -o pipefail`` treats
#: them alike.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it).

    A reader of stdout that stops early (``asynccp ls --json | head``) ends the command
    quietly, as it ends a Unix tool: exit code :data:`EXIT_BROKEN_PIPE`, nothing on
    stderr. stdout is flushed here, so that output still buffered meets a closed pipe
    inside this function and not in the interpreter's exit ("Exception ignored ...").
    """
    try:
        code = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _drop_stdout() -> None:
    """Point stdout's file descriptor at /dev/null: what is still buffered (and the
    interpreter's final flush) goes nowhere instead of raising BrokenPipeError again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a host (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    """:func:`main` without the broken-pipe handling: parse, run, map errors to codes."""
    debug = bool(os.environ.get("ASYNCCP_DEBUG"))
    with messages(debug):
        try:
            args = build_parser().parse_args(argv)
            coro: Coroutine[Any, Any, int] = COMMANDS[args.command](args)
            return asyncio.run(coro)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0) if not isinstance(e.code, str) else 2
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        except BrokenPipeError:
            raise  # the reader went away: main() ends quietly
        except UsageError as e:
            _fail(str(e), debug)
            return 2
        except Failure as e:
            _fail(str(e), debug)
            return 1
        except (CheckpointError, OSError) as e:
            _fail(str(e), debug)
            return 1
        except Exception as e:
            _fail(f"{type(e).__name__}: {e}", debug)
            return 1


def _fail(message: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    say(message, debug=debug)
