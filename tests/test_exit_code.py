"""asynccp processes exit 0, reliably, even on a busy machine (docs/architecture.md: why the
store is called through obstore's synchronous API in worker threads).

obstore's asyncio API was measured to abort the interpreter at exit (SIGABRT, code
134) in about 1 run of 3 under CPU load, and an orchestrator retries a task whose
process exits non-zero even after a successful run. asynccp runs obstore's sync API
in worker threads instead; this test holds it to that: a save-and-restore script
(``tests/scripts/exit_code_run.py``) runs many times in fresh interpreters while two
CPU burners keep both cores busy, under asyncio and under trio, on a local
directory, a memory store and the moto S3 server, and must exit 0 every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

SCRIPT = Path(__file__).parent / "scripts" / "exit_code_run.py"
RUNS = 24
BURNERS = 2
RUN_TIMEOUT = 60.0


@pytest.fixture
def cpu_load() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two busy-looping interpreters, killed at the end whatever happens."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(BURNERS)
    ]
    try:
        yield burners
    finally:
        for proc in burners:
            proc.kill()
        for proc in burners:
            proc.wait(timeout=10)


@pytest.mark.slow
def test_processes_exit_zero_under_cpu_load(
    cpu_load: list[subprocess.Popen[bytes]], moto_server: str, s3_bucket: str
) -> None:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
    }
    failures = []
    kinds = {"asyncio": 0, "trio": 0, "s3": 0}
    for run in range(RUNS):
        backend = "trio" if run % 4 == 3 else "asyncio"
        args = [sys.executable, str(SCRIPT), backend]
        if run % 2 == 1:  # every other run also goes to S3, a fresh prefix each time
            args.append(f"s3://{s3_bucket}/exit-{run}-{uuid.uuid4().hex[:8]}")
            kinds["s3"] += 1
        kinds[backend] += 1
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        stores = 3 if len(args) == 4 else 2
        if proc.returncode != 0 or proc.stdout.split() != ["ok", backend, str(stores)]:
            failures.append((run, backend, proc.returncode, proc.stdout, proc.stderr[-2000:]))
        assert all(b.poll() is None for b in cpu_load), "a CPU burner died: no load"
    assert failures == [], f"{len(failures)} of {RUNS} runs did not exit 0 cleanly: {failures}"
    assert kinds["trio"] >= 5 and kinds["s3"] >= 10
