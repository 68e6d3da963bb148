"""A cloud metadata server on 127.0.0.1 for the notice tests, answering as each cloud
documents it (one cloud per server), with a switch that issues a pre-emption notice.

- ``aws``: IMDSv2 — ``PUT /latest/api/token`` (needs
  ``X-aws-ec2-metadata-token-ttl-seconds``) gives a token; ``GET
  /latest/meta-data/spot/instance-action`` needs it (401 without, or with an unknown
  one), answers 404 until a notice, then ``{"action": "terminate", "time": ...}``.
- ``gcp``: ``GET /computeMetadata/v1/instance/preempted`` and ``.../maintenance-event``
  need ``Metadata-Flavor: Google`` (403 without), answer with that header and an
  ``ETag``; ``?wait_for_change=true`` holds the request until the value's ETag differs
  from ``last_etag`` (or ``timeout_sec`` passes). ``FALSE`` / ``NONE`` until a notice.
- ``azure``: ``GET /metadata/scheduledevents?api-version=2020-07-01`` needs
  ``Metadata: true`` (400 without) and answers ``{"DocumentIncarnation": n, "Events":
  [...]}``; a notice adds a ``Preempt`` event for this VM (and, before it, one for
  another VM of the availability set, which must be ignored).
  ``/metadata/instance/compute/name`` gives the VM's name.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

VM_NAME = "asynccp-test-vm"


class MetadataServer:
    """A metadata server of ``cloud`` ("aws", "gcp", "azure") on 127.0.0.1."""

    def __init__(self, cloud: str) -> None:
        assert cloud in ("aws", "gcp", "azure")
        self.cloud = cloud
        self.noticed = False
        self.other_vm = False  # an Azure Preempt event for another VM of the set
        self._closing = False
        self.requests: list[str] = []  # request lines, in order
        self.asked = threading.Semaphore(0)  # released at each request
        self._changed = threading.Condition()
        self._tokens: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def announce(self) -> None:
        """Issue the pre-emption notice."""
        with self._changed:
            self.noticed = True
            self._changed.notify_all()

    def __enter__(self) -> MetadataServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # -- answers --------------------------------------------------------------------------

    def _gce_value(self, key: str) -> str:
        if key == "preempted":
            return "TRUE" if self.noticed else "FALSE"
        return "TERMINATE_ON_HOST_MAINTENANCE" if self.noticed else "NONE"

    def answer(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if self.cloud == "aws":
            return self._aws(method, parts.path, headers)
        if self.cloud == "gcp":
            return self._gcp(method, parts.path, query, headers)
        return self._azure(method, parts.path, query, headers)

    def _aws(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        if path == "/latest/api/token":
            if method != "PUT" or not headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return 400, {}, b""
            token = hashlib.sha256(str(time.monotonic()).encode()).hexdigest()
            self._tokens.add(token)
            return 200, {"Content-Type": "text/plain"}, token.encode()
        if headers.get("X-aws-ec2-metadata-token") not in self._tokens:
            return 401, {}, b""
        if path == "/latest/meta-data/spot/instance-action" and self.noticed:
            when = datetime.now(timezone.utc) + timedelta(minutes=2)
            doc = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
            return 200, {"Content-Type": "text/plain"}, json.dumps(doc).encode()
        return 404, {}, b""

    def _gcp(
        self, method: str, path: str, query: dict[str, str], headers: Any
    ) -> tuple[int, dict[str, str], bytes]:
        if headers.get("Metadata-Flavor") != "Google":
            return 403, {}, b"Missing Metadata-Flavor:Google header.\n"
        key = path.removeprefix("/computeMetadata/v1/instance/")
        if key not in ("preempted", "maintenance-event"):
            return 404, {"Metadata-Flavor": "Google"}, b""

        def etag() -> str:
            return hashlib.md5(self._gce_value(key).encode()).hexdigest()[:16]

        if query.get("wait_for_change") == "true":
            deadline = time.monotonic() + float(query.get("timeout_sec", "300"))
            with self._changed:
                while (
                    etag() == query.get("last_etag")
                    and time.monotonic() < deadline
                    and not self._closing
                ):
                    self._changed.wait(max(0.0, deadline - time.monotonic()))
        value = self._gce_value(key)
        return 200, {"Metadata-Flavor": "Google", "ETag": etag()}, value.encode()

    def _azure(
        self, method: str, path: str, query: dict[str, str], headers: Any
    ) -> tuple[int, dict[str, str], bytes]:
        if headers.get("Metadata") != "true":
            return 400, {}, b'{"error": "Bad request. Required metadata header not specified"}'
        if path == "/metadata/instance/compute/name":
            return 200, {"Content-Type": "text/plain"}, VM_NAME.encode()
        if path != "/metadata/scheduledevents" or query.get("api-version") != "2020-07-01":
            return 404, {}, b""
        events = []
        if self.noticed or self.other_vm:
            when = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            )
            vms = ("another-vm", VM_NAME) if self.noticed else ("another-vm",)
            for n, vm in enumerate(vms):
                events.append(
                    {
                        "EventId": f"602d9444-d2cd-49c7-8624-8643e7171297-{n}",
                        "EventType": "Preempt",
                        "ResourceType": "VirtualMachine",
                        "Resources": [vm],
                        "EventStatus": "Scheduled",
                        "NotBefore": when,
                        "Description": "",
                        "EventSource": "Platform",
                        "DurationInSeconds": -1,
                    }
                )
        doc = {"DocumentIncarnation": 2 if self.noticed else 1, "Events": events}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                server.requests.append(self.requestline)
                server.asked.release()
                status, headers, body = server.answer(self.command, self.path, self.headers)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_GET = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
