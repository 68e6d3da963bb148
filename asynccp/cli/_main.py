"""The ``asynccp`` command: ``bench``, ``ls``, ``show``, ``verify``, ``restore``, ``gc``.

argparse, not click: six flat sub-commands with a handful of options each need nothing
argparse lacks, and the core install stays free of one more dependency.

Every command takes a location as asynccp does (a path, ``file://``, ``s3://``,
``gs://``, ``az://``, ``memory://``); remote stores read the usual environment
variables (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, ``AWS_ACCESS_KEY_ID``...) and take
extra options with ``-o KEY=VALUE``. Output is for people; ``--json`` prints one JSON
document instead. A bad argument or an unreachable location prints one line on stderr
and exits non-zero, without a traceback (set ``ASYNCCP_DEBUG=1`` to see one).

Everything said on stderr (errors, warnings, the library's log records) is one line
that starts with a single ``asynccp:``; warnings read ``asynccp: warning: ...``.

Exit codes: 0 success, 1 failure (a checkpoint failed verification, nothing to
restore, a store error), 2 bad usage, 130 interrupted, 141 the reader of stdout went
away (``asynccp ls | head``: quietly, as a Unix tool). ``bench`` exits 0 when a
target is missed unless ``--fail-on-miss`` is given (its last line says which).

The bench engine (and with it rich and matplotlib) is imported only by ``bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from asynccp._catalog import list_steps, load, quarantined, survey
from asynccp._catalog import newest as newest_verified
from asynccp._checkpoint import Checkpoint
from asynccp._layout import MAX_STEP, PARTS
from asynccp._retention import apply_retention, collect_orphans, purge_quarantine, remove_invalid
from asynccp._shards import PartGroup, uncommitted
from asynccp._store import CLIENT_KEYS, StoreOptions, local_root, resolve
from asynccp._store import Store as Location
from asynccp.errors import (
    CheckpointError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    DestinationExistsError,
    StoreError,
)

from ._format import clip, fmt_size, one_line, parse_size, table

__all__ = ["build_parser", "main"]

PROG = "asynccp"
_PREFIX = f"{PROG}: "


class UsageError(Exception):
    """A bad argument: exit 2."""


class Failure(Exception):
    """The command ran and failed (nothing to restore, verification failed): exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "asynccp gc" -> "gc: ..."; main() adds the one "asynccp: " prefix.
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


# -- argument parsing ------------------------------------------------------------------


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
    from . import _bench  # only bench takes --kinds: the engine is not loaded for `ls`

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in _bench.KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(bad) or repr(text)}; choose from {', '.join(_bench.KINDS)}"
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Async-first intra-task checkpointing: benchmark it, and inspect, verify, "
        "restore and clean up the checkpoints at a location.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
        "--rounds", type=_pos_int, default=3, help="interleaved rounds per case (default 3)"
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
    b.set_defaults(func=cmd_bench)

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
        "after the table.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _store_args(p)
    p.set_defaults(func=cmd_ls)

    p = located("show", "show one checkpoint", "Show one checkpoint's manifest and files.")
    p.add_argument("step", metavar="STEP", type=_step)
    p.add_argument("--json", action="store_true", help="print JSON")
    _store_args(p)
    p.set_defaults(func=cmd_show)

    p = located(
        "verify",
        "read and check every checkpoint",
        "Read every file of every committed checkpoint (or of --step) and check its size and "
        "CRC32C against the manifest. Exits 1 if any checkpoint fails.",
    )
    p.add_argument("--step", type=_step, help="verify this step only")
    p.add_argument("--json", action="store_true", help="print JSON")
    _store_args(p)
    p.set_defaults(func=cmd_verify)

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
    p.add_argument("--json", action="store_true", help="print JSON")
    _store_args(p)
    p.set_defaults(func=cmd_restore)

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
    p.add_argument("--json", action="store_true", help="print JSON")
    _store_args(p)
    p.set_defaults(func=cmd_gc)
    return parser


def _version() -> str:
    from asynccp import __version__

    return __version__


# -- locations -------------------------------------------------------------------------


def _scheme(url: str) -> str:
    """The URL scheme, lower case; "" for a plain path."""
    return urlparse(url).scheme.lower() if "://" in url else ""


def _is_remote(url: str) -> bool:
    return _scheme(url) not in ("", "file", "memory")


def _store_options(args: argparse.Namespace, url: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = dict(args.store_options)
    if url is None or not _is_remote(url):
        if opts:
            raise UsageError("-o/--store-option applies to remote URLs only")
        return {}
    # -o takes store settings and HTTP client settings alike (allow_http=true, ...):
    # obstore wants the latter apart, in client_options.
    client = {k: opts.pop(k) for k in sorted(CLIENT_KEYS & opts.keys())}
    retry: dict[str, Any] = {"max_retries": args.retries}
    if args.timeout is not None:
        client["timeout"] = timedelta(seconds=args.timeout)
        retry["retry_timeout"] = timedelta(seconds=max(args.timeout * (args.retries + 1), 1))
    if client:
        opts["client_options"] = client
    opts["retry_config"] = retry
    return opts


def _open(args: argparse.Namespace) -> Location:
    """The location of a read/maintenance command; a local one must already exist."""
    url: str = args.url
    try:
        loc = resolve(url, StoreOptions(obstore=_store_options(args, url)))
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad location {url!r}: {e}") from None
    except Exception as e:  # obstore's own parsing/configuration errors
        raise UsageError(f"bad location {url!r}: {one_line(e)}") from None
    root = local_root(loc)
    if root is not None and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise Failure(f"{root} {what}")
    return loc


# -- output helpers --------------------------------------------------------------------


def _ckpt_doc(c: Checkpoint) -> dict[str, Any]:
    doc = {
        "step": c.step,
        "created_at": c.created_at.isoformat(),
        "attempt": c.attempt,
        "writer": c.writer,
        "size": c.size,
        "metadata": dict(c.metadata),
        "files": {n: {"size": f.size, "checksum": f.checksum} for n, f in c.files.items()},
        "shards": c.shards,
    }
    if c.generation is not None:
        doc["generation"] = c.generation
        doc["parts"] = [
            {
                "shard": r,
                "writer": p.writer,
                "attempt": p.attempt,
                "created_at": p.created_at.isoformat(),
                "size": p.size,
                "files": len(p.files),
                "metadata": dict(p.metadata),
            }
            for r, p in enumerate(c.shard(r) for r in range(c.shards))
        ]
    return doc


def _writer(c: Checkpoint) -> str:
    """The WRITER column: the writer, or a sharded step's generation."""
    if c.generation is None:
        return c.writer
    gen = c.generation if len(c.generation) <= 24 else c.generation[:23] + "…"
    return f"gen {gen}"


def _pending(g: PartGroup) -> str:
    """One line on a step whose parts are not all in (what `ls` prints after the table)."""
    counts = g.shard_counts
    head = f"step {g.step} (generation {g.generation}): "
    if len(counts) > 1:
        return head + (
            f"part records disagree on the number of shards ({', '.join(map(str, counts))}): "
            "never committed"
        )
    missing = g.missing
    shown = ", ".join(map(str, missing[:8])) + (", …" if len(missing) > 8 else "")
    if not missing:
        return head + f"all {counts[0]} parts recorded, no manifest (its last part died?)"
    return head + f"{len(g.records)} of {counts[0]} parts recorded; waiting for {shown}"


def _pending_doc(g: PartGroup) -> dict[str, Any]:
    return {
        "step": g.step,
        "generation": g.generation,
        "shards": g.shard_counts,
        "recorded": sorted(r for r, _ in g.records),
        "missing": g.missing,
    }


def _when(c: Checkpoint) -> str:
    return c.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _json(doc: Any, **options: Any) -> str:
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


def _emit(args: argparse.Namespace, doc: Any, text: Callable[[], str]) -> None:
    print(_json(doc, indent=2) if args.json else text())


def _meta(meta: Any, width: int = 48) -> str:
    """The METADATA column: compact JSON, cut to ``width`` terminal cells."""
    return clip(_json(dict(meta), separators=(",", ":")), width) if meta else ""


# -- commands --------------------------------------------------------------------------


async def cmd_ls(args: argparse.Namespace) -> int:
    loc = _open(args)
    steps = await survey(loc)
    quarantine = await quarantined(loc)
    pending = await uncommitted(loc)
    ckpts = [e.checkpoint for e in steps if e.checkpoint is not None]
    invalid = [e for e in steps if e.checkpoint is None]

    def text() -> str:
        if not steps and not quarantine and not pending:
            return f"no checkpoints in {loc.description}"
        rows = []
        for e in steps:
            c = e.checkpoint
            if c is None:
                why = clip(" ".join((e.problem or "").split()), 100)
                rows.append([str(e.record.step), "INVALID", "", "", "", "", "", why])
                continue
            rows.append(
                [
                    str(c.step),
                    _when(c),
                    str(c.shards),
                    str(len(c.files)),
                    fmt_size(c.size),
                    str(c.attempt),
                    _writer(c),
                    _meta(c.metadata),
                ]
            )
        head = ["STEP", "CREATED (UTC)", "SHARDS", "FILES", "SIZE", "ATTEMPT", "WRITER", "METADATA"]
        total = sum(c.size for c in ckpts)
        out = table(head, rows, right={0, 2, 3, 4, 5}) if rows else ""
        summary = f"{len(ckpts)} valid checkpoint(s), {fmt_size(total)}"
        summary += f", newest valid step {ckpts[-1].step}" if ckpts else ""
        if invalid:
            summary += (
                f"; {len(invalid)} invalid (skipped by readers; `gc --invalid quarantine` "
                "moves them aside)"
            )
        out += ("\n" if out else "") + summary
        if quarantine:
            out += f"\nquarantine/ holds {len(quarantine)} record(s) kept for inspection:"
            out += "".join(f"\n  {k}" for k in quarantine)
        if pending:
            out += (
                f"\n{len(pending)} sharded step(s) not committed (readers do not see them; "
                "`gc` collects the parts of launches that are gone):"
            )
            out += "".join(f"\n  {_pending(g)}" for g in pending)
        return out

    doc = {
        "location": loc.description,
        "checkpoints": [_ckpt_doc(c) for c in ckpts],
        "invalid": [
            {"step": e.record.step, "key": e.record.key, "problem": e.problem} for e in invalid
        ],
        "quarantine": quarantine,
        "uncommitted_parts": [_pending_doc(g) for g in pending],
    }
    _emit(args, doc, text)
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    loc = _open(args)
    c = await _load(loc, args.step)

    def text() -> str:
        lines = [
            f"step        {c.step}",
            f"created_at  {c.created_at.isoformat()}",
            f"attempt     {c.attempt}",
            f"writer      {c.writer}",
            f"size        {fmt_size(c.size)} ({c.size} bytes) in {len(c.files)} file(s)",
            f"metadata    {_json(dict(c.metadata))}",
            "",
        ]
        if c.generation is not None:
            lines[3:4] = [
                f"shards      {c.shards}",
                f"generation  {c.generation}",
                "writer      (of each part below; attempt and metadata above are part 0's)",
            ]
            parts = [c.shard(r) for r in range(c.shards)]
            prow = [
                [str(r), p.writer, str(p.attempt), str(len(p.files)), fmt_size(p.size)]
                for r, p in enumerate(parts)
            ]
            head = ["SHARD", "WRITER", "ATTEMPT", "FILES", "SIZE"]
            lines += [table(head, prow, right={0, 2, 3, 4}), ""]
        rows = [[n, str(f.size), f.checksum] for n, f in sorted(c.files.items())]
        return "\n".join(lines) + table(["FILE", "BYTES", "CHECKSUM"], rows, right={1})

    _emit(args, {"location": loc.description, **_ckpt_doc(c)}, text)
    return 0


async def _load(loc: Location, step: int) -> Checkpoint:
    try:
        return await load(loc, step)
    except CheckpointError as e:
        raise Failure(str(e)) from None


async def cmd_verify(args: argparse.Namespace) -> int:
    loc = _open(args)
    steps = [args.step] if args.step is not None else await list_steps(loc)
    results = []
    for step in steps:
        entry: dict[str, Any] = {"step": step, "ok": False, "error": None}
        try:
            c = await load(loc, step)
            entry.update(files=len(c.files), size=c.size, shards=c.shards)
            await c.verify()
            entry["ok"] = True
        except StoreError as e:
            entry["error"] = f"store error: {one_line(e)}"
        except CheckpointError as e:
            entry["error"] = one_line(e)
        results.append(entry)
        if not args.json:
            if entry["ok"]:
                parts = f" in {entry['shards']} shards" if entry["shards"] > 1 else ""
                print(
                    f"step {step}: ok ({entry['files']} file(s){parts}, {fmt_size(entry['size'])})"
                )
            else:
                print(f"step {step}: FAILED: {entry['error']}")
    failed = [r["step"] for r in results if not r["ok"]]
    if args.json:
        print(
            json.dumps(
                {"location": loc.description, "ok": not failed, "checkpoints": results}, indent=2
            )
        )
    elif not results:
        print(f"no checkpoints in {loc.description}")
    else:
        print(
            f"{len(results) - len(failed)} of {len(results)} checkpoint(s) verified"
            + (f"; failed: {failed}" if failed else "")
        )
    return 1 if failed else 0


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or a
    parent), or None when ``path`` exists: what a failed restore must remove again."""
    missing = None
    path = path.absolute()
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


async def cmd_restore(args: argparse.Namespace) -> int:
    loc = _open(args)
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():  # noqa: ASYNC240 - a CLI, one stat
        raise UsageError(f"DEST {dest} exists and is not a directory")
    created = _first_missing(dest)
    try:
        c, path = await _restore(loc, dest, args.step, args.shard, args.force)
    except DestinationExistsError as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise Failure(
            f"restoring would overwrite {e.filename}, which exists: nothing restored; "
            "pass --force to replace it"
        ) from None
    except BaseException:
        # Nothing was restored: leave no empty destination behind, but only remove
        # what this command created (a DEST that existed before stays as it was).
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    doc = {
        "location": loc.description,
        "step": c.step,
        "dest": str(path),
        "files": sorted(c.files),
        "size": c.size,
    }
    what = "step" if c.part is None else f"part {c.part} of {c.shards} of step"
    if c.part is not None:
        doc["shard"] = c.part
    _emit(
        args,
        doc,
        lambda: f"restored {what} {c.step} ({len(c.files)} file(s), {fmt_size(c.size)}) to {path}",
    )
    return 0


async def _restore(
    loc: Location, dest: Path, step: int | None, shard: int | None, force: bool
) -> tuple[Checkpoint, Path]:
    """Download ``step`` (or the newest checkpoint that verifies) into ``dest``: the
    whole of it, or part ``shard`` (of a step whose every part verifies). Files in
    ``dest`` are replaced only when ``force``."""

    async def one(c: Checkpoint) -> tuple[Checkpoint, Path]:
        if shard is None:
            return c, await c.download(dest, overwrite=force)
        part = c.shard(shard)  # a clear error if it has no such part
        if c.shards > 1:
            await c.verify()  # every part, as a resuming shard would judge the step
        return part, await part.download(dest, overwrite=force)

    if step is not None:
        c = await _load(loc, step)
        try:
            return await one(c)
        except CorruptCheckpointError as e:
            raise Failure(f"checkpoint {step} failed verification: {one_line(e)}") from None
    found = await newest_verified(loc, one)
    if found is None:
        raise Failure(f"no checkpoint in {loc.description} verifies; nothing restored")
    return found[1]


async def cmd_gc(args: argparse.Namespace) -> int:
    if args.keep is None and args.invalid == "keep" and args.quarantine == "keep":
        raise UsageError(
            "gc: say what to delete: --keep N (retention), --invalid quarantine|delete or "
            f"--quarantine purge (see {PROG} gc --help)"
        )
    loc = _open(args)
    dry = args.dry_run
    invalid = [e.record.step for e in await survey(loc) if e.checkpoint is None]
    retained = await apply_retention(loc, args.keep, args.keep_every, dry_run=dry)
    removed: list[int] = []
    if args.invalid != "keep":
        removed = invalid if dry else await remove_invalid(loc, how=args.invalid)
    purged: list[str] = []
    if args.quarantine == "purge":
        purged = await purge_quarantine(loc, dry_run=dry)
    orphans = await collect_orphans(loc, timedelta(seconds=args.orphan_grace), dry_run=dry)
    doc = {
        "location": loc.description,
        "dry_run": dry,
        "deleted_steps": retained.deleted,
        "kept_steps": retained.kept,
        "verified_steps": retained.verified,
        "not_verifying_steps": retained.not_verifying,
        "retention_held": retained.held,
        "invalid_steps": invalid,
        "invalid_action": args.invalid,
        "invalid_removed": removed,
        "quarantine_purged": purged,
        "orphans_collected": orphans,
    }

    def text() -> str:
        would = "would be " if dry else ""
        lines = []
        if args.keep is not None:
            deleted = retained.deleted
            verb = "would delete" if dry else "deleted"
            lines.append(
                f"{verb} {len(deleted)} checkpoint(s)" + (f": {_short(deleted)}" if deleted else "")
            )
            kept = retained.kept
            lines.append(f"kept {len(kept)} checkpoint(s)" + (f": {_short(kept)}" if kept else ""))
            if retained.verified:
                lines.append(
                    f"read and verified before relying on them: {_short(retained.verified)}"
                )
            if retained.not_verifying:
                lines.append(
                    f"{len(retained.not_verifying)} checkpoint(s) do not verify (not counted, "
                    f"not deleted; `asynccp verify` says why): {_short(retained.not_verifying)}"
                )
            if retained.held:
                lines.append(f"deleted nothing: {retained.held}")
        if invalid:
            if args.invalid == "keep":
                lines.append(
                    f"left {len(invalid)} invalid checkpoint(s) as they are: {_short(invalid)} "
                    "(--invalid quarantine or --invalid delete to remove them)"
                )
            else:
                done = {"quarantine": "moved to quarantine/", "delete": "deleted"}[args.invalid]
                lines.append(
                    f"{len(removed)} invalid checkpoint(s) {would}{done}: {_short(removed)}"
                )
        if args.quarantine == "purge":
            lines.append(f"{len(purged)} quarantined record(s) {would}deleted, with their payload")
        parts = [o for o in orphans if o.startswith(PARTS)]
        verb = "would collect" if dry else "collected"
        lines.append(
            f"{verb} {len(orphans) - len(parts)} orphaned payload folder(s) "
            f"older than {args.orphan_grace:g} s"
            + (f", and the part records of {len(parts)} abandoned sharded step(s)" if parts else "")
        )
        return "\n".join(lines)

    _emit(args, doc, text)
    return 0


def _short(steps: list[int], n: int = 12) -> str:
    s = ", ".join(map(str, steps[:n]))
    return s + (f", … ({len(steps) - n} more)" if len(steps) > n else "")


#: What ``bench --url memory://`` warns: RAM is not storage.
MEMORY_BENCH_WARNING = (
    "bench on memory:// keeps every object in this process's RAM: its comparisons "
    "say nothing about a real store (use a local directory or a remote URL for that)"
)


async def cmd_bench(args: argparse.Namespace) -> int:
    from . import _bench, _bench_report  # the engine (and rich, matplotlib) only for bench

    opts = _bench.Options(
        url=args.url,
        sizes=args.sizes,
        kinds=args.kinds if args.kinds is not None else list(_bench.KINDS),
        saves=args.saves,
        rounds=args.rounds,
        policy=args.policy,
        max_pending=args.max_pending,
        max_pending_bytes=args.max_pending_bytes,
        small_saves=args.small_saves,
        files_per_save=args.files_per_save,
        durable=not args.no_fsync,
        memory=not args.no_memory,
        store_options=_store_options(args, args.url),
    )
    try:
        opts.validate()
    except _bench.BenchError as e:
        raise UsageError(f"bench: {e}") from None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                "bench: --plot needs matplotlib: pip install matplotlib (or, in a clone of "
                "asynccp, pip install -e '.[bench]')"
            ) from None
    if args.url is not None and _scheme(args.url) == "memory":
        _say(MEMORY_BENCH_WARNING, "warning")
    console = _rich_console()
    try:
        with _progress(console, _bench.plan(opts), args.quiet) as progress:
            doc = await _bench.run(opts, progress)
    except _bench.BenchError as e:
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
        _say(line)  # stdout holds the JSON document alone
    else:
        if console is not None:
            _bench_report.render_rich(doc, console)
        else:
            print(_bench_report.render_text(doc))
        print(line)
    return code


def _rich_console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(width=None if sys.stdout.isatty() else 120)


class _progress:
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


# -- entry point -----------------------------------------------------------------------


def _clean(message: str) -> str:
    """``message`` without the ``asynccp:`` prefixes the library puts on some of its own."""
    message = message.strip()
    while message.startswith(_PREFIX):
        message = message[len(_PREFIX) :].lstrip()
    return message


def _say(message: str, label: str | None = None, *, debug: bool = False) -> None:
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
def _messages(debug: bool) -> Iterator[None]:
    """For one command: warnings and log records go to stderr in the command's format.

    Undone on exit (the root logger's handler and level, the warning hooks), so that
    calling :func:`main` leaves a host process (a test, a notebook) as it found it.
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
        _say(str(message), "warning", debug=debug)

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
    with _messages(debug):
        try:
            args = build_parser().parse_args(argv)
            coro: Coroutine[Any, Any, int] = args.func(args)
            return asyncio.run(coro)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0) if not isinstance(e.code, str) else 2
        except KeyboardInterrupt:
            _say("interrupted")
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
    _say(message, debug=debug)
