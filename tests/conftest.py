"""Fixtures for tests against a real (moto) S3 server and a fault-injecting proxy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from _moto import MotoServer, create_bucket, make_s3_store
from _proxy import FaultProxy
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
