"""The fault-injecting proxies of the tests: :class:`FaultProxy` (a switchable TCP proxy:
drop, 503, lost answers, held requests) and :class:`HoldingProxy` (an HTTP proxy that
holds back chosen requests and says when each was answered).

Each runs its own asyncio loop in a background thread, so it works the same
under sync tests and under any test event loop. FaultProxy's mode is decided once per
*connection*, when it is accepted: HTTP clients pool connections, so switching
mode only affects new connections unless the live ones are cut (``set_mode``
and ``fail_next`` do that by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, get_args
from urllib.parse import urlsplit

Mode = Literal["pass", "drop", "503"]
FailMode = Literal["drop", "503"]

_CHUNK = 64 * 1024
_MAX_DISCARD = 64 * 1024 * 1024
_RESPONSE_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 20\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Service Unavailable\n"
)


class FaultProxy:
    r"""TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Modes (per new connection):
      * ``"pass"``: forward bytes both ways.
      * ``"drop"``: accept, then reset the connection at once (RST).
      * ``"503"``: read the HTTP request, answer 503 with ``Connection: close``.
    ``fail_next(n)`` makes only the next ``n`` connections fail, then the
    proxy falls back to its mode, so tests can prove transient errors are retried.

    ``lose_answers(pattern, n)`` forwards the next ``n`` requests whose request line
    matches ``pattern`` (a regex on bytes, e.g. ``rb"^PUT \S*/manifests/"``) to the
    server, then resets the client's connection instead of passing the answer on: the
    request took effect, the client never hears so (a lost answer).

    ``hold_requests(pattern)`` holds matching requests (not forwarded) until
    ``release()``: a commit kept waiting, as a slow or stalled store would.

    ``throttle(bytes_per_second)`` limits what crosses the proxy to that rate in each
    direction, summed over every connection (a link of that bandwidth; None: no limit).
    ``fail_fraction(p, seed=...)`` answers 503 to a fraction ``p`` of new connections,
    drawn from a seeded generator (the others follow the mode).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._mode: Mode = "pass"
        self._fail_budget = 0
        self._fail_mode: FailMode = "drop"
        self._connections = 0
        self._failures = 0
        self._answered = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._hold_pattern: re.Pattern[bytes] | None = None
        self._held = 0
        self._held_event = threading.Event()
        self._released = threading.Event()
        self._lose_pattern: re.Pattern[bytes] | None = None
        self._lose_budget = 0
        self._lost = 0
        self._up_link = _Link()  # client -> server
        self._down_link = _Link()  # server -> client
        self._fraction = 0.0
        self._random = random.Random(0)
        self._transports: set[asyncio.WriteTransport] = set()  # loop thread only

    # -- public API ---------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy, usable as an S3 endpoint."""
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        """Mode for new connections once any ``fail_next`` budget is used up."""
        with self._lock:
            return self._mode

    @property
    def connections(self) -> int:
        """Number of client connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def failures(self) -> int:
        """Number of connections that were failed on purpose (drop or 503)."""
        with self._lock:
            return self._failures

    @property
    def pending_failures(self) -> int:
        """How many of the ``fail_next`` connections are still to come."""
        with self._lock:
            return self._fail_budget

    def set_mode(self, mode: Mode, *, cut_active: bool = True) -> None:
        """Switch mode and cancel any ``fail_next`` budget; optionally cut live connections."""
        if mode not in get_args(Mode):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self._mode = mode
            self._fail_budget = 0
        if cut_active:
            self.cut_active()

    def fail_next(self, n: int, mode: FailMode = "drop", *, cut_active: bool = True) -> None:
        """Fail only the next ``n`` new connections with ``mode``, then use ``self.mode`` again."""
        if mode not in get_args(FailMode) or n < 0:
            raise ValueError(f"bad fail_next({n!r}, {mode!r})")
        with self._lock:
            self._fail_budget = n
            self._fail_mode = mode
        if cut_active:
            self.cut_active()

    def lose_answers(self, pattern: bytes, n: int = 1_000_000) -> None:
        """Lose the answers to the next ``n`` requests matching ``pattern`` (see class doc)."""
        with self._lock:
            self._lose_pattern = re.compile(pattern, re.MULTILINE)
            self._lose_budget = n

    def throttle(self, bytes_per_second: float | None) -> None:
        """Carry at most ``bytes_per_second`` each way, over all connections (None: no limit)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bad rate {bytes_per_second!r}")
        self._up_link.rate = self._down_link.rate = bytes_per_second

    def fail_fraction(self, p: float, *, seed: int = 0) -> None:
        """Answer 503 to a fraction ``p`` of new connections (seeded)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"bad fraction {p!r}")
        with self._lock:
            self._fraction = p
            self._random = random.Random(seed)

    def hold_requests(self, pattern: bytes) -> None:
        """Hold requests matching ``pattern`` until :meth:`release` (see class doc)."""
        with self._lock:
            self._hold_pattern = re.compile(pattern, re.MULTILINE)
            self._released.clear()

    def release(self) -> None:
        """Let held requests through, and hold no more."""
        with self._lock:
            self._hold_pattern = None
        self._released.set()

    @property
    def held(self) -> int:
        """Requests held so far."""
        with self._lock:
            return self._held

    def wait_held(self, timeout: float = 30.0) -> None:
        """Block until a request is held (raise TimeoutError after ``timeout``)."""
        if not self._held_event.wait(timeout):
            raise TimeoutError("no request was held")

    async def _hold(self, data: bytes) -> None:
        with self._lock:
            if self._hold_pattern is None or not self._hold_pattern.search(data):
                return
            self._held += 1
        self._held_event.set()
        await asyncio.to_thread(self._released.wait)  # the proxy's loop keeps running

    @property
    def lost_answers(self) -> int:
        """Answers lost on purpose so far."""
        with self._lock:
            return self._lost

    def _should_lose(self, data: bytes) -> bool:
        with self._lock:
            if self._lose_pattern is None or self._lose_budget <= 0:
                return False
            if not self._lose_pattern.search(data):
                return False
            self._lose_budget -= 1
            self._lost += 1
            return True

    def reset_counts(self) -> None:
        """Zero ``connections``, ``failures`` and ``answered_bytes``."""
        with self._lock:
            self._connections = 0
            self._failures = 0
            self._answered = 0

    @property
    def answered_bytes(self) -> int:
        """Bytes the server's answers carried to clients (headers included): what a
        client really fetched over the wire."""
        with self._lock:
            return self._answered

    def cut_active(self, timeout: float = 5.0) -> None:
        """Abort every open connection (so pooled client connections are not reused)."""
        if self._loop is None or not self._loop.is_running():
            return

        async def abort_all() -> None:
            self._abort_all()

        asyncio.run_coroutine_threadsafe(abort_all(), self._loop).result(timeout)

    def start(self, timeout: float = 5.0) -> None:
        """Bind a free port and serve from a background thread."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._ready.clear()
        name = f"FaultProxy->{self.upstream}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("proxy did not start")
        if self._error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeError("proxy failed to start") from self._error

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and all connections, and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._released.set()  # held requests must not keep the proxy's loop waiting
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError("proxy thread did not stop")

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- loop thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced by start()
            self._error = e
        finally:
            self._loop = None
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await _close_all(server, self._abort_all)

    def _abort_all(self) -> None:
        for t in list(self._transports):
            t.abort()
        self._transports.clear()

    def _next_action(self) -> Mode:
        with self._lock:
            self._connections += 1
            if self._fail_budget > 0:
                self._fail_budget -= 1
                self._failures += 1
                return self._fail_mode
            if self._fraction and self._random.random() < self._fraction:
                self._failures += 1
                return "503"
            if self._mode != "pass":
                self._failures += 1
            return self._mode

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        try:
            if self._stop is not None and self._stop.is_set():
                return  # accepted as the proxy stopped: aborted below
            action = self._next_action()
            if action == "drop":
                _reset(writer)
            elif action == "503":
                await _answer_503(reader, writer)
            else:
                await self._forward(reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # peer went away or sent junk; nothing to report in a fault proxy
        finally:
            self._transports.discard(writer.transport)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._transports.add(up_writer.transport)
        if self._stop is not None and self._stop.is_set():  # stopped while connecting
            writer.transport.abort()
            up_writer.transport.abort()
        try:
            both = (writer.transport, up_writer.transport)
            lose = asyncio.Event()  # set: the request just sent is to have its answer lost

            def inspect(data: bytes) -> None:
                if self._should_lose(data):
                    lose.set()

            def answer(data: bytes) -> bool:
                if lose.is_set():
                    _reset(writer)
                    return False
                with self._lock:
                    self._answered += len(data)
                return True

            await asyncio.gather(
                _pump(
                    reader, up_writer, both, inspect=inspect, hold=self._hold, link=self._up_link
                ),
                _pump(up_reader, writer, both, gate=answer, link=self._down_link),
            )
        finally:
            self._transports.discard(up_writer.transport)
            up_writer.transport.abort()


async def _pump(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    both: tuple[asyncio.WriteTransport, asyncio.WriteTransport],
    *,
    inspect: Callable[[bytes], None] | None = None,
    gate: Callable[[bytes], bool] | None = None,
    hold: Callable[[bytes], Awaitable[None]] | None = None,
    link: _Link | None = None,
) -> None:
    """Copy ``src`` to ``dst``, forwarding EOF; on an error abort both sides.

    ``inspect`` sees each chunk before it is forwarded; ``gate`` may stop the copy
    (returning False) instead of forwarding a chunk.
    """
    try:
        while data := await src.read(_CHUNK):
            if hold is not None:
                await hold(data)
            if inspect is not None:
                inspect(data)
            if gate is not None and not gate(data):
                for t in both:
                    t.abort()
                return
            if link is not None:
                await link.take(len(data))
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.transport.is_closing():
            dst.write_eof()
    except OSError:
        for t in both:
            t.abort()


class _Link:
    """A bandwidth shared by every connection one way (the proxy's loop thread only):
    each chunk waits until the link has carried the ones before it at ``rate``."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._free_at = 0.0  # when the link is done with what was sent so far

    async def take(self, n: int) -> None:
        rate = self.rate
        if rate is None:
            return
        now = time.monotonic()
        start = max(now, self._free_at)
        self._free_at = start + n / rate
        if self._free_at > now:
            await asyncio.sleep(self._free_at - now)


async def _close_all(
    server: asyncio.Server, abort_all: Callable[[], None], timeout: float = 5.0
) -> None:
    """Stop a proxy's server: close the listener, abort every connection and let the
    loop's other tasks finish.

    The listener closes only once every task created so far has started: a
    connection accepted just before would otherwise meet a closed server when its
    accepting task makes the transport, which CPython's asyncio (3.11) answers with
    an AssertionError that it swallows, leaking the accepted socket (an "unclosed
    transport" ResourceWarning later). The check and the close happen in one step of
    the loop, so no accept comes between them. A connection being set up registers
    its transport only when its handler runs, so abort again until no other task is
    left (or ``timeout`` passed). Handlers are not cancelled: on 3.11, cancelling a
    start_server handler logs a spurious traceback.
    """
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        coroutines = [t.get_coro() for t in asyncio.all_tasks()]
        if all(inspect.getcoroutinestate(c) != inspect.CORO_CREATED for c in coroutines):  # type: ignore[arg-type]
            break
        await asyncio.sleep(0)  # (a poll: asyncio has no event for "every task started")
    server.close()
    while True:
        abort_all()
        others = asyncio.all_tasks() - {me}
        if not others or loop.time() >= deadline:
            break
        await asyncio.wait(others, timeout=0.05)
    await server.wait_closed()
    await asyncio.sleep(0)  # the aborted transports close their sockets


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) rather than a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request head (and a modest body) and answer 503 + ``Connection: close``.

    Draining the body first avoids the kernel sending RST for unread data, which
    would make the client see a reset instead of the 503.
    """
    head = await reader.readuntil(b"\r\n\r\n")  # LimitOverrunError past 64 KiB
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if headers.get("expect", "").lower() != "100-continue" and 0 < length <= _MAX_DISCARD:
        while length > 0:
            chunk = await reader.read(min(_CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
    writer.write(_RESPONSE_503)
    writer.close()  # flushes the response, then FIN
    await writer.wait_closed()


class HoldingProxy:
    """An HTTP/1.1 proxy (own loop, own thread) that holds back chosen requests.

    A request whose request line contains ``match`` is held, not forwarded, until
    :meth:`release` is called (or ``max_hold`` seconds passed, so that a core that waits
    for the request cannot deadlock the test): a network path that is slow for exactly
    that request. Every request goes upstream on a fresh connection with
    ``Connection: close``; responses are relayed whole. Only ``Content-Length`` request
    bodies are supported (what obstore sends for single PUTs).
    """

    def __init__(self, upstream: str, match: bytes, *, max_hold: float = 10.0) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self.upstream = (parts.hostname, parts.port)
        self.match = match
        self.max_hold = max_hold
        self.port = 0
        self.held = threading.Event()  # a matching request arrived
        self.answered = threading.Event()  # ... and its response went back to the client
        self._released = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._open: set[asyncio.WriteTransport] = set()  # the clients' connections
        self._thread = threading.Thread(target=self._run, name="HoldingProxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        """Let held requests (and later matching ones) through."""
        self._released.set()

    def __enter__(self) -> HoldingProxy:
        self._thread.start()
        assert self._ready.wait(5.0), "proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()

        def abort_open() -> None:  # the clients still connected
            for transport in list(self._open):
                transport.abort()

        try:
            await self._stop.wait()
        finally:
            await _close_all(server, abort_open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer.transport)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed its connection
                lines = head.split(b"\r\n")
                headers = [ln for ln in lines[1:] if ln]
                length = 0
                for ln in headers:
                    name, _, value = ln.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    assert name.strip().lower() != b"transfer-encoding", "chunked not supported"
                body = await reader.readexactly(length)
                matched = self.match in lines[0]
                if matched:
                    self.held.set()
                    await asyncio.to_thread(self._released.wait, self.max_hold)
                kept = [ln for ln in headers if not ln.lower().startswith(b"connection:")]
                request = b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                try:
                    up_writer.write(request + body)
                    await up_writer.drain()
                    response = await up_reader.read()  # upstream closes after one response
                finally:  # (also when the proxy stops mid-request)
                    up_writer.close()
                writer.write(response)
                await writer.drain()
                if matched:
                    self.answered.set()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up on the connection
        finally:
            self._open.discard(writer.transport)
            writer.close()
