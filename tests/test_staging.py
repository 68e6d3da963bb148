"""Staging folders: a hard-killed process leaves its folder; the next Checkpointer removes it.

``tests/scripts/staging_saver.py`` saves a file payload in a loop (so its staging
folder is in use) with ``staging_dir`` set to a folder of the test. The test SIGKILLs
one such process while another keeps running, then opens a Checkpointer on the same
``staging_dir``: the killed process's folder is removed, the live one's is not. The
in-process tests cover folders from before lock files, entries that only look like
staging folders, and errors while collecting (which must never fail the open).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asynccp import Checkpointer
from asynccp._write._staging import LOCK_NAME, PREFIX, UNLOCKED_AGE

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no flock: nothing collected")

SCRIPT = Path(__file__).parent / "scripts" / "staging_saver.py"
#: A stuck child must not hang the suite.
LINE_TIMEOUT = 60.0


def start_saver(location: Path, staging: Path, source: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(location), str(staging), str(source)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def wait_ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the saver's ``ready`` line (its first checkpoint committed)."""
    assert proc.stdout is not None
    with anyio.fail_after(LINE_TIMEOUT):
        line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"saver did not get ready: {line!r}\n{err}")


def staging_folders(staging: Path) -> list[Path]:
    return sorted(p for p in staging.iterdir() if p.name.startswith(PREFIX))


def owner_pid(folder: Path) -> int:
    """The pid written in a staging folder's lock file."""
    m = re.match(r"pid (\d+) on ", (folder / LOCK_NAME).read_text())
    assert m, folder
    return int(m.group(1))


def kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=LINE_TIMEOUT)


async def test_the_folder_of_a_killed_process_is_collected_a_live_ones_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asynccp")
    staging = tmp_path / "staging"
    staging.mkdir()
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(2 << 20))
    killed = start_saver(tmp_path / "killed", staging, source)
    alive: subprocess.Popen[str] | None = None
    try:
        await wait_ready(killed)
        [left] = staging_folders(staging)
        alive = start_saver(tmp_path / "alive", staging, source)
        await wait_ready(alive)
        [kept] = [f for f in staging_folders(staging) if f != left]

        await anyio.to_thread.run_sync(kill, killed)
        assert killed.returncode == -signal.SIGKILL
        assert left.is_dir()  # a SIGKILL leaves it behind

        async with Checkpointer(tmp_path / "new", staging_dir=staging) as cp:
            assert not left.exists()  # collected when the new Checkpointer opened
            assert kept.is_dir() and owner_pid(kept) == alive.pid  # its owner is alive
            ours = [f for f in staging_folders(staging) if f != kept]
            assert len(ours) == 1 and owner_pid(ours[0]) == os.getpid()
            await (await cp.save(0, source))  # and staging works as ever
        assert staging_folders(staging) == [kept]  # ours went at close
        removed = [
            r.getMessage() for r in caplog.records if "removed the abandoned" in r.getMessage()
        ]
        assert removed == [
            f"asynccp: removed the abandoned staging folder {left} (its process is gone)"
        ]
    finally:
        for proc in (killed, alive):
            if proc is not None:
                await anyio.to_thread.run_sync(kill, proc)

    # The other one is gone now too: the next Checkpointer removes its folder as well.
    async with Checkpointer(tmp_path / "new", staging_dir=staging):
        pass
    assert staging_folders(staging) == []


async def test_open_checkpointers_of_one_process_keep_each_others_folders(
    tmp_path: Path,
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    async with Checkpointer(tmp_path / "a", staging_dir=tmp_path) as first:
        async with Checkpointer(tmp_path / "b", staging_dir=tmp_path) as second:
            assert len(staging_folders(tmp_path)) == 2
            await (await second.save(0, src))
        await (await first.save(0, src))  # its folder is still there
    assert staging_folders(tmp_path) == []


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


async def test_folders_without_a_lock_file_go_only_after_a_day_untouched(tmp_path: Path) -> None:
    """Folders of an asynccp from before lock files: their owner cannot be asked, so
    only a folder in which nothing changed for a day is removed. Entries that only look
    like staging folders are never touched."""
    staging = tmp_path / "staging"
    staging.mkdir()
    old_enough = UNLOCKED_AGE + 600

    stale = staging / f"{PREFIX}stale"  # left by a killed process a day and more ago
    stale.mkdir()
    (stale / "staged-abc").write_bytes(b"partial copy")
    age(stale / "staged-abc", old_enough)
    age(stale, old_enough)

    busy = staging / f"{PREFIX}busy"  # an old folder, but a file was staged an hour ago
    busy.mkdir()
    (busy / "staged-def").write_bytes(b"being uploaded")
    age(busy / "staged-def", 3600)
    age(busy, old_enough)

    recent = staging / f"{PREFIX}recent"  # created a minute ago
    recent.mkdir()
    age(recent, 60)

    elsewhere = tmp_path / "elsewhere"  # a link by a staging folder's name: not followed
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"keep me")
    age(elsewhere / "precious", old_enough)
    age(elsewhere, old_enough)
    link = staging / f"{PREFIX}link"
    link.symlink_to(elsewhere, target_is_directory=True)
    age(link, old_enough)

    a_file = staging / f"{PREFIX}file"  # a file by that name
    a_file.write_bytes(b"not a folder")
    age(a_file, old_enough)

    unrelated = staging / "unrelated"
    unrelated.mkdir()
    age(unrelated, old_enough)

    async with Checkpointer(tmp_path / "ck", staging_dir=staging):
        pass
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [busy.name, recent.name, link.name, a_file.name, "unrelated"]
    )
    assert (elsewhere / "precious").read_bytes() == b"keep me"


async def test_an_error_while_collecting_is_logged_and_never_fails_the_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / f"{PREFIX}bad"
    (bad / LOCK_NAME).mkdir(parents=True)  # a "lock file" that cannot be opened as one
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    async with Checkpointer(tmp_path / "ck", staging_dir=tmp_path) as cp:
        await (await cp.save(0, src))
    assert bad.is_dir()  # left alone
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"cannot collect the staging folder {bad}: " in m for m in warnings), warnings
