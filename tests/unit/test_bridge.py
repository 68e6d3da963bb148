"""Unit tests of ``asynccp._bridge``: the sync-to-async bridge of the Flyte plugins.

``run_blocking`` (a coroutine from synchronous code: on this thread, or beside a running
loop), ``run_in_thread`` (a synchronous body on a daemon thread: results, errors,
context, abandonment) and ``SyncBridge`` (saves handed over from synchronous code, on a
worker thread or on the loop's own: order, staging, ``block`` / ``latest``, failures
reported once, closing, pre-emption), against a real Checkpointer on a local folder.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import sniffio
from anyio.from_thread import BlockingPortal

import asynccp
from asynccp import Checkpointer
from asynccp._bridge import SyncBridge, run_blocking, run_in_thread
from asynccp._lineage import Lineage, LineageReader
from asynccp.errors import CheckpointClosedError, InvalidNameError

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


class Boom(Exception):
    pass


# -- run_blocking -------------------------------------------------------------------------


async def where() -> tuple[str, str, str]:
    await anyio.lowlevel.checkpoint()
    return threading.current_thread().name, sniffio.current_async_library(), VAR.get()


def test_run_blocking_without_a_loop_runs_on_this_thread() -> None:
    token = VAR.set("outer")
    try:
        assert run_blocking(where) == (threading.current_thread().name, "asyncio", "outer")
    finally:
        VAR.reset(token)


def test_run_blocking_passes_the_exception_itself() -> None:
    err = Boom("from the coroutine")

    async def fail() -> None:
        raise err

    with pytest.raises(Boom) as caught:
        run_blocking(fail)
    assert caught.value is err


def test_run_blocking_runs_in_a_copy_of_the_context() -> None:
    async def change() -> str:
        VAR.set("inside")
        return VAR.get()

    assert run_blocking(change) == "inside"
    assert VAR.get() == "unset"  # the change stays in the copy


async def test_run_blocking_beside_a_running_loop_uses_a_helper_thread() -> None:
    token = VAR.set("outer")
    try:
        name, library, value = run_blocking(where)  # blocks this loop: that is the contract
    finally:
        VAR.reset(token)
    assert name == "asynccp-blocking" and name != threading.current_thread().name
    assert library == "asyncio" and value == "outer"


async def test_run_blocking_beside_a_running_loop_passes_the_exception() -> None:
    async def fail() -> None:
        raise Boom("helper")

    with pytest.raises(Boom, match="helper"):
        run_blocking(fail)


async def test_run_blocking_beside_a_loop_in_the_main_thread_lends_it_for_signals(
    tmp_path: Path,
) -> None:
    """The main thread, waiting for the helper, installs the handlers of a supervisor
    there (and puts the ones of before back after it), or none with
    ``handle_signals=False``."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    async def job(cp: Checkpointer) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))

    for handle in (True, False):
        run_blocking(functools.partial(asynccp.supervise, job, tmp_path, handle_signals=handle))
    assert seen[0] is not before and seen[1] is before
    assert signal.getsignal(signal.SIGTERM) is before


async def test_sigterm_pre_empts_a_supervisor_run_beside_a_loop_in_the_main_thread(
    tmp_path: Path,
) -> None:
    """The signal comes while the main thread waits for the helper (a local ``async def``
    flytekit task under ``asyncio.run``): the helper's attempt is flushed and pre-empted."""

    async def job(cp: Checkpointer) -> None:
        await cp.save(0, b"x" * (8 << 20))  # still staged when the signal comes
        os.kill(os.getpid(), signal.SIGTERM)
        await anyio.sleep_forever()

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(asynccp.Preempted) as caught:
            run_blocking(lambda: asynccp.supervise(job, tmp_path))
        # Pre-empted: the process is to exit, and further signals are ignored until then.
        assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM], None)
    finally:  # this process goes on with other tests: their handlers back
        for s, handler in before.items():
            signal.signal(s, handler)
    assert caught.value.code == asynccp.PREEMPTED_EXIT_CODE
    assert caught.value.last_step == 0


def test_run_blocking_called_where_trio_runs_uses_a_helper_thread() -> None:
    """Synchronous code on a thread running a trio loop: a new loop cannot run there."""

    async def main() -> tuple[str, str, str]:
        return run_blocking(where)

    name, library, _ = anyio.run(main, backend="trio")
    assert name == "asynccp-blocking" and library == "asyncio"


def test_run_blocking_from_a_worker_thread_of_a_running_loop() -> None:
    """A worker thread's context is copied from a task on the loop: sniffio must not
    think the new loop is that one's."""

    async def main() -> tuple[str, str, str]:
        return await anyio.to_thread.run_sync(run_blocking, where)

    for backend in ("asyncio", "trio"):
        name, library, _ = anyio.run(main, backend=backend)
        assert library == "asyncio" and name != "asynccp-blocking"


# -- run_in_thread --------------------------------------------------------------------------


async def test_run_in_thread_runs_the_body_on_a_daemon_thread_in_this_context() -> None:
    def body() -> tuple[str, bool, str]:
        t = threading.current_thread()
        return t.name, t.daemon, VAR.get()

    token = VAR.set("task")
    try:
        assert await run_in_thread(body) == ("asynccp-task-body", True, "task")
    finally:
        VAR.reset(token)


async def test_run_in_thread_passes_the_body_s_exception() -> None:
    err = Boom("body")

    def body() -> None:
        raise err

    with pytest.raises(Boom) as caught:
        await run_in_thread(body)
    assert caught.value is err


def test_run_in_thread_a_body_raising_stop_iteration_fails_instead_of_hanging() -> None:
    """StopIteration cannot be set on an asyncio future: it must still reach the caller."""

    def body() -> None:
        next(iter([]))

    async def main() -> None:
        with anyio.fail_after(5):  # liveness bound: it hung forever
            await run_in_thread(body)

    with pytest.raises(RuntimeError, match="StopIteration") as caught:
        anyio.run(main)
    assert isinstance(caught.value.__cause__, StopIteration)


def test_run_in_thread_cancelled_abandons_the_body() -> None:
    """Cancelling the await returns at once; the body finishes later, after the loop
    closed, without an error anywhere (an unhandled one fails the test)."""
    started, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    def body() -> str:
        threads.append(threading.current_thread())
        started.set()
        release.wait()
        return "late"

    async def main() -> bool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_in_thread, body)
                await anyio.to_thread.run_sync(started.wait)
                scope.cancel()
        return scope.cancelled_caught

    assert anyio.run(main)
    assert threads[0].is_alive()  # abandoned, not waited for
    release.set()
    threads[0].join()


# -- SyncBridge -------------------------------------------------------------------------


class GatedView:
    """What the bridge needs (a Checkpointer's ``save``, and steps: ``reserve_step``),
    saving to a real Checkpointer; the save of a step in ``gates`` waits for its event."""

    def __init__(self, cp: Checkpointer) -> None:
        self.cp = cp
        self.next = 0
        self.gates: dict[int, anyio.Event] = {}
        self.saving: dict[int, anyio.Event] = {}

    def reserve_step(self) -> int:
        self.next += 1
        return self.next - 1

    async def save(self, step: int, payload: Any, *, metadata: Any = None) -> Any:
        if step in self.gates:
            self.saving.setdefault(step, anyio.Event()).set()
            await self.gates[step].wait()
        return await self.cp.save(step, payload, metadata=metadata)


async def gated_bridge(
    cp: Checkpointer, stack: AsyncExitStack, *, latest: bool, max_items: int, grace: float
) -> tuple[GatedView, SyncBridge]:
    """A bridge over ``cp`` seen through a :class:`GatedView`, its portal in ``stack``."""
    view = GatedView(cp)
    portal = await stack.enter_async_context(BlockingPortal())
    bridge = SyncBridge(
        view,  # type: ignore[arg-type]
        portal,
        steps=view.reserve_step,
        latest=latest,
        max_items=max_items,
        max_bytes=1 << 20,
        grace=grace,
    )
    return view, bridge


async def bridged(
    root: Path,
    body: Callable[[SyncBridge, Checkpointer], Awaitable[Any]],
    *,
    latest: bool = False,
    max_items: int = 4,
    max_bytes: int = 1 << 20,
    gated: bool = False,
) -> tuple[SyncBridge, Checkpointer, list[int]]:
    """Run ``body`` beside a running bridge (like ``_plugin._attempt``), close it, let it
    drain; return the bridge, the (closed) Checkpointer and the steps committed."""
    async with (
        Checkpointer(root, store=asynccp.StoreOptions(durable=False)) as cp,
        AsyncExitStack() as stack,
    ):
        target: Any = GatedView(cp) if gated else cp
        steps = (
            target.reserve_step if gated else LineageReader(Lineage(cp, str(root), []), 0).next_step
        )
        portal = await stack.enter_async_context(BlockingPortal())
        bridge = SyncBridge(
            target,
            portal,
            steps=steps,
            latest=latest,
            max_items=max_items,
            max_bytes=max_bytes,
            grace=10,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(bridge.run)
            try:
                await body(bridge, cp)
            finally:
                bridge.close()
    return bridge, cp, [c.step for c in await cp.list()]


async def test_put_from_a_thread_returns_steps_and_saves_in_order(tmp_path: Path) -> None:
    steps: list[int] = []

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        def sync_body() -> None:
            assert not bridge.on_loop
            steps.append(bridge.put(b"zero", metadata={"n": 0}))
            steps.append(bridge.put(b"one"))
            steps.append(bridge.put({"a.bin": b"two-a", "b.bin": b"two-b"}))

        await anyio.to_thread.run_sync(sync_body)

    _, cp, committed = await bridged(tmp_path, body)
    assert steps == [0, 1, 2] and committed == [0, 1, 2]
    first = await cp.get(0)
    assert await first.read() == b"zero" and first.metadata == {"n": 0}
    assert await (await cp.get(1)).read() == b"one"
    assert await (await cp.get(2)).read_all() == {"a.bin": b"two-a", "b.bin": b"two-b"}


async def test_put_path_from_a_thread_returns_once_staged(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "s0").write_bytes(b"shard zero")

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        def sync_body() -> None:
            src.write_bytes(b"version 1")
            assert bridge.put_path(src) == 0
            src.write_bytes(b"version 2: changed right after")  # staged: no effect
            assert bridge.put_path(src, name="renamed.bin") == 1
            assert bridge.put_path(folder) == 2
            (folder / "s0").write_bytes(b"changed")

        await anyio.to_thread.run_sync(sync_body)

    _, cp, committed = await bridged(tmp_path / "cp", body)
    assert committed == [0, 1, 2]
    assert await (await cp.get(0)).read_all() == {"model.bin": b"version 1"}
    assert await (await cp.get(1)).read_all() == {"renamed.bin": b"version 2: changed right after"}
    assert await (await cp.get(2)).read_all() == {"s0": b"shard zero"}


async def test_put_path_of_a_missing_path(tmp_path: Path) -> None:
    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        with pytest.raises(FileNotFoundError, match="checkpoint source path does not exist"):
            await anyio.to_thread.run_sync(bridge.put_path, tmp_path / "nope")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            bridge.put_path(tmp_path / "nope")  # on the loop's thread too

    _, _, committed = await bridged(tmp_path / "cp", body)
    assert committed == []


async def test_put_path_on_the_loop_thread_stages_a_private_copy_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    src = tmp_path / "state.bin"
    src.write_bytes(b"before")

    def handovers() -> list[Path]:
        return list(scratch.glob("asynccp-handover-*"))

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        assert bridge.on_loop
        assert bridge.put_path(src) == 0  # cannot wait for the loop: copies first
        src.write_bytes(b"after")
        assert len(handovers()) == 1

    _, cp, committed = await bridged(tmp_path / "cp", body)
    assert committed == [0]
    assert await (await cp.get(0)).read_all() == {"state.bin": b"before"}
    assert handovers() == []  # the private copy is gone once saved


async def test_call_from_a_thread_runs_on_the_loop(tmp_path: Path) -> None:
    loop_thread = threading.current_thread().name

    async def on_loop(x: int) -> tuple[str, int]:
        await anyio.lowlevel.checkpoint()
        return threading.current_thread().name, x * 2

    async def fail() -> None:
        raise Boom("read failed")

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        assert await anyio.to_thread.run_sync(bridge.call, on_loop, 21) == (loop_thread, 42)
        with pytest.raises(Boom, match="read failed"):
            await anyio.to_thread.run_sync(bridge.call, fail)

    await bridged(tmp_path, body)


async def test_call_on_the_loop_thread_runs_on_a_private_loop(tmp_path: Path) -> None:
    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        name, library, _ = bridge.call(where)
        assert name == "asynccp-blocking" and library == "asyncio"

    await bridged(tmp_path, body)


async def test_after_close_put_and_call_raise_closed(tmp_path: Path) -> None:
    bridge, _, committed = await bridged(tmp_path, lambda b, cp: anyio.lowlevel.checkpoint())
    with pytest.raises(CheckpointClosedError, match="has ended; save from inside the task"):
        bridge.put(b"late")
    with pytest.raises(CheckpointClosedError, match="has ended"):
        bridge.call(where)
    assert committed == []


async def test_a_background_failure_is_raised_by_the_next_put_once(tmp_path: Path) -> None:
    staged: list[bool] = []

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        def sync_body() -> None:
            bridge.put({"../escape": b"x"})  # refused by the Checkpointer, on the loop
            try:  # reports it already when the loop has tried it by now (a busy machine)
                bridge.put_path(tmp_path / "ok.bin")
                staged.append(True)
            except InvalidNameError:
                staged.append(False)
            if staged[0]:  # staged after it: it was tried by now, and is reported next
                with pytest.raises(InvalidNameError, match="escape"):
                    bridge.put(b"next")
            # reported once (the refused put took no step; neither did a refused put_path)
            assert bridge.put(b"again") == (2 if staged[0] else 1)

        (tmp_path / "ok.bin").write_bytes(b"ok")
        await anyio.to_thread.run_sync(sync_body)

    bridge, _, committed = await bridged(tmp_path / "cp", body)
    assert committed == ([1, 2] if staged[0] else [1])
    bridge.raise_errors()  # nothing left to report


async def test_a_put_path_failure_goes_to_its_caller_only(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f")

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        def sync_body() -> None:
            with pytest.raises(InvalidNameError):
                bridge.put_path(tmp_path / "f", name="../bad")
            assert bridge.put(b"fine") == 1

        await anyio.to_thread.run_sync(sync_body)

    bridge, _, committed = await bridged(tmp_path / "cp", body)
    assert committed == [1]
    bridge.raise_errors()


async def test_failures_left_at_the_end_are_raised_once_with_the_others_as_notes(
    tmp_path: Path,
) -> None:
    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        bridge.put({"../one": b"x"})
        bridge.put({"../two": b"x"})

    bridge, _, committed = await bridged(tmp_path, body)
    assert committed == []
    with pytest.raises(InvalidNameError, match="one") as caught:
        bridge.raise_errors()
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith("also: InvalidNameError") and "two" in notes[0]
    bridge.raise_errors()  # once


async def test_note_errors_attaches_what_is_left_to_the_body_s_error(tmp_path: Path) -> None:
    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        bridge.put({"../one": b"x"})

    bridge, _, _ = await bridged(tmp_path, body)
    err = Boom("the body failed")
    bridge.note_errors(err)
    assert [n.split(":")[:2] for n in err.__notes__] == [["asynccp", " while saving checkpoints"]]
    bridge.raise_errors()  # handed over: not raised again


async def test_latest_saves_only_the_newest_of_what_waited(tmp_path: Path) -> None:
    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        # On the loop's thread, without yielding: the loop takes them all at once.
        assert [bridge.put(b"v%d" % i) for i in range(5)] == [0, 1, 2, 3, 4]
        assert bridge.superseded == 2  # at most max_items wait: the oldest went at once

    bridge, cp, committed = await bridged(tmp_path, body, latest=True, max_items=3)
    assert bridge.superseded == 4
    assert committed == [4]
    assert await (await cp.get(4)).read() == b"v4"


async def test_block_on_the_loop_thread_grows_past_the_bound_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        with caplog.at_level(logging.WARNING, logger="asynccp"):
            assert [bridge.put(b"v%d" % i) for i in range(5)] == [0, 1, 2, 3, 4]

    bridge, _, committed = await bridged(tmp_path, body, max_items=2)
    assert committed == [0, 1, 2, 3, 4] and bridge.superseded == 0
    warned = [r for r in caplog.records if "cannot wait for room" in r.getMessage()]
    assert len(warned) == 1


async def test_block_from_a_thread_waits_for_room(tmp_path: Path) -> None:
    events: list[str] = []
    calling = threading.Event()

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        view: GatedView = bridge._cp  # type: ignore[assignment]
        view.gates[0] = gate = anyio.Event()
        view.saving[0] = saving = anyio.Event()

        def sync_body() -> None:
            bridge.put(b"zero")
            calling.set()
            bridge.put(b"one")  # max_items=1 and step 0 is being saved: waits
            events.append("returned")

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, sync_body)
            await saving.wait()
            await anyio.to_thread.run_sync(calling.wait)
            events.append("opened")
            gate.set()

    _, _, committed = await bridged(tmp_path, body, max_items=1, gated=True)
    assert events == ["opened", "returned"]
    assert committed == [0, 1]


async def test_block_counts_bytes_too(tmp_path: Path) -> None:
    events: list[str] = []

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        view: GatedView = bridge._cp  # type: ignore[assignment]
        view.gates[0] = gate = anyio.Event()
        view.saving[0] = saving = anyio.Event()
        calling = threading.Event()

        def sync_body() -> None:
            bridge.put(b"x" * 60)
            calling.set()
            bridge.put(b"y" * 50)  # 60 + 50 > 100 bytes: waits although one slot is free
            events.append("returned")

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, sync_body)
            await saving.wait()
            await anyio.to_thread.run_sync(calling.wait)
            events.append("opened")
            gate.set()

    _, _, committed = await bridged(tmp_path, body, max_items=5, max_bytes=100, gated=True)
    assert events == ["opened", "returned"]
    assert committed == [0, 1]


async def test_a_waiting_put_is_released_when_the_bridge_ends(tmp_path: Path) -> None:
    """A caller waiting for room learns that the attempt ended instead of waiting forever;
    a save that cannot finish is given up at the end of the grace."""
    outcome: list[BaseException] = []
    calling = threading.Event()
    async with (
        Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as cp,
        AsyncExitStack() as stack,
    ):
        # grace: how long the pre-empted bridge waits for step 0's save
        view, bridge = await gated_bridge(cp, stack, latest=False, max_items=1, grace=0.2)
        view.gates[0] = anyio.Event()  # never opened: step 0 stays in its save
        view.saving[0] = saving = anyio.Event()

        def sync_body() -> None:
            bridge.put(b"zero")
            calling.set()
            try:
                bridge.put(b"one")  # waits for room, which never comes
            except CheckpointClosedError as e:
                outcome.append(e)

        async with anyio.create_task_group() as outer:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    await tg.start(bridge.run)
                    outer.start_soon(anyio.to_thread.run_sync, sync_body)
                    await saving.wait()
                    await anyio.to_thread.run_sync(calling.wait)
                    scope.cancel()  # pre-empted while step 0 is being saved
    assert len(outcome) == 1
    assert [c.step for c in await cp.list()] == []


@pytest.mark.parametrize("latest", [False, True], ids=["block", "latest"])
async def test_pre_empted_what_waits_is_still_saved_as_the_policy_says(
    tmp_path: Path, latest: bool
) -> None:
    """Every checkpoint handed over before the cancellation reaches the Checkpointer
    (``latest``: the newest; the others are superseded, as they would have been)."""
    async with (
        Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as cp,
        AsyncExitStack() as stack,
    ):
        reader = LineageReader(Lineage(cp, str(tmp_path), []), 0)
        portal = await stack.enter_async_context(BlockingPortal())
        bridge = SyncBridge(
            cp,
            portal,
            steps=reader.next_step,
            latest=latest,
            max_items=8,
            max_bytes=1 << 20,
            grace=30,
        )
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                await tg.start(bridge.run)
                for i in range(3):  # on the loop's thread: the loop has not taken them
                    bridge.put(b"v%d" % i)
                scope.cancel()
        assert scope.cancelled_caught
        assert bridge.superseded == (2 if latest else 0)
        with pytest.raises(CheckpointClosedError):
            bridge.put(b"after")
    saved = [2] if latest else [0, 1, 2]
    assert [c.step for c in await cp.list()] == saved
    assert [await (await cp.get(s)).read() for s in saved] == [b"v%d" % s for s in saved]


@pytest.mark.parametrize("latest", [False, True], ids=["block", "latest"])
async def test_pre_empted_the_save_under_way_is_not_cut_off(tmp_path: Path, latest: bool) -> None:
    """The cancellation comes while step 0 is in the Checkpointer's ``save`` (a large
    payload's is offloaded to a thread): that save goes on, and so does the newer one
    waiting. Cut off, step 0 — a write that had returned — would be lost."""
    async with (
        Checkpointer(tmp_path, store=asynccp.StoreOptions(durable=False)) as cp,
        AsyncExitStack() as stack,
    ):
        view, bridge = await gated_bridge(cp, stack, latest=latest, max_items=8, grace=30)
        view.gates[0] = gate = anyio.Event()
        view.saving[0] = saving = anyio.Event()

        async def open_gate() -> None:
            gate.set()

        async with anyio.create_task_group() as outer:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    await tg.start(bridge.run)
                    bridge.put(b"zero")
                    await saving.wait()
                    bridge.put(b"one")
                    scope.cancel()  # pre-empted while step 0 is being saved
                    outer.start_soon(open_gate)  # its save then finishes, shielded
        assert scope.cancelled_caught and bridge.superseded == 0
    assert [c.step for c in await cp.list()] == [0, 1]


def test_the_bridge_wakes_a_trio_loop_from_a_thread(tmp_path: Path) -> None:
    """Under trio the loop is woken through the portal (asyncio: call_soon_threadsafe)."""

    async def body(bridge: SyncBridge, cp: Checkpointer) -> None:
        def sync_body() -> list[int]:
            return [bridge.put(b"t%d" % i) for i in range(3)]

        assert await anyio.to_thread.run_sync(sync_body) == [0, 1, 2]

    async def main() -> list[int]:
        return (await bridged(tmp_path, body))[2]

    assert anyio.run(main, backend="trio") == [0, 1, 2]
