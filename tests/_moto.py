"""Run moto's S3-compatible HTTP server in a subprocess for tests.

A real subprocess (rather than moto's in-process mocks) means obstore's Rust
HTTP client talks to an actual socket, exactly as it would to S3.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import RetryConfig

HOST = "127.0.0.1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"

#: Fail fast but still retry a little: tests should not wait minutes on errors.
DEFAULT_RETRY: RetryConfig = {
    "max_retries": 3,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=200),
    },
    "retry_timeout": timedelta(seconds=10),
}


def free_port(host: str = HOST) -> int:
    """Return a port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MotoServer:
    """A ``python -m moto.server`` subprocess bound to 127.0.0.1 on a free port."""

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id (None: not running)."""
        return None if self._proc is None else self._proc.pid

    @property
    def url(self) -> str:
        """Endpoint URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{HOST}:{self.port}"

    def start(self, attempts: int = 3) -> None:
        """Start the server and block until it answers HTTP.

        Retries on a fresh port if the process dies early (e.g. the port chosen
        by :func:`free_port` was grabbed by someone else in the meantime).
        """
        fd, log = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
        os.close(fd)
        self._log_path = Path(log)
        for _ in range(attempts):
            self.port = free_port()
            if self._spawn_and_wait():
                return
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"moto server did not start; log tail:\n{tail}")

    def _spawn_and_wait(self) -> bool:
        """Spawn on ``self.port``; True once it answers, False if it exited."""
        assert self._log_path is not None
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        with self._log_path.open("ab") as log:  # child keeps its own dup of the fd
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._answers():
                return True
            try:  # doubles as the poll interval and as early-exit detection
                self._proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            self._proc = None
            return False
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"moto server not answering after {self.startup_timeout}s; log:\n{tail}")

    def _answers(self) -> bool:
        """True if an HTTP request to the server gets any HTTP response."""
        try:
            with urllib.request.urlopen(self.url + "/", timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True  # an HTTP error status still means it is serving
        except OSError:
            return False

    def log_tail(self, n: int = 4000) -> str:
        """Last ``n`` characters of the server's combined stdout/stderr."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM), killing it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_bucket(endpoint: str, bucket: str, timeout: float = 10.0) -> None:
    """Create ``bucket`` with a plain unsigned ``PUT /bucket`` (moto accepts it; no boto3).

    Note: in us-east-1 moto answers 200 even if the bucket already exists.
    """
    req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return
    except urllib.error.HTTPError as e:  # e.g. 400 InvalidBucketName
        body = e.read().decode(errors="replace")
        raise RuntimeError(f"create bucket {bucket!r}: HTTP {e.code}: {body}") from e


def make_s3_store(
    endpoint: str,
    bucket: str,
    *,
    retry_config: RetryConfig | None = None,
    prefix: str | None = None,
) -> S3Store:
    """An obstore ``S3Store`` for ``bucket`` on a moto (or proxy) ``endpoint``."""
    return S3Store(
        bucket,
        prefix=prefix,
        config={
            "endpoint": endpoint,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "region": REGION,
        },
        client_options={"allow_http": True, "connect_timeout": timedelta(seconds=5)},
        retry_config=DEFAULT_RETRY if retry_config is None else retry_config,
    )
