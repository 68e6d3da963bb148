"""The ``asynccp`` command line's grammar: the argparse tree and its argument types.

argparse, not click: six flat sub-commands with a handful of options each need nothing
argparse lacks, and the core install stays free of one more dependency. A bad argument
is a :class:`~asynccp.cli._messages.UsageError` (exit 2), never argparse's own exit.
The parser only parses: ``args.command`` names the command, and
:mod:`asynccp.cli._main` runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from asynccp._layout import MAX_STEP

from ._bench_options import KINDS
from ._format import parse_size
from ._messages import PROG, UsageError

__all__ = ["Parser", "build_parser"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "asynccp gc" -> "gc: ..."; main() adds the one "asynccp: " prefix.
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


# -- argument types ----------------------------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with one message for every bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


_nonneg_int = _int_at_least(0)
_pos_int = _int_at_least(1)


def _step(text: str) -> int:
    value = _nonneg_int(text)
    if value > MAX_STEP:
        raise argparse.ArgumentTypeError(f"a step must be <= {MAX_STEP}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sizes(text: str) -> list[int]:
    return [_size(part) for part in text.split(",") if part.strip()] or [_size(text)]


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(bad) or repr(text)}; choose from {', '.join(KINDS)}"
        )
    return kinds


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"store options are KEY=VALUE, got {text!r}")
    return key.strip(), value


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--store-option",
        dest="store_options",
        metavar="KEY=VALUE",
        type=_option,
        action="append",
        default=[],
        help="option for obstore.store.from_url, e.g. -o endpoint=http://127.0.0.1:9000 "
        "(remote URLs only; environment variables such as AWS_ENDPOINT_URL also apply)",
    )
    p.add_argument(
        "--retries",
        type=_nonneg_int,
        default=3,
        help="retries of a failed store request before giving up (remote URLs; default 3)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        help="seconds one store request may take, body included (remote URLs; obstore's "
        "default is 30)",
    )


def _json_and_store_args(p: argparse.ArgumentParser) -> None:
    """What every command but ``bench`` ends with: ``--json``, then the store's options."""
    p.add_argument("--json", action="store_true", help="print JSON")
    _store_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``args.command`` names the command :func:`asynccp.cli.main` runs."""
    parser = Parser(
        prog=PROG,
        description="Async-first intra-task checkpointing: benchmark it, and inspect, verify, "
        "restore and clean up the checkpoints at a location.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    b = sub.add_parser(
        "bench",
        help="measure caller stall, throughput, loop lag and memory against baselines",
        description="Measure asynccp against a synchronous writer and raw obstore on the same "
        "store, interleaved, and print medians and ratios. Runs on a private temporary "
        "directory unless --url is given (a sub-folder is used and removed there too). "
        "Ends with a verdict line; exits 0 even when a target is missed, unless "
        "--fail-on-miss is given.",
    )
    b.add_argument(
        "--url",
        help="location to benchmark (default: a temporary local directory; memory:// measures "
        "no storage at all)",
    )
    b.add_argument(
        "--sizes",
        type=_sizes,
        default=[1 << 20, 16 << 20, 64 << 20],
        help="comma-separated payload sizes (default 1MiB,16MiB,64MiB)",
    )
    b.add_argument(
        "--kinds",
        type=_kinds,
        default=None,
        help="payload kinds: bytes, bytearray, file, files (a folder of many small files); "
        "default all",
    )
    b.add_argument("--saves", type=_pos_int, default=4, help="saves per round (default 4)")
    b.add_argument(
        "--rounds",
        type=_pos_int,
        default=3,
        help="interleaved rounds per case, at least (default 3)",
    )
    b.add_argument(
        "--max-rounds",
        type=_pos_int,
        default=5,
        help="interleaved rounds per case at most: rounds are added while a new one widens "
        "the range of the ratios (default 5)",
    )
    b.add_argument("--policy", choices=("block", "latest"), default="block")
    b.add_argument("--max-pending", type=_pos_int, default=4, help="queue bound (checkpoints)")
    b.add_argument(
        "--max-pending-bytes",
        type=_size,
        default=256 << 20,
        help="queue bound in bytes, also the memory probe's bound (default 256MiB)",
    )
    b.add_argument(
        "--files-per-save",
        type=_pos_int,
        default=64,
        help="files per checkpoint for --kinds files (default 64)",
    )
    b.add_argument(
        "--small-saves",
        type=_nonneg_int,
        default=10_000,
        help="16-byte saves with policy=latest in the small-save test (0 skips it)",
    )
    b.add_argument(
        "--small-block-saves",
        type=_nonneg_int,
        default=2_000,
        help="16-byte saves with policy=block, every one committed (0 skips the test)",
    )
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    b.add_argument(
        "--no-fsync",
        action="store_true",
        help="local directories: durable=False for asynccp and no fsync for the baselines",
    )
    b.add_argument("--json", metavar="FILE", help="also write every figure as JSON ('-': stdout)")
    b.add_argument("--plot", metavar="FILE.png", help="draw stall and throughput vs size")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    b.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    _store_args(b)

    def located(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.add_argument("url", metavar="URL", help="the checkpoint location (path or URL)")
        return p

    p = located(
        "ls",
        "list committed checkpoints",
        "List the committed checkpoints, oldest first: the valid ones, the invalid ones (a "
        "manifest that does not decode, or payload objects missing or truncated: readers skip "
        "them; `gc --invalid` removes them), and the records kept in quarantine/. A step "
        "written by many processes shows its number of SHARDS and its generation; steps "
        "whose parts are not all in yet (or disagree on the number of shards) are listed "
        "after the table. With --local, URL is a tiered checkpointer's remote tier: a TIERS "
        "column says which tiers hold each step, and the replication lag is shown.",
    )
    p.add_argument(
        "--local",
        metavar="PATH",
        help="the local tier of a checkpointer made with local=PATH (docs/tiers.md)",
    )
    _json_and_store_args(p)

    p = located("show", "show one checkpoint", "Show one checkpoint's manifest and files.")
    p.add_argument("step", metavar="STEP", type=_step)
    _json_and_store_args(p)

    p = located(
        "verify",
        "read and check every checkpoint",
        "Read every file of every committed checkpoint (or of --step) and check its size and "
        "CRC32C against the manifest. Exits 1 if any checkpoint fails.",
    )
    p.add_argument("--step", type=_step, help="verify this step only")
    _json_and_store_args(p)

    p = located(
        "restore",
        "download a checkpoint into a folder",
        "Download the newest checkpoint that verifies (or --step N) into DEST, verified; files "
        "appear in DEST only once all of them verified. Exits 1 if there is none. A step "
        "written by many processes is downloaded whole (part R into DEST/shard-R/) unless "
        "--shard R asks for one part (every part of the step is verified first). A file "
        "already in DEST where the checkpoint's files go is an error (exit 1, nothing "
        "written) unless --force.",
    )
    p.add_argument("dest", metavar="DEST", help="destination folder (created if needed)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files already in DEST that the checkpoint also holds",
    )
    p.add_argument("--step", type=_step, help="restore this step (no fallback)")
    p.add_argument(
        "--shard",
        type=_nonneg_int,
        metavar="R",
        help="restore part R of a step written by many processes (its files go into DEST)",
    )
    _json_and_store_args(p)

    p = located(
        "consolidate",
        "write one safetensors file of a step's global tensors",
        "Write the tensors of a checkpoint's training state (asynccp.State) as one safetensors "
        "file, OUT: a step saved by many processes is assembled in global coordinates (values "
        "saved as asynccp.Shard), streamed piece by piece (never the whole model in memory), "
        "every piece verified. The newest checkpoint that verifies, or --step N. Scalars are "
        "left out. OUT appears only once complete; an existing OUT is an error (exit 1) "
        "unless --force. Loadable by the safetensors library and Hugging Face tools.",
    )
    p.add_argument("out", metavar="OUT", help="the safetensors file to write")
    p.add_argument("--step", type=_step, help="consolidate this step (no fallback)")
    p.add_argument("--name", default="state", help="the state's name (default: state)")
    p.add_argument(
        "--key",
        help="write only the tensors under this path, named relative to it (--key model: "
        "a model's own state_dict names)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _json_and_store_args(p)

    p = located(
        "gc",
        "apply retention and collect orphans",
        "Delete checkpoints beyond the newest --keep (keeping every --keep-every milestone), "
        "record first, then payload folders nobody committed that are older than "
        "--orphan-grace. Retention never trades a checkpoint that verifies for one that does "
        "not: checkpoints that are invalid or fail verification are never counted and never "
        "deleted by --keep, and nothing is deleted unless a newer kept checkpoint verifies "
        "(read whole and checked, once). Invalid ones stay (listed by `ls`) unless --invalid "
        "says otherwise.",
    )
    p.add_argument("--keep", type=_pos_int, help="newest checkpoints to keep (>= 1)")
    p.add_argument("--keep-every", type=_pos_int, help="also keep every step divisible by K")
    p.add_argument(
        "--orphan-grace",
        type=_seconds,
        default=3600.0,
        help="collect uncommitted payload folders older than this many seconds (default 3600)",
    )
    p.add_argument(
        "--invalid",
        choices=("keep", "quarantine", "delete"),
        default="keep",
        help="invalid checkpoints: keep them (default), move their records to quarantine/ "
        "(payload kept for inspection), or delete records and payload",
    )
    p.add_argument(
        "--quarantine",
        choices=("keep", "purge"),
        default="keep",
        help="records in quarantine/: keep them (default) or delete them and their payload",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be deleted (checkpoints and orphans), delete nothing",
    )
    _json_and_store_args(p)
    return parser


def _version() -> str:
    from asynccp import __version__

    return __version__
