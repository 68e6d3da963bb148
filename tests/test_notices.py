"""Cloud pre-emption notices (``supervise(..., notices=...)``, asynccp/_supervise/_notices.py):
a notice from each cloud's metadata server, answered as that cloud documents it by a
server on 127.0.0.1 (tests/_metadata.py), stops the job like SIGTERM — flush (the local
tier, then the remote one), then ``Preempted`` with code 75 — and the newest saved step
is committed in both tiers. Remotes: S3 (moto) and Azure (Azurite). ``"auto"`` finds
the cloud, and gives up at once, quietly, where no metadata server answers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from _azurite import Azurite
from _metadata import MetadataServer
from _moto import free_port, make_s3_store
from _sites import Raw
from test_tiers import payload, steps_in

import asynccp
from asynccp._supervise import _notices

CLOUDS = ["aws", "gcp", "azure"]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll every 50 ms instead of AWS's 5 s and Azure's 1 s (the same code path)."""
    monkeypatch.setitem(_notices.POLL_SECONDS, "aws", 0.05)
    monkeypatch.setitem(_notices.POLL_SECONDS, "azure", 0.05)


async def preempted_run(
    server: MetadataServer, remote: Any, local: Path, notices: str
) -> asynccp.Preempted:
    """A supervised job that saves steps 0-4 and then works on until stopped; the
    notice comes once step 4 is saved."""

    async def job(cp: asynccp.Checkpointer) -> None:
        for step in range(5):
            await cp.save(step, payload(step))
        server.announce()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted) as caught:
        await asynccp.supervise(
            job,
            remote,
            local=local,
            local_keep=2,
            notices=notices,
            notice_endpoint=server.url,
            handle_signals=False,  # (a test process: leave pytest's handlers alone)
            grace=60,
        )
    return caught.value


@pytest.mark.parametrize("cloud", CLOUDS)
async def test_a_notice_flushes_both_tiers_and_exits_75_on_s3(
    cloud: str, moto_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    with MetadataServer(cloud) as server:
        stopped = await preempted_run(
            server, make_s3_store(moto_server, s3_bucket), tmp_path / "local", cloud
        )
    assert stopped.code == asynccp.PREEMPTED_EXIT_CODE == 75
    assert stopped.last_step == 4
    assert "pre-emption notice" in str(stopped) and stopped.errors == ()
    assert steps_in(Raw(store=make_s3_store(moto_server, s3_bucket))) == [0, 1, 2, 3, 4]
    assert steps_in(Raw(root=tmp_path / "local")) == [3, 4]


@pytest.mark.parametrize("cloud", CLOUDS)
async def test_a_notice_flushes_both_tiers_and_exits_75_on_azure(
    cloud: str, azurite: Azurite, azure_container: str, tmp_path: Path
) -> None:
    with MetadataServer(cloud) as server:
        stopped = await preempted_run(
            server, azurite.store(azure_container), tmp_path / "local", cloud
        )
    assert (stopped.code, stopped.last_step, stopped.errors) == (75, 4, ())
    assert steps_in(Raw(store=azurite.store(azure_container))) == [0, 1, 2, 3, 4]
    async with asynccp.Checkpointer(azurite.store(azure_container)) as remote:
        found = await remote.load_latest(lambda c: c.read())
        assert found is not None and found[1] == payload(4)


async def test_auto_finds_the_cloud(moto_server: str, s3_bucket: str, tmp_path: Path) -> None:
    with MetadataServer("gcp") as server:
        stopped = await preempted_run(
            server, make_s3_store(moto_server, s3_bucket), tmp_path / "local", "auto"
        )
    assert (stopped.code, stopped.last_step) == (75, 4)
    assert "Google Compute Engine" in str(stopped)


async def test_auto_gives_up_quietly_where_no_metadata_server_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def job(cp: asynccp.Checkpointer) -> int:
        await cp.save(0, b"zero")
        return 7

    with caplog.at_level(logging.DEBUG, logger="asynccp"):
        result = await asynccp.supervise(
            job, tmp_path / "store", notices="auto", notice_endpoint=nobody, handle_signals=False
        )
    assert result == 7
    said = [r for r in caplog.records if "metadata server" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert "not watched" in said[0].getMessage()


async def test_another_vms_azure_event_is_not_a_notice() -> None:
    noticed: list[_notices.Notice] = []
    with MetadataServer("azure") as server:
        server.other_vm = True  # a Preempt event for another VM of the availability set
        watcher = _notices.NoticeWatcher("azure", server.url, noticed.append)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.watch)
            for _ in range(6):  # the name, then five polls that each saw the event
                await anyio.to_thread.run_sync(server.asked.acquire)
            assert noticed == []
            server.announce()  # now this VM's
        assert len(noticed) == 1 and "Preempt" in str(noticed[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"notices": "gcs"}, ValueError, "notices must be"),
        ({"notices": 1}, TypeError, "notices must be"),
        ({"notice_endpoint": "http://127.0.0.1:1"}, ValueError, "pass notices="),
        ({"notices": "aws", "notice_endpoint": "https://x"}, ValueError, "http://HOST"),
        ({"notices": "aws", "notice_endpoint": "http://x/latest"}, ValueError, "http://HOST"),
        ({"notices": "aws", "notice_endpoint": 5}, TypeError, "notice_endpoint"),
        ({"notice": "aws"}, TypeError, "notices"),
    ],
)
async def test_arguments_are_checked(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    async def job(cp: asynccp.Checkpointer) -> None:
        raise AssertionError("never runs")

    with pytest.raises(error, match=match):
        await asynccp.supervise(job, tmp_path, **kwargs)  # type: ignore[arg-type]


def test_a_process_stopped_by_a_notice_exits_75(
    moto_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The whole way: a process with SIGTERM handled as usual, stopped by an AWS notice."""
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, anyio, asynccp
            from asynccp._supervise import _notices
            _notices.POLL_SECONDS["aws"] = 0.05
            endpoint, local, ready = sys.argv[1:4]

            async def job(cp):
                for step in range(3):
                    await cp.save(step, b"x" * 1000)
                open(ready, "w").close()
                await anyio.sleep_forever()

            anyio.run(lambda: asynccp.supervise(
                job, "s3://" + sys.argv[4], local=local, notices="aws", notice_endpoint=endpoint
            ))
            """
        )
    )
    ready = tmp_path / "ready"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(asynccp.__file__).parents[1])]),
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    with MetadataServer("aws") as server:
        args = [server.url, str(tmp_path / "local"), str(ready), s3_bucket]
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            while not ready.exists():  # the job saved its steps
                if proc.poll() is not None:
                    break
                server.asked.acquire(timeout=1)
            server.announce()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 75, err.decode()
    assert b"AWS spot pre-emption notice" in err
    assert steps_in(Raw(store=make_s3_store(moto_server, s3_bucket))) == [0, 1, 2]
