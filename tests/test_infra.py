"""Prove the object-store test fixtures are real: moto over HTTP, and a real faulty proxy.

Plain sync tests using obstore's synchronous API, so they do not depend on
any event-loop plugin configuration.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
import pytest
from _moto import HOST, MotoServer, make_s3_store
from _proxy import FailMode, FaultProxy, HoldingProxy
from obstore.exceptions import AlreadyExistsError, GenericError, PreconditionError
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import RetryConfig

NO_RETRY: RetryConfig = {"max_retries": 0}
FAST_RETRY: RetryConfig = {
    "max_retries": 5,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=100),
    },
    "retry_timeout": timedelta(seconds=10),
}


def _refuses(port: int) -> bool:
    """True if nothing accepts TCP connections on 127.0.0.1:port."""
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def test_put_get_roundtrip(s3_store: S3Store) -> None:
    obstore.put(s3_store, "dir/obj.bin", b"hello moto")
    assert bytes(obstore.get(s3_store, "dir/obj.bin").bytes()) == b"hello moto"


def test_fresh_bucket_is_empty(s3_store: S3Store) -> None:
    assert [m for batch in obstore.list(s3_store) for m in batch] == []


def test_multipart_put_roundtrip(s3_store: S3Store) -> None:
    # An iterable of chunks makes obstore use a multipart upload.
    obstore.put(s3_store, "mp", [b"a" * 10, b"b" * 10])
    assert bytes(obstore.get(s3_store, "mp").bytes()) == b"a" * 10 + b"b" * 10


def test_put_create_twice_raises_already_exists(s3_store: S3Store) -> None:
    # moto honours If-None-Match: * on PUT, so obstore's mode="create" is atomic.
    obstore.put(s3_store, "once", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(s3_store, "once", b"second", mode="create")
    assert bytes(obstore.get(s3_store, "once").bytes()) == b"first"


def test_put_update_checks_etag(s3_store: S3Store) -> None:
    # moto also honours If-Match, so obstore's update mode works too.
    first = obstore.put(s3_store, "obj", b"v1")
    obstore.put(s3_store, "obj", b"v2", mode={"e_tag": first["e_tag"]})
    with pytest.raises(PreconditionError):
        obstore.put(s3_store, "obj", b"v3", mode={"e_tag": first["e_tag"]})
    assert bytes(obstore.get(s3_store, "obj").bytes()) == b"v2"


def test_missing_bucket_errors(moto_server: str) -> None:
    store = make_s3_store(moto_server, "no-such-bucket-for-asynccp", retry_config=NO_RETRY)
    # obstore maps S3's 404 NoSuchBucket to the builtin FileNotFoundError.
    with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
        obstore.put(store, "x", b"x")


def test_proxy_passes_through(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=NO_RETRY)
    obstore.put(store, "via-proxy", b"data")
    assert bytes(obstore.get(store, "via-proxy").bytes()) == b"data"
    assert fault_proxy.connections >= 1
    assert fault_proxy.failures == 0


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_proxy_fault_fails_without_retries(
    fault_proxy: FaultProxy, s3_bucket: str, mode: FailMode
) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=NO_RETRY)
    fault_proxy.set_mode(mode)
    expected = "503 Service Unavailable" if mode == "503" else "error sending request"
    with pytest.raises(GenericError, match=expected):
        obstore.put(store, "k", b"v")
    assert fault_proxy.connections == fault_proxy.failures == 1


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_transient_faults_are_retried(
    fault_proxy: FaultProxy, s3_store: S3Store, s3_bucket: str, mode: FailMode
) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAST_RETRY)
    fault_proxy.fail_next(2, mode)
    obstore.put(store, "k", b"survived")
    assert fault_proxy.failures == 2
    assert fault_proxy.pending_failures == 0
    assert fault_proxy.connections == 3
    assert bytes(obstore.get(s3_store, "k").bytes()) == b"survived"  # read back directly


def test_mode_switch_cuts_pooled_connections(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    # The client pools connections; set_mode must still affect its next request.
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=NO_RETRY)
    obstore.put(store, "k", b"v")
    fault_proxy.set_mode("503")
    with pytest.raises(GenericError):
        obstore.put(store, "k", b"v")
    fault_proxy.set_mode("pass")
    obstore.put(store, "k", b"v")


def test_proxy_stop_closes_sockets_and_thread(moto_server: str) -> None:
    port = int(moto_server.rsplit(":", 1)[1])
    before = set(threading.enumerate())
    with (
        FaultProxy(HOST, port) as proxy,
        socket.create_connection((HOST, proxy.port), timeout=5.0) as client,
    ):
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(12) == b"HTTP/1.1 200"
        proxy.stop()
        while client.recv(65536):  # rest of the response, then EOF; a hang would time out
            pass
    assert _refuses(proxy.port)
    assert set(threading.enumerate()) <= before


@pytest.mark.parametrize("kind", ["fault", "holding"])
def test_proxy_stopped_while_clients_connect_leaks_no_socket(
    moto_server: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while connections keep arriving, a proxy closes every socket it
    accepted. A connection accepted just before the listener closed once leaked (an
    "unclosed transport" ResourceWarning from the garbage collector, which failed an
    unrelated test in CI)."""
    port = int(moto_server.rsplit(":", 1)[1])
    leaked: list[str] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: leaked.append(repr(u.exc_value)))
    for _ in range(3):
        proxy: FaultProxy | HoldingProxy = (
            FaultProxy(HOST, port) if kind == "fault" else HoldingProxy(moto_server, b"never")
        )
        with proxy:
            stop = threading.Event()

            def connect(proxy_port: int = proxy.port, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        socket.create_connection((HOST, proxy_port), timeout=5.0).close()

            clients = [threading.Thread(target=connect) for _ in range(4)]
            for c in clients:
                c.start()
        stop.set()  # (after the proxy stopped, with clients connecting throughout)
        for c in clients:
            c.join()
        gc.collect()
    assert leaked == []


def test_moto_server_stops_cleanly() -> None:
    server = MotoServer()
    server.start()
    port = server.port
    assert not _refuses(port)
    server.stop()
    assert _refuses(port)


async def test_async_api_through_proxy(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    # The proxy runs its own loop in a thread, so it works under the test's event loop too.
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAST_RETRY)
    fault_proxy.fail_next(1, "503")
    await obstore.put_async(store, "async", b"ok")
    result = await obstore.get_async(store, "async")
    assert bytes(await result.bytes_async()) == b"ok"
    assert fault_proxy.failures == 1
