"""Pre-emption: SIGTERM/SIGINT stop the attempt, flush within the grace period, exit 75.

The process-level tests run ``examples/preemptible_job.py`` as a real worker process
(spawned with ``sys.executable``, never forked), signal it in the middle of a run,
and start it again on the same location. The in-process tests signal the test
process itself, only while the supervisor's handlers are installed.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy

import asynccp
from asynccp import Checkpointer, RetryEvent

WORKER = Path(__file__).parent.parent / "examples" / "preemptible_job.py"
DOUBLE_SIGNAL_JOB = Path(__file__).parent / "scripts" / "double_signal_job.py"
GRACE = 20.0  # the worker's grace period, and the bound on how long it may take to exit
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    """Give the test process its handlers back: a pre-empted run leaves SIGTERM/SIGINT
    ignored for the rest of the process, which a test process must not keep."""
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


class Worker:
    """A worker process (``script``, by default preemptible_job.py) whose stdout lines
    are read by a thread."""

    def __init__(self, location: Path, *args: str, script: Path = WORKER) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--location", str(location), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120.0) -> list[str]:
        """Read stdout until ``count`` lines match ``pattern``; return those lines."""
        deadline = time.monotonic() + timeout
        hits = [line for line in self.seen if re.fullmatch(pattern, line)]
        while len(hits) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no {count} lines matching {pattern!r} in time: {self.seen[-10:]}")
            if line is None:
                pytest.fail(f"worker ended early: {self.seen[-10:]}\n{self.stderr()}")
            self.seen.append(line)
            if re.fullmatch(pattern, line):
                hits.append(line)
        return hits

    def finish(self, timeout: float = 120.0) -> tuple[int, list[str], str]:
        """Wait for the exit; return the exit code, every stdout line, and stderr."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        while (line := self.lines.get()) is not None:
            self.seen.append(line)
        return code, self.seen, self.stderr()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def kill(self) -> None:
        """Kill the process if it still runs; close its pipes once the reader is done."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(60)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def steps(lines: list[str], word: str) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(rf"{word} (\d+)", line))]


@pytest.mark.parametrize(
    ("signum", "backend"),
    [(signal.SIGTERM, "asyncio"), (signal.SIGTERM, "trio"), (signal.SIGINT, "asyncio")],
    ids=["SIGTERM-asyncio", "SIGTERM-trio", "SIGINT-asyncio"],
)
def test_signalled_worker_exits_75_and_a_new_process_resumes(
    tmp_path: Path, signum: signal.Signals, backend: str
) -> None:
    location = tmp_path / "ck"
    args = ["--size-mb", "8", "--interval", "0.01", "--grace", str(GRACE), "--keep", "4"]
    first = Worker(location, "--steps", "1000000", "--backend", backend, *args)
    try:
        assert first.wait_for(r"resume .*") == ["resume none"]
        first.wait_for(r"committed \d+", count=3)
        committed_before = max(steps(first.seen, "committed"))
        first.proc.send_signal(signum)
        sent = time.monotonic()
        code, lines, stderr = first.finish(timeout=GRACE + 60)
        took = time.monotonic() - sent
    finally:
        first.kill()
    assert code == asynccp.PREEMPTED_EXIT_CODE == 75, stderr
    assert took < GRACE, f"exited {took:.1f} s after the signal, grace is {GRACE} s"
    assert f"pre-empted by {signum.name}" in stderr
    assert "every staged checkpoint committed" in stderr
    assert "Traceback" not in stderr, stderr
    last_staged = max(steps(lines, "staged"))

    second = Worker(location, "--steps", str(last_staged + 4), "--backend", backend, *args)
    try:
        code, lines, stderr = second.finish()
    finally:
        second.kill()
    assert code == 0, stderr
    resumed = int(lines[0].removeprefix("resume "))
    assert resumed >= committed_before  # at least as new as what was committed before
    assert resumed == last_staged  # and in fact everything staged was flushed
    assert lines[-1] == f"done {last_staged + 3}"
    assert steps(lines, "staged") == list(range(last_staged + 1, last_staged + 4))


# -- in process: the test process signals itself while the handlers are installed ------------


def kill_self(signum: signal.Signals = signal.SIGTERM) -> None:
    os.kill(os.getpid(), signum)


async def test_preempted_raises_system_exit_with_the_code_after_flushing(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    calls = 0

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        for step in range(3):
            await cp.save(step, bytes(4 << 20))
        kill_self()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted) as ei:
        await asynccp.supervise(job, tmp_path, retries=5, recoverable=lambda e: True)
    exc = ei.value
    assert isinstance(exc, SystemExit) and exc.code == asynccp.PREEMPTED_EXIT_CODE
    assert exc.signal == signal.SIGTERM and exc.attempt == 0
    assert exc.last_step == 2 and exc.errors == ()
    assert "pre-empted by SIGTERM during attempt 0" in str(exc)
    assert calls == 1  # not retried, whatever `recoverable` says
    async with Checkpointer(tmp_path) as cp:
        assert [c.step for c in await cp.list()] == [0, 1, 2]
    # Not put back: the process is exiting, and a second signal must not kill it.
    assert all(signal.getsignal(s) != before[s] for s in before)


async def test_preemptions_budget_restarts_in_process_without_using_retries(
    tmp_path: Path,
) -> None:
    events: list[RetryEvent] = []

    async def job(cp: Checkpointer) -> str:
        prev = await cp.latest()
        step = prev.step + 1 if prev else 0
        await cp.save(step, b"x")
        if cp.attempt < 2:
            kill_self(signal.SIGINT if cp.attempt else signal.SIGTERM)
            await anyio.sleep_forever()
        return f"finished at step {step} on attempt {cp.attempt}"

    result = await asynccp.supervise(
        job, tmp_path, retries=0, preemptions=2, backoff=3600, on_retry=events.append
    )
    assert result == "finished at step 2 on attempt 2"
    assert [(e.attempt, e.signal, e.resume_step, e.delay) for e in events] == [
        (0, signal.SIGTERM, 0, 0.0),
        (1, signal.SIGINT, 1, 0.0),
    ]
    assert all(e.preempted and e.error is None for e in events)
    assert [e.preemptions_left for e in events] == [1, 0]


async def test_preemption_budget_spent_then_exit(tmp_path: Path) -> None:
    async def job(cp: Checkpointer) -> None:
        kill_self()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted) as ei:
        await asynccp.supervise(job, tmp_path, preemptions=1)
    assert ei.value.attempt == 1 and ei.value.last_step is None


async def test_signal_during_backoff_preempts(tmp_path: Path) -> None:
    calls = 0

    async def job(cp: Checkpointer) -> None:
        nonlocal calls
        calls += 1
        raise asynccp.RecoverableError("wait an hour")

    async def signal_soon(event: RetryEvent) -> None:
        kill_self()

    with pytest.raises(asynccp.Preempted) as ei:
        await asynccp.supervise(job, tmp_path, backoff=3600, on_retry=signal_soon)
    assert calls == 1 and ei.value.attempt == 0


async def test_grace_bounds_a_flush_that_cannot_finish_and_errors_are_reported(
    fault_proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_s3_store(
        fault_proxy.url,
        s3_bucket,
        retry_config={
            "max_retries": 100,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(milliseconds=200),
            },
            "retry_timeout": timedelta(seconds=5),
        },
    )

    async def job(cp: Checkpointer) -> None:
        await (await cp.save(0, b"committed"))
        await (await cp.save(1, b"committed"))  # and step 0's housekeeping is done
        fault_proxy.set_mode("503")  # the store is gone: nothing more can commit
        await cp.save(2, b"stuck")
        kill_self()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted) as ei:
        # flush_timeout would allow 300 s; the grace period cuts the pre-empted flush to 0.5 s
        await asynccp.supervise(job, store, grace=0.5, flush_timeout=300)
    fault_proxy.set_mode("pass")
    exc = ei.value
    assert exc.code == 75 and exc.last_step == 1
    assert any("FlushTimeoutError" in e for e in exc.errors), exc.errors
    assert "flushing failed" in str(exc)
    logged = [r for r in caplog.records if r.name == "asynccp" and r.levelno >= logging.ERROR]
    assert any("FlushTimeoutError" in r.getMessage() for r in logged)


async def test_the_preemption_message_names_every_abandoned_step_once(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    """Pre-empted with step 1 uploading (held by the network), step 2 uploading beside
    it and steps 3 and 4 staged: the message names 1, 2, 3 and 4, each once — it once
    said "1 staged checkpoint(s) were abandoned (steps [4]) ... and the one in flight
    too", missing some and miscounting the rest."""
    store = make_s3_store(fault_proxy.url, s3_bucket)
    in_flight: list[int] = []

    async def job(cp: Checkpointer) -> None:
        await (await cp.save(0, b"committed"))
        fault_proxy.hold_requests(rb"^PUT \S*/data/" + f"{1:020d}".encode())
        # (payload objects: larger than a record holds)
        handles = [await cp.save(step, f"step {step}".encode() * 1000) for step in range(1, 5)]
        await anyio.to_thread.run_sync(fault_proxy.wait_held)
        assert not any(h.done() for h in handles)
        in_flight.extend(range(1, 5))
        kill_self()
        await anyio.sleep_forever()

    try:
        with pytest.raises(asynccp.Preempted) as ei:
            await asynccp.supervise(job, store, limits=asynccp.Limits(max_pending=8), grace=0.5)
    finally:
        fault_proxy.release()
    assert in_flight == [1, 2, 3, 4], "premise: the signal came with steps 1-4 pending"
    (timeout,) = [e for e in ei.value.errors if e.startswith("FlushTimeoutError")]
    named = [
        int(n) for group in re.findall(r"steps \[([\d, ]*)\]", timeout) for n in group.split(",")
    ]
    assert sorted(named) == [1, 2, 3, 4], timeout
    assert "4 checkpoint(s) were abandoned" in timeout
    assert ei.value.last_step == 0


async def test_handlers_restored_after_success_and_failure(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    during: list[Any] = []

    async def ok(cp: Checkpointer) -> None:
        during.append(signal.getsignal(signal.SIGTERM))

    async def bad(cp: Checkpointer) -> None:
        raise ValueError("no")

    await asynccp.supervise(ok, tmp_path)
    assert during[0] != before[signal.SIGTERM]  # installed while running
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(ValueError):
        await asynccp.supervise(bad, tmp_path)
    assert {s: signal.getsignal(s) for s in before} == before


async def test_handle_signals_false_installs_nothing(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    during: list[Any] = []

    async def job(cp: Checkpointer) -> None:
        during.append(signal.getsignal(signal.SIGTERM))

    await asynccp.supervise(job, tmp_path, handle_signals=False)
    assert during == [before]


def test_preempted_under_trio_in_process(tmp_path: Path) -> None:
    async def job(cp: Checkpointer) -> None:
        await cp.save(0, b"x")
        kill_self()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted) as ei:
        anyio.run(asynccp.supervise, job, tmp_path, backend="trio")
    assert ei.value.code == 75 and ei.value.last_step == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_flush_cut_by_grace_is_reported_under_both_backends(tmp_path: Path, backend: str) -> None:
    """Big fsynced local payloads and a 10 ms grace: the flush cannot finish in time."""

    async def job(cp: Checkpointer) -> None:
        handles = [await cp.save(step, bytes(64 << 20)) for step in range(4)]
        assert not handles[-1].done(), "premise: still uploading when the signal comes"
        kill_self()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted) as ei:
        anyio.run(functools.partial(asynccp.supervise, job, tmp_path, grace=0.01), backend=backend)
    assert any(e.startswith("FlushTimeoutError") for e in ei.value.errors), ei.value.errors


async def test_concurrent_supervisors_share_the_signals(tmp_path: Path) -> None:
    """Three jobs at once; the first (which installed the signal handlers) finishes early.

    A SIGTERM afterwards still pre-empts both others: the handlers stay while any
    supervisor watches, and each signal goes to every supervisor in the process.
    """
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    first_running, release_first, first_done = anyio.Event(), anyio.Event(), anyio.Event()
    ready = {"a": anyio.Event(), "b": anyio.Event()}
    outcomes: dict[str, Any] = {}

    async def first(cp: Checkpointer) -> str:
        first_running.set()
        await release_first.wait()
        return "first done"

    async def long(cp: Checkpointer, name: str) -> None:
        await (await cp.save(0, name.encode()))
        ready[name].set()
        await anyio.sleep_forever()

    async def run_first() -> None:
        outcomes["first"] = await asynccp.supervise(first, tmp_path / "first")
        first_done.set()

    async def run_long(name: str) -> None:
        try:
            await asynccp.supervise(functools.partial(long, name=name), tmp_path / name)
        except asynccp.Preempted as e:
            outcomes[name] = e

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_first)
            await first_running.wait()
            tg.start_soon(run_long, "a")
            tg.start_soon(run_long, "b")
            await ready["a"].wait()
            await ready["b"].wait()
            release_first.set()
            await first_done.wait()
            kill_self()
    assert outcomes["first"] == "first done"
    for name in ("a", "b"):
        assert isinstance(outcomes[name], asynccp.Preempted), outcomes
        assert outcomes[name].last_step == 0
    # Pre-empted: the handlers are not put back, further signals are ignored.
    assert all(signal.getsignal(s) != before[s] for s in before)


async def test_signals_after_preempted_are_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def job(cp: Checkpointer) -> None:
        await cp.save(0, b"x")
        kill_self()
        await anyio.sleep_forever()

    with pytest.raises(asynccp.Preempted):
        await asynccp.supervise(job, tmp_path)
    caplog.clear()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        kill_self(signum)  # neither kills the test process nor raises KeyboardInterrupt
    ignored = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asynccp" and "after pre-emption: ignored" in r.getMessage()
    ]
    assert [m.split()[1] for m in ignored] == ["SIGTERM", "SIGINT", "SIGTERM"], ignored


async def test_a_later_supervise_puts_back_the_handlers_it_found(tmp_path: Path) -> None:
    """After a pre-emption that was caught, handlers set by hand are restored again."""

    async def preempted(cp: Checkpointer) -> None:
        kill_self()
        await anyio.sleep_forever()

    async def ok(cp: Checkpointer) -> None:
        pass

    with pytest.raises(asynccp.Preempted):
        await asynccp.supervise(preempted, tmp_path)
    mine = {s: (lambda signum, frame: None) for s in SIGNALS}
    for s, handler in mine.items():
        signal.signal(s, handler)
    await asynccp.supervise(ok, tmp_path)
    assert {s: signal.getsignal(s) for s in SIGNALS} == mine


# -- a second signal while the pre-empted process exits -------------------------------------

#: Seconds between the first SIGTERM and the second signal. 0 and 5 ms mostly land in
#: the flush; 10-40 ms, after the signal receiver closed, while the process exits
#: (where, with the old handlers put back, most runs were killed: exit 143 or 130).
SPACINGS = (0.0, 0.005, 0.01, 0.02, 0.04)
#: The second signal of each run at each spacing.
SECOND_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)
SECOND_LOGGED = (
    r"asynccp: SIG(TERM|INT) received (while already stopping|after pre-emption: ignored)"
)


def received_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"SIG\w+ received", line)]


@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda s: f"{s * 1000:g}ms")
def test_a_second_signal_soon_after_the_first_still_exits_75(
    tmp_path: Path, spacing: float
) -> None:
    """``kill -TERM $pid; sleep 0.02; kill -TERM $pid``: the exit code stays 75.

    The spacing is the point of the test, not a synchronisation: the first signal is
    sent once the child printed ``ready`` (a checkpoint committed), the second one
    ``spacing`` seconds later, wherever the child then is. The second signal may even
    find the child gone; it must never change its exit code.
    """
    outcomes = []
    for run, second in enumerate(SECOND_SIGNALS):
        worker = Worker(tmp_path / f"ck{run}", script=DOUBLE_SIGNAL_JOB)
        try:
            worker.wait_for("ready")
            worker.proc.send_signal(signal.SIGTERM)
            time.sleep(spacing)
            worker.proc.send_signal(second)  # a no-op if the child has already exited
            code, _, stderr = worker.finish(timeout=GRACE + 60)
        finally:
            worker.kill()
        outcomes.append((second.name, code, stderr))
    codes = [(name, code) for name, code, _ in outcomes]
    assert [code for _, code in codes] == [75] * len(codes), (codes, outcomes)
    for second_name, _, stderr in outcomes:
        # Two signals pending at once are handled in signal-number order (SIGINT before
        # SIGTERM): with no spacing, either may be the one that pre-empts.
        first = ("SIGTERM", second_name) if spacing == 0 else ("SIGTERM",)
        assert any(f"pre-empted by {name}" in stderr for name in first), stderr
        assert "Exiting with code 75" in stderr
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
        received = received_lines(stderr)
        assert any(received[0].startswith(f"asynccp: {n} received: stopping") for n in first)
        # One line per signal at most: a second signal that came too late to be logged
        # was ignored silently (or found no process).
        assert len(received) <= 2, stderr
        assert all(re.match(SECOND_LOGGED, line) for line in received[1:]), stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_after_supervise_raised_preempted_is_logged_and_ignored(
    tmp_path: Path, second: signal.Signals, backend: str
) -> None:
    """The second signal is sent exactly where it used to kill: after ``supervise``
    raised ``Preempted`` (its signal receiver closed), before the process exited.

    The child says ``preempted`` there and waits for a line on stdin to go on exiting.
    """
    worker = Worker(tmp_path / "ck", "--gate", "--backend", backend, script=DOUBLE_SIGNAL_JOB)
    try:
        worker.wait_for("ready")
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for("preempted")
        worker.proc.send_signal(second)
        try:
            assert worker.proc.stdin is not None
            worker.proc.stdin.write("go\n")
            worker.proc.stdin.close()
        except BrokenPipeError:
            pass  # killed by the second signal: the exit code below says so
        code, _, stderr = worker.finish(timeout=GRACE + 60)
    finally:
        worker.kill()
    assert code == asynccp.PREEMPTED_EXIT_CODE, (code, stderr)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    received = received_lines(stderr)
    assert len(received) == 2, stderr
    assert received[0].startswith("asynccp: SIGTERM received: stopping"), stderr
    assert received[1] == (
        f"asynccp: {second.name} received after pre-emption: ignored, the process is exiting"
    ), stderr
