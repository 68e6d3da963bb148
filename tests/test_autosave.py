"""``asynccp.autosave`` and ``asynccp.lifespan``: a service's state saved on a cadence.

Real stores only (local directories, the moto S3 server, the fault proxy in front of
it). Intervals are short (0.05 s) so the tests run quickly, but nothing here asserts
anything about time: each test waits for what it needs by polling the autosave's
stats (or an event), under a wide liveness bound.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from _sites import edit_newest

import asynccp
from asynccp import Checkpointer

#: A liveness bound: far above what any of these waits takes, only there so that a
#: broken autosave fails the test instead of hanging it.
BOUND = 60.0
EVERY = 0.05


async def poll(condition: Callable[[], bool], *, bound: float = BOUND) -> None:
    """Wait until ``condition()`` holds (checked every 10 ms), failing after ``bound`` s."""
    with anyio.fail_after(bound):
        while not condition():  # noqa: ASYNC110 - polling counters is the point
            await anyio.sleep(0.01)


class Counter:
    """A service's state: a dict of counters, and a state callable that counts its calls."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls = 0

    def bump(self, key: str = "k") -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def state(self) -> bytes:
        self.calls += 1
        return json.dumps(self.counts, sort_keys=True).encode()


async def committed(location: Any) -> list[tuple[int, bytes]]:
    """(step, payload) of every checkpoint at ``location``, oldest first."""
    async with Checkpointer(location) as cp:
        return [(c.step, await c.read()) for c in await cp.list()]


# -- the cadence ---------------------------------------------------------------------


async def test_saves_on_the_interval_and_once_more_on_exit_after_the_newest_step(
    tmp_path: Path,
) -> None:
    async with Checkpointer(tmp_path) as cp:
        for step in range(5):  # an earlier run left steps 0-4
            await cp.save(step, b"old")
    svc = Counter()
    async with Checkpointer(tmp_path) as cp:
        async with asynccp.autosave(cp, svc.state, every=EVERY) as saver:
            svc.bump()
            await poll(lambda: saver.stats.saves >= 1)
            svc.bump()
            await poll(lambda: saver.stats.saves >= 2)
            svc.bump("last")  # only the save on exit can hold this
        assert saver.stats.failures == 0
    found = await committed(tmp_path)
    steps = [s for s, _ in found]
    assert steps == list(range(len(steps)))  # generated: contiguous, after the old ones
    assert steps[5:] and all(data != b"old" for _, data in found[5:])
    assert json.loads(found[-1][1]) == {"k": 2, "last": 1}
    assert saver.stats.last_step == steps[-1]


async def test_an_async_state_callable_and_a_mapping_payload(tmp_path: Path) -> None:
    weights = np.arange(16, dtype=np.float32)

    async def state() -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return {"meta.json": '{"v": 1}', "weights": weights}

    async with Checkpointer(tmp_path) as cp:
        async with asynccp.autosave(cp, state, every=EVERY) as saver:
            await poll(lambda: saver.stats.saves >= 1)
            weights[0] = 42.0  # a buffer changed in place is a change too
            await poll(lambda: saver.stats.saves >= 2)
        ckpt = await cp.latest()
        assert ckpt is not None
        assert await ckpt.read("meta.json") == b'{"v": 1}'
        assert np.frombuffer(await ckpt.read("weights"), np.float32)[0] == 42.0


async def test_unchanged_state_is_skipped_also_after_a_restart(tmp_path: Path) -> None:
    svc = Counter()
    svc.bump()
    for _ in range(2):  # the second run starts from the first run's checkpoint
        async with (
            Checkpointer(tmp_path) as cp,
            asynccp.autosave(cp, svc.state, every=EVERY) as saver,
        ):
            await poll(lambda s=saver: s.stats.skips >= 3)  # type: ignore[misc]
    assert [s for s, _ in await committed(tmp_path)] == [0]  # one save in two runs
    assert saver.stats.saves == 0 and saver.stats.skips >= 4  # the exit skipped too


async def test_an_unchanged_state_at_exit_is_skipped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The exit of a run that changed nothing: one skip, one "skipped ... (on exit)" line
    (it once logged and counted two, the second from a try meant for a failed save)."""
    caplog.set_level(logging.DEBUG, logger="asynccp")
    svc = Counter()
    svc.bump()
    async with (
        Checkpointer(tmp_path) as cp,
        asynccp.autosave(cp, svc.state, every=3600) as saver,
    ):
        pass  # the exit saves the state: step 0
    assert saver.stats.saves == 1
    caplog.clear()
    async with (
        Checkpointer(tmp_path) as cp,
        asynccp.autosave(cp, svc.state, every=3600) as saver,
    ):
        pass  # restarted, unchanged: the exit skips
    skips = [r for r in caplog.records if getattr(r, "event", None) == "autosave.skip"]
    assert [r.getMessage() for r in skips] == [
        f"asynccp: autosave to {cp.location} skipped: the state has not changed (on exit)"
    ]
    assert (saver.stats.saves, saver.stats.skips) == (0, 1)
    assert [s for s, _ in await committed(tmp_path)] == [0]


async def test_skip_changes_reads_the_state_only_after_a_reported_change(tmp_path: Path) -> None:
    svc = Counter()
    async with Checkpointer(tmp_path) as cp:
        async with asynccp.autosave(cp, svc.state, every=EVERY, skip="changes") as saver:
            await poll(lambda: saver.stats.skips >= 3)
            assert svc.calls == 0  # not even read
            svc.bump()
            saver.changed()
            await poll(lambda: saver.stats.saves == 1)
            await poll(lambda: saver.stats.skips >= 6)
        assert saver.stats.changes == saver.stats.changes_committed == 1
    assert svc.calls == 1  # nothing changed after the save: the exit did not read it
    assert [json.loads(d) for _, d in await committed(tmp_path)] == [{"k": 1}]


async def test_every_changes_saves_without_waiting_for_the_interval(tmp_path: Path) -> None:
    svc = Counter()
    # An hour between timed saves: only the change count can trigger one in time.
    async with (
        Checkpointer(tmp_path) as cp,
        asynccp.autosave(cp, svc.state, every=3600, every_changes=3) as saver,
    ):
        for _ in range(3):
            svc.bump()
            saver.changed()
        await poll(lambda: saver.stats.saves == 1)
        assert saver.stats.changes_committed == 3
        for _ in range(3):
            svc.bump()
            saver.changed()
        await poll(lambda: saver.stats.saves == 2)
    assert json.loads((await committed(tmp_path))[-1][1]) == {"k": 6}


async def test_steps_move_past_a_step_saved_by_someone_else(tmp_path: Path) -> None:
    svc = Counter()
    async with Checkpointer(tmp_path) as cp:
        pending = await cp.save(0, b"saved by hand, not committed yet")
        async with asynccp.autosave(cp, svc.state, every=3600) as saver:
            svc.bump()
        await pending
    assert saver.stats.failures == 0
    assert [s for s, _ in await committed(tmp_path)] == [0, 1]


async def test_a_body_error_propagates_as_itself_after_the_final_save(tmp_path: Path) -> None:
    svc = Counter()
    async with Checkpointer(tmp_path) as cp:
        with pytest.raises(KeyError, match="the body's own error"):
            async with asynccp.autosave(cp, svc.state, every=3600):
                svc.bump()
                raise KeyError("the body's own error")
    assert [json.loads(d) for _, d in await committed(tmp_path)] == [{"k": 1}]


async def test_a_cancelled_body_still_gets_its_final_save(tmp_path: Path) -> None:
    svc = Counter()
    reached = False
    async with Checkpointer(tmp_path) as cp:
        with anyio.CancelScope() as scope:
            async with asynccp.autosave(cp, svc.state, every=3600):
                svc.bump()
                scope.cancel()
                await anyio.sleep_forever()
                reached = True
        assert scope.cancelled_caught and not reached
    assert [json.loads(d) for _, d in await committed(tmp_path)] == [{"k": 1}]


async def test_works_under_trio(tmp_path: Path) -> None:
    async def job() -> list[int]:
        svc = Counter()
        async with Checkpointer(tmp_path) as cp:
            async with asynccp.autosave(cp, svc.state, every=EVERY) as saver:
                svc.bump()
                await poll(lambda: saver.stats.saves >= 1)
                svc.bump()
            return [c.step for c in await cp.list()]

    steps = await anyio.to_thread.run_sync(lambda: anyio.run(job, backend="trio"))
    assert steps and steps == list(range(len(steps)))
    assert json.loads((await committed(tmp_path))[-1][1]) == {"k": 2}


# -- failures ------------------------------------------------------------------------


async def test_a_failing_state_callable_is_logged_and_retried_and_the_service_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asynccp")
    svc = Counter()
    served = 0

    def state() -> bytes:
        svc.calls += 1
        if svc.calls in (2, 3):
            raise RuntimeError(f"state broke on call {svc.calls}")
        return str(svc.calls).encode()  # a new value each time: never skipped

    async def serve() -> None:
        nonlocal served
        while True:
            served += 1
            await anyio.sleep(0.005)

    async with Checkpointer(tmp_path) as cp, anyio.create_task_group() as tg:
        tg.start_soon(serve)
        async with asynccp.autosave(cp, state, every=EVERY, max_failures=3) as saver:
            await poll(lambda: saver.stats.failures == 2)
            during = served
            await poll(lambda: saver.stats.saves >= 2)  # the next interval tried again
            await poll(lambda: served > during)
            assert saver.stats.consecutive_failures == 0
            assert isinstance(saver.stats.last_error, RuntimeError)
        tg.cancel_scope.cancel()
    failures = [r for r in caplog.records if getattr(r, "event", None) == "autosave.failure"]
    assert len(failures) == 2
    for record in failures:
        assert record.name == "asynccp" and record.levelno == logging.WARNING
        assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
        assert record.location == cp.location and record.writer == cp.writer_id  # type: ignore[attr-defined]
        assert isinstance(record.step, int) and record.duration >= 0  # type: ignore[attr-defined]
    assert [r.failures for r in failures] == [1, 2]  # type: ignore[attr-defined]
    assert "Traceback" in caplog.text and "state broke on call 2" in caplog.text
    commits = [r for r in caplog.records if getattr(r, "event", None) == "autosave.commit"]
    assert commits and all(r.levelno == logging.DEBUG for r in commits)


async def test_persistent_failure_reaches_the_owner_and_no_task_outlives_the_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def state() -> bytes:
        nonlocal calls
        calls += 1
        raise OSError(f"the state is gone ({calls})")

    reached = False
    async with Checkpointer(tmp_path) as cp:
        with anyio.fail_after(BOUND), pytest.raises(asynccp.AutosaveError) as info:
            async with asynccp.autosave(cp, state, every=EVERY, max_failures=3):
                await anyio.sleep_forever()
                reached = True
        assert not reached  # the body was cancelled, not left running
        assert info.value.failures == 3 and isinstance(info.value.__cause__, OSError)
        assert "3 times in a row" in str(info.value)
        assert calls == 4  # three tries, and the one more on exit; then nothing
        # The checkpointer is unharmed: the owner can still save and exit cleanly.
        await (await cp.save(0, b"after"))
    give_up = [r for r in caplog.records if getattr(r, "event", None) == "autosave.give_up"]
    assert len(give_up) == 1 and give_up[0].levelno == logging.ERROR


@pytest.mark.slow
async def test_the_store_down_for_a_while(
    fault_proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Saves fail and are reported, the service keeps serving, the autosave resumes when
    the store is back, and the exit is still bounded."""
    store = make_s3_store(fault_proxy.url, s3_bucket)
    svc = Counter()

    async def serve() -> None:
        while True:
            svc.bump()
            await anyio.sleep(0.005)

    with anyio.fail_after(BOUND):
        async with Checkpointer(store, policy="latest", keep=2, flush_timeout=30) as cp:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                async with asynccp.autosave(cp, svc.state, every=EVERY, max_failures=None) as s:
                    await poll(lambda: s.stats.saves >= 1)
                    fault_proxy.set_mode("503")
                    await poll(lambda: s.stats.consecutive_failures >= 2)
                    served = svc.counts["k"]
                    await poll(lambda: svc.counts["k"] > served)  # still serving
                    saves = s.stats.saves
                    fault_proxy.set_mode("pass")
                    await poll(lambda: s.stats.saves > saves)
                    assert s.stats.consecutive_failures == 0
                    tg.cancel_scope.cancel()  # the service stops; the exit saves its last state
            final = svc.counts["k"]
    assert s.stats.failures >= 2
    assert any(getattr(r, "event", None) == "autosave.failure" for r in caplog.records)
    latest = (await committed(make_s3_store(fault_proxy.url, s3_bucket)))[-1]
    assert json.loads(latest[1]) == {"k": final}


async def test_an_autosave_that_fails_after_the_exit_skipped_its_state_is_saved_again(
    fault_proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The exit skips the state an autosave in flight holds; that autosave's commit then
    fails: the exit saves the state after all (and logs the skip once)."""
    caplog.set_level(logging.DEBUG, logger="asynccp")
    store = make_s3_store(fault_proxy.url, s3_bucket)
    svc = Counter()
    svc.bump()

    def exit_skipped() -> bool:
        return any(getattr(r, "event", None) == "autosave.skip" for r in caplog.records)

    async def fail_the_commit_in_flight(saver: asynccp.Autosave) -> None:
        await poll(exit_skipped)  # the exit compared with the autosave in flight
        fault_proxy.set_mode("503")  # cuts the held commit; its retries get 503s
        fault_proxy.release()
        await poll(lambda: saver.stats.failures >= 1)
        fault_proxy.set_mode("pass")

    with anyio.fail_after(BOUND):
        async with (
            Checkpointer(store, flush_timeout=30) as cp,
            anyio.create_task_group() as tg,
            asynccp.autosave(cp, svc.state, every=3600, every_changes=1) as saver,
        ):
            fault_proxy.hold_requests(rb"^PUT \S*/manifests/")
            saver.changed()  # an autosave now, its commit held at the store
            await anyio.to_thread.run_sync(fault_proxy.wait_held)
            tg.start_soon(fail_the_commit_in_flight, saver)
    skips = [r for r in caplog.records if getattr(r, "event", None) == "autosave.skip"]
    assert len(skips) == 1 and skips[0].getMessage().endswith("(on exit)")
    assert (saver.stats.failures, saver.stats.saves) == (1, 1)
    latest = (await committed(make_s3_store(fault_proxy.url, s3_bucket)))[-1]
    assert json.loads(latest[1]) == {"k": 1}


@pytest.mark.slow
async def test_the_store_down_at_shutdown_is_reported_and_the_exit_is_bounded(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    store = make_s3_store(fault_proxy.url, s3_bucket)
    svc = Counter()
    with anyio.fail_after(BOUND), pytest.raises(asynccp.AutosaveError) as info:
        async with (
            Checkpointer(store, flush_timeout=30) as cp,
            asynccp.autosave(cp, svc.state, every=3600),
        ):
            svc.bump()
            fault_proxy.set_mode("drop")
    assert "the final autosave" in str(info.value)
    assert isinstance(info.value.__cause__, asynccp.UploadError)
    fault_proxy.set_mode("pass")
    assert await committed(make_s3_store(fault_proxy.url, s3_bucket)) == []


async def test_a_final_save_that_hangs_is_cut_off_by_the_timeouts(
    fault_proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that stops answering: the exit waits ``final_timeout`` for the final commit,
    then the checkpointer's flush its ``flush_timeout``, and reports what it abandoned."""
    store = make_s3_store(fault_proxy.url, s3_bucket)
    svc = Counter()
    try:
        with anyio.fail_after(BOUND), pytest.raises(asynccp.FlushTimeoutError):
            async with (
                Checkpointer(store, flush_timeout=0.5) as cp,
                asynccp.autosave(cp, svc.state, every=3600, final_timeout=0.2),
            ):
                svc.bump()
                fault_proxy.hold_requests(rb"^PUT \S*/manifests/")
    finally:
        fault_proxy.release()
    assert any(getattr(r, "event", None) == "autosave.final_timeout" for r in caplog.records)


async def test_a_save_waiting_for_room_is_replaced_by_the_newer_state(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """One autosave's commit is held; the next waits for room (max_pending=1) and is
    dropped each interval for a fresh read: what goes in once room frees is the newest
    state, and no state in between is ever uploaded."""
    store = make_s3_store(fault_proxy.url, s3_bucket)
    value = b"v0"
    fault_proxy.hold_requests(rb"^PUT \S*/manifests/")
    with anyio.fail_after(BOUND):
        async with (
            Checkpointer(store, limits=asynccp.Limits(max_pending=1)) as cp,
            asynccp.autosave(cp, lambda: value, every=EVERY) as saver,
        ):
            await anyio.to_thread.run_sync(fault_proxy.wait_held)  # v0 is committing
            for i in range(1, 4):
                value = f"v{i}".encode()
                replaced = saver.stats.replaced
                await poll(lambda r=replaced: saver.stats.replaced > r)  # type: ignore[misc]
            assert saver.stats.pending == 1  # never more than one in the queue here
            fault_proxy.release()
            await poll(lambda: saver.stats.saves == 2)
    assert [d for _, d in await committed(make_s3_store(fault_proxy.url, s3_bucket))] == [
        b"v0",
        b"v3",
    ]


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every must be"),
        ({"every": -1.0}, ValueError, "every must be"),
        ({"every": math.nan}, ValueError, "every must be"),
        ({"every": math.inf}, ValueError, "every must be"),
        ({"every": "5"}, TypeError, "every must be"),
        ({}, ValueError, "needs a cadence"),
        ({"every_changes": 0}, ValueError, "every_changes must be an int >= 1"),
        ({"every_changes": 1.5}, TypeError, "every_changes must be an int"),
        ({"every": 1, "max_failures": 0}, ValueError, "max_failures must be an int >= 1"),
        ({"every": 1, "skip": "sometimes"}, ValueError, "skip must be one of"),
        ({"every": 1, "final_timeout": -1}, ValueError, "final_timeout must be"),
        ({"every": 1, "metadata": {"x": object()}}, TypeError, "JSON"),
    ],
)
def test_bad_arguments_fail_at_construction(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    cp = Checkpointer(tmp_path)
    with pytest.raises(error, match=match):
        asynccp.autosave(cp, lambda: b"", **kwargs)
    with pytest.raises(error, match=match):
        asynccp.lifespan(tmp_path, restore=_restore, initial=dict, dump=_dump, **kwargs)


def test_a_non_callable_state_or_no_checkpointer_fails_at_construction(tmp_path: Path) -> None:
    cp = Checkpointer(tmp_path)
    with pytest.raises(TypeError, match="state must be a callable"):
        asynccp.autosave(cp, b"not a function", every=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs an asynccp\.Checkpointer"):
        asynccp.autosave(str(tmp_path), lambda: b"", every=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dump must be a callable"):
        asynccp.lifespan(tmp_path, restore=_restore, initial=dict, dump=None, every=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options"):
        asynccp.lifespan(cp, restore=_restore, initial=dict, dump=_dump, every=1, keep=2)
    with pytest.raises(ValueError, match="max_pending"):  # the Checkpointer's own checks
        asynccp.lifespan(
            tmp_path,
            limits=asynccp.Limits(max_pending=0),
            restore=_restore,
            initial=dict,
            dump=_dump,
            every=1,
        )
    with pytest.raises(ValueError, match="changed"):
        asynccp.autosave(cp, lambda: b"", every=1).changed(0)


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (42, TypeError, r"state\(\) is a int"),
        (None, TypeError, r"state\(\) is a NoneType"),
        ({"a": 1}, TypeError, r"state\(\)\['a'\] is a int"),
        ({"a": {"b": b""}}, TypeError, "nested mapping"),
        ({1: b""}, TypeError, "file names are str"),
        (Path("/etc/hostname"), TypeError, "for files on disk"),
        (np.zeros((4, 4))[:, 1], TypeError, "not C-contiguous"),
        ({"../up": b""}, asynccp.InvalidNameError, "escape"),
    ],
)
async def test_an_unsupported_payload_fails_at_first_use(
    tmp_path: Path, payload: object, error: type[Exception], match: str
) -> None:
    reached = False
    async with Checkpointer(tmp_path) as cp:
        with anyio.fail_after(BOUND), pytest.raises(error, match=match):
            async with asynccp.autosave(cp, lambda: payload, every=EVERY):
                await anyio.sleep_forever()
                reached = True
        assert not reached and await cp.list() == []


# -- lifespan ------------------------------------------------------------------------


def _restore(ckpt: asynccp.Checkpoint) -> Any:
    async def read() -> dict[str, int]:
        return json.loads(await ckpt.read())  # type: ignore[no-any-return]

    return read()


def _dump(counts: dict[str, int]) -> bytes:
    return json.dumps(counts, sort_keys=True).encode()


async def test_lifespan_starts_fresh_then_restores_the_newest_that_verifies(
    tmp_path: Path,
) -> None:
    def open_service() -> Any:
        return asynccp.lifespan(
            tmp_path, restore=_restore, initial=dict, dump=_dump, every=EVERY, keep=None
        )

    async with open_service() as kept:
        assert kept.checkpoint is None and kept.value == {}
        kept.value["a"] = 1
        await poll(lambda: kept.autosave.stats.saves >= 1)
        kept.value = {"a": 2}  # replacing the value works as well as mutating it
    async with open_service() as kept:
        assert kept.value == {"a": 2} and kept.checkpoint is not None
        good = kept.checkpoint.step
        kept.value["a"] = 3
    # The newest checkpoint rots on disk: its payload no longer matches its checksum.
    newest = (await committed(tmp_path))[-1][0]
    assert newest > good
    assert edit_newest(tmp_path, "data", lambda data: data.replace(b"3", b"4")) == newest
    with pytest.warns(asynccp.CorruptCheckpointWarning):
        async with open_service() as kept:
            assert kept.value == {"a": 2} and kept.checkpoint is not None
            assert kept.checkpoint.step == good  # fell back past the corrupt one
            kept.value["a"] = 5  # saved again at the corrupt one's step, replacing it
    async with Checkpointer(tmp_path) as cp:
        found = await cp.load_latest(_restore)
    assert found is not None and found[1] == {"a": 5} and found[0].step == newest


async def test_lifespan_with_an_open_checkpointer_and_a_failing_restore(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path) as cp:
        await (await cp.save(0, b"not json"))
        with pytest.raises(json.JSONDecodeError):
            async with asynccp.lifespan(cp, restore=_restore, initial=dict, dump=_dump, every=1):
                pytest.fail("the startup must fail")  # pragma: no cover
        assert [c.step for c in await cp.list()] == [0]  # nothing was saved over it


# -- OpenTelemetry -------------------------------------------------------------------


async def test_metrics_and_spans_through_the_sdk(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    calls = 0

    def dump(value: dict[str, int]) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("one bad read")
        return _dump(value)

    async with asynccp.lifespan(
        tmp_path,
        restore=_restore,
        initial=lambda: {"n": 1},
        dump=dump,
        every=EVERY,
        meter_provider=meters,
        tracer_provider=tracers,
    ) as kept:
        await poll(lambda: kept.autosave.stats.saves >= 1)
        await poll(lambda: kept.autosave.stats.failures >= 1)
        await poll(lambda: kept.autosave.stats.skips >= 1)
    stats = kept.autosave.stats

    sums: dict[str, float] = {}
    histograms: dict[str, int] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "asynccp"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert dict(point.attributes or {}) == {"asynccp.location": str(tmp_path)}
                    if hasattr(point, "value"):
                        sums[metric.name] = sums.get(metric.name, 0) + point.value
                    else:
                        histograms[metric.name] = point.count
    assert sums["asynccp.autosave.saves"] == stats.saves >= 1
    assert sums["asynccp.autosave.failures"] == stats.failures == 1
    assert sums["asynccp.autosave.skips"] == stats.skips >= 1
    assert histograms["asynccp.autosave.duration"] == stats.saves

    spans = [(s.name, dict(s.attributes or {}), s) for s in exporter.get_finished_spans()]
    restores = [attrs for name, attrs, _ in spans if name == "asynccp.autosave.restore"]
    assert len(restores) == 1 and restores[0]["asynccp.outcome"] == "none"
    saves = [(attrs, span) for name, attrs, span in spans if name == "asynccp.autosave.save"]
    outcomes = [attrs["asynccp.outcome"] for attrs, _ in saves]
    assert outcomes.count("committed") == stats.saves and outcomes.count("failed") == 1
    (failed,) = [span for attrs, span in saves if attrs["asynccp.outcome"] == "failed"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.events[0].name == "exception"
    committed_steps = [
        attrs["asynccp.step"] for attrs, _ in saves if attrs["asynccp.outcome"] == "committed"
    ]
    assert committed_steps == list(range(stats.saves))


async def test_without_opentelemetry_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` fails
    svc = Counter()
    svc.bump()
    async with (
        Checkpointer(tmp_path) as cp,
        asynccp.autosave(cp, svc.state, every=EVERY) as saver,
    ):
        await poll(lambda: saver.stats.saves >= 1)
    assert [json.loads(d) for _, d in await committed(tmp_path)] == [{"k": 1}]


def test_import_asynccp_loads_no_opentelemetry_nor_web_framework() -> None:
    """OpenTelemetry is imported when an autosave is made, never by ``import asynccp``."""
    code = (
        "import asynccp, json, sys\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in "
        "('opentelemetry', 'starlette', 'uvicorn')]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


#: An operator's setup: global SDK providers configured once, no provider passed in.
GLOBAL_PROVIDERS = """
import json, sys, anyio, asynccp
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
tracers = TracerProvider()
tracers.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(tracers)

async def main():
    async with asynccp.Checkpointer(sys.argv[1]) as cp:
        async with asynccp.autosave(cp, lambda: b"state", every=3600):
            pass  # the save on exit
    found = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found[m.name] = sum(getattr(p, "value", 0) for p in m.data.data_points)
    print(json.dumps({"metrics": found, "spans": [s.name for s in exporter.get_finished_spans()]}))

anyio.run(main)
"""


def test_metrics_and_spans_through_the_global_providers(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    proc = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDERS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["metrics"]["asynccp.autosave.saves"] == 1
    # the autosave's own span; the checkpointer records its commit span beside it
    assert [n for n in doc["spans"] if n.startswith("asynccp.autosave.")] == [
        "asynccp.autosave.save"
    ]
    assert "asynccp.commit" in doc["spans"]
