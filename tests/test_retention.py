"""Retention never trades a checkpoint that verifies for one that does not.

The rule (DESIGN.md §8): a checkpoint known not to verify never counts towards ``keep=``,
and nothing is deleted unless a newer kept checkpoint is known to verify — one this
writer committed counts; any other is read whole and checked once before retention
relies on it. ``asynccp gc --keep N`` follows the same rule. Also here: what ``gc``
removes besides (invalid checkpoints with their payload, the quarantine, orphans in a
dry run, a crashed sharded writer's temporary part record), and a seeded campaign of
bit flips and truncations between the runs of a writer.

Stores are real (a local directory, memory, moto's S3 server); damage is done to the
stored objects themselves.
"""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from _sites import Site, make_site

from asynccp import Checkpoint, Checkpointer, CorruptCheckpointWarning
from asynccp._layout import parse_manifest_key
from asynccp._retention import Trust, apply_retention
from asynccp._store import resolve
from asynccp.cli import main


def manifest_key(step: int) -> str:
    return f"manifests/{step:020d}.json"


def payload(step: int) -> bytes:
    """Larger than a record holds (a payload object, which the tests damage)."""
    return f"state at step {step}".encode() * 300


def mixed(step: int) -> bytes:
    """Odd steps tiny (their bytes inside their records), even steps payload objects."""
    return f"state at step {step}".encode() * (1 if step % 2 else 300)


def data_key(ckpt: Checkpoint) -> str:
    return f"data/{ckpt.step:020d}-{ckpt.writer}/data"


def flip(site: Site, key: str, at: float = 0.5) -> None:
    """One byte of ``key`` flipped in place; its size unchanged (the checkpoint stays
    valid, and fails verification)."""
    data = bytearray(site.raw.get(key))
    data[int(len(data) * at) % len(data)] ^= 0xFF
    site.raw.put(key, bytes(data))


async def save(site: Site, steps: list[int], **options: object) -> list[Checkpoint]:
    async with Checkpointer(site.make_location(), **options) as cp:  # type: ignore[arg-type]
        handles = [await cp.save(s, payload(s)) for s in steps]
        return [await h for h in handles]


async def read_one(ckpt: Checkpoint) -> bytes:
    return await ckpt.read()


@contextmanager
def skipped(*steps: int) -> Iterator[None]:
    """The block warns that exactly ``steps`` were skipped (newest first)."""
    with pytest.warns(CorruptCheckpointWarning) as caught:
        yield
    said = [str(w.message) for w in caught if issubclass(w.category, CorruptCheckpointWarning)]
    assert [int(m.split("checkpoint ")[1].split()[0]) for m in said] == list(steps), said


# -- the reported cases ------------------------------------------------------------------


async def test_the_acknowledged_step_survives_a_corrupt_newer_one(any_site: Site) -> None:
    """Save 1 and 5; flip a byte of 5; reopen with keep=1: resume from 1, save 2 — and 2
    (acknowledged) is what stays, not the corrupt 5 (it used to delete 2 and 1)."""
    _, five = await save(any_site, [1, 5])
    flip(any_site, data_key(five))
    async with Checkpointer(any_site.make_location(), keep=1) as cp:
        with skipped(5):
            found = await cp.load_latest(read_one)
        assert found is not None and found[0].step == 1
        two = await (await cp.save(2, payload(2)))
    assert two.step == 2
    async with Checkpointer(any_site.make_location()) as cp:
        steps = [c.step for c in await cp.list()]
        assert 2 in steps and 1 not in steps  # retention ran, and counted 2, not 5
        await (await cp.get(2)).verify()
        with skipped(5):
            found = await cp.load_latest(read_one)
        assert found is not None and (found[0].step, found[1]) == (two.step, payload(2))


async def test_a_step_found_not_to_verify_and_saved_again_is_replaced(any_site: Site) -> None:
    """Resuming below a corrupt step and saving up to it: the step is replaced (a new
    revision; the old record kept in quarantine), never left as the newest "valid" one."""
    _, five = await save(any_site, [1, 5])
    flip(any_site, data_key(five))
    async with Checkpointer(any_site.make_location(), keep=1) as cp:
        with skipped(5):
            await cp.load_latest(read_one)
        handles = [await cp.save(s, payload(s)) for s in (2, 3, 4, 5, 6)]
        for h in handles:
            await h
    async with Checkpointer(any_site.make_location()) as cp:
        assert [c.step for c in await cp.list()] == [6]
        found = await cp.load_latest(read_one)
        assert found is not None and (found[0].step, found[1]) == (6, payload(6))
    assert len(any_site.raw.keys("quarantine/")) == 1


async def test_a_writer_relies_only_on_a_kept_checkpoint_that_verifies(any_site: Site) -> None:
    """Another writer's newer checkpoints are read whole before they stand for the older
    ones: a corrupt one is not counted (and is found once), a good one is read once."""
    first = await save(any_site, [0, 1, 2])
    flip(any_site, data_key(first[2]))  # 2 is corrupt, nobody knows yet
    store = resolve(any_site.make_location())
    trust = Trust()
    done = await apply_retention(store, 1, None, trust=trust)
    assert done.deleted == [0] and done.kept == [1]  # 1 verified, 2 not counted
    assert done.verified == [1] and done.not_verifying == [2]
    assert (2, first[2].writer) in trust.bad
    again = await apply_retention(store, 1, None, trust=trust)
    assert again.verified == [] and again.kept == [1]  # nothing read twice
    await (await _get(any_site, 1)).verify()


async def test_nothing_is_deleted_when_no_kept_checkpoint_verifies(any_site: Site) -> None:
    """keep=1 over 0..3 where 1, 2 and 3 are corrupt: each is found not to verify in
    turn, and 0, the only one left that verifies, is kept (nothing is left to delete)."""
    ckpts = await save(any_site, [0, 1, 2, 3])
    for c in ckpts[1:]:
        flip(any_site, data_key(c))
    store = resolve(any_site.make_location())
    done = await apply_retention(store, 1, None)
    assert done.deleted == [] and done.kept == [0]
    assert done.not_verifying == [1, 2, 3] and done.verified == []
    assert [c.step for c in await _list(any_site)] == [0, 1, 2, 3]


async def test_a_steady_writer_reads_nothing_back(any_site: Site) -> None:
    """A writer's own commits count as verified: retention reads no payload for them."""
    async with Checkpointer(any_site.make_location(), keep=2) as cp:
        for s in range(6):
            await (await cp.save(s, payload(s)))
        trust = cp._housekeeping.trust
    store = resolve(any_site.make_location())  # (the exit waited for the housekeeping)
    again = await apply_retention(store, 2, None, trust=trust)
    assert again.verified == [] and again.kept == [4, 5]
    assert [c.step for c in await _list(any_site)] == [4, 5]


async def test_a_busy_writer_applies_retention_in_rounds(any_site: Site) -> None:
    """Tiny checkpoints saved without pause: a retention round runs every ROUND_EVERY
    commits (not per commit), so the location holds about that many beyond ``keep``:
    a round starts once ROUND_EVERY committed since the last (a group of up to
    max_pending may overshoot it), and those committed while it runs (the saver never
    waits for it) are the next round's, which starts when it ends. Once the writer is
    idle, exactly ``keep`` remain, each its record alone."""
    from asynccp._housekeeping import ROUND_EVERY

    most = 0
    async with Checkpointer(any_site.make_location(), keep=2) as cp:
        for s in range(3 * ROUND_EVERY):
            await cp.save(s, b"%016d" % s)
            if s % 16 == 15:
                most = max(most, len(any_site.raw.keys("manifests/")))
    # Two rounds' worth at most: more would mean a round was skipped (or one per
    # commit had not kept up, where the location would grow without bound).
    assert 2 < most <= 2 + 2 * ROUND_EVERY + cp.options.limits.max_pending
    assert [k.rsplit("/", 1)[-1] for k in any_site.raw.keys("manifests/")] == [
        f"{s:020d}.json" for s in (3 * ROUND_EVERY - 2, 3 * ROUND_EVERY - 1)
    ]
    assert any_site.raw.keys("data/") == []


async def _list(site: Site) -> list[Checkpoint]:
    async with Checkpointer(site.make_location()) as cp:
        return await cp.list()


async def _get(site: Site, step: int) -> Checkpoint:
    async with Checkpointer(site.make_location()) as cp:
        return await cp.get(step)


# -- asynccp gc ----------------------------------------------------------------------------


async def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command line, in a worker thread (it runs its own event loop)."""
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return await run(capsys, "gc", *args)


async def test_gc_keep_1_keeps_the_only_checkpoint_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Good step 9, step 13 with one flipped byte: `gc --keep 1` used to delete 9 and keep
    13; now 13 is found not to verify, is not counted, and 9 stays — and restores."""
    site = make_site("local", tmp_path)
    nine, thirteen = await save(site, [9, 13])
    flip(site, data_key(thirteen))
    code, out, err = await gc(capsys, str(site.url), "--keep", "1")
    assert code == 0, err
    assert "deleted 0 checkpoint(s)" in out
    assert "kept 1 checkpoint(s): 9" in out
    assert "do not verify (not counted, not deleted" in out and "): 13" in out
    assert "checkpoint 13" in err and "does not verify" in err
    assert [c.step for c in await _list(site)] == [9, 13]
    code, _, err = await run(capsys, "restore", str(site.url), str(tmp_path / "out"))
    assert code == 0 and "skipped" in err
    assert (tmp_path / "out" / "data").read_bytes() == payload(9)
    assert nine.step == 9


async def test_gc_keep_says_what_it_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site("local", tmp_path)
    await save(site, [1, 2, 3])
    code, out, _ = await gc(capsys, str(site.url), "--keep", "1", "--json")
    assert code == 0
    import json

    doc = json.loads(out)
    assert doc["deleted_steps"] == [1, 2] and doc["kept_steps"] == [3]
    assert doc["verified_steps"] == [3] and doc["not_verifying_steps"] == []
    code, out, _ = await gc(capsys, str(site.url), "--keep", "1")
    assert "deleted 0 checkpoint(s)" in out


async def test_gc_dry_run_verifies_reports_orphans_and_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site("local", tmp_path)
    await save(site, [1, 2, 3])
    orphan = f"data/{7:020d}-deadbeef0000/data"
    site.raw.put(orphan, b"a crashed writer's upload")
    an_hour_ago = time.time() - 3600  # (file times tick coarsely: "now" may equal it)
    os.utime(tmp_path / "store" / orphan, (an_hour_ago, an_hour_ago))
    before = site.raw.keys()
    code, out, _ = await gc(
        capsys, str(site.url), "--keep", "1", "--orphan-grace", "0", "--dry-run"
    )
    assert code == 0
    assert "would delete 2 checkpoint(s): 1, 2" in out
    assert "would collect 1 orphaned payload folder(s)" in out
    assert site.raw.keys() == before
    code, out, _ = await gc(capsys, str(site.url), "--keep", "1", "--orphan-grace", "0")
    assert "deleted 2 checkpoint(s): 1, 2" in out and "collected 1 orphaned" in out
    assert orphan not in site.raw.keys("data/")


async def test_gc_invalid_delete_takes_the_payload_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--invalid delete` deletes an invalid checkpoint's payload with its record, even
    when the record is too broken to name its folder (it used to wait for the orphan
    grace)."""
    site = make_site("local", tmp_path)
    ckpts = await save(site, [1, 2, 3])
    site.raw.put(manifest_key(3), b"garbage{")  # names nothing
    truncated = data_key(ckpts[1])
    site.raw.put(truncated, site.raw.get(truncated)[:10])  # invalid: the size is wrong
    code, out, err = await gc(capsys, str(site.url), "--invalid", "delete")
    assert code == 0, err
    assert "2 invalid checkpoint(s) deleted: 2, 3" in out
    left = site.raw.keys("data/")
    assert left == [data_key(ckpts[0])]
    assert site.raw.keys("manifests/") == [manifest_key(1)]


async def test_gc_quarantine_purge_empties_quarantine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site("local", tmp_path)
    ckpts = await save(site, [1, 2])
    bad_folder = data_key(ckpts[1])
    site.raw.put(bad_folder, site.raw.get(bad_folder)[:10])
    code, out, _ = await gc(capsys, str(site.url), "--invalid", "quarantine")
    assert code == 0 and len(site.raw.keys("quarantine/")) == 1
    assert bad_folder in site.raw.keys("data/")  # kept for inspection
    code, out, _ = await gc(capsys, str(site.url), "--quarantine", "purge", "--dry-run")
    assert "1 quarantined record(s) would be deleted" in out
    assert len(site.raw.keys("quarantine/")) == 1
    code, out, _ = await gc(capsys, str(site.url), "--quarantine", "purge")
    assert code == 0 and "1 quarantined record(s) deleted" in out
    assert site.raw.keys("quarantine/") == []
    assert site.raw.keys("data/") == [data_key(ckpts[0])]
    assert [c.step for c in await _list(site)] == [1]


async def test_gc_needs_something_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await gc(capsys, str(tmp_path))
    assert code == 2 and "--keep" in err and "--quarantine purge" in err


async def test_gc_collects_a_crashed_sharded_writers_temporary_part_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A temporary part record (a sharded writer killed while writing it) is collected by
    the rule that collects the same leftover under manifests/: once stale."""
    site = make_site("local", tmp_path)
    await save(site, [1])
    part_tmp = f"parts/{2:020d}/gen1/.0-of-2.json.0123abcd.asynccp-tmp"
    manifest_tmp = f"manifests/.{2:020d}.json.4567cdef.asynccp-tmp"
    fresh_tmp = f"parts/{3:020d}/gen1/.1-of-2.json.89abcdef.asynccp-tmp"
    for key in (part_tmp, manifest_tmp, fresh_tmp):
        site.raw.put(key, b"{")
    an_hour_ago = time.time() - 3600
    for key in (part_tmp, manifest_tmp):
        os.utime(tmp_path / "store" / key, (an_hour_ago, an_hour_ago))
    code, _, err = await gc(capsys, str(site.url), "--keep", "5", "--orphan-grace", "0")
    assert code == 0, err
    keys = site.raw.keys()
    assert part_tmp not in keys and manifest_tmp not in keys
    assert fresh_tmp in keys  # a write that may still be going on


# -- the campaign --------------------------------------------------------------------------


def damage(site: Site, rng: random.Random, ckpts: list[Checkpoint]) -> str:
    """One random injury to one random committed checkpoint: a bit flip or a truncation
    of its file (a payload object, or the bytes inside a tiny checkpoint's record), or a
    record made garbage."""
    victim = rng.choice(ckpts)
    ckpts.remove(victim)  # (one injury per checkpoint and run: its record is as listed)
    how = rng.choice(["flip", "flip", "truncate", "record"])
    inline = victim.files["data"].inline is not None
    revisions = [(parse_manifest_key(k), k) for k in site.raw.keys("manifests/")]
    record = max((r, k) for r, k in revisions if r is not None and r[0] == victim.step)[1]
    if how == "flip" and inline:  # the bytes inside the record: it fails verification

        def flipped(data: bytes, at: float = rng.random()) -> bytes:
            out = bytearray(data)
            out[int(len(out) * at) % len(out)] ^= 0xFF
            return bytes(out)

        site.raw.edit_inline(record, "data", flipped)
    elif how == "flip":
        flip(site, data_key(victim), rng.random())
    elif how == "truncate" and inline:  # shorter than its size says: the record is invalid
        cut = rng.randrange(victim.size)
        site.raw.edit_inline(record, "data", lambda data: data[:cut])
    elif how == "truncate":
        raw = site.raw.get(data_key(victim))
        site.raw.put(data_key(victim), raw[: rng.randrange(len(raw))])
    else:
        site.raw.put(record, b"{not a record")
    return f"{how} {victim.step}"


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("keep", [1, 2, 3])
async def test_retention_campaign(
    kind: str, keep: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded: runs of a writer with ``keep``, each resuming through ``load_latest`` and
    saving 1-4 steps, with 0-2 random injuries between runs. After every run the newest
    acknowledged checkpoint verifies and is what ``load_latest`` resumes from. Odd steps
    are tiny (inside their records), even steps payload objects."""
    caplog.set_level(logging.ERROR, logger="asynccp")
    rng = random.Random(f"retention-{kind}-{keep}")
    site = make_site(kind, tmp_path)
    injuries = fallbacks = 0
    for run in range(25):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with Checkpointer(site.make_location(), keep=keep) as cp:
                found = await cp.load_latest(read_one)
                start = found[0].step + 1 if found else 0
                handles = [
                    await cp.save(s, mixed(s)) for s in range(start, start + rng.randint(1, 4))
                ]
                acked = [await h for h in handles][-1]
        fallbacks += sum(issubclass(w.category, CorruptCheckpointWarning) for w in caught)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            async with Checkpointer(site.make_location()) as cp:
                await (await cp.get(acked.step)).verify()
                resumed = await cp.load_latest(read_one)
                assert resumed is not None, f"run {run}: nothing to resume from"
                assert resumed[0].step == acked.step and resumed[1] == mixed(acked.step)
                committed = await cp.list()
        for _ in range(min(len(committed), rng.randint(0, 2))):
            damage(site, rng, committed)
            injuries += 1
    assert injuries > 10 and fallbacks > 0  # the campaign did damage, and it was met
    print(
        f"retention campaign {kind} keep={keep}: 25 runs, {injuries} injuries, "
        f"{fallbacks} checkpoints skipped on resume, 0 acknowledged lost"
    )
