"""Retries of store calls are logged on the ``asynccp`` logger, in asynccp's words.

A fault proxy answers the first request of a save with a 503, and the store client is
told not to retry (``max_retries: 0``): the failure reaches asynccp's own retry of
connection-level errors, which must log it as asynccp (never as a bare
``stamina.retry_scheduled`` line) and then commit the checkpoint.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
from _moto import make_s3_store
from _proxy import FaultProxy

from asynccp import Checkpointer


async def test_a_retried_store_call_is_logged_by_asynccp(
    fault_proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config={"max_retries": 0})
    async with Checkpointer(store) as cp:
        fault_proxy.fail_next(1, "503")
        ckpt = await (await cp.save(0, b"payload"))
    assert ckpt.step == 0 and await ckpt.read() == b"payload"
    assert fault_proxy.failures == 1  # the fault was hit, and ridden out
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1, [r.getMessage() for r in caplog.records]
    record = retries[0]
    assert record.name == "asynccp" and record.levelno == logging.INFO
    message = record.getMessage()
    assert "a store call failed (attempt 1 of 4), retrying in" in message
    assert "503" in message  # what failed, in one line
    assert not [r for r in caplog.records if r.name.startswith("stamina")]


#: A library user's script: no logging set up at all, one save through the proxy.
USER_SCRIPT = textwrap.dedent(
    """
    import sys, anyio, asynccp
    from obstore.store import S3Store

    async def main(endpoint, bucket):
        store = S3Store(
            bucket,
            config={"endpoint": endpoint, "access_key_id": "testing",
                    "secret_access_key": "testing", "region": "us-east-1"},
            client_options={"allow_http": True},
            retry_config={"max_retries": 0},
        )
        async with asynccp.Checkpointer(store) as cp:
            await (await cp.save(0, b"payload"))
        print("committed")

    anyio.run(main, *sys.argv[1:])
    """
)


def test_no_logging_configured_no_retry_lines_on_stderr(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """A fresh process: logging is process-wide state, and pytest's own handlers would hide
    what Python prints for a user who configured nothing (its last-resort handler)."""
    fault_proxy.fail_next(1, "503")
    proc = subprocess.run(
        [sys.executable, "-c", USER_SCRIPT, fault_proxy.url, s3_bucket],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "committed"
    assert fault_proxy.failures == 1  # the save met the fault and was retried
    assert "stamina" not in proc.stderr
    assert proc.stderr == ""
