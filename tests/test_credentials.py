"""S3 credentials as a new user meets them: none found, and the ``~/.aws`` profile that
obstore does not read by itself.

obstore takes AWS credentials from the ``AWS_*`` environment variables and then from
the instance metadata service; it does not read ``~/.aws``. Without credentials a
request fails at the metadata service (here a metadata server on 127.0.0.1, answering
as IMDSv2 does on a machine without an instance role), and the error must say what
to do, not dump obstore's debug structure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _metadata import MetadataServer
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

import asynccp


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere a credential chain looks (nor a real ~/.aws)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def s3_options(endpoint: str, **obstore: Any) -> asynccp.StoreOptions:
    return asynccp.StoreOptions(
        io_attempts=1,
        obstore={
            "config": {"endpoint": endpoint, "region": REGION, **obstore.pop("config", {})},
            "client_options": {"allow_http": True},
            "retry_config": {"max_retries": 0},
            **obstore,
        },
    )


async def test_without_credentials_the_error_says_where_they_go(
    no_aws_env: None, moto_server: str, s3_bucket: str
) -> None:
    with MetadataServer("aws") as metadata:
        options = s3_options(moto_server, config={"metadata_endpoint": metadata.url})
        with pytest.raises(asynccp.StoreError) as caught:
            async with asynccp.Checkpointer(f"s3://{s3_bucket}/run", store=options) as cp:
                await (await cp.save(1, b"state"))
    message = str(caught.value)
    assert "no AWS credentials found" in message
    assert "AWS_ACCESS_KEY_ID" in message and "Boto3CredentialProvider" in message
    assert message.count("no AWS credentials found") == 1
    assert "Debug source" not in message  # obstore's dump of its error value


async def test_a_profile_in_an_aws_credentials_file_through_boto3(
    no_aws_env: None,
    moto_server: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the error advises works: a ``~/.aws/credentials`` profile, read by boto3."""
    boto3_provider = pytest.importorskip("obstore.auth.boto3")
    pytest.importorskip("boto3")
    shared = tmp_path / "credentials"
    shared.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY_ID}\n"
        f"aws_secret_access_key = {SECRET_ACCESS_KEY}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    options = s3_options(moto_server, credential_provider=boto3_provider.Boto3CredentialProvider())
    async with asynccp.Checkpointer(f"s3://{s3_bucket}/run", store=options) as cp:
        await (await cp.save(1, b"state"))
    async with asynccp.Checkpointer(f"s3://{s3_bucket}/run", store=options) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == 1
        assert await latest.read() == b"state"


def test_the_command_line_keeps_the_advice_in_its_one_line(
    no_aws_env: None, moto_server: str, s3_bucket: str
) -> None:
    """``asynccp ls`` prints one line of at most a few hundred characters, cut in the
    middle: the advice at its end stays."""
    with MetadataServer("aws") as metadata:
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": moto_server,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
            "AWS_METADATA_ENDPOINT": metadata.url,
        }
        done = subprocess.run(
            [sys.executable, "-m", "asynccp", "ls", f"s3://{s3_bucket}/run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("asynccp: listing manifests/")
    assert "no AWS credentials found" in line and "Boto3CredentialProvider()" in line
