"""Unit tests of ``asynccp._write._queue.StagingQueue``: the count and byte budget,
``block`` and ``latest``, the one-oversized-checkpoint rule, supersede, idle, done.

A "waits" is shown without timing: the waiting task is started, every task is let run
until it blocks (``anyio.wait_all_tasks_blocked``), and only then is room given back.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import pytest

from asynccp._write._queue import StagingQueue


@dataclass(eq=False)
class Item:
    name: str
    size: int


def make(
    max_pending: int = 2, max_bytes: int = 100, policy: str = "block"
) -> tuple[StagingQueue[Item], list[Item]]:
    superseded: list[Item] = []
    return StagingQueue(max_pending, max_bytes, policy, superseded.append), superseded  # type: ignore[arg-type]


async def stage(q: StagingQueue[Item], name: str, size: int) -> Item:
    """Reserve, then add: what ``Pipeline.save`` does around the snapshot."""
    await q.reserve(size)
    item = Item(name, size)
    q.add(item, size)
    return item


class Waiter:
    """A ``reserve`` running in the background; ``.done`` tells whether it got its room."""

    def __init__(self, q: StagingQueue[Item], size: int) -> None:
        self.q, self.size = q, size
        self.done = anyio.Event()

    async def __call__(self) -> None:
        await self.q.reserve(self.size)
        self.done.set()


async def test_reserve_counts_the_slot_and_the_bytes() -> None:
    q, _ = make(max_pending=3, max_bytes=100)
    assert q.idle and q.depth == 0 and q.staged_bytes == 0
    await q.reserve(40)
    assert (q.depth, q.staged_bytes, q.idle) == (1, 40, False)
    # a staged size that differs a little from the reservation is what counts afterwards
    q.add(Item("a", 45), reserved=40)
    assert (q.depth, q.staged_bytes) == (1, 45)


async def test_block_waits_for_a_free_slot() -> None:
    q, superseded = make(max_pending=2, max_bytes=1000)
    a = await stage(q, "a", 1)
    await stage(q, "b", 1)
    waiter = Waiter(q, 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not waiter.done.is_set() and q.depth == 2
        assert await q.get() is a  # started: still counts against the budget
        await anyio.wait_all_tasks_blocked()
        assert not waiter.done.is_set()
        q.done(a)
        await waiter.done.wait()
    assert (q.depth, q.staged_bytes) == (2, 2)
    assert superseded == []


async def test_block_waits_for_bytes_and_the_budget_is_inclusive() -> None:
    q, _ = make(max_pending=10, max_bytes=100)
    a = await stage(q, "a", 60)
    await q.reserve(40)  # 60 + 40 == 100: fits exactly
    q.unreserve(40)
    waiter = Waiter(q, 41)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not waiter.done.is_set()
        assert await q.get() is a
        q.done(a)
        await waiter.done.wait()
    assert (q.depth, q.staged_bytes) == (1, 41)


async def test_one_oversized_checkpoint_is_accepted_into_an_empty_queue() -> None:
    q, _ = make(max_pending=2, max_bytes=100)
    with anyio.fail_after(10):  # a liveness bound: it must not wait for room it can't get
        await q.reserve(1000)
    assert (q.depth, q.staged_bytes) == (1, 1000)


async def test_an_oversized_checkpoint_waits_for_the_queue_to_empty() -> None:
    q, _ = make(max_pending=5, max_bytes=100)
    a = await stage(q, "a", 10)
    b = await stage(q, "b", 10)
    big = Waiter(q, 1000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(big)
        await anyio.wait_all_tasks_blocked()
        q.done(await q.get())  # a: one is still staged
        await anyio.wait_all_tasks_blocked()
        assert not big.done.is_set() and q.depth == 1
        assert await q.get() is b
        q.done(b)
        await big.done.wait()
    assert a is not b
    assert (q.depth, q.staged_bytes) == (1, 1000)
    # while the oversized one is staged, nothing else fits beside it
    small = Waiter(q, 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(small)
        await anyio.wait_all_tasks_blocked()
        assert not small.done.is_set()
        q.done(Item("big", 1000))
        await small.done.wait()


async def test_latest_supersedes_the_oldest_waiting_checkpoint() -> None:
    q, superseded = make(max_pending=2, max_bytes=1000, policy="latest")
    a = await stage(q, "a", 10)
    b = await stage(q, "b", 20)
    c = await stage(q, "c", 30)  # no room: a, the oldest not yet started, goes
    assert superseded == [a]
    assert (q.depth, q.staged_bytes) == (2, 50)
    assert q.take_while(lambda _: True, 10) == [b, c]
    assert superseded == [a]


async def test_latest_supersedes_as_many_as_needed_in_save_order() -> None:
    q, superseded = make(max_pending=10, max_bytes=100, policy="latest")
    items = [await stage(q, str(i), 30) for i in range(3)]  # 90 bytes
    d = await stage(q, "d", 70)  # 90 + 70 > 100: two of them must go, oldest first
    assert superseded == items[:2]
    assert (q.depth, q.staged_bytes) == (2, 100)
    assert await q.get() is items[2]
    assert await q.get() is d


async def test_latest_never_supersedes_a_started_checkpoint_or_a_reservation() -> None:
    q, superseded = make(max_pending=2, max_bytes=1000, policy="latest")
    a = await stage(q, "a", 10)
    assert await q.get() is a  # started: its upload runs
    await q.reserve(10)  # reserved, its snapshot not yet added
    waiter = Waiter(q, 10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not waiter.done.is_set()  # nothing it may drop: it waits like "block"
        assert superseded == []
        q.done(a)
        await waiter.done.wait()
    assert superseded == []


async def test_latest_supersedes_to_make_room_for_an_oversized_checkpoint() -> None:
    q, superseded = make(max_pending=5, max_bytes=100, policy="latest")
    a = await stage(q, "a", 10)
    await q.reserve(1000)
    assert superseded == [a]
    assert (q.depth, q.staged_bytes) == (1, 1000)


async def test_a_cancelled_reserve_takes_nothing() -> None:
    q, _ = make(max_pending=1, max_bytes=100)
    a = await stage(q, "a", 10)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Waiter(q, 10))
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert (q.depth, q.staged_bytes) == (1, 10)
    q.done(await q.get())
    assert q.idle and q.staged_bytes == 0
    assert a.name == "a"


async def test_unreserve_gives_the_room_back_and_wakes_a_waiter() -> None:
    q, _ = make(max_pending=1, max_bytes=100)
    await q.reserve(60)
    waiter = Waiter(q, 60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not waiter.done.is_set()
        q.unreserve(60)  # the snapshot failed
        await waiter.done.wait()
    assert (q.depth, q.staged_bytes) == (1, 60)


async def test_get_is_fifo_and_returns_none_once_closed_and_drained() -> None:
    q, _ = make(max_pending=5, max_bytes=1000)
    items = [await stage(q, str(i), 1) for i in range(3)]
    q.close()
    assert [await q.get() for _ in range(3)] == items  # closing keeps what was staged
    assert await q.get() is None
    assert await q.get() is None


async def test_close_wakes_a_waiting_get() -> None:
    q, _ = make()
    got: list[Item | None] = [Item("sentinel", 0)]

    async def getter() -> None:
        got[0] = await q.get()

    async with anyio.create_task_group() as tg:
        tg.start_soon(getter)
        await anyio.wait_all_tasks_blocked()
        assert got[0] is not None
        q.close()
    assert got == [None]


async def test_a_waiting_get_receives_the_next_item() -> None:
    q, _ = make()
    got: list[Item | None] = []

    async def getter() -> None:
        got.append(await q.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(getter)
        await anyio.wait_all_tasks_blocked()
        a = await stage(q, "a", 1)
    assert got == [a]


async def test_take_while_stops_at_the_first_refused_item_and_at_the_limit() -> None:
    q, _ = make(max_pending=10, max_bytes=1000)
    small = [await stage(q, f"s{i}", 1) for i in range(3)]
    big = await stage(q, "big", 500)
    after = await stage(q, "s9", 1)
    assert q.take_while(lambda it: it.size < 100, limit=2) == small[:2]
    assert q.take_while(lambda it: it.size < 100, limit=10) == small[2:]
    assert q.take_while(lambda it: it.size < 100, limit=10) == []  # big is first: refused
    assert q.take_while(lambda it: True, limit=0) == []
    assert await q.get() is big
    assert q.take_while(lambda it: True, limit=10) == [after]
    assert q.depth == 5  # taken is not done


async def test_wait_idle_waits_for_every_item_done() -> None:
    q, _ = make(max_pending=5, max_bytes=1000)
    await q.wait_idle()  # nothing staged: returns at once
    a = await stage(q, "a", 1)
    b = await stage(q, "b", 2)
    idle = anyio.Event()

    async def waiter() -> None:
        await q.wait_idle()
        idle.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        q.done(await q.get())
        await anyio.wait_all_tasks_blocked()
        assert not idle.is_set() and not q.idle
        q.done(await q.get())
        await idle.wait()
    assert q.idle and q.staged_bytes == 0
    assert (a.size, b.size) == (1, 2)


async def test_wait_quiet_waits_for_the_items_then_for_the_quiet_time() -> None:
    q, _ = make(max_pending=5, max_bytes=1000)
    await q.wait_quiet(0.0)  # nothing staged: at once
    await stage(q, "a", 1)
    quiet = anyio.Event()

    async def waiter(seconds: float) -> None:
        await q.wait_quiet(seconds)
        quiet.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 0.0)
        await anyio.wait_all_tasks_blocked()
        assert not quiet.is_set()  # an item is staged
        q.done(await q.get())
        with anyio.fail_after(30):
            await quiet.wait()
    # Idle just now, but not for a minute: a burst's next save may be coming.
    quiet = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 60.0)
        await anyio.wait_all_tasks_blocked()
        assert q.idle and not quiet.is_set()
        tg.cancel_scope.cancel()


async def test_drain_removes_what_has_not_started_and_frees_its_room() -> None:
    q, superseded = make(max_pending=5, max_bytes=1000)
    a = await stage(q, "a", 1)
    b = await stage(q, "b", 2)
    c = await stage(q, "c", 4)
    assert await q.get() is a
    assert q.drain() == [b, c]
    assert (q.depth, q.staged_bytes) == (1, 1)  # a is in flight: it still counts
    assert superseded == []  # drained is not superseded: the caller settles them
    q.done(a)
    assert q.idle and q.staged_bytes == 0
    assert q.drain() == []


async def test_drain_wakes_a_waiting_reserve() -> None:
    q, _ = make(max_pending=1, max_bytes=100)
    await stage(q, "a", 1)
    waiter = Waiter(q, 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not waiter.done.is_set()
        q.drain()
        await waiter.done.wait()
    assert q.depth == 1


@pytest.mark.parametrize("policy", ["block", "latest"])
async def test_the_budget_holds_under_many_concurrent_savers(policy: str) -> None:
    """Savers racing a consumer: depth and bytes never exceed the budget (apart from the
    one oversized checkpoint, alone), and every item ends done or superseded."""
    q, superseded = make(max_pending=3, max_bytes=100, policy=policy)
    sizes = [7, 50, 30, 120, 1, 99, 45, 45, 10, 200, 3, 60] * 3
    staged: list[Item] = []
    finished: list[Item] = []

    def check() -> None:
        assert q.depth >= 0 and q.staged_bytes >= 0
        if q.depth > 1:
            assert q.depth <= 3 and q.staged_bytes <= 100

    async def saver(i: int, size: int) -> None:
        await q.reserve(size)
        check()
        item = Item(str(i), size)
        staged.append(item)
        q.add(item, size)
        check()

    async def consumer() -> None:
        while (item := await q.get()) is not None:
            check()
            await anyio.lowlevel.checkpoint()
            q.done(item)
            finished.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        async with anyio.create_task_group() as savers:
            for i, size in enumerate(sizes):
                savers.start_soon(saver, i, size)
        await q.wait_idle()
        q.close()
    assert q.idle and q.staged_bytes == 0
    assert sorted(map(id, finished + superseded)) == sorted(map(id, staged))
    if policy == "block":
        assert superseded == []
