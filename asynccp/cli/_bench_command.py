"""``asynccp bench``: the command line's options into a run, and its result shown.

The engine (:mod:`._bench`) measures and returns a document; the report
(:mod:`._bench_report`) and the display (:mod:`._bench_display`) show it. They, and
with them rich and matplotlib, are imported only when ``bench`` runs. ``bench`` exits 0
when a target is missed unless ``--fail-on-miss`` is given (its last line says which).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._bench_options import KINDS, BenchError, Options
from ._location import scheme, store_options
from ._messages import Failure, UsageError, say

__all__ = ["MEMORY_BENCH_WARNING", "cmd_bench"]


#: What ``bench --url memory://`` warns: RAM is not storage.
MEMORY_BENCH_WARNING = (
    "bench on memory:// keeps every object in this process's RAM: its comparisons "
    "say nothing about a real store (use a local directory or a remote URL for that)"
)


async def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark with the command line's options; show the result; the verdict."""
    from . import _bench, _bench_report  # the engine (and rich, matplotlib) only for bench
    from ._bench_display import Progress, rich_console

    opts = Options(
        url=args.url,
        sizes=args.sizes,
        kinds=args.kinds if args.kinds is not None else list(KINDS),
        saves=args.saves,
        rounds=args.rounds,
        max_rounds=args.max_rounds,
        policy=args.policy,
        max_pending=args.max_pending,
        max_pending_bytes=args.max_pending_bytes,
        small_saves=args.small_saves,
        small_block_saves=args.small_block_saves,
        files_per_save=args.files_per_save,
        durable=not args.no_fsync,
        memory=not args.no_memory,
        store_options=store_options(args, args.url),
    )
    try:
        opts.validate()
    except BenchError as e:
        raise UsageError(f"bench: {e}") from None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                "bench: --plot needs matplotlib: pip install matplotlib (or, in a clone of "
                "asynccp, pip install -e '.[bench]')"
            ) from None
    if args.url is not None and scheme(args.url) == "memory":
        say(MEMORY_BENCH_WARNING, "warning")
    console = rich_console()
    try:
        with Progress(console, _bench.plan(opts), args.quiet) as progress:
            doc = await _bench.run(opts, progress)
    except BenchError as e:
        raise Failure(f"bench: {e}") from None
    if args.json:
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")  # noqa: ASYNC240 - the run is over
    if args.plot:
        _bench_report.plot(doc, args.plot)
    line, code = _bench_report.verdict(doc, args.fail_on_miss)
    if args.json == "-":
        say(line)  # stdout holds the JSON document alone
    else:
        if console is not None:
            _bench_report.render_rich(doc, console)
        else:
            print(_bench_report.render_text(doc))
        print(line)
    return code
