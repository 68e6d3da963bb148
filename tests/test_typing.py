"""Code a user writes against asynccp type-checks under ``mypy --strict``.

``mypy --strict asynccp`` (CI) checks the library itself; this checks how its types
read from the outside. A context manager whose exit is typed ``-> bool`` may, for a
type checker, swallow the block's exception, so a function that returns inside
``async with asynccp.Checkpointer(...)`` was reported as "Missing return statement".
"""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = """
import asynccp
import asynccp.sync


async def newest(where: str) -> int:
    async with asynccp.Checkpointer(where, keep=3) as cp:
        latest = await cp.latest()
        return -1 if latest is None else latest.step


def newest_sync(where: str) -> int:
    with asynccp.sync.Checkpointer(where) as cp:
        latest = cp.latest()
        return -1 if latest is None else latest.step


async def saves(where: str) -> asynccp.Checkpoint:
    async with asynccp.Checkpointer(where) as cp:
        handle = await cp.save(1, b"state")
        return await handle
"""


@pytest.mark.slow  # mypy analyses the whole package: ~10-30 s
def test_a_function_returning_inside_a_checkpointer_block_type_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "user.py"
    user.write_text(USER_CODE)
    monkeypatch.setenv("MYPYPATH", str(ROOT))  # (an editable install is invisible to mypy)
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(user)]
    )
    assert status == 0, out + err
