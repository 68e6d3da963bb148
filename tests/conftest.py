"""Fixtures: the async backends, places to store checkpoints (tests/_sites.py), a real
(moto) S3 server and a fault-injecting proxy.

Async tests run under anyio's pytest plugin: every test module is marked ``anyio``
(:func:`pytest_collectstart`), so every ``async def`` test is one. The backend is
asyncio, except in the modules of the
core behaviour (:data:`BOTH_BACKENDS`), whose tests run on asyncio and on trio. Under
trio, a test with an S3 site is left out (deselected): the
store is reached from worker threads the same way under either backend, so the trio run
adds nothing there, and the S3 runs are the slow ones.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _azurite import Azurite, azurite_executable
from _moto import MotoServer, create_bucket, make_s3_store
from _proxy import FaultProxy
from _sites import Site, make_site
from obstore.store import S3Store

#: The modules whose tests run on trio as well as on asyncio: the core behaviour.
BOTH_BACKENDS = frozenset(
    {
        "test_checkpoint",
        "test_checkpointer",
        "test_manifest",
        "test_recovery",
        "test_store",
        "test_supervisor",
    }
)


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Every test module is an anyio one: its ``async def`` tests run on anyio's runner."""
    if isinstance(collector, pytest.Module):
        collector.add_marker(pytest.mark.anyio)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The backends: asyncio and trio for the modules in :data:`BOTH_BACKENDS`."""
    if "anyio_backend" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        both = module in BOTH_BACKENDS
        metafunc.parametrize(
            "anyio_backend", ["asyncio", "trio"] if both else ["asyncio"], scope="module"
        )


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """anyio's backend fixture, without its own parameters: the backends are set by
    :func:`pytest_generate_tests` (this default is what a test without them gets)."""
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under trio, leave out the S3 variants (see the module docstring)."""
    kept, left_out = [], []
    for item in items:
        params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
        on_s3 = "s3" in (params.get("site"), params.get("any_site"))
        (left_out if params.get("anyio_backend") == "trio" and on_s3 else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(autouse=True, scope="session")
def _close_flytekits_stats_client() -> Iterator[None]:
    """flytekit's ``setup_execution`` makes a process-wide statsd client (a UDP socket)
    that a pod keeps until it exits: closed when the test session ends, so the test
    process does not exit with it open (a ResourceWarning)."""
    yield
    client = sys.modules.get("flytekit.interfaces.stats.client")
    made = getattr(client, "_stats_client", None)
    close = getattr(made, "close", None)
    if close is not None:
        close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of one moto S3 server subprocess shared by the whole session."""
    with MotoServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite blob server (tests/_azurite.py) for the session; skipped, with the
    reason, only on a machine without Node.js."""
    executable = azurite_executable()
    if executable is None:
        pytest.skip("Azure tests need Node.js and npm (Azurite, the Azure Storage emulator)")
    with Azurite(executable) as server:
        yield server


@pytest.fixture
def azure_container(azurite: Azurite) -> str:
    """A fresh, empty container in Azurite."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    azurite.create_container(name)
    return name


@pytest.fixture
def s3_bucket(moto_server: str) -> str:
    """Name of a fresh, empty bucket (unique per test, so no cleanup is needed)."""
    name = f"test-{uuid.uuid4().hex}"
    create_bucket(moto_server, name)
    return name


@pytest.fixture
def s3_store(moto_server: str, s3_bucket: str) -> S3Store:
    """obstore S3Store on ``s3_bucket`` talking to moto directly (short retry backoff)."""
    return make_s3_store(moto_server, s3_bucket)


@pytest.fixture
def fault_proxy(moto_server: str) -> Iterator[FaultProxy]:
    """A started FaultProxy (mode "pass") in front of the moto server; use ``.url`` as endpoint."""
    upstream = urlsplit(moto_server)
    assert upstream.hostname is not None and upstream.port is not None
    with FaultProxy(upstream.hostname, upstream.port) as proxy:
        yield proxy


def _site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        return make_site("s3", tmp_path, endpoint, bucket)
    return make_site(request.param, tmp_path)


@pytest.fixture(params=["local", "s3"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    """A local directory or a moto S3 bucket, each new for the test."""
    return _site(request, tmp_path)


@pytest.fixture(params=["local", "memory", "s3"])
def any_site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    """A local directory, an in-memory store or a moto S3 bucket, each new for the test."""
    return _site(request, tmp_path)
