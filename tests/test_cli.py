"""The ``asynccp`` command line, called in-process: ``asynccp.cli.main([...])``.

Every command against a local directory, the read commands and ``bench`` against a
real S3-compatible server (moto) with the store configured from environment
variables only, and bad input: a one-line message on stderr, a non-zero exit, never a
traceback. Where the process boundary is the point (``python -m asynccp``, a fresh
interpreter's imports), ``test_cli_process.py`` and ``test_imports.py`` spawn one.
No timing assertions: ``bench`` is smoke-tested at tiny sizes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sys
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, make_s3_store

import asynccp
from asynccp.cli import _bench, _bench_report, _bench_stats, _bench_targets, main
from asynccp.cli._bench_command import MEMORY_BENCH_WARNING
from asynccp.cli._bench_options import Options as BenchOptions

TINY_BENCH = [
    "bench", "--sizes", "64KiB,128KiB", "--saves", "2", "--rounds", "1", "--max-rounds", "2",
    "--small-saves", "30", "--small-block-saves", "30", "--files-per-save", "4",
    "--max-pending-bytes", "256KiB", "-q",
]  # fmt: skip


@dataclass
class Result:
    """What one ``main([...])`` call returned and printed."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("ls", path)``: run the command line in this process, capture its output."""

    def run(*args: str) -> Result:
        capsys.readouterr()  # drop whatever the test printed before
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@contextlib.contextmanager
def skips_shown() -> Iterator[None]:
    """Around a command that skips a corrupt checkpoint: its CorruptCheckpointWarning
    goes where a process running the command sends it (Python's default filter shows
    it), to stderr as an ``asynccp: warning:`` line the test asserts, instead of being
    raised by the suite's filter."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", asynccp.CorruptCheckpointWarning)
        yield


def assert_one_line_error(r: Result, *, code: int | None = None, contains: str = "") -> str:
    """A failed command: non-zero exit, exactly one ``asynccp:`` line on stderr."""
    assert r.code != 0, r.out
    if code is not None:
        assert r.code == code, (r.code, r.err)
    assert len(r.err_lines) == 1, r.err
    assert "Traceback" not in r.err
    line = r.err_lines[0]
    assert line.startswith("asynccp: ") and line.count("asynccp:") == 1, line
    assert contains.lower() in line.lower(), line
    return line


def state(step: int) -> bytes:
    """Step ``step``'s file ``data``: larger than a record holds (a payload object, which
    the tests damage on disk; ``test_an_inline_checkpoint_is_shown_verified_restored``
    has tiny ones)."""
    return f"state {step}".encode() * 600


def save_steps(location: Any, steps: range, **options: Any) -> None:
    """Commit one checkpoint per step: a file ``data`` and, every other step, a folder."""

    async def save() -> None:
        async with asynccp.Checkpointer(location, **options) as cp:
            for s in steps:
                payload: Any = state(s)
                if s % 2:
                    payload = {"data": payload, "extra/notes.txt": f"notes {s}"}
                await cp.save(s, payload, metadata={"loss": 1.0 / (s + 1)})

    asyncio.run(save())


@pytest.fixture
def ckpts(tmp_path: Path) -> Path:
    loc = tmp_path / "ckpts"
    save_steps(loc, range(5))
    return loc


def payload_file(loc: Path, step: int, name: str = "data") -> Path:
    manifest = json.loads((loc / "manifests" / f"{step:020d}.json").read_bytes())
    return loc / manifest["data"] / name


# -- ls / show -----------------------------------------------------------------------


def test_ls_text_and_json(cli: Cli, ckpts: Path) -> None:
    r = cli("ls", str(ckpts))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split()[:2] == ["STEP", "CREATED"]
    assert [ln.split()[0] for ln in lines[1:6]] == ["0", "1", "2", "3", "4"]
    assert "5 valid checkpoint(s)" in lines[-1] and "newest valid step 4" in lines[-1]

    doc = json.loads(cli("ls", f"file://{ckpts}", "--json").out)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 1, 2, 3, 4]
    three = doc["checkpoints"][3]
    assert set(three["files"]) == {"data", "extra/notes.txt"}
    assert three["metadata"] == {"loss": 0.25}
    assert three["files"]["data"]["size"] == len(state(3))
    assert three["files"]["data"]["checksum"].startswith("crc32c:")


def test_ls_empty_and_missing(cli: Cli, tmp_path: Path) -> None:
    r = cli("ls", str(tmp_path))
    assert r.code == 0 and "no checkpoints" in r.out
    missing = tmp_path / "nope"
    assert_one_line_error(cli("ls", str(missing)), code=1, contains="does not exist")
    assert not missing.exists()  # a read command creates nothing


def test_show(cli: Cli, ckpts: Path) -> None:
    r = cli("show", str(ckpts), "3")
    assert r.code == 0, r.err
    assert "step        3" in r.out
    assert "extra/notes.txt" in r.out and '"loss": 0.25' in r.out
    doc = json.loads(cli("show", str(ckpts), "1", "--json").out)
    assert doc["step"] == 1 and doc["size"] == len(state(1)) + len(b"notes 1")
    assert_one_line_error(cli("show", str(ckpts), "99"), code=1, contains="no checkpoint")
    assert_one_line_error(cli("show", str(ckpts), "-3"), code=2, contains=">= 0")
    assert_one_line_error(cli("show", str(ckpts), "three"), code=2, contains=">= 0")


def test_an_inline_checkpoint_is_shown_verified_restored(cli: Cli, tmp_path: Path) -> None:
    """A tiny checkpoint lives inside its record (no payload object): ``show`` lists its
    files like any other's, ``verify`` reads them from the record (and finds a flipped
    byte there), ``restore`` writes them out, and falls back past a damaged one."""
    loc = tmp_path / "ckpts"

    async def save() -> None:
        async with asynccp.Checkpointer(loc) as cp:
            await cp.save(0, {"data": b"counter 0", "extra/notes.txt": "tiny"})
            await cp.save(1, b"counter 1")

    asyncio.run(save())
    assert list((loc / "data").iterdir()) == []  # nothing but records
    r = cli("show", str(loc), "0")
    assert r.code == 0, r.err
    assert "extra/notes.txt" in r.out and "crc32c:" in r.out
    doc = json.loads(cli("show", str(loc), "0", "--json").out)
    assert doc["files"]["data"]["size"] == 9 and doc["files"]["extra/notes.txt"]["size"] == 4
    assert cli("verify", str(loc)).code == 0
    dest = tmp_path / "out"
    assert cli("restore", str(loc), str(dest), "--step", "0").code == 0
    assert (dest / "data").read_bytes() == b"counter 0"
    assert (dest / "extra" / "notes.txt").read_text() == "tiny"

    record = loc / "manifests" / f"{1:020d}.json"
    raw = json.loads(record.read_bytes())
    raw["files"]["data"]["inline"] = base64.b64encode(b"COUNTER 1").decode()  # same size
    record.write_text(json.dumps(raw))
    r = cli("verify", str(loc))
    assert r.code == 1 and "step 1: FAILED" in r.out and "checksum" in r.out
    with skips_shown():
        r = cli("restore", str(loc), str(tmp_path / "fallback"))
    assert r.code == 0 and "restored step 0" in r.out


def display_width(text: str) -> int:
    """Terminal cells: wide East Asian characters and emoji take 2, combining marks 0."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def test_ls_and_show_print_characters_and_align_wide_ones(cli: Cli, tmp_path: Path) -> None:
    """Metadata prints as written (``✓``, not ``\\u2713``), in the text and in ``--json``
    (still valid JSON); a file name of wide characters keeps the columns after it aligned
    on a terminal (by display width, not by code points)."""
    loc = tmp_path / "ckpts"
    meta = {"note": "✓ 完了 🎉", "loss": 0.5}

    async def save() -> None:
        async with asynccp.Checkpointer(loc) as cp:
            files = {
                "data": b"12345",
                "模型/权重.bin": b"1",
                "😀.txt": b"123",
                "e\u0301.txt": b"12",
            }
            await cp.save(0, files, metadata=meta)

    asyncio.run(save())
    ls = cli("ls", str(loc))
    assert ls.code == 0, ls.err
    assert '"note":"✓ 完了 🎉"' in ls.out and "\\u" not in ls.out
    show = cli("show", str(loc), "0")
    assert show.code == 0, show.err
    assert '"note": "✓ 完了 🎉"' in show.out and "\\u" not in show.out
    rows = show.out[show.out.index("FILE") :].splitlines()
    assert len(rows) == 5
    # the BYTES column (right-aligned) ends in the same terminal cell on every row
    ends = {display_width(row[: row.index(row.split()[1]) + len(row.split()[1])]) for row in rows}
    assert len(ends) == 1, rows
    for args in (["ls", str(loc), "--json"], ["show", str(loc), "0", "--json"]):
        r = cli(*args)
        assert "✓ 完了 🎉" in r.out and "\\u" not in r.out
        doc = json.loads(r.out)
        got = doc["checkpoints"][0]["metadata"] if args[0] == "ls" else doc["metadata"]
        assert got == meta


def test_metadata_stdout_cannot_print_is_escaped_not_fatal(cli: Cli, tmp_path: Path) -> None:
    """A lone surrogate is valid JSON metadata but no UTF-8 stdout can print it: that
    output falls back to JSON escapes (the same document) instead of failing. (save()
    refuses such metadata; a record written by other means may hold it.)"""
    loc = tmp_path / "ckpts"
    meta = {"raw": "\ud800 ✓"}

    async def save() -> None:
        async with asynccp.Checkpointer(loc) as cp:
            await cp.save(0, b"x", metadata={"raw": "SURROGATE ✓"})

    asyncio.run(save())
    record = loc / "manifests" / f"{0:020d}.json"
    record.write_bytes(record.read_bytes().replace(b"SURROGATE", b"\\ud800"))
    for args in (["ls", str(loc)], ["show", str(loc), "0"]):
        r = cli(*args)
        assert r.code == 0 and r.err == "", r.err
        assert "\\ud800" in r.out
    for args in (["ls", str(loc), "--json"], ["show", str(loc), "0", "--json"]):
        doc = json.loads(cli(*args).out)
        assert (doc["checkpoints"][0] if args[0] == "ls" else doc)["metadata"] == meta


# -- verify ----------------------------------------------------------------------------


def test_verify_ok_then_corrupt(cli: Cli, ckpts: Path) -> None:
    r = cli("verify", str(ckpts))
    assert r.code == 0, r.out + r.err
    assert "5 of 5 checkpoint(s) verified" in r.out

    victim = payload_file(ckpts, 2)
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF  # same size, wrong checksum: only a full read finds it
    victim.write_bytes(bytes(data))
    r = cli("verify", str(ckpts))
    assert r.code == 1
    assert "step 2: FAILED" in r.out and "checksum" in r.out
    assert "4 of 5" in r.out

    doc = json.loads(cli("verify", str(ckpts), "--json").out)
    assert doc["ok"] is False
    assert [c["step"] for c in doc["checkpoints"] if not c["ok"]] == [2]
    assert cli("verify", str(ckpts), "--step", "3").code == 0
    assert cli("verify", str(ckpts), "--step", "2").code == 1


def test_verify_reports_bad_manifest_and_missing_object(cli: Cli, ckpts: Path) -> None:
    (ckpts / "manifests" / f"{1:020d}.json").write_text("{not json")
    payload_file(ckpts, 4).unlink()
    r = cli("verify", str(ckpts), "--json")
    assert r.code == 1
    failed = {c["step"]: c["error"] for c in json.loads(r.out)["checkpoints"] if not c["ok"]}
    assert set(failed) == {1, 4}
    assert "manifest" in failed[1] and "missing" in failed[4]


# -- restore ---------------------------------------------------------------------------


def test_restore_newest_step_and_fallback(cli: Cli, ckpts: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = cli("restore", str(ckpts), str(dest))
    assert r.code == 0, r.err
    assert "restored step 4" in r.out
    assert (dest / "data").read_bytes() == state(4)

    dest3 = tmp_path / "out3"
    doc = json.loads(cli("restore", str(ckpts), str(dest3), "--step", "3", "--json").out)
    assert doc["step"] == 3 and doc["files"] == ["data", "extra/notes.txt"]
    assert (dest3 / "extra" / "notes.txt").read_text() == "notes 3"

    # The newest fails its checksum: restore warns (one line) and falls back to step 3.
    payload_file(ckpts, 4).write_bytes(state(4).upper())
    dest_fb = tmp_path / "fallback"
    with skips_shown():
        r = cli("restore", str(ckpts), str(dest_fb))
    assert r.code == 0, r.err
    assert "restored step 3" in r.out
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("asynccp: warning: checkpoint 4")
    assert (dest_fb / "data").read_bytes() == state(3)


def test_failed_restore_leaves_no_destination_behind(cli: Cli, ckpts: Path, tmp_path: Path) -> None:
    payload_file(ckpts, 4).write_bytes(state(4).upper())  # same size, wrong checksum
    # A destination that did not exist, nested: every folder the command made goes again.
    outer = tmp_path / "new"
    dest = outer / "deeper" / "out4"
    line = assert_one_line_error(
        cli("restore", str(ckpts), str(dest), "--step", "4"), code=1, contains="verification"
    )
    assert "checkpoint 4" in line
    assert not outer.exists()
    # A destination that existed stays, as it was (here: empty).
    existing = tmp_path / "existing"
    existing.mkdir()
    assert cli("restore", str(ckpts), str(existing), "--step", "4").code == 1
    assert existing.is_dir() and list(existing.iterdir()) == []
    # Nothing verifies at all: the same.
    for step in range(4):
        payload_file(ckpts, step).write_bytes(b"x" * len(state(step)))
    nothing = tmp_path / "nothing"
    with skips_shown():
        r = cli("restore", str(ckpts), str(nothing))
    assert r.code == 1 and "nothing restored" in r.err_lines[-1]
    assert len(r.err_lines) == 6  # a warning per skipped checkpoint, then the error
    assert not nothing.exists()


def test_restore_nothing(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("restore", str(empty), str(tmp_path / "out"))
    assert_one_line_error(r, code=1, contains="nothing restored")
    assert not (tmp_path / "out").exists()


def test_restore_into_a_folder_with_the_same_files_needs_force(
    cli: Cli, ckpts: Path, tmp_path: Path
) -> None:
    """``asynccp restore LOC DEST`` once overwrote DEST's files silently: a file in
    the way is exit 1, one line naming it and --force, and nothing is written; files
    that do not clash and an empty DEST are fine; --force replaces."""
    dest = tmp_path / "out"
    (dest / "extra").mkdir(parents=True)
    (dest / "extra" / "notes.txt").write_text("mine")
    (dest / "other.txt").write_text("also mine")
    line = assert_one_line_error(
        cli("restore", str(ckpts), str(dest), "--step", "3"), code=1, contains="--force"
    )
    assert str(dest / "extra" / "notes.txt") in line
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "extra",
        "extra/notes.txt",
        "other.txt",
    ]
    assert (dest / "extra" / "notes.txt").read_text() == "mine"
    r = cli("restore", str(ckpts), str(dest), "--step", "3", "--force")
    assert r.code == 0, r.err
    assert (dest / "extra" / "notes.txt").read_text() == "notes 3"
    assert (dest / "other.txt").read_text() == "also mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("restore", str(ckpts), str(empty)).code == 0
    assert (empty / "data").read_bytes() == state(4)


# -- gc --------------------------------------------------------------------------------


def test_gc_keep_keep_every_dry_run_and_orphans(cli: Cli, tmp_path: Path) -> None:
    loc = tmp_path / "ckpts"
    save_steps(loc, range(10))
    orphan = loc / "data" / f"{42:020d}-deadbeef0000"
    orphan.mkdir(parents=True)
    (orphan / "data").write_bytes(b"never committed")

    r = cli("gc", str(loc), "--keep", "2", "--keep-every", "4", "--dry-run", "--json")
    doc = json.loads(r.out)
    assert doc["deleted_steps"] == [1, 2, 3, 5, 6, 7] and doc["kept_steps"] == [0, 4, 8, 9]
    assert len(list((loc / "manifests").iterdir())) == 10  # dry run: nothing deleted
    assert orphan.exists()

    r = cli("gc", str(loc), "--keep", "2", "--keep-every", "4")
    assert r.code == 0, r.err
    assert "deleted 6 checkpoint(s)" in r.out
    doc = json.loads(cli("ls", str(loc), "--json").out)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 4, 8, 9]
    assert orphan.exists()  # younger than the default grace (an hour)

    doc = json.loads(cli("gc", str(loc), "--keep", "1", "--orphan-grace", "0", "--json").out)
    assert doc["deleted_steps"] == [0, 4, 8]
    assert doc["orphans_collected"] == [f"data/{42:020d}-deadbeef0000"]
    assert not orphan.exists()
    assert cli("verify", str(loc)).code == 0


def test_gc_bad_arguments(cli: Cli, ckpts: Path) -> None:
    assert_one_line_error(cli("gc", str(ckpts)), code=2, contains="--keep")
    assert_one_line_error(cli("gc", str(ckpts), "--keep", "1", "--orphan-grace", "x"), code=2)
    assert len(list((ckpts / "manifests").iterdir())) == 5


def test_gc_keep_has_one_rule_and_one_message(cli: Cli, ckpts: Path) -> None:
    """--keep -1, 0 and a non-number are refused alike: an integer >= 1."""
    for bad in ("-1", "0", "two"):
        line = assert_one_line_error(cli("gc", str(ckpts), "--keep", bad), code=2)
        assert f"argument --keep: must be an integer >= 1, got '{bad}'" in line
    assert len(list((ckpts / "manifests").iterdir())) == 5
    assert "(>= 1)" in cli("gc", "--help").out


# -- messages ----------------------------------------------------------------------------


def test_every_message_has_one_prefix_and_warnings_one_casing(
    cli: Cli, ckpts: Path, tmp_path: Path
) -> None:
    """Errors, warnings (Python's and the library's log records) all read the same way."""
    (ckpts / "manifests" / f"{1:020d}.json").write_text("{not json")  # gc logs its move
    payload_file(ckpts, 4).write_bytes(state(4).upper())  # restore warns, then falls back
    with skips_shown():
        warned = cli("restore", str(ckpts), str(tmp_path / "out"))
    results = {
        "warning": warned,
        "usage": cli("gc", str(ckpts), "--keep", "0"),
        "failure": cli("show", str(ckpts), "99"),
        "store": cli("ls", str(tmp_path / "missing")),
        "log warning": cli("gc", str(ckpts), "--keep", "10", "--invalid", "quarantine"),
    }
    assert results["log warning"].code == 0 and results["warning"].code == 0
    lines = {what: r.err_lines for what, r in results.items()}
    assert all(len(ls) == 1 for ls in lines.values()), lines
    for what, (line,) in lines.items():
        assert line.startswith("asynccp: "), (what, line)
        assert line.count("asynccp:") == 1, (what, line)
        assert "WARNING" not in line and "Warning:" not in line, (what, line)
    assert lines["log warning"][0].startswith("asynccp: warning: moved manifests/")
    assert lines["warning"][0].startswith("asynccp: warning: checkpoint 4 ")
    assert lines["usage"][0].startswith("asynccp: gc: argument --keep")


def test_ls_shows_invalid_checkpoints_and_quarantine_and_gc_removes_them(
    cli: Cli, ckpts: Path
) -> None:
    """An invalid record is a row of its own in ls (not a log line); gc --keep neither
    counts nor deletes it; gc --invalid quarantine moves it aside, and ls shows that."""
    (ckpts / "manifests" / f"{3:020d}.json").write_text("{not json")
    r = cli("ls", str(ckpts))
    assert r.code == 0 and r.err_lines == [], r.err
    row = next(ln for ln in r.out.splitlines() if ln.split()[:1] == ["3"])
    assert "INVALID" in row and "not JSON" in row
    assert "4 valid checkpoint(s)" in r.out and "1 invalid" in r.out
    r = cli("gc", str(ckpts), "--keep", "1", "--json")
    doc = json.loads(r.out)
    assert doc["kept_steps"] == [4] and doc["deleted_steps"] == [0, 1, 2]
    assert doc["invalid_steps"] == [3] and doc["invalid_removed"] == []
    assert (ckpts / "manifests" / f"{3:020d}.json").exists()
    r = cli("gc", str(ckpts), "--keep", "1", "--invalid", "quarantine")
    assert r.code == 0 and "1 invalid checkpoint(s) moved to quarantine/: 3" in r.out, r.out
    r = cli("ls", str(ckpts), "--json")
    doc = json.loads(r.out)
    assert [c["step"] for c in doc["checkpoints"]] == [4] and doc["invalid"] == []
    assert len(doc["quarantine"]) == 1 and doc["quarantine"][0].startswith("quarantine/")
    assert "quarantine/ holds 1 record(s)" in cli("ls", str(ckpts)).out


def test_warnings_are_reported_even_where_the_host_makes_them_errors(
    cli: Cli, ckpts: Path, tmp_path: Path
) -> None:
    """Under ``-W error`` (or ``filterwarnings = error``) a corrupt newest checkpoint is
    still a warning line and a fallback, not a failed command."""
    payload_file(ckpts, 4).write_bytes(state(4).upper())  # same size, other bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = cli("restore", str(ckpts), str(tmp_path / "out"))
    assert r.code == 0, r.err
    assert "restored step 3" in r.out
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("asynccp: warning: "), r.err


def test_main_leaves_logging_and_warnings_as_it_found_them(cli: Cli, ckpts: Path) -> None:
    root = logging.getLogger()
    handlers, level, showwarning = list(root.handlers), root.level, warnings.showwarning
    (ckpts / "manifests" / f"{1:020d}.json").write_text("{not json")
    assert cli("ls", str(ckpts)).code == 0
    assert root.handlers == handlers and root.level == level
    assert warnings.showwarning is showwarning


# -- bad input common to all commands ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["ls"],
        ["ls", "ftp://host/x"],
        ["ls", "/tmp", "-o", "region=us-east-1"],
        ["restore", "s3://"],
    ],
)
def test_usage_errors_are_one_line(cli: Cli, args: list[str]) -> None:
    assert_one_line_error(cli(*args), code=2)


def test_help_and_version(cli: Cli) -> None:
    r = cli("--help")
    assert r.code == 0
    for cmd in ("bench", "ls", "show", "verify", "restore", "gc"):
        assert cmd in r.out
    assert cli("--version").out.strip() == f"asynccp {asynccp.__version__}"


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert asynccp.__version__ == version("asynccp")


# -- bench -----------------------------------------------------------------------------


FIGURES = {
    "stall_ms": {"asynccp", "asynccp_max", "sync_write", "ratio", "ratio_low", "ratio_high"},
    "throughput_mib_s": {"asynccp", "raw_obstore", "ratio", "ratio_low", "ratio_high"},
    "restore_mib_s": {"asynccp", "raw_obstore", "ratio", "ratio_low", "ratio_high"},
    "loop_lag_ms": {"asynccp", "sync_writer"},
}


def check_bench_doc(doc: dict[str, Any], kinds: set[str], sizes: set[int]) -> None:
    assert {(c["kind"], c["size"]) for c in doc["cases"]} == {(k, s) for k in kinds for s in sizes}
    for case in doc["cases"]:
        for key, figures in FIGURES.items():
            assert figures <= set(case[key]), (key, case[key])
        for who in ("asynccp", "sync_writer"):
            assert {"p50", "p99", "max", "ticks"} <= set(case["loop_lag_ms"][who])
        assert case["stall_ms"]["asynccp"] > 0 and case["stall_ms"]["sync_write"] > 0
        assert 1 <= case["rounds"] <= 2  # more than --rounds only while the range widens
        committed = case["throughput_mib_s"]["committed_bytes"]
        assert committed == case["size"] * 2 * case["rounds"]  # nothing lost
        ratio = case["throughput_mib_s"]
        assert ratio["ratio_low"] <= ratio["ratio"] <= ratio["ratio_high"]
        assert case["restore_mib_s"]["asynccp"] > 0
        if case["kind"] == "bytearray":
            assert case["stall_ms"]["memory_copy"] > 0 and case["stall_ms"]["ratio_to_copy"] > 0
    small = doc["small_saves"]
    assert small["saves"] == 30 * small["rounds"] and small["asynccp_saves_per_s"] > 0
    assert small["sync_writes_per_s"] > 0 and small["ratio"] > 0
    assert small["committed"] >= 1
    block = doc["small_block_saves"]  # every save committed, none superseded
    assert block["policy"] == "block" and block["saves"] == 30 * block["rounds"]
    assert block["committed"] == block["saves"] and block["superseded"] == 0
    assert block["ratio_low"] <= block["ratio"] <= block["ratio_high"]
    mem = doc["memory"]
    assert mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0
    assert mem["max_pending_bytes"] == 256 << 10
    names = " ".join(t["target"] for t in doc["targets"])
    for word in ("stall", "throughput", "small saves", "loop lag", "restore", "RSS"):
        assert word in names
    assert all(isinstance(t["met"], bool) for t in doc["targets"])
    for t in doc["targets"]:  # missed only when the whole range misses
        assert t["status"] in ("met", "noise", "missed") and t["met"] == (t["status"] != "missed")
    assert doc["machine"]["cpus"] and doc["machine"]["python"]


def check_verdict(line: str, doc: dict[str, Any], code: int, *, fail_on_miss: bool) -> None:
    """The closing line: targets met or missed, and the exit code, as the run ended."""
    missed = [t for t in doc["targets"] if not t["met"]]
    noise = [t for t in doc["targets"] if t["status"] == "noise"]
    assert line.startswith("verdict: ")
    if missed:
        assert f"{len(missed)} of {len(doc['targets'])} targets missed" in line
        assert code == (1 if fail_on_miss else 0)
    elif noise:
        assert f"no target missed: {len(doc['targets']) - len(noise)} met" in line
        assert f"{len(noise)} within noise" in line and code == 0
    else:
        assert f"all {len(doc['targets'])} targets met" in line and code == 0
    assert f"exit code {code}" in line
    if missed:  # the policy is stated whenever it matters
        assert "--fail-on-miss" in line


@pytest.mark.slow
def test_bench_smoke_local(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = cli(*TINY_BENCH, "--json", str(out))
    assert r.code == 0, r.err  # a missed target is a finding, not a failure (no --fail-on-miss)
    doc = json.loads(out.read_text())
    check_bench_doc(doc, {"bytes", "bytearray", "file", "files"}, {64 << 10, 128 << 10})
    assert doc["location"]["kind"] == "local directory"
    assert "targets" in r.out and "caller stall" in r.out
    # The last column says what it is; the run ends with the verdict and its exit code.
    assert "median ratio" in r.out
    assert _bench_report.RATIO_NOTE.split(";")[0] in " ".join(r.out.split())
    check_verdict(r.out.strip().splitlines()[-1], doc, r.code, fail_on_miss=False)
    assert r.err == ""


@pytest.mark.slow
def test_bench_url_plot_and_cleanup(cli: Cli, tmp_path: Path) -> None:
    where = tmp_path / "store"
    png = tmp_path / "bench.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional (bench extra); the rest is not
        plot: list[str] = []
    else:
        plot = ["--plot", str(png)]
    r = cli(*TINY_BENCH, "--kinds", "bytes", "--url", str(where), "--no-memory", *plot,
            "--json", "-")  # fmt: skip
    doc = json.loads(r.out)  # stdout is the JSON document alone
    assert doc["memory"] is None and [c["kind"] for c in doc["cases"]] == ["bytes", "bytes"]
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(where.iterdir()) == []  # the bench's own folder is removed
    # With --json -, the verdict goes to stderr, as every other message there.
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("asynccp: verdict: ")
    check_verdict(r.err_lines[0].removeprefix("asynccp: "), doc, r.code, fail_on_miss=False)


def test_bench_on_memory_warns_and_fail_on_miss_sets_the_exit_code(cli: Cli) -> None:
    r = cli("bench", "--url", "memory://", "--sizes", "64KiB", "--kinds", "bytes", "--saves", "1",
            "--rounds", "1", "--max-rounds", "1", "--small-saves", "0", "--small-block-saves",
            "0", "--no-memory", "-q", "--fail-on-miss",
            "--json", "-")  # fmt: skip
    doc = json.loads(r.out)
    assert r.err_lines[0] == f"asynccp: warning: {MEMORY_BENCH_WARNING}"
    assert "say nothing about a real store" in r.err_lines[0]
    assert len(r.err_lines) == 2
    check_verdict(r.err_lines[1].removeprefix("asynccp: "), doc, r.code, fail_on_miss=True)
    assert cli("bench", "--help").code == 0  # and the help says it too
    assert "memory:// measures no storage" in " ".join(cli("bench", "--help").out.split())


def test_bench_figure_without_samples_prints_na() -> None:
    """A loop-lag ticker that never ticked: ``n/a`` in the table and the targets, not 0."""
    opts = BenchOptions(url="memory://", sizes=[64 << 10], kinds=["bytes"], saves=1, rounds=1,
                        max_rounds=1, small_saves=0, small_block_saves=0,
                        memory=False)  # fmt: skip
    doc = asyncio.run(_bench.run(opts))
    case = doc["cases"][0]
    case["loop_lag_ms"]["asynccp"] = _bench_stats.lag_summary([])  # what a run without ticks gives
    case["restore_mib_s"]["asynccp"] = _bench_stats.mib_s(0, 0.0)  # and a time too short to measure
    assert case["loop_lag_ms"]["asynccp"]["p99"] is None
    assert case["restore_mib_s"]["asynccp"] is None
    doc["targets"] = _bench_targets.targets(doc)
    lag = next(t for t in doc["targets"] if t["target"].startswith("loop lag"))
    assert lag["value"] is None and lag["met"] is False

    text = _bench_report.render_text(doc)
    lag_row = next(ln for ln in text.splitlines() if "loop lag p50 / p99" in ln)
    assert lag_row.split()[5] == "n/a", lag_row  # the asynccp column
    restore_row = next(ln for ln in text.splitlines() if "restore throughput" in ln)
    assert restore_row.split()[2] == "n/a", restore_row
    target_row = next(ln for ln in text.splitlines() if ln.startswith("loop lag p99"))
    assert "n/a" in target_row and "no samples" in target_row
    assert "0.0 ms" not in text and "0.00 ms" not in text
    line, code = _bench_report.verdict(doc, fail_on_miss=True)
    assert "without samples" in line and code == 1
    json.dumps(doc, allow_nan=False)  # None, never NaN or Infinity, in the JSON document


def test_bench_calls_a_target_missed_only_when_its_whole_range_misses() -> None:
    """Each target is judged on the range of its figure over the rounds: met when the
    whole range meets the goal, missed when the whole range misses it, within noise
    when the goal lies inside it; the verdict counts each kind."""

    def case(low: float, mid: float, high: float) -> dict[str, Any]:
        figure = {"ratio": mid, "ratio_low": low, "ratio_high": high}
        return {
            "kind": "bytes",
            "size": 1 << 20,
            "stall_ms": {**figure, "ratio": 0.001, "ratio_low": 0.0, "ratio_high": 0.002},
            "throughput_mib_s": figure,
            "restore_mib_s": {"ratio": 2.0, "ratio_low": 1.5, "ratio_high": 3.0},
            "loop_lag_ms": {"asynccp": {"p99": 1.0, "p99_low": 0.5, "p99_high": 9.0}},
        }

    judged = {}
    for name, spread in {"met": (0.95, 1.0, 1.1), "noise": (0.7, 0.95, 1.2),
                         "missed": (0.5, 0.6, 0.89)}.items():  # fmt: skip
        doc = {"cases": [case(*spread)], "small_saves": None, "memory": None}
        targets = {t["target"]: t for t in _bench_targets.targets(doc)}
        judged[name] = targets["throughput, 1 MiB bytes / raw puts"]
        assert targets["loop lag p99, 1 MiB bytes uploading"]["status"] == "noise"
        assert targets["stall, 1 MiB bytes / sync write"]["status"] == "met"
        doc["targets"] = list(targets.values())
        line, code = _bench_report.verdict(doc, fail_on_miss=True)
        if name == "missed":
            assert "1 of 4 targets missed" in line and "1 within noise" in line and code == 1
        else:
            assert "no target missed" in line and code == 0
    assert {k: (v["status"], v["met"]) for k, v in judged.items()} == {
        "met": ("met", True),
        "noise": ("noise", True),
        "missed": ("missed", False),
    }
    rows = {r[0]: r for r in _bench_report._target_rows({"targets": [judged["noise"]]})}
    row = rows["throughput, 1 MiB bytes / raw puts"]
    assert row[1] == "95.00 % (70.00-120.00)" and row[3] == "within noise"


def test_bench_plot_without_matplotlib_says_how_to_install_it(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """asynccp is not on a registry: the hint is ``pip install matplotlib`` or, from a
    clone, ``pip install -e '.[bench]'`` (``'asynccp[bench]'`` could not be installed)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    r = cli("bench", "-q", "--plot", str(tmp_path / "out.png"))
    line = assert_one_line_error(r, code=2, contains="--plot needs matplotlib")
    assert "pip install matplotlib" in line and "pip install -e '.[bench]'" in line
    assert "asynccp[" not in line
    assert not (tmp_path / "out.png").exists()


def test_bench_plot_ticks_read_as_plain_numbers() -> None:
    """The figure's log axes are labelled ``0.1``, ``0.2``, ``0.5``, ``1``: plain numbers,
    not matplotlib's default ``10^-1`` / ``2x10^-1`` mathtext."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = BenchOptions(url="memory://", sizes=[64 << 10, 256 << 10, 1 << 20], kinds=["bytes"],
                        saves=1, rounds=1, max_rounds=1, small_saves=0,
                        small_block_saves=0, memory=False)  # fmt: skip
    doc = asyncio.run(_bench.run(opts))
    fig = _bench_report.figure(doc)
    try:
        fig.canvas.draw()
        stall, throughput = fig.axes
        shown: dict[str, list[str]] = {}
        for name, axis in (("size", stall.xaxis), ("stall", stall.yaxis),
                           ("size 2", throughput.xaxis)):  # fmt: skip
            low, high = sorted(axis.get_view_interval())
            shown[name] = [
                t.get_text()
                for t in axis.get_ticklabels(which="both")
                if t.get_text() and low <= t.get_position()[name == "stall"] <= high
            ]
            assert shown[name], name
            for text in shown[name]:
                assert float(text) > 0, (name, text)  # "2", "0.5": no mathtext, no "10^"
    finally:
        plt.close(fig)
    # 64 KiB to 1 MiB: the decades, and 2 and 5 between them
    assert {"0.1", "0.2", "0.5", "1"} <= set(shown["size"]), shown["size"]
    assert shown["size"] == shown["size 2"]


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["--sizes", "-1"], "size"),
        (["--sizes", "0"], "size"),
        (["--sizes", "12parsecs"], "size"),
        (["--policy", "fastest"], "policy"),
        (["--kinds", "pickle"], "kind"),
        (["--saves", "0"], "saves"),
        (["--max-pending-bytes", "-5MiB"], "max-pending-bytes"),
        (["--url", "nope://x"], "scheme"),
    ],
)
def test_bench_bad_options(cli: Cli, args: list[str], contains: str) -> None:
    assert_one_line_error(cli("bench", "-q", *args), contains=contains)


def test_bench_unreachable_url(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens on the discard port
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_REGION": REGION,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = cli("bench", "-q", "--url", "s3://bucket/x", "--retries", "0")
    assert_one_line_error(r, code=1, contains="cannot reach")


# -- S3 (moto), configured from the environment only -----------------------------------------


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.mark.slow
def test_s3_commands(cli: Cli, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/runs/7"
    save_steps(url, range(4))

    doc = json.loads(cli("ls", url, "--json").out)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 1, 2, 3]
    assert "extra/notes.txt" in cli("show", url, "3").out
    r = cli("verify", url)
    assert r.code == 0 and "4 of 4" in r.out, r.out + r.err
    r = cli("restore", url, str(tmp_path / "out"))
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "extra" / "notes.txt").read_text() == "notes 3"
    doc = json.loads(cli("gc", url, "--keep", "1", "--json").out)
    assert doc["deleted_steps"] == [0, 1, 2] and doc["kept_steps"] == [3]
    assert [c["step"] for c in json.loads(cli("ls", url, "--json").out)["checkpoints"]] == [3]
    # Another prefix in the same bucket is simply empty; a missing bucket is an error.
    assert "no checkpoints" in cli("ls", f"s3://{s3_bucket}/other").out
    assert_one_line_error(cli("ls", "s3://no-such-bucket/x", "--retries", "0"), code=1)


@pytest.mark.slow
def test_s3_bench_smoke(cli: Cli, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = cli(*TINY_BENCH, "--url", f"s3://{s3_bucket}/bench", "--kinds", "bytes,files",
            "--json", str(out))  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(out.read_text())
    check_bench_doc(doc, {"bytes", "files"}, {64 << 10, 128 << 10})
    assert doc["location"]["kind"] == "S3Store"
    # The bench cleaned up after itself.
    store = make_s3_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket)
    assert [m for batch in obstore.list(store) for m in batch] == []


def test_s3_configured_with_store_options_only(cli: Cli, s3_bucket: str, moto_server: str) -> None:
    """-o takes store and HTTP client settings alike (allow_http goes to client_options)."""
    url = f"s3://{s3_bucket}/opts"
    opts = [
        "-o", f"endpoint={moto_server}", "-o", "allow_http=true", "-o", f"region={REGION}",
        "-o", f"access_key_id={ACCESS_KEY_ID}", "-o", f"secret_access_key={SECRET_ACCESS_KEY}",
    ]  # fmt: skip
    r = cli("ls", url, *opts)
    assert r.code == 0, r.err
    assert "no checkpoints" in r.out
