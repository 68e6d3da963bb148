"""Cloud pre-emption notices: the machine is going away, so save now — as on SIGTERM.

A cloud tells a spot / pre-emptible VM that it is about to be taken back through its
metadata server, before any signal arrives: AWS two minutes ahead, Google Compute
Engine about 30 seconds, Azure at least 30 seconds. A :class:`NoticeWatcher` asks the
metadata server the way each cloud documents, and on a notice hands SIGTERM, with the
notice as its cause, to the supervisor's :class:`~._signals.SignalWatcher`: the same
path as a real SIGTERM (cancel the attempt, flush within ``grace`` — a tiered
checkpointer's local tier first, then its remote tier —, exit with code 75).

- ``"aws"``: IMDSv2. A session token (``PUT /latest/api/token`` with
  ``X-aws-ec2-metadata-token-ttl-seconds``), then ``GET
  /latest/meta-data/spot/instance-action`` with ``X-aws-ec2-metadata-token`` every
  5 s (what AWS recommends): 404 until a notice, then JSON ``{"action": "terminate" |
  "stop" | "hibernate", "time": ...}``. A 401 (the token expired) fetches a new one.
- ``"gcp"``: ``GET /computeMetadata/v1/instance/preempted`` and
  ``.../instance/maintenance-event`` with ``Metadata-Flavor: Google``, each read once
  and then long-polled (``?wait_for_change=true&last_etag=...&timeout_sec=...``, so no
  change between two requests is missed): ``TRUE``, or
  ``TERMINATE_ON_HOST_MAINTENANCE``, is a notice (a live migration is not).
- ``"azure"``: Scheduled Events, ``GET
  /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true`` every
  second: an event of ``EventType`` ``"Preempt"`` whose ``Resources`` name this VM (its
  name read once from ``/metadata/instance/compute/name``; events also list other VMs
  of an availability set) is a notice.
- ``"auto"``: the three are asked at once, with short timeouts (connect 1 s, answer
  2 s); the first that answers as its cloud does is watched. When none does (not in a
  cloud, or no metadata server reachable) one INFO line says so and nothing more is
  asked: ``auto`` never hangs a job and never floods a log.

With a cloud named, a metadata server that does not answer is retried with backoff
(a WARNING the first time, DEBUG after): the cloud was named, so it is expected there.
``notice_endpoint`` points the watcher at another server than ``http://169.254.169.254``
(a test server, a proxy). The requests are plain HTTP/1.1 on anyio sockets: cancelled
with the supervisor, no thread left behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from .._retry import Backoff

__all__ = ["DEFAULT_ENDPOINT", "Notice", "NoticeWatcher", "check_notices"]

log = logging.getLogger("asynccp")

Notices = Literal["aws", "gcp", "azure", "auto"]
#: Where every cloud's metadata server answers, from inside a VM.
DEFAULT_ENDPOINT = "http://169.254.169.254"
#: Seconds between two polls (GCE long-polls instead).
POLL_SECONDS = {"aws": 5.0, "azure": 1.0}
#: A GCE long poll returns after this many seconds without a change.
GCE_WAIT_SECONDS = 60
#: ``auto``'s probe: connect within this, the whole answer within :data:`PROBE_SECONDS`.
CONNECT_SECONDS = 1.0
PROBE_SECONDS = 2.0
#: One request (but a long poll) within this.
REQUEST_SECONDS = 5.0
_BACKOFF = Backoff(initial=1.0, max=30.0, jitter=0.5)
_AWS_TTL = "21600"  # seconds a token lives (IMDSv2's maximum)
_AZURE_EVENTS = "/metadata/scheduledevents?api-version=2020-07-01"
_AZURE_NAME = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"
_GCE = "/computeMetadata/v1/instance/"


@dataclass(frozen=True)
class Notice:
    """A pre-emption notice: the cloud and what it said."""

    cloud: str
    detail: str

    def __str__(self) -> str:
        return f"the {self.cloud} pre-emption notice ({self.detail})"


def check_notices(notices: object, endpoint: object) -> tuple[Notices | None, str]:
    """``notices=`` and ``notice_endpoint=`` checked: the kind and the endpoint's URL."""
    if notices is not None:
        if not isinstance(notices, str):
            raise TypeError(f"notices must be a str or None, got {type(notices).__name__}")
        if notices not in get_args(Notices):
            raise ValueError(
                f"notices must be 'aws', 'gcp', 'azure', 'auto' or None, got {notices!r}"
            )
    if endpoint is None:
        return notices, DEFAULT_ENDPOINT  # type: ignore[return-value]
    if not isinstance(endpoint, str):
        raise TypeError(f"notice_endpoint must be a str, got {type(endpoint).__name__}")
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(
            f"notice_endpoint must be http://HOST[:PORT] (a metadata server), got {endpoint!r}"
        )
    if notices is None:
        raise ValueError("notice_endpoint= is where notices are read: pass notices= too")
    return notices, endpoint.rstrip("/")  # type: ignore[return-value]


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


#: The metadata server did not answer (refused, reset, timed out, not HTTP).
_Unanswered = ConnectionError


async def _request(
    endpoint: str,
    method: str,
    path: str,
    headers: dict[str, str],
    *,
    seconds: float = REQUEST_SECONDS,
    connect: float = CONNECT_SECONDS,
) -> _Response:
    """One HTTP/1.1 request (``Connection: close``) to the metadata server."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or 80
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if method == "PUT":
        lines.append("Content-Length: 0")
    try:
        with anyio.fail_after(seconds):
            with anyio.fail_after(connect):
                stream = await anyio.connect_tcp(host, port)
            async with stream:
                await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                raw = bytearray()
                while True:
                    try:
                        raw += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
    except (OSError, TimeoutError, anyio.BrokenResourceError) as e:
        raise _Unanswered(f"{method} {endpoint}{path}: {type(e).__name__}: {e}") from e
    return _parse(bytes(raw), f"{method} {endpoint}{path}")


def _parse(raw: bytes, what: str) -> _Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise _Unanswered(f"{what}: not an HTTP answer")
    try:
        status = int(status_line[1])
    except ValueError:
        raise _Unanswered(f"{what}: not an HTTP answer") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    return _Response(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


class NoticeWatcher:
    """Watches one cloud's notices (or finds the cloud, with ``"auto"``) and calls
    ``on_notice`` once, with the :class:`Notice`, when one comes."""

    def __init__(
        self, notices: Notices, endpoint: str, on_notice: Callable[[Notice], None]
    ) -> None:
        self.notices = notices
        self.endpoint = endpoint
        self.on_notice = on_notice
        #: The cloud being watched (``auto``: once found; None: none answered).
        self.cloud: str | None = None if notices == "auto" else notices
        self._failures = 0

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until a notice (then return) or until cancelled."""
        task_status.started()
        if self.cloud is None:
            self.cloud = await self._probe()
            if self.cloud is None:
                log.info(
                    "asynccp: no cloud metadata server answered at %s within %g s: "
                    "pre-emption notices are not watched (notices='auto')",
                    self.endpoint,
                    PROBE_SECONDS,
                )
                return
            log.info("asynccp: watching %s pre-emption notices at %s", self.cloud, self.endpoint)
        notice = await {"aws": self._aws, "gcp": self._gcp, "azure": self._azure}[self.cloud]()
        log.warning("asynccp: %s: stopping, flushing checkpoints", notice)
        self.on_notice(notice)

    async def _probe(self) -> str | None:
        """The cloud whose metadata server answers at the endpoint, or None."""
        found: dict[str, bool] = {}

        async def ask(cloud: str, method: str, path: str, headers: dict[str, str]) -> None:
            try:
                r = await _request(self.endpoint, method, path, headers, seconds=PROBE_SECONDS)
            except _Unanswered:
                return
            if cloud == "aws":
                found[cloud] = r.status == 200 and bool(r.body)
            elif cloud == "gcp":
                found[cloud] = r.status == 200 and r.headers.get("metadata-flavor") == "Google"
            else:
                found[cloud] = r.status == 200 and b"Events" in r.body

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "aws", "PUT", "/latest/api/token", _aws_ttl())
            tg.start_soon(ask, "gcp", "GET", _GCE + "preempted", _GOOGLE)
            tg.start_soon(ask, "azure", "GET", _AZURE_EVENTS, _AZURE)
        return next((c for c in ("aws", "gcp", "azure") if found.get(c)), None)

    async def _unanswered(self, error: Exception) -> None:
        """Log (a WARNING the first time) and wait before asking again."""
        self._failures += 1
        wait = _BACKOFF.delay(self._failures)
        (log.warning if self._failures == 1 else log.debug)(
            "asynccp: the %s metadata server did not answer (%s); asking again in %.2g s",
            self.cloud,
            error,
            wait,
        )
        await anyio.sleep(wait)

    async def _aws(self) -> Notice:
        token: str | None = None
        while True:
            try:
                if token is None:
                    r = await _request(self.endpoint, "PUT", "/latest/api/token", _aws_ttl())
                    if r.status != 200:
                        raise _Unanswered(f"token request answered {r.status}")
                    token = r.body.decode().strip()
                r = await _request(
                    self.endpoint,
                    "GET",
                    "/latest/meta-data/spot/instance-action",
                    {"X-aws-ec2-metadata-token": token},
                )
            except _Unanswered as e:
                await self._unanswered(e)
                continue
            self._failures = 0
            if r.status == 401:  # the token expired
                token = None
                continue
            if r.status == 200:
                try:
                    doc = json.loads(r.body)
                    detail = f"action {doc['action']} at {doc['time']}"
                except (ValueError, KeyError, TypeError):
                    detail = r.body.decode("utf-8", "replace")[:200]
                return Notice("AWS spot", detail)
            await anyio.sleep(POLL_SECONDS["aws"])

    async def _gcp(self) -> Notice:
        found: list[Notice] = []
        async with anyio.create_task_group() as tg:

            async def key(name: str, fires: Callable[[str], bool]) -> None:
                found.append(await self._gce_key(name, fires))
                tg.cancel_scope.cancel()

            tg.start_soon(key, "preempted", lambda v: v.upper() == "TRUE")
            tg.start_soon(key, "maintenance-event", lambda v: v == "TERMINATE_ON_HOST_MAINTENANCE")
        return found[0]

    async def _gce_key(self, name: str, fires: Callable[[str], bool]) -> Notice:
        """Read ``instance/<name>`` once, then long-poll it for changes."""
        etag: str | None = None
        while True:
            path = _GCE + name
            seconds = REQUEST_SECONDS
            if etag is not None:
                path += f"?wait_for_change=true&last_etag={etag}&timeout_sec={GCE_WAIT_SECONDS}"
                seconds = GCE_WAIT_SECONDS + REQUEST_SECONDS
            try:
                r = await _request(self.endpoint, "GET", path, _GOOGLE, seconds=seconds)
                if r.status != 200:
                    raise _Unanswered(f"{name} answered {r.status}")
            except _Unanswered as e:
                await self._unanswered(e)
                etag = None
                continue
            self._failures = 0
            value = r.body.decode("utf-8", "replace").strip()
            if fires(value):
                return Notice("Google Compute Engine", f"{name} is {value}")
            if name == "maintenance-event" and value not in ("NONE", ""):
                log.info("asynccp: GCE maintenance event %s (not a termination)", value)
            etag = r.headers.get("etag") or etag or "0"

    async def _azure(self) -> Notice:
        me: str | None = None
        try:
            r = await _request(self.endpoint, "GET", _AZURE_NAME, _AZURE)
            if r.status == 200 and r.body.strip():
                me = r.body.decode("utf-8", "replace").strip()
        except _Unanswered:
            pass
        while True:
            try:
                r = await _request(self.endpoint, "GET", _AZURE_EVENTS, _AZURE)
                if r.status != 200:
                    raise _Unanswered(f"scheduled events answered {r.status}")
                events = json.loads(r.body).get("Events") or []
            except (_Unanswered, ValueError, AttributeError) as e:
                await self._unanswered(e if isinstance(e, Exception) else Exception(e))
                continue
            self._failures = 0
            for event in events:
                if not isinstance(event, dict) or event.get("EventType") != "Preempt":
                    continue
                resources = [str(x).lower() for x in event.get("Resources") or []]
                if me is None or me.lower() in resources:
                    return Notice(
                        "Azure",
                        f"Preempt event {event.get('EventId')} not before {event.get('NotBefore')}",
                    )
            await anyio.sleep(POLL_SECONDS["azure"])


_GOOGLE = {"Metadata-Flavor": "Google"}
_AZURE = {"Metadata": "true"}


def _aws_ttl() -> dict[str, str]:
    return {"X-aws-ec2-metadata-token-ttl-seconds": _AWS_TTL}
