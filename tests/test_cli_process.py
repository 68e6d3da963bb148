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
