"""``python -m asynccp`` as a real process: the entry point, exit codes and stderr.

The commands themselves are tested in-process (``test_cli.py``); these few run a fresh
interpreter because the process is the point: ``-m asynccp`` resolves to the command
line, the exit status is the process's, and a failure leaves no traceback on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

import asynccp


def run(*args: str) -> Any:
    """``python -m asynccp ARGS`` in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "asynccp", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_python_m_asynccp_runs_the_command_line(tmp_path: Path) -> None:
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"asynccp {asynccp.__version__}"
    proc = run("ls", str(tmp_path))
    assert proc.returncode == 0 and "no checkpoints" in proc.stdout, proc.stderr


def test_python_m_asynccp_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    usage = run("gc", str(tmp_path), "--keep", "0")
    failure = run("ls", str(tmp_path / "missing"))
    assert (usage.returncode, failure.returncode) == (2, 1)
    for proc in (usage, failure):
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("asynccp: "), proc.stderr
        assert "Traceback" not in proc.stderr


def console_script() -> list[str]:
    """The ``asynccp`` console script beside this interpreter, else ``python -m asynccp``."""
    script = Path(sys.executable).with_name("asynccp")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "asynccp"]


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """``asynccp ls --json | head -n 3``: the reader exits after three lines, long before
    the command's output (far more than a pipe holds) is written. The command stops with
    141 (128 + SIGPIPE, what ``cat`` or ``git`` in the same pipeline report) and says
    nothing on stderr: no traceback, no "Broken pipe", no "Exception ignored"."""
    loc = tmp_path / "ckpts"

    async def save() -> None:
        async with asynccp.Checkpointer(loc, store=asynccp.StoreOptions(durable=False)) as cp:
            for step in range(8):  # 8 x 512 files: ~400 KiB of JSON, >> a 64 KiB pipe
                files = {f"shard/{i:04d}.bin": b"x" for i in range(512)}
                await cp.save(step, files)

    anyio.run(save)
    producer = subprocess.Popen(
        [*console_script(), "ls", "--json", str(loc)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert producer.stdout is not None and producer.stderr is not None
    reader = subprocess.run(["head", "-n", "3"], stdin=producer.stdout, capture_output=True)
    producer.stdout.close()  # the reader alone held the pipe's read end; it is gone now
    err = producer.stderr.read().decode()
    code = producer.wait(timeout=120)
    producer.stderr.close()
    assert reader.returncode == 0 and len(reader.stdout.splitlines()) == 3
    assert err == "", err
    assert code == 141


def test_no_reader_at_all_ends_the_command_quietly(tmp_path: Path) -> None:
    """A pipe whose reader closed before the command wrote anything (a short output, held
    in stdout's buffer until the exit flushes it): the same quiet 141, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*console_script(), "ls", str(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141
