"""Import hygiene: the library does not load its command line, nor the command line's extras.

Each check runs a fresh interpreter (``sys.modules`` of the test process already holds
everything the other tests imported) and prints what got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: What neither ``import asynccp`` nor ``asynccp ls`` may import.
HEAVY = ("rich", "matplotlib", "numpy")
CLI_MODULES = (
    "asynccp.cli",
    "asynccp.cli._bench",
    "asynccp.cli._bench_engine",
    "asynccp.cli._bench_report",
)


def imported_after(code: str) -> list[str]:
    """The sorted module names loaded in a fresh interpreter after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    names: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return names


def test_import_asynccp_loads_no_command_line() -> None:
    """The acceptance check: ``import asynccp`` lists only the library's own modules."""
    code = "import asynccp, sys; print(sorted(m for m in sys.modules if m.startswith('asynccp')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.strip()
    for word in ("cli", "bench", "report", "format"):
        assert word not in listed, listed
    names = imported_after("import asynccp")
    assert not [m for m in names if m.split(".")[0] in HEAVY]
    assert "asynccp.errors" in names  # the check does see the package's modules


def test_asynccp_ls_loads_no_bench_rich_or_matplotlib(tmp_path: Path) -> None:
    code = f"from asynccp.cli import main; assert main(['ls', {str(tmp_path)!r}]) == 0"
    names = imported_after(code)
    assert "asynccp.cli._main" in names
    assert not [m for m in names if m.split(".")[0] in HEAVY]
    assert not [m for m in names if m in CLI_MODULES[1:]]
