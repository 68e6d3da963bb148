"""Fixtures for tests against a real (moto) S3 server and a fault-injecting proxy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from _moto import MotoServer, create_bucket, make_s3_store
from _proxy import FaultProxy
from _sites import Site, make_site
from obstore.store import S3Store


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of one moto S3 server subprocess shared by the whole session."""
    with MotoServer() as server:
        yield server.url


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
