"""The example service (Starlette under uvicorn) as a real process, over HTTP on 127.0.0.1.

Its state survives a SIGTERM restart intact, and a SIGKILL losing only the writes the
newest checkpoint did not hold yet: every write the service reported as committed
before the kill is there after the restart, and what is there is exactly the first
``n`` acknowledged writes (nothing invented, nothing out of order).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _moto import free_port
from _sites import edit_newest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

EXAMPLE = Path(__file__).parent.parent / "examples" / "service.py"
INTERVAL = 0.05
#: Liveness bound for a start, a stop or a wait: wide, only there to fail instead of hang.
BOUND = 60.0
KEYS = ["a", "b", "c", "d", "e"]


class Service:
    """One run of ``examples/service.py`` on a free port, its output in files."""

    def __init__(self, location: Path, logs: Path, run: int) -> None:
        self.port = free_port()
        self.err = logs / f"run{run}.err"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(EXAMPLE),
                    "--location",
                    str(location),
                    "--port",
                    str(self.port),
                    "--interval",
                    str(INTERVAL),
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        self._wait(self._answers, "start answering")

    def request(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the service exited ({self.proc.returncode}): {self.output[-4000:]}"
            )
        try:
            self.request("GET", "/status")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not condition():
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the service did not {what}: {self.output[-4000:]}")
            time.sleep(0.02)  # a poll of a process's HTTP answers

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str) -> None:
        self._wait(lambda: condition(self.request("GET", "/status")), what)

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"the service did not exit on {sig.name}: {self.output[-4000:]}"
            ) from None

    @property
    def output(self) -> str:
        return self.err.read_text(errors="replace")


def write(service: Service, i: int) -> int:
    """The ``i``-th write of the test's fixed sequence; returns the service's write count."""
    return int(service.request("POST", f"/incr/{KEYS[i % len(KEYS)]}?by={i + 1}")["writes"])


def counts_after(n: int) -> dict[str, int]:
    """The counters after the first ``n`` writes of the sequence."""
    counts: dict[str, int] = {}
    for i in range(n):
        key = KEYS[i % len(KEYS)]
        counts[key] = counts.get(key, 0) + i + 1
    return counts


@pytest.fixture
def services(tmp_path: Path) -> Any:
    """Start runs of the service on one location; any still running at the end is killed."""
    started: list[Service] = []

    def start() -> Service:
        service = Service(tmp_path / "state", tmp_path, len(started))
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=BOUND)


@pytest.mark.slow
def test_state_survives_a_sigterm_restart_intact(services: Callable[[], Service]) -> None:
    first = services()
    assert first.request("GET", "/status")["restored_step"] is None
    acknowledged = [write(first, i) for i in range(30)]
    assert acknowledged == list(range(1, 31))
    assert first.stop(signal.SIGTERM) == -signal.SIGTERM  # uvicorn re-raises it after shutdown
    assert "Traceback" not in first.output
    second = services()
    status = second.request("GET", "/status")
    assert status["restored_step"] is not None and status["writes"] == 30
    assert second.request("GET", "/counts") == counts_after(30)  # every acknowledged write
    assert "restored step" in second.output


@pytest.mark.slow
def test_state_survives_a_sigkill_losing_at_most_the_last_interval(
    services: Callable[[], Service],
) -> None:
    first = services()
    for i in range(20):
        write(first, i)
    # Within about one interval the autosave commits a state holding all 20 writes.
    first.wait_for(lambda s: s["writes_committed"] >= 20, "commit the first 20 writes")
    for i in range(20, 30):  # acknowledged, maybe not committed yet: the last interval
        write(first, i)
    committed_before_kill = first.request("GET", "/status")["writes_committed"]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = services()
    restored = second.request("GET", "/status")["writes"]
    assert 20 <= committed_before_kill <= restored <= 30
    assert second.request("GET", "/counts") == counts_after(restored)
    # And it goes on from there: a graceful stop now keeps everything.
    for i in range(restored, restored + 5):
        write(second, i)
    assert second.stop(signal.SIGTERM) == -signal.SIGTERM
    third = services()
    assert third.request("GET", "/counts") == counts_after(restored + 5)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped_at_startup(
    services: Callable[[], Service], tmp_path: Path
) -> None:
    first = services()
    for i in range(3):
        write(first, i)
    first.stop(signal.SIGTERM)
    second = services()
    for i in range(3, 6):
        write(second, i)
    second.stop(signal.SIGTERM)
    # The newest checkpoint's payload rots on disk.
    edit_newest(tmp_path / "state", "data", lambda d: d.replace(b'"writes":6', b'"writes":7'))
    third = services()
    restored = third.request("GET", "/status")["writes"]
    assert 3 <= restored < 6  # an older checkpoint: the newest one that verifies
    assert third.request("GET", "/counts") == counts_after(restored)
    assert "CorruptCheckpointWarning" in third.output


@pytest.mark.slow
def test_the_service_stops_when_its_state_can_no_longer_be_saved(
    services: Callable[[], Service], tmp_path: Path
) -> None:
    """Saves failing ``max_failures`` times in a row reach the lifespan that owns the
    autosave; the example then stops its server (exit code 1) instead of serving on."""
    first = services()
    write(first, 0)
    first.wait_for(lambda s: s["writes_committed"] >= 1, "commit the first write")
    # The records' folder (and the payload folder) become files: every commit fails
    # (a tiny state's commit is its record alone).
    for top in ("data", "manifests"):
        folder = tmp_path / "state" / top
        shutil.rmtree(folder)
        folder.write_bytes(b"not a folder")
    write(first, 1)
    try:
        code = first.proc.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        first.proc.kill()
        raise AssertionError(f"the service kept running: {first.output[-4000:]}") from None
    assert code == 1
    assert "gave up after 10 failures in a row" in first.output
    assert "AutosaveError" in first.output
