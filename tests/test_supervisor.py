"""The retry supervisor: supervise(), @checkpointed, current(), backoff, the seed example.

Real stores only: local directories, memory, and moto S3 behind the fault proxy.
Signals and pre-emption are in test_preemption.py.
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from obstore.store import MemoryStore

import asynccp
from asynccp import Checkpointer, RecoverableError, RetriesExhausted, RetryEvent

if sys.version_info < (3, 11):  # pragma: no cover - 3.10 only
    from exceptiongroup import ExceptionGroup

MiB = 1 << 20
ROOT = Path(__file__).parent.parent
SEED = ROOT / "examples" / "seed_checkpoint.py"


class Flaky(Exception):
    """A transient error the tests declare recoverable."""


class Fatal(Exception):
    """An error nobody declares recoverable."""


async def committed_steps(location: Any, **options: Any) -> list[int]:
    async with Checkpointer(location, **options) as cp:
        return [c.step for c in await cp.list()]


async def resume(cp: Checkpointer) -> int:
    """The first step this attempt should save: one past the newest committed."""
    prev = await cp.latest()
    return prev.step + 1 if prev else 0


# -- bad input: a clear error before anything runs ---------------------------------------


class Calls:
    """An async job that counts its calls (and must not be called in these tests)."""

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, cp: Checkpointer) -> str:
        self.n += 1
        return "ran"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"retries": -1}, ValueError, "retries must be an int >= 0"),
        ({"retries": 2.0}, TypeError, "retries must be an int"),
        ({"retries": "3"}, TypeError, "retries must be an int"),
        ({"retries": True}, TypeError, "retries must be an int"),
        ({"preemptions": -2}, ValueError, "preemptions must be an int >= 0"),
        ({"recoverable": "ValueError"}, TypeError, "recoverable must be"),
        ({"recoverable": 42}, TypeError, "recoverable must be"),
        ({"recoverable": (ValueError, 3)}, TypeError, "recoverable must be"),
        ({"recoverable": KeyboardInterrupt}, TypeError, "never retried"),
        ({"recoverable": (ValueError, SystemExit)}, TypeError, "never retried"),
        ({"backoff": -1}, ValueError, "backoff must be"),
        ({"backoff": float("nan")}, ValueError, "backoff must be"),
        ({"backoff": "1s"}, TypeError, "backoff must be"),
        ({"grace": 0}, ValueError, "grace must be"),
        ({"grace": -5}, ValueError, "grace must be"),
        ({"on_retry": 3}, TypeError, "on_retry must be"),
        ({"on_retry": [print, "x"]}, TypeError, "on_retry must be"),
        ({"handle_signals": "yes"}, TypeError, "handle_signals must be a bool"),
        ({"attempt": 2}, TypeError, "attempt= is set by the supervisor"),
        ({"keep": 0}, ValueError, "keep"),  # a Checkpointer option
        ({"max_pending": 2}, TypeError, r"limits=asynccp\.Limits\(max_pending=\.\.\.\)"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
        ({"kep": 3}, TypeError, "unexpected keyword argument 'kep'; did you mean 'keep'"),
        ({"retrys": 3}, TypeError, "unexpected keyword argument 'retrys'; did you mean 'retries'"),
    ],
)
async def test_bad_options_fail_before_anything_runs(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    job = Calls()
    with pytest.raises(error, match=match):
        await asynccp.supervise(job, tmp_path / "ck", **kwargs)
    with pytest.raises(error, match=match):
        asynccp.checkpointed(tmp_path / "ck", **kwargs)
    assert job.n == 0
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("location", [42, "", "ftp://host/x", None])
async def test_bad_location_fails_before_anything_runs(location: Any) -> None:
    job = Calls()
    with pytest.raises((TypeError, ValueError)):
        await asynccp.supervise(job, location)
    assert job.n == 0


@pytest.mark.parametrize("fn", [None, 3, "job"])
async def test_fn_not_callable(tmp_path: Path, fn: Any) -> None:
    with pytest.raises(TypeError, match="fn must be an async function"):
        await asynccp.supervise(fn, tmp_path)
    with pytest.raises(TypeError, match="decorates an async function"):
        asynccp.checkpointed(tmp_path)(fn)


async def test_fn_returning_no_awaitable_is_a_type_error_not_retried(tmp_path: Path) -> None:
    calls = 0

    def sync_job(cp: Checkpointer) -> int:
        nonlocal calls
        calls += 1
        return 7

    # Even a "retry everything" policy does not retry a job that cannot be awaited.
    with pytest.raises(TypeError, match=r"sync_job\(cp\) returned int, not an awaitable"):
        await asynccp.supervise(sync_job, tmp_path, recoverable=lambda e: True, backoff=0)
    assert calls == 1


# -- classification ----------------------------------------------------------------------


async def test_non_recoverable_error_on_first_attempt_is_raised_as_is(tmp_path: Path) -> None:
    calls = 0
    boom = Fatal("broken input")

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        await cp.save(0, b"progress")
        raise boom

    with pytest.raises(Fatal) as ei:
        await asynccp.supervise(job, tmp_path, retries=5, recoverable=Flaky, backoff=0)
    assert ei.value is boom and type(ei.value) is Fatal
    assert ei.value.__cause__ is None
    assert calls == 1
    assert await committed_steps(tmp_path) == [0]  # flushed on the way out


async def test_recoverable_every_time_exhausts_and_keeps_every_checkpoint(tmp_path: Path) -> None:
    calls: list[int] = []
    errors: list[Flaky] = []

    async def job(cp: Checkpointer) -> None:
        calls.append(cp.attempt)
        step = await resume(cp)
        await cp.save(step, f"attempt {cp.attempt}".encode())  # staged, not awaited
        errors.append(Flaky(f"attempt {cp.attempt}"))
        raise errors[-1]

    with pytest.raises(RetriesExhausted) as ei:
        await asynccp.supervise(job, tmp_path, retries=3, recoverable=(Flaky,), backoff=0)
    assert calls == [0, 1, 2, 3]  # retries + 1 calls, attempts numbered from 0
    assert ei.value.attempts == 4
    assert ei.value.__cause__ is errors[-1]
    assert isinstance(ei.value, asynccp.CheckpointError)
    async with Checkpointer(tmp_path) as cp:
        found = await cp.list()
        assert [c.step for c in found] == [0, 1, 2, 3]
        assert [c.attempt for c in found] == [0, 1, 2, 3]
        for c in found:
            assert await c.read() == f"attempt {c.attempt}".encode()


async def test_zero_retries_means_one_call(tmp_path: Path) -> None:
    calls = 0

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        raise RecoverableError("once")

    with pytest.raises(RetriesExhausted) as ei:
        await asynccp.supervise(job, tmp_path, retries=0)
    assert calls == 1 and ei.value.attempts == 1


@pytest.mark.parametrize(
    "recoverable",
    [Flaky, (Fatal, Flaky), lambda e: isinstance(e, Flaky) and "transient" in str(e)],
    ids=["type", "tuple", "predicate"],
)
async def test_recoverable_forms(tmp_path: Path, recoverable: Any) -> None:
    async def job(cp: Checkpointer) -> int:
        step = await resume(cp)
        await cp.save(step, b"x")
        if step < 2:
            raise Flaky("transient glitch")
        return step

    assert await asynccp.supervise(job, tmp_path, recoverable=recoverable, backoff=0) == 2


async def test_predicate_false_propagates(tmp_path: Path) -> None:
    seen: list[BaseException] = []

    def never(e: Exception) -> bool:
        seen.append(e)
        return False

    async def job(cp: Checkpointer) -> None:
        raise Flaky("permanent")

    with pytest.raises(Flaky, match="permanent"):
        await asynccp.supervise(job, tmp_path, recoverable=never, backoff=0)
    assert [str(e) for e in seen] == ["permanent"]


async def test_recoverable_error_is_always_recoverable(tmp_path: Path) -> None:
    class Throttled(RecoverableError):
        pass

    async def job(cp: Checkpointer) -> str:
        if cp.attempt < 2:
            raise Throttled("slow down") if cp.attempt else RecoverableError("again")
        return "done"

    # `recoverable` names other types only: RecoverableError (and subclasses) still count.
    assert await asynccp.supervise(job, tmp_path, recoverable=KeyError, backoff=0) == "done"


async def test_exception_group_of_recoverable_errors_is_recoverable(tmp_path: Path) -> None:
    async def job(cp: Checkpointer) -> str:
        if cp.attempt == 0:
            async with anyio.create_task_group() as tg:  # both children fail: a group

                async def fail(i: int) -> None:
                    raise RecoverableError(f"child {i}")

                tg.start_soon(fail, 1)
                tg.start_soon(fail, 2)
        if cp.attempt == 1:
            raise ExceptionGroup("mixed", [RecoverableError("ok"), Fatal("not ok")])
        return "unreachable"

    with pytest.raises(ExceptionGroup) as ei:
        await asynccp.supervise(job, tmp_path, backoff=0)
    assert ei.value.message == "mixed"  # retried once, then the mixed group propagates


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_base_exceptions_are_never_retried(tmp_path: Path, exc_type: type) -> None:
    calls = 0

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        await cp.save(calls, b"x")
        raise exc_type()

    with pytest.raises(exc_type):
        await asynccp.supervise(
            job, tmp_path, recoverable=lambda e: True, backoff=0, handle_signals=False
        )
    assert calls == 1
    assert await committed_steps(tmp_path) == [1]


async def test_cancellation_is_never_retried(tmp_path: Path) -> None:
    calls = 0

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        await cp.save(0, b"before the cancel")
        await anyio.sleep_forever()

    with anyio.move_on_after(0.5) as scope:
        await asynccp.supervise(job, tmp_path, recoverable=lambda e: True, backoff=0)
    assert scope.cancelled_caught
    assert calls == 1
    assert await committed_steps(tmp_path) == [0]


# -- flush before retry --------------------------------------------------------------------


@pytest.mark.slow
async def test_failed_attempt_with_queued_local_saves_is_flushed_before_retry(
    tmp_path: Path,
) -> None:
    """Big durable (fsynced) local payloads: the body fails while they are still queued."""
    size = 64 * MiB
    events: list[RetryEvent] = []

    async def job(cp: Checkpointer) -> int:
        if cp.attempt == 0:
            handles = [await cp.save(s, bytes([s]) * size) for s in range(3)]
            # premise: the uploads are still going when the attempt fails
            assert not handles[-1].done(), "uploads finished too fast for this test"
            raise RecoverableError("lost the GPU")
        prev = await cp.latest()
        assert prev is not None
        assert await prev.read() == bytes([2]) * size
        return prev.step

    assert await asynccp.supervise(job, tmp_path, backoff=0, on_retry=events.append) == 2
    assert [e.resume_step for e in events] == [2]


async def test_failed_attempt_with_queued_s3_saves_is_flushed_before_retry(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    """moto S3 behind the proxy, which answers 503 to the first connections: slow uploads."""
    store = make_s3_store(
        fault_proxy.url,
        s3_bucket,
        retry_config={
            "max_retries": 5,
            "backoff": {
                "init_backoff": timedelta(milliseconds=200),
                "max_backoff": timedelta(seconds=1),
            },
            "retry_timeout": timedelta(seconds=30),
        },
    )
    fault_proxy.fail_next(3, "503")

    async def job(cp: Checkpointer) -> int:
        if cp.attempt == 0:
            handles = [await cp.save(s, bytes([s]) * MiB) for s in range(4)]
            assert cp.stats.queue_depth > 0 and not handles[0].done(), "premise: still queued"
            raise Flaky("connection reset by peer")
        prev = await cp.latest()
        assert prev is not None
        return prev.step

    result = await asynccp.supervise(
        job,
        store,
        store=asynccp.StoreOptions(prefix="job"),
        recoverable=Flaky,
        backoff=0,
        handle_signals=False,
    )
    assert result == 3
    assert fault_proxy.failures == 3, "the 503s were not hit"
    assert await committed_steps(
        make_s3_store(moto_server, s3_bucket), store=asynccp.StoreOptions(prefix="job")
    ) == [
        0,
        1,
        2,
        3,
    ]


async def test_flush_errors_are_notes_on_the_attempt_error(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    fault_proxy.set_mode("503")
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config={"max_retries": 0})
    boom = Fatal("the job failed")

    async def job(cp: Checkpointer) -> None:
        await cp.save(0, b"lost" * 2000)  # (its payload object's put fails)
        raise boom

    with pytest.raises(Fatal) as ei:
        await asynccp.supervise(job, store)
    assert ei.value is boom
    notes = getattr(boom, "__notes__", [])
    assert any("while flushing checkpoints: UploadError" in n for n in notes), notes


async def test_upload_failure_after_success_is_raised_not_returned(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    fault_proxy.set_mode("503")
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config={"max_retries": 0})

    async def job(cp: Checkpointer) -> str:
        await cp.save(0, b"never committed")
        return "looks fine"

    with pytest.raises(asynccp.UploadError):
        await asynccp.supervise(job, store)


# -- locations ---------------------------------------------------------------------------


async def test_memory_location_is_shared_by_every_attempt() -> None:
    seen: list[int | None] = []

    async def job(cp: Checkpointer) -> int:
        prev = await cp.latest()
        seen.append(prev.step if prev else None)
        step = await resume(cp)
        await cp.save(step, b"in memory")
        if step < 2:
            raise RecoverableError("again")
        return step

    assert await asynccp.supervise(job, "memory://jobs/a", backoff=0) == 2
    assert seen == [None, 0, 1]


async def test_store_object_with_prefix(tmp_path: Path) -> None:
    store = MemoryStore()

    async def job(cp: Checkpointer) -> int:
        step = await resume(cp)
        await cp.save(step, b"x")
        if step == 0:
            raise RecoverableError("again")
        return step

    assert (
        await asynccp.supervise(job, store, store=asynccp.StoreOptions(prefix="p/q"), backoff=0)
        == 1
    )
    assert await committed_steps(store, store=asynccp.StoreOptions(prefix="p/q")) == [0, 1]
    assert await committed_steps(store, store=asynccp.StoreOptions(prefix="other")) == []


async def test_checkpointer_options_pass_through(tmp_path: Path) -> None:
    async def job(cp: Checkpointer) -> tuple[int, int | None, float]:
        for step in range(await resume(cp), 6):
            await cp.save(step, b"x")
        o = cp.options
        return o.limits.max_pending, o.retention.keep, o.flush_timeout

    result = await asynccp.supervise(
        job, tmp_path, limits=asynccp.Limits(max_pending=2), keep=2, flush_timeout=123
    )
    assert result == (2, 2, 123.0)
    assert await committed_steps(tmp_path) == [4, 5]


# -- attempt context -----------------------------------------------------------------------


async def test_current_is_the_attempts_checkpointer_also_in_child_tasks(tmp_path: Path) -> None:
    seen: list[tuple[int, bool, bool]] = []

    async def child(cp: Checkpointer) -> None:
        seen.append((cp.attempt, asynccp.current() is cp, False))

    async def job(cp: Checkpointer) -> str:
        seen.append((cp.attempt, asynccp.current() is cp, True))
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, cp)
        if cp.attempt == 0:
            raise RecoverableError("again")
        return "ok"

    assert await asynccp.supervise(job, tmp_path, backoff=0) == "ok"
    assert seen == [(0, True, True), (0, True, False), (1, True, True), (1, True, False)]


async def test_current_outside_an_attempt_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(asynccp.CheckpointClosedError, match="outside a supervised attempt"):
        asynccp.current()
    inside: list[Checkpointer] = []

    async def job(cp: Checkpointer) -> None:
        inside.append(asynccp.current())

    await asynccp.supervise(job, tmp_path)
    assert inside and inside[0].attempt == 0
    with pytest.raises(asynccp.CheckpointClosedError):
        asynccp.current()  # reset after the attempt


async def test_on_retry_sync_and_async_callbacks_and_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sync_events: list[RetryEvent] = []
    async_events: list[RetryEvent] = []
    errors: list[Exception] = []

    async def record(event: RetryEvent) -> None:
        await anyio.lowlevel.checkpoint()
        async_events.append(event)

    async def job(cp: Checkpointer) -> str:
        step = await resume(cp)
        if cp.attempt < 2:
            await cp.save(step, b"x")
            await cp.save(step + 1, b"y")
            errors.append(Flaky(f"glitch {cp.attempt}"))
            raise errors[-1]
        return f"resumed at {step}"

    caplog.set_level(logging.WARNING, logger="asynccp")
    result = await asynccp.supervise(
        job,
        tmp_path,
        retries=4,
        recoverable=Flaky,
        backoff=0,
        on_retry=[sync_events.append, record],
    )
    assert result == "resumed at 4"
    assert sync_events == async_events
    assert sync_events == [
        RetryEvent(0, errors[0], 0.0, 1, 3, 0),
        RetryEvent(1, errors[1], 0.0, 3, 2, 0),
    ]
    assert not sync_events[0].preempted and sync_events[0].signal is None
    with pytest.raises(AttributeError):
        sync_events[0].delay = 5  # type: ignore[misc]  # frozen
    retries = [r for r in caplog.records if r.name == "asynccp" and "retrying" in r.message]
    assert len(retries) == 2
    assert "attempt 0 failed with Flaky: glitch 0" in retries[0].message
    assert "from step 1" in retries[0].message and "3 retries left" in retries[0].message


async def test_the_log_names_a_lambda_by_where_it_is_and_a_nested_function_by_its_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``supervise(lambda cp: ...)`` once logged ``<lambda>.<locals>.<lambda>``: a lambda
    is named by its file and line, a function defined in a function by its own name."""
    caplog.set_level(logging.WARNING, logger="asynccp")

    async def train(cp: Checkpointer) -> str:
        if cp.attempt == 0:
            raise Flaky("lost the GPU")
        return "done"

    make = lambda: lambda cp: train(cp)  # noqa: E731 - the README's nested lambdas
    job = make()
    assert job.__qualname__.endswith("<lambda>.<locals>.<lambda>")
    line = job.__code__.co_firstlineno
    for fn, name in ((job, f"<lambda> ({Path(__file__).name}:{line})"), (train, "train")):
        caplog.clear()
        assert await asynccp.supervise(fn, tmp_path, recoverable=Flaky, backoff=0) == "done"
        (retry,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert retry.startswith(f"asynccp: {name} attempt 0 failed with Flaky: lost the GPU")
        assert "<locals>" not in retry


async def test_a_lambda_returning_no_awaitable_is_named_readably(tmp_path: Path) -> None:
    job = lambda cp: 7  # noqa: E731
    where = f"<lambda> ({Path(__file__).name}:{job.__code__.co_firstlineno})"
    with pytest.raises(TypeError) as info:
        await asynccp.supervise(job, tmp_path)
    assert str(info.value).startswith(f"{where}, called with cp, returned int, not an awaitable")
    assert "`async def job(cp, ...)`" in str(info.value)


async def test_on_retry_error_stops_the_job(tmp_path: Path) -> None:
    calls = 0

    def broken(event: RetryEvent) -> None:
        raise Fatal("callback bug")

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        raise RecoverableError("again")

    with pytest.raises(Fatal, match="callback bug"):
        await asynccp.supervise(job, tmp_path, backoff=0, on_retry=broken)
    assert calls == 1


# -- backoff -------------------------------------------------------------------------------


def test_backoff_arithmetic() -> None:
    b = asynccp.Backoff(initial=1, max=5, exp_base=2, jitter=0)
    assert [b.delay(n) for n in range(1, 7)] == [1, 2, 4, 5, 5, 5]
    assert asynccp.Backoff(initial=1, max=1e9, jitter=0).delay(10_000) == 1e9  # no overflow
    jittered = asynccp.Backoff(initial=1, max=100, jitter=0.5)
    delays = [jittered.delay(3) for _ in range(200)]
    assert all(4 <= d <= 4.5 for d in delays) and len(set(delays)) > 1
    assert asynccp.Backoff(initial=timedelta(milliseconds=500), jitter=0).delay(1) == 0.5
    for bad in ({"initial": -1}, {"max": float("inf")}, {"exp_base": 0.5}):
        with pytest.raises(ValueError):
            asynccp.Backoff(**bad)
    for wrong in ({"jitter": "1"}, {"exp_base": "2"}):  # a wrong type is a TypeError
        with pytest.raises(TypeError):
            asynccp.Backoff(**wrong)
    with pytest.raises(ValueError):
        b.delay(0)


async def test_backoff_forms_set_the_delay(tmp_path: Path) -> None:
    async def run(backoff: Any) -> list[float]:
        events: list[RetryEvent] = []

        async def job(cp: Checkpointer) -> None:
            if cp.attempt < 3:
                raise RecoverableError("again")

        await asynccp.supervise(
            job, tmp_path / str(len(str(backoff))), backoff=backoff, on_retry=events.append
        )
        return [e.delay for e in events]

    assert await run(0) == [0, 0, 0]
    assert await run(timedelta(milliseconds=10)) == [0.01, 0.01, 0.01]
    assert await run(lambda n: n / 100) == [0.01, 0.02, 0.03]
    assert await run(asynccp.Backoff(initial=0.01, max=0.03, jitter=0)) == [0.01, 0.02, 0.03]
    with pytest.raises(ValueError, match="the value your backoff function returned"):
        await run(lambda n: -1)


async def test_retry_after_overrides_backoff(tmp_path: Path) -> None:
    class RateLimited(Exception):
        def __init__(self, retry_after: Any) -> None:
            super().__init__("429")
            self.retry_after = retry_after

    events: list[RetryEvent] = []

    async def job(cp: Checkpointer) -> str:
        if cp.attempt == 0:
            raise RecoverableError("server said wait", retry_after=0.01)
        if cp.attempt == 1:
            raise RateLimited(0)  # any exception with a numeric retry_after
        if cp.attempt == 2:
            raise RateLimited("soon")  # not a number: the backoff applies
        return "ok"

    # The backoff says an hour: only retry_after lets this finish before fail_after.
    with anyio.fail_after(20):
        result = await asynccp.supervise(
            job,
            tmp_path,
            recoverable=RateLimited,
            backoff=lambda n: 3600 if n < 3 else 0.02,
            on_retry=events.append,
        )
    assert result == "ok"
    assert [e.delay for e in events] == [0.01, 0.0, 0.02]


# -- decorator -----------------------------------------------------------------------------


async def test_checkpointed_decorator(tmp_path: Path) -> None:
    @asynccp.checkpointed(tmp_path, retries=2, recoverable=Flaky, backoff=0)
    async def train(cp: Checkpointer, epochs: int, *, tag: str = "") -> str:
        """Train for a few epochs."""
        step = await resume(cp)
        for epoch in range(step, epochs):
            await cp.save(epoch, tag.encode())
            if epoch in (1, 3):
                raise Flaky(f"node lost at epoch {epoch}")
        return f"{tag}: {epochs} epochs in {cp.attempt + 1} attempts"

    assert train.__name__ == "train" and train.__doc__ == "Train for a few epochs."
    assert train.__wrapped__ is not None  # type: ignore[attr-defined]
    assert await train(5, tag="run1") == "run1: 5 epochs in 3 attempts"
    assert await committed_steps(tmp_path) == [0, 1, 2, 3, 4]
    # Calling it again on the same location resumes past the end at once.
    assert await train(5, tag="run1") == "run1: 5 epochs in 1 attempts"


async def test_checkpointed_memory_location_is_shared_across_calls() -> None:
    @asynccp.checkpointed("memory://shared", backoff=0)
    async def job(cp: Checkpointer) -> int:
        step = await resume(cp)
        await cp.save(step, b"x")
        return step

    assert [await job(), await job(), await job()] == [0, 1, 2]


async def test_checkpointed_exhausts_like_supervise(tmp_path: Path) -> None:
    @asynccp.checkpointed(tmp_path, retries=1, backoff=0)
    async def job(cp: Checkpointer) -> None:
        raise RecoverableError("always")

    with pytest.raises(RetriesExhausted) as ei:
        await job()
    assert ei.value.attempts == 2


# -- no main thread ----------------------------------------------------------------


def test_supervise_outside_the_main_thread_skips_signals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asynccp")
    results: list[Any] = []

    async def job(cp: Checkpointer) -> str:
        if cp.attempt == 0:
            raise RecoverableError("again")
        return threading.current_thread().name

    def worker() -> None:
        results.append(anyio.run(functools.partial(asynccp.supervise, job, tmp_path, backoff=0)))

    thread = threading.Thread(target=worker, name="not-main")
    thread.start()
    thread.join(60)
    assert results == ["not-main"]
    assert any("signals are not handled" in r.message for r in caplog.records)


# -- the seed example ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_seed_example_resumes_within_its_retries(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SEED), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    starts = [int(m) for m in re.findall(r"^attempt \d+: resuming at iteration (\d+)$", out, re.M)]
    assert starts == [0, 4, 8]  # 12 iterations, a failure every 4 past the start
    resumed = [int(m) for m in re.findall(r"resumes after checkpoint step (\d+)", out)]
    assert resumed == [3, 7]  # one checkpoint per iteration: steps 0..3, then 4..7
    assert out.rstrip().endswith("result: 11")
    assert "Traceback" not in proc.stderr


def test_seed_example_on_a_kept_location_resumes_at_the_end(tmp_path: Path) -> None:
    def run() -> str:
        proc = subprocess.run(
            [sys.executable, str(SEED), "--location", str(tmp_path / "ck")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run().rstrip().endswith("result: 11")
    again = run()
    assert "attempt 0: resuming at iteration 12" in again
    assert again.rstrip().endswith("result: 11")
