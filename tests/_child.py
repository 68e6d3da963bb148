"""A test's child process, read line by line: a job started as a pod or a user starts it.

Its stdout lines are read by a thread (:meth:`Child.wait_for` waits for one), its
stderr goes to a file (a framework logs plenty: a pipe nobody reads would fill and stop
the child), and :meth:`Child.terminate` sends SIGTERM as Kubernetes stops a pod.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest


class Child:
    """``args`` running, stdout lines queued by a thread, stderr written to ``stderr_path``."""

    def __init__(
        self,
        args: list[str],
        stderr_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=cwd,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 120.0) -> str:
        """The first stdout line starting with ``prefix`` (fails if the child ends first)."""
        deadline = time.monotonic() + timeout
        while (line := self.lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if line.startswith(prefix):
                return line
        pytest.fail(f"the child ended without {prefix!r}: {self.stderr()[-3000:]}")

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM, as Kubernetes stops a pod (or a user stops a local run); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill the child if it still runs; close its pipe once the reader is done."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
