"""A fault campaign: seeded random rounds of damage, rotation and lost answers.

(The regressions the campaign found come first, each as a plain test.)
"""

from __future__ import annotations

import warnings

import pytest
from _sites import Site

import asynccp
from asynccp import Checkpoint, Checkpointer


def record_keys(site: Site, step: int) -> list[str]:
    return [k for k in site.raw.keys("manifests/") if k.startswith(f"manifests/{step:020d}")]


async def read_one(ckpt: Checkpoint) -> bytes:
    return await ckpt.read()


async def resume_and_save(site: Site, step: int, data: bytes) -> Checkpoint:
    """A job: resume past whatever is broken, then save ``step``."""
    async with Checkpointer(site.make_location()) as cp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", asynccp.CorruptCheckpointWarning)
            found = await cp.load_latest(read_one)
        assert found is not None and found[0].step == step - 1
        return await (await cp.save(step, data))


# -- regressions found by the campaign ----------------------------------------------------


async def test_a_step_replaced_twice_commits_again(any_site: Site) -> None:
    """A step whose record was replaced once (revision 1; revision 0 went to quarantine)
    and then found broken again: saving it again must commit, above the broken record.

    Found by the corruption campaign: the new record was created at the free revision 0,
    *below* the broken revision 1, and the handle resolved for a commit no reader saw
    (they all resumed from the step before).
    """
    async with Checkpointer(any_site.make_location()) as cp:
        for step in range(3):
            await (await cp.save(step, b"first %d" % step))
    for again in (b"second", b"third"):
        (key,) = record_keys(any_site, 2)
        any_site.raw.put(key, b"garbage{")
        await resume_and_save(any_site, 2, again)
        async with Checkpointer(any_site.make_location()) as reader:
            latest = await reader.latest()
            assert latest is not None and latest.step == 2
            assert await latest.read() == again
    assert record_keys(any_site, 2) == ["manifests/00000000000000000002.2.json"]
    quarantined = any_site.raw.keys("quarantine/")
    assert [any_site.raw.get(k) for k in quarantined] == [b"garbage{", b"garbage{"]


async def test_a_stale_writer_cannot_commit_below_a_replaced_record(any_site: Site) -> None:
    """Writer A resumed before writer B replaced a broken step; A's save of that step
    finds revision 0 free (moved to quarantine) but B's checkpoint is the step's record:
    A gets StepAlreadyCommittedError, as with any step another writer committed, and
    leaves nothing behind. (Before, A's handle resolved for a record nobody reads.)"""
    async with Checkpointer(any_site.make_location()) as cp:
        for step in range(3):
            await (await cp.save(step, b"first %d" % step))
    any_site.raw.put("manifests/00000000000000000002.json", b"garbage{")
    async with Checkpointer(any_site.make_location()) as a:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", asynccp.CorruptCheckpointWarning)
            found = await a.load_latest(read_one)
        assert found is not None and found[0].step == 1
        await resume_and_save(any_site, 2, b"b's")  # writer B
        handle = await a.save(2, b"a's")
        with pytest.raises(asynccp.StepAlreadyCommittedError):
            await handle
        with pytest.raises(asynccp.StepAlreadyCommittedError):
            await a.flush()
    assert record_keys(any_site, 2) == ["manifests/00000000000000000002.1.json"]
    async with Checkpointer(any_site.make_location()) as reader:
        assert await (await reader.get(2)).read() == b"b's"
