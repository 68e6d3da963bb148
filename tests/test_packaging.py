"""The built wheel holds the whole library, and the library imports from it alone.

A fixed package list in ``pyproject.toml`` once left ``asynccp._store``, ``asynccp._write``
and ``asynccp._supervise`` out of the wheel: every test passed (they import the source
tree), and ``pip install asynccp`` gave a package that could not be imported. This test
builds a wheel the way a release would, compares its files with the source tree and
imports every module from the wheel in a fresh interpreter.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the project (the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "asynccp", src / "asynccp", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    if _setuptools_major() >= 77:  # what [build-system] requires: build with it, offline
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("asynccp-*.whl")
    return built


def _setuptools_major() -> int:
    """The installed setuptools' major version (0 when there is none). A virtualenv of
    Python 3.11 starts with setuptools 65, which cannot read ``license = "Apache-2.0"``:
    there the build runs isolated, with the setuptools ``pyproject.toml`` asks for."""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


def test_wheel_holds_every_module_and_the_type_marker(wheel: Path) -> None:
    expected = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "asynccp").rglob("*")
        if p.is_file() and (p.suffix == ".py" or p.name == "py.typed")
    }
    with zipfile.ZipFile(wheel) as zf:
        held = {n for n in zf.namelist() if n.startswith("asynccp/")}
    assert expected - held == set(), "missing from the wheel"
    assert "asynccp/_store/__init__.py" in held  # the check sees the subpackages
    assert {n for n in held if not n.endswith((".py", "py.typed"))} == set()


def test_every_module_imports_from_the_wheel_alone(wheel: Path) -> None:
    """A fresh interpreter with the wheel first on its path imports each module from it."""
    code = (
        "import importlib, json, pkgutil, asynccp\n"
        "names = [m.name for m in pkgutil.walk_packages(asynccp.__path__, 'asynccp.')\n"
        "         if m.name != 'asynccp.__main__']  # that one runs the command line\n"
        "files = {n: importlib.import_module(n).__file__ for n in names}\n"
        "files['asynccp'] = asynccp.__file__\n"
        "print(json.dumps(files))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
        cwd=wheel.parent,  # not the checkout: its asynccp/ must not be found
    )
    assert proc.returncode == 0, proc.stderr
    files: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    for sub in ("asynccp._store", "asynccp._write", "asynccp._supervise", "asynccp.cli"):
        assert sub in files
    outside = {n: f for n, f in files.items() if not f.startswith(str(wheel))}
    assert outside == {}, "imported from outside the wheel"
