"""Azurite, Microsoft's Azure Storage emulator (the npm package ``azurite``), as a blob
server on 127.0.0.1 for the tests, and obstore ``AzureStore`` objects talking to it.

Where Azurite comes from: ``$ASYNCCP_AZURITE`` (the ``azurite-blob`` executable), else
``.ci/node/node_modules/.bin/azurite-blob`` in the repository (what ``.ci/run``
installs: ``npm install --prefix .ci/node azurite@3``), else one on ``PATH``; with none
of them but ``npm`` present, the fixture installs it there the way CI does. Only a
machine without Node.js skips the Azure tests, and says so.

Containers are created with one signed REST call (Shared Key, the emulator's well-known
account): obstore has no call for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from pathlib import Path
from types import TracebackType

from _moto import HOST, free_port
from obstore.store import AzureStore

ROOT = Path(__file__).resolve().parent.parent
NODE_PREFIX = ROOT / ".ci" / "node"
ACCOUNT = "devstoreaccount1"
#: The emulator's documented, public development key.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_executable() -> str | None:
    """The ``azurite-blob`` to run, installed with npm if need be; None without Node.js."""
    given = os.environ.get("ASYNCCP_AZURITE")
    if given:
        return given
    local = NODE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_PREFIX), "azurite@3"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return str(local)


class Azurite:
    """An ``azurite-blob`` process on 127.0.0.1 (a free port, a fresh data folder)."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT}"

    def __enter__(self) -> Azurite:
        for _ in range(3):
            self.port = free_port()
            self._proc = subprocess.Popen(
                [
                    self.executable,
                    "--blobHost",
                    HOST,
                    "--blobPort",
                    str(self.port),
                    "--silent",
                    "--loose",
                    "--skipApiVersionCheck",
                    "--inMemoryPersistence",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    urllib.request.urlopen(f"{self.url}?comp=list", timeout=1)
                except urllib.error.HTTPError:
                    return self  # it answers (an unsigned request is refused: fine)
                except OSError:
                    time.sleep(0.1)
            self._stop()
        raise RuntimeError("azurite did not start")

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def create_container(self, name: str) -> None:
        """``PUT ?restype=container``, signed with the account's Shared Key."""
        date = formatdate(usegmt=True)
        version = "2021-08-06"
        standard = ["PUT", *[""] * 11]  # the verb, then 11 empty standard headers
        canonical = [f"x-ms-date:{date}", f"x-ms-version:{version}"]
        resource = f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        to_sign = "\n".join([*standard, *canonical, resource])
        digest = hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()
        request = urllib.request.Request(
            f"{self.url}/{name}?restype=container",
            method="PUT",
            headers={
                "x-ms-date": date,
                "x-ms-version": version,
                "Authorization": f"SharedKey {ACCOUNT}:{base64.b64encode(digest).decode()}",
                "Content-Length": "0",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201, response.status

    def store(self, container: str, *, endpoint: str | None = None) -> AzureStore:
        """An obstore store on ``container`` (through ``endpoint``: a proxy, if given)."""
        return AzureStore(
            container,
            config={"account_name": ACCOUNT, "access_key": KEY, "endpoint": endpoint or self.url},
            client_options={"allow_http": True},
        )
