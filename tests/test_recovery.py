"""Recovery when it matters: corrupt newest checkpoints, the step order, retention that
keeps the good over the bad, readers racing rotation, lost commit answers, and orphan
collection that never takes a live writer's upload.

Stores are real (a local directory, an in-memory store, moto's S3 server, directly or
through the fault proxy); damage is done to the stored objects themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _moto import make_s3_store
from _proxy import FaultProxy
from _sites import Site

import asynccp
from asynccp import Checkpoint, Checkpointer, CorruptCheckpointWarning

if TYPE_CHECKING:
    from obstore.store import RetryConfig

FAIL_FAST: RetryConfig = {
    "max_retries": 1,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=20),
    },
    "retry_timeout": timedelta(seconds=5),
}


def manifest_key(step: int) -> str:
    return f"manifests/{step:020d}.json"


def payload(step: int) -> bytes:
    """Larger than a record holds (a payload object, which the tests damage)."""
    return f"state at step {step}".encode() * 300


def tiny(step: int) -> bytes:
    """Small enough to live inside its record."""
    return f"state at step {step}".encode()


async def save_steps(
    site: Site, steps: range, make: Any = payload, **options: Any
) -> list[Checkpoint]:
    async with Checkpointer(site.make_location(), **options) as cp:
        handles = [await cp.save(s, make(s)) for s in steps]
        return [await h for h in handles]


async def read_one(ckpt: Checkpoint) -> bytes:
    return await ckpt.read()


def flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def flip_payload(site: Site, ckpt: Checkpoint) -> None:
    """One byte of the checkpoint's file flipped where it is stored: its payload object,
    or (a tiny checkpoint) inside its record."""
    if ckpt.files["data"].inline is not None:
        site.raw.edit_inline(manifest_key(ckpt.step), "data", flip)
        return
    key = f"data/{ckpt.step:020d}-{ckpt.writer}/data"
    site.raw.put(key, flip(site.raw.get(key)))


def skipping(
    step: int, reason: str = "", *, when: bool = True
) -> contextlib.AbstractContextManager[object]:
    """Expect a CorruptCheckpointWarning naming ``step`` (and ``reason``), if ``when``."""
    if not when:
        return contextlib.nullcontext()
    return pytest.warns(CorruptCheckpointWarning, match=rf"checkpoint {step}\b.*{reason}")


# -- a corrupt newest checkpoint: resume works end to end ---------------------------------


async def test_undecodable_newest_manifest_does_not_block_its_step(any_site: Site) -> None:
    """``garbage{`` in the newest manifest: resume from the one before, save that step
    again (it replaces the record; the garbage goes to quarantine), and every later
    start resumes normally."""
    await save_steps(any_site, range(4))
    any_site.raw.put(manifest_key(3), b"garbage{")
    for attempt in range(3):  # every later start works (and warns of nothing)
        # the first start skips the garbage: finding the floor at open, then loading
        with skipping(3, "not JSON", when=attempt == 0):
            async with Checkpointer(any_site.make_location()) as cp:
                with skipping(3, "not JSON", when=attempt == 0):
                    found = await cp.load_latest(read_one)
                assert found is not None
                ckpt, data = found
                assert data == payload(ckpt.step)
                if attempt == 0:
                    assert ckpt.step == 2
                committed = await (await cp.save(ckpt.step + 1, payload(ckpt.step + 1)))
                assert committed.step == ckpt.step + 1
                await committed.verify()
    quarantined = any_site.raw.keys("quarantine/")
    assert len(quarantined) == 1
    assert any_site.raw.get(quarantined[0]) == b"garbage{"
    async with Checkpointer(any_site.make_location()) as cp:
        assert [c.step for c in await cp.list()] == [0, 1, 2, 3, 4, 5]
        assert await (await cp.get(3)).read() == payload(3)


@pytest.mark.parametrize("make", [payload, tiny], ids=["stored", "inline"])
async def test_corrupt_newest_payload_resumes_through_load_latest(
    any_site: Site, make: Callable[[int], bytes]
) -> None:
    """``latest()`` (metadata only) returns the newest; its payload (an object, or the
    bytes inside a tiny checkpoint's record) fails verification; ``load_latest`` falls
    back, says which step it loaded, and the skipped step is saved again (replaced)."""
    committed = await save_steps(any_site, range(3), make)
    assert (committed[-1].files["data"].inline is not None) is (make is tiny)
    flip_payload(any_site, committed[-1])
    async with Checkpointer(any_site.make_location()) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == 2  # valid: sizes match
        with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint 2\b"):
            found = await cp.load_latest(read_one)
        assert found is not None and found[0].step == 1 and found[1] == make(1)
        replaced = await (await cp.save(2, b"redone"))
        assert await replaced.read() == b"redone"
        assert (await cp.latest()).step == 2  # type: ignore[union-attr]
    async with Checkpointer(any_site.make_location()) as cp:
        found = await cp.load_latest(read_one)
        assert found is not None and found[0].step == 2 and found[1] == b"redone"
    assert len(any_site.raw.keys("quarantine/")) == 1


async def test_load_latest_on_an_empty_location_and_bad_loaders(any_site: Site) -> None:
    async with Checkpointer(any_site.make_location()) as cp:
        assert await cp.load_latest(read_one) is None
        await (await cp.save(0, b"x"))
        with pytest.raises(TypeError, match="loader must be an async function"):
            await cp.load_latest("not callable")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not an awaitable"):
            await cp.load_latest(lambda c: c.step)  # type: ignore[arg-type,return-value]

        async def boom(ckpt: Checkpoint) -> None:
            raise KeyError("the loader's own bug")

        with pytest.raises(KeyError):  # not corruption: it propagates, nothing is skipped
            await cp.load_latest(boom)
        assert (await cp.load_latest(read_one)) is not None


async def test_a_checkpoint_that_verifies_is_never_replaced(tmp_path: Path) -> None:
    """Two writers opened before either saved: the loser's save of the winner's (good)
    step is StepAlreadyCommittedError, as before; nothing goes to quarantine."""
    loc = tmp_path / "loc"
    async with Checkpointer(loc) as a, Checkpointer(loc) as b:
        await a.latest()
        await b.latest()
        await (await a.save(0, b"a wins"))
        h = await b.save(0, b"b loses")
        with pytest.raises(asynccp.StepAlreadyCommittedError):
            await h
        with pytest.raises(asynccp.StepAlreadyCommittedError):
            await b.flush()
    async with Checkpointer(loc) as cp:
        assert await (await cp.get(0)).read() == b"a wins"
    assert not (loc / "quarantine").exists()


# -- the step order ------------------------------------------------------------------------


async def test_a_step_at_or_below_the_newest_valid_one_is_refused_at_once(
    any_site: Site,
) -> None:
    await save_steps(any_site, range(6))
    async with Checkpointer(any_site.make_location()) as cp:  # never calls latest()
        for step in (2, 5):
            with pytest.raises(asynccp.StepOrderError, match="newest valid checkpoint, step 5"):
                await cp.save(step, b"stale")
        await (await cp.save(6, b"six"))
    async with Checkpointer(any_site.make_location()) as cp:
        assert (await cp.latest()).step == 6  # type: ignore[union-attr]
        assert await (await cp.get(2)).read() == payload(2)


async def test_an_invalid_newest_record_does_not_count_for_the_order(any_site: Site) -> None:
    await save_steps(any_site, range(3))
    any_site.raw.put(manifest_key(2), b'{"format": 1}')
    with skipping(2, "invalid manifest"):  # opening finds the floor below it
        async with Checkpointer(any_site.make_location()) as cp:
            with pytest.raises(asynccp.StepOrderError, match="step 1"):
                await cp.save(1, b"stale")
            await (await cp.save(2, b"two again"))  # replaces the invalid record


# -- retention and gc keep the good over the bad --------------------------------------------


async def test_keep_never_deletes_the_newest_valid_checkpoint(any_site: Site) -> None:
    await save_steps(any_site, range(4))
    any_site.raw.put(manifest_key(4), b"broken")  # an invalid record above the newest valid
    with skipping(4, "not JSON"):  # opening finds the floor below it
        async with Checkpointer(any_site.make_location(), keep=1) as cp:
            with skipping(4, "not JSON"):
                await cp.load_latest(read_one)
            await (await cp.save(5, payload(5)))  # triggers retention
    async with Checkpointer(any_site.make_location()) as cp:
        with skipping(4, "not JSON"):
            assert [c.step for c in await cp.list()] == [5]
    assert any_site.raw.get(manifest_key(4)) == b"broken"  # listed, not deleted by keep=


async def test_gc_keep_1_with_a_broken_newest_keeps_the_newest_valid(any_site: Site) -> None:
    """The reported case: a broken manifest at the newest step; gc --keep 1 deleted the
    valid one before it and kept the broken one. Now the valid one stays."""
    from asynccp._retention import apply_retention, remove_invalid
    from asynccp._store import resolve

    await save_steps(any_site, range(4))
    any_site.raw.put(manifest_key(3), b"broken")
    store = resolve(any_site.make_location())
    with skipping(3, "not JSON"):  # opening finds the floor below it
        async with Checkpointer(any_site.make_location()) as cp:
            retained = await apply_retention(store, 1, None)
            assert retained.deleted == [0, 1]
            assert retained.verified == [2]  # read whole before relying on it
            with skipping(3, "not JSON"):
                restored = await cp.read()
            assert restored == payload(2)
            assert any_site.raw.get(manifest_key(3)) == b"broken"
            assert await remove_invalid(store, how="quarantine") == [3]
    assert manifest_key(3) not in any_site.raw.keys("manifests/")
    assert len(any_site.raw.keys("quarantine/")) == 1


# -- readers racing a writer that rotates -------------------------------------------------


async def test_a_reader_racing_rotation_never_reports_corruption(any_site: Site) -> None:
    """A writer with keep=1 deletes each checkpoint as the next commits; a reader reading
    all the while must never get None or a corruption warning: it lists again."""
    reads = 0
    async with Checkpointer(
        any_site.make_location(), limits=asynccp.Limits(max_pending=2), keep=1
    ) as writer:
        await (await writer.save(0, payload(0)))
        done = anyio.Event()

        async def read_while_rotating() -> None:
            nonlocal reads
            async with Checkpointer(any_site.make_location()) as reader:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", CorruptCheckpointWarning)
                    while not done.is_set():
                        data = await reader.read()
                        assert data is not None
                        assert data.startswith(b"state at step ")
                        found = await reader.load_latest(read_one)
                        assert found is not None and found[1] == payload(found[0].step)
                        reads += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_while_rotating)
            for step in range(1, 120):
                await writer.save(step, payload(step))
            await writer.flush()
            done.set()
    assert reads > 0


# -- lost answers ----------------------------------------------------------------------------


async def test_a_lost_answer_to_the_commit_is_looked_up(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    """Every answer to a manifest PUT is lost (obstore's retries and asynccp's included):
    the manifest did land, so the save succeeded, and the handle says so."""
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAIL_FAST)
    async with Checkpointer(store, store=asynccp.StoreOptions(io_attempts=2)) as cp:
        await cp.latest()
        fault_proxy.lose_answers(rb"^PUT \S*/manifests/")
        ckpt = await (await cp.save(0, b"zero"))
        assert ckpt.step == 0
    assert fault_proxy.lost_answers >= 1
    async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:
        latest = await reader.latest()
        assert latest is not None and await latest.read() == b"zero"


async def test_a_commit_that_cannot_be_looked_up_is_reported_unknown(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    """The commit's answer is lost and so is every answer about manifests: the outcome
    is unknown, and the handle says that (not "nothing of it is committed")."""
    store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAIL_FAST)
    with pytest.raises(asynccp.CommitUnknownError, match="may or may not be committed"):
        async with Checkpointer(store, store=asynccp.StoreOptions(io_attempts=2)) as cp:
            await cp.latest()
            fault_proxy.lose_answers(rb"^(PUT|GET) \S*manifests")
            h = await cp.save(0, b"zero")
            with pytest.raises(asynccp.CommitUnknownError):
                await h
    # it did land (the request went through): a reader on a working path sees it
    async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:
        latest = await reader.latest()
        assert latest is not None and await latest.read() == b"zero"


# -- orphan collection and live writers --------------------------------------------------------


async def test_collection_never_takes_a_live_writers_payload(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    """Writer A's commit is held; writer B (orphan_grace=0) collects orphans meanwhile.
    A's payload is older than B's grace, but A holds a live lease: B leaves it, and A's
    commit lands on a complete payload."""
    direct = make_s3_store(moto_server, s3_bucket)
    fault_proxy.hold_requests(rb"^PUT \S*/manifests/")
    async with Checkpointer(make_s3_store(fault_proxy.url, s3_bucket)) as a:
        h = await a.save(0, b"a" * 5000)  # (a payload object, not inside the record)
        await anyio.to_thread.run_sync(fault_proxy.wait_held)  # A's commit is held
        async with Checkpointer(direct, retention=asynccp.Retention(orphan_grace=0)) as b:
            await (await b.save(1, b"b"))  # B's housekeeping collects after its commit
        folder = f"data/{0:020d}-{a.writer_id}/data"
        from _sites import Raw

        assert folder in Raw(store=direct).keys("data/"), "B collected a live writer's upload"
        fault_proxy.release()
        ckpt = await h
        await ckpt.verify()


async def test_collection_judges_by_lease_not_by_age(tmp_path: Path) -> None:
    """A live writer's upload that looks two hours old (a skewed clock, a long wait) is
    kept; once the writer is gone (no lease), the same folder is collected."""
    from asynccp._retention import collect_orphans
    from asynccp._store import resolve

    loc = tmp_path / "loc"
    store = resolve(loc)
    async with Checkpointer(loc) as a:
        await a.latest()
        folder = loc / "data" / f"{0:020d}-{a.writer_id}"
        folder.mkdir(parents=True)
        (folder / "data").write_bytes(b"in flight")
        old = time.time() - 7200
        os.utime(folder / "data", (old, old))
        async with Checkpointer(loc) as b:
            assert await collect_orphans(store, timedelta(seconds=0), writer=b.writer_id) == []
        assert (folder / "data").exists()
    # A closed: its lease is gone, the folder is an orphan now
    async with Checkpointer(loc) as c:
        taken = await collect_orphans(store, timedelta(hours=1), writer=c.writer_id)
    assert taken == [f"data/{0:020d}-{a.writer_id}"]
    assert not folder.exists()


async def test_a_commit_whose_payload_vanished_is_not_resolved(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's commit is held long; meanwhile its payload is deleted (a collector that got it
    wrong). The manifest lands, but the handle fails instead of resolving to a checkpoint
    with no data, and readers skip the step."""
    import asynccp._write._commit

    monkeypatch.setattr(asynccp._write._commit, "PAYLOAD_CHECK_AFTER", 0.0)  # every commit "slow"
    from _sites import Raw

    raw = Raw(store=make_s3_store(moto_server, s3_bucket))
    fault_proxy.hold_requests(rb"^PUT \S*/manifests/")
    with pytest.raises(asynccp.UploadError, match="deleted while it committed"):
        async with Checkpointer(make_s3_store(fault_proxy.url, s3_bucket)) as a:
            h = await a.save(0, b"a" * 5000)  # (a payload object, not inside the record)
            await anyio.to_thread.run_sync(fault_proxy.wait_held)  # A's commit is held
            for key in raw.keys("data/"):
                raw.delete(key)
            fault_proxy.release()
            with pytest.raises(asynccp.UploadError, match="deleted while it committed"):
                await h
    incomplete = "payload objects .* missing"
    with skipping(0, incomplete):  # opening looks for the floor
        async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:
            with skipping(0, incomplete):
                assert await reader.latest() is None
            await (await reader.save(0, b"again"))  # the invalid record never blocks step 0


def test_quarantine_records_are_json_of_the_original(tmp_path: Path) -> None:
    """What quarantine holds is the original record, byte for byte (for inspection)."""

    async def main() -> None:
        loc = tmp_path / "loc"
        async with Checkpointer(loc) as cp:
            await (await cp.save(0, b"x"))
        bad = {"format": 1, "step": 0}
        (loc / manifest_key(0)).write_text(json.dumps(bad))
        with skipping(0, "invalid manifest"):  # opening looks for the floor
            async with Checkpointer(loc) as cp:
                await (await cp.save(0, b"y"))
        (q,) = (loc / "quarantine").iterdir()
        assert json.loads(q.read_text()) == bad

    anyio.run(main)
