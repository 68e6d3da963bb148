"""A fault campaign: seeded random rounds of damage, rotation and lost answers.

Three campaigns, each bounded in rounds (not in time) and replayable from its seed:

* **corruption**: jobs resume with ``load_latest`` and save a few more steps; between
  jobs the newest checkpoint (or the newest two) is damaged in one of many ways, on a
  local directory, an in-memory store and the S3 server. A model of what was committed
  and damaged says what every job must resume from and what the store must hold.
* **retention racing readers**: a writer rotating with ``keep=1``/``2`` while readers
  ``read()``, ``restore()`` and ``load_latest()`` all the while.
* **lost answers**: saves through the fault proxy with answers to manifest PUTs lost
  and connections dropped or refused; every handle's outcome is checked against what
  a direct reader of the bucket sees.

The seed of each run is printed and added to a failing test's error; set
``ASYNCCP_CAMPAIGN_SEED`` to replay it. The regressions the campaign found come
last, each as a plain test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import crc32c
import pytest
from _moto import make_s3_store
from _proxy import FailMode, FaultProxy
from _sites import Site

import asynccp
from asynccp import (
    Checkpoint,
    Checkpointer,
    CheckpointNotFoundError,
    CommitUnknownError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    UploadError,
)
from asynccp._layout import data_dir, parse_manifest_key

if TYPE_CHECKING:
    from obstore.store import RetryConfig

SEED_ENV = "ASYNCCP_CAMPAIGN_SEED"


async def is_complete(ckpt: Checkpoint) -> bool:
    """Whether every payload object of ``ckpt`` exists with its recorded size (a file
    inside its record, a tiny checkpoint's, is there by the record's own validation)."""
    folder = data_dir(ckpt.step, ckpt.writer) + "/"
    objs = await anyio.to_thread.run_sync(ckpt._store.list_objects, folder)
    sizes = {o.key[len(folder) :]: o.size for o in objs}
    return all(
        info.inline is not None or sizes.get(name) == info.size for name, info in ckpt.files.items()
    )


def campaign_seed() -> int:
    """The seed of this run: ``$ASYNCCP_CAMPAIGN_SEED`` if set (a replay), else random."""
    env = os.environ.get(SEED_ENV)
    return int(env) if env else random.SystemRandom().randrange(2**32)


@contextlib.contextmanager
def replayable(seed: int, what: str) -> Iterator[random.Random]:
    """A random generator for ``seed``; a failure inside says how to replay it."""
    print(f"{what}: seed {seed} (replay with {SEED_ENV}={seed})")
    try:
        yield random.Random(seed)
    except BaseException as e:
        e.add_note(f"fault campaign {what}: seed {seed}; replay with {SEED_ENV}={seed}")
        raise


def warned_steps(caught: list[warnings.WarningMessage]) -> list[int]:
    """The steps named by the CorruptCheckpointWarnings in ``caught``."""
    out = []
    for w in caught:
        if issubclass(w.category, CorruptCheckpointWarning):
            m = re.search(r"checkpoint (\d+) in ", str(w.message))
            assert m is not None, w.message
            out.append(int(m.group(1)))
    return out


@contextlib.contextmanager
def skipping(steps: set[int]) -> Iterator[None]:
    """Expect one CorruptCheckpointWarning for each of ``steps`` and none for another; no
    warning at all when there is none (the suite's filter turns one into an error)."""
    if not steps:
        yield
        return
    with pytest.warns(CorruptCheckpointWarning) as caught:
        yield
    assert sorted(warned_steps(caught.list)) == sorted(steps), [str(w.message) for w in caught]


# -- 1. corruption campaign ---------------------------------------------------------------

#: Damage to the commit record: it no longer decodes or validates (not listed).
MANIFEST_DAMAGE = ("garbage", "truncated_manifest", "other_step", "surrogate_name")
#: Damage that leaves the record decodable but the checkpoint invalid (listed, incomplete).
INCOMPLETE_DAMAGE = (
    "names_missing_file",
    "object_deleted",
    "object_truncated",
    "folder_in_place",
    "folder_deleted",
)
#: Damage a metadata check cannot see: valid, listed, fails verification when read.
FLIPPED = "byte_flipped"
#: Not damage at all (a local directory only): a stray file whose name is not UTF-8.
STRAY = "stray_non_utf8"
FILES = ("state.json", "blob.bin")


@dataclass
class Entry:
    """What the test knows about one committed step."""

    state: dict[str, Any]
    blob: bytes
    #: "good" (verifies), "unlisted" (record invalid), "incomplete" (listed, invalid),
    #: "flipped" (listed, valid, does not verify).
    status: str = "good"
    damage: str | None = None
    #: The record's bytes once damaged: what saving the step again moves to quarantine.
    record: bytes | None = None
    #: Flipped, and found not to verify by the last job's ``load_latest``: that job's
    #: retention does not count it toward ``keep`` and keeps it (DESIGN.md §8).
    known_bad: bool = False

    @property
    def valid(self) -> bool:  # what retention counts
        return self.status in ("good", "flipped")

    @property
    def listed(self) -> bool:
        return self.status != "unlisted"


class Model:
    """The committed steps as the test saved and damaged them."""

    def __init__(self) -> None:
        self.steps: dict[int, Entry] = {}
        self.quarantined: list[bytes] = []  # records replaced (moved aside), in order
        self.version = 0  # every save's state differs, so a re-saved step is told apart

    def newest_good(self) -> int | None:
        good = [s for s, e in self.steps.items() if e.status == "good"]
        return max(good) if good else None

    def newest_valid(self) -> int | None:
        valid = [s for s, e in self.steps.items() if e.valid]
        return max(valid) if valid else None

    def invalid_above(self, step: int | None) -> set[int]:
        """The invalid steps above ``step``: those latest() skips, warning, to find it."""
        return {s for s, e in self.steps.items() if not e.valid and (step is None or s > step)}

    def unlisted(self) -> set[int]:
        """The steps whose record does not validate: list() skips them, warning."""
        return {s for s, e in self.steps.items() if not e.listed}

    def commit(self, step: int, entry: Entry, keep: int | None) -> None:
        old = self.steps.get(step)
        if old is not None:
            assert old.status != "good", f"step {step} verifies: it cannot be saved again"
            assert old.record is not None
            self.quarantined.append(old.record)
        self.steps[step] = entry
        if keep is not None:  # retention after each commit: valid ones not known bad
            valid = sorted(s for s, e in self.steps.items() if e.valid and not e.known_bad)
            for s in valid[:-keep]:
                del self.steps[s]


def make_entry(rng: random.Random, model: Model, step: int) -> Entry:
    model.version += 1
    blob = rng.randbytes(rng.randint(64, 8192))  # (tiny ones inside their records, or not)
    state = {"step": step, "version": model.version, "blob_crc": crc32c.crc32c(blob)}
    return Entry(state, blob)


def encode(entry: Entry) -> dict[str, bytes]:
    return {"state.json": json.dumps(entry.state).encode(), "blob.bin": entry.blob}


async def load_state(ckpt: Checkpoint) -> tuple[dict[str, Any], bytes]:
    """The job's loader: parse the state, read the blob it describes (both verified)."""
    state = json.loads(await ckpt.read("state.json"))
    blob = await ckpt.read("blob.bin")
    assert crc32c.crc32c(blob) == state["blob_crc"], "a verified read returned other bytes"
    return state, blob


def record_key(site: Site, step: int) -> str:
    """The key of the step's commit record (its highest revision)."""
    revs = []
    for key in site.raw.keys("manifests/"):
        parsed = parse_manifest_key(key)
        if parsed is not None and parsed[0] == step:
            revs.append((parsed[1], key))
    assert revs, f"step {step} has no record"
    return max(revs)[1]


def damage(site: Site, model: Model, step: int, kind: str, rng: random.Random, n: int) -> None:
    """Apply ``kind`` of damage to committed ``step`` (through the raw store)."""
    entry = model.steps[step]
    key = record_key(site, step)
    raw = site.raw.get(key)
    doc = json.loads(raw)
    folder = doc["data"]
    name = rng.choice(FILES)
    target = f"{folder}/{name}"
    status = "incomplete"
    record_kinds = (*MANIFEST_DAMAGE, "names_missing_file")
    if "inline" in doc["files"][name] and kind not in record_kinds:
        # a tiny checkpoint: its files are inside its record
        status = damage_inline(site, key, doc, name, kind, rng, n)
    elif kind == "garbage":
        site.raw.put(key, b"garbage{" + rng.randbytes(rng.randint(0, 40)))
        status = "unlisted"
    elif kind == "truncated_manifest":
        site.raw.put(key, raw[: rng.randint(0, len(raw) - 1)])
        status = "unlisted"
    elif kind == "other_step":
        # (a good step's record is its own: a damaged one may hold this step's record)
        others = [s for s, e in model.steps.items() if s != step and e.status == "good"]
        if others:
            site.raw.put(key, site.raw.get(record_key(site, rng.choice(others))))
        else:
            site.raw.put(key, json.dumps({**doc, "step": step + 1}).encode())
        status = "unlisted"
    elif kind == "surrogate_name":
        files = doc["files"]
        files["SURROGATE-PLACEHOLDER"] = files.pop(rng.choice(FILES))
        text = json.dumps(doc).replace("SURROGATE-PLACEHOLDER", "\\ud800")
        site.raw.put(key, text.encode())
        status = "unlisted"
    elif kind == "names_missing_file":
        doc["files"]["missing.bin"] = {"size": 3, "crc32c": "00000000"}
        site.raw.put(key, json.dumps(doc).encode())
    elif kind == "object_deleted":
        site.raw.delete(target)
    elif kind == "object_truncated":
        data = site.raw.get(target)
        site.raw.put(target, data[: rng.randint(0, len(data) - 1)])
    elif kind == FLIPPED:
        flipped = bytearray(site.raw.get(target))
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        site.raw.put(target, bytes(flipped))
        status = "flipped"
    elif kind == "folder_in_place":
        site.raw.delete(target)
        site.raw.put(f"{target}/shard", b"in the way")
    elif kind == "folder_deleted":
        if site.raw.root is not None:
            shutil.rmtree(site.raw.root / folder)
        else:
            for k in site.raw.keys(folder + "/"):
                site.raw.delete(k)
    elif kind == STRAY:
        assert site.raw.root is not None
        path = os.path.join(os.fsencode(site.raw.root / folder), b"stray-\xff\xfe-%d" % n)
        with open(path, "wb") as f:
            f.write(b"stray")
        status = "good"
    else:
        raise AssertionError(kind)
    entry.status = status
    entry.damage = kind
    entry.record = site.raw.get(key)


def damage_inline(
    site: Site, key: str, doc: dict[str, Any], name: str, kind: str, rng: random.Random, n: int
) -> str:
    """Damage ``kind`` done to a tiny checkpoint, whose files are inside its record
    ``doc`` (stored at ``key``); return the status it leaves. The record's own kinds
    as for any record; a file "deleted" (or its folder) leaves the record naming a
    payload object that is not there (incomplete); a file truncated no longer matches
    its size (the record is invalid); a flipped byte is found by a read."""
    files = doc["files"]
    if kind in ("object_deleted", "folder_in_place"):
        del files[name]["inline"]
        status = "incomplete"
    elif kind == "folder_deleted":
        for info in files.values():
            del info["inline"]
        status = "incomplete"
    elif kind == "object_truncated":
        body = base64.b64decode(files[name]["inline"])
        files[name]["inline"] = base64.b64encode(body[: rng.randint(0, len(body) - 1)]).decode()
        status = "unlisted"
    elif kind == FLIPPED:
        body = bytearray(base64.b64decode(files[name]["inline"]))
        body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        files[name]["inline"] = base64.b64encode(bytes(body)).decode()
        status = "flipped"
    elif kind == STRAY:  # a stray file where the checkpoint has no folder: not damage
        assert site.raw.root is not None
        where = os.fsencode(site.raw.root / doc["data"])
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, b"stray-\xff\xfe-%d" % n), "wb") as f:
            f.write(b"stray")
        return "good"
    else:
        raise AssertionError(kind)
    site.raw.put(key, json.dumps(doc).encode())
    return status


async def check_store(site: Site, cp: Checkpointer, model: Model, keep: int | None) -> None:
    """The store holds exactly what the model says: listed steps, verifying ones with
    their bytes, failing ones failing, quarantine holding the replaced records.

    ``cp`` is a checker that stays open through the campaign (it only lists and reads).
    """
    with skipping(model.unlisted()):
        listed = await cp.list()
    assert [c.step for c in listed] == sorted(s for s, e in model.steps.items() if e.listed)
    valid = 0
    for ckpt in listed:
        entry = model.steps[ckpt.step]
        if entry.status == "good":
            await ckpt.verify()
            state, blob = await load_state(ckpt)
            assert (state, blob) == (entry.state, entry.blob), f"step {ckpt.step}"
        else:
            with pytest.raises(CorruptCheckpointError):
                await ckpt.verify()
        complete = await is_complete(ckpt)
        assert complete == entry.valid, (ckpt.step, entry)
        valid += complete and not entry.known_bad
    if keep is not None:  # (those known bad are kept beside them)
        assert valid <= keep
    newest = model.newest_good()
    with skipping(model.invalid_above(model.newest_valid())):
        latest = await cp.latest()
    assert (latest.step if latest else None) == model.newest_valid()
    if newest is not None:  # the newest good one is there (never deleted)
        assert newest in [c.step for c in listed]
    quarantined = sorted(site.raw.get(k) for k in site.raw.keys("quarantine/"))
    assert quarantined == sorted(model.quarantined)


async def corruption_job(
    site: Site, model: Model, rng: random.Random, keep: int | None, saves: int
) -> None:
    """Resume with load_latest (checking it found what the model says), save more steps."""
    expected = model.newest_good()
    for step, entry in model.steps.items():  # what load_latest below reads and skips
        entry.known_bad = entry.status == "flipped" and (expected is None or step > expected)
    # opening finds the floor (metadata only), skipping the invalid steps above it
    with skipping(model.invalid_above(model.newest_valid())):
        async with Checkpointer(site.make_location(), keep=keep) as cp:
            # every damaged step above the newest good one is skipped, with a warning
            # naming it; no other step is reported corrupt
            with skipping({s for s in model.steps if expected is None or s > expected}):
                found = await cp.load_latest(load_state)
            if expected is None:
                assert found is None
                start = 0
            else:
                assert found is not None, f"nothing loaded; step {expected} verifies"
                ckpt, (state, blob) = found
                assert ckpt.step == expected
                assert (state, blob) == (model.steps[expected].state, model.steps[expected].blob)
                start = expected + 1
            entries = {s: make_entry(rng, model, s) for s in range(start, start + saves)}
            handles = [await cp.save(s, encode(e)) for s, e in entries.items()]
            for h in handles:
                committed = await h
                assert committed.step == h.step
                model.commit(h.step, entries[h.step], keep)
            # the damaged steps not saved again are still above (those that failed
            # verification when loaded are known bad: skipped without a word)
            with skipping(model.invalid_above(start + saves - 1)):
                latest = await cp.latest()
            assert latest is not None and latest.step == start + saves - 1


@pytest.mark.slow
async def test_corruption_campaign(any_site: Site) -> None:
    """Rounds of: a job resumes and saves; the newest one or two checkpoints are damaged.

    The job never fails, resumes from the newest undamaged checkpoint, replaces the
    damaged steps it saves again (their old records go to quarantine); the store holds
    exactly the model's steps, undamaged ones verify, and with ``keep`` the valid ones
    never exceed it.
    """
    kinds = [*MANIFEST_DAMAGE, *INCOMPLETE_DAMAGE, FLIPPED]
    if any_site.kind == "local":
        kinds.append(STRAY)
    rounds = 12 if any_site.kind == "s3" else 16
    with replayable(campaign_seed(), f"corruption campaign on {any_site.kind}") as rng:
        model = Model()
        seen: set[str] = set()
        async with Checkpointer(any_site.make_location()) as checker:
            for n in range(rounds):
                keep = rng.choice([3, None])
                try:
                    await corruption_job(any_site, model, rng, keep, saves=rng.randint(1, 3))
                    await check_store(any_site, checker, model, keep)
                    newest = sorted(model.steps)[-rng.choice([1, 1, 2]) :]
                    for step in newest:
                        if model.steps[step].status == "good":
                            kind = rng.choice(kinds)
                            damage(any_site, model, step, kind, rng, n)
                            seen.add(kind)
                except BaseException as e:
                    state = {s: (x.status, x.damage) for s, x in sorted(model.steps.items())}
                    e.add_note(f"round {n} (keep={keep}); the model then: {state}")
                    raise
            await corruption_job(any_site, model, rng, 3, saves=2)  # the last damage, resumed
            await check_store(any_site, checker, model, 3)
        assert len(seen) >= 4, seen  # the rounds did vary


# -- 2. retention racing readers ------------------------------------------------------------


def content(seed: int, step: int) -> bytes:
    """The bytes saved at ``step``: a header naming the step, then seeded noise."""
    noise = random.Random(seed * 1_000_003 + step)
    return f"step {step:08d}|".encode() + noise.randbytes(noise.randint(16, 8192))


def step_of(data: bytes) -> int:
    m = re.match(rb"step (\d{8})\|", data)
    assert m is not None, data[:40]
    return int(m.group(1))


class Progress:
    """A count of reads the writer can wait on (so readers race the whole run)."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = anyio.Condition()

    async def tick(self) -> None:
        async with self._cond:
            self.count += 1
            self._cond.notify_all()

    async def at_least(self, n: int) -> None:
        async with self._cond:
            while self.count < n:
                await self._cond.wait()


async def test_retention_racing_readers(site: Site, tmp_path: Path) -> None:
    """A writer rotating with ``keep`` 1 or 2 while readers read(), restore() and
    load_latest(): once the first commit landed, no reader sees None or a corruption
    warning, every read is byte-exact for its step, and no reader goes back in time."""
    steps = 40 if site.kind == "local" else 20
    with (
        replayable(campaign_seed(), f"readers racing rotation on {site.kind}") as rng,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        seed = rng.randrange(2**32)
        keep = rng.choice([1, 2])
        progress = Progress()
        done = anyio.Event()
        seen: dict[str, list[int]] = {}

        async def reader(kind: str, index: int) -> None:
            steps_read = seen.setdefault(f"{kind}{index}", [])
            async with Checkpointer(site.make_location()) as cp:
                while not done.is_set():
                    if kind == "read":
                        data = await cp.read()
                        assert data is not None
                        step = step_of(data)
                    elif kind == "restore":
                        dest = tmp_path / f"{kind}{index}-{len(steps_read)}"
                        out = await cp.restore(dest)
                        assert out is not None
                        data = await anyio.Path(out / "data").read_bytes()
                        step = step_of(data)
                    else:
                        found = await cp.load_latest(lambda c: c.read())
                        assert found is not None
                        step, data = found[0].step, found[1]
                    assert data == content(seed, step), f"{kind} read other bytes for {step}"
                    assert not steps_read or step >= steps_read[-1], (kind, steps_read, step)
                    steps_read.append(step)
                    await progress.tick()

        async with Checkpointer(
            site.make_location(), limits=asynccp.Limits(max_pending=2), keep=keep
        ) as writer:
            await (await writer.save(0, content(seed, 0)))
            async with anyio.create_task_group() as tg:
                for i, kind in enumerate(["read", "restore", "load_latest"]):
                    tg.start_soon(reader, kind, i)
                for step in range(1, steps):
                    await writer.save(step, content(seed, step))
                    if rng.random() < 0.3:  # let the readers catch up now and then
                        await progress.at_least(progress.count + rng.randint(1, 4))
                await writer.flush()
                await progress.at_least(progress.count + 3)  # reads of the final state too
                done.set()
        assert all(seen.values()), seen
        assert max(max(v) for v in seen.values()) == steps - 1
    # no corruption warning (and no other warning either)
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    async with Checkpointer(site.make_location()) as cp:
        assert [c.step for c in await cp.list()] == list(range(steps - keep, steps))


# -- 3. lost answers ------------------------------------------------------------------------

FAIL_FAST: RetryConfig = {
    "max_retries": 1,
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=20),
    },
    "retry_timeout": timedelta(seconds=5),
}
MANIFEST_PUT = rb"^PUT \S*/manifests/"
MANIFEST_ANY = rb"^(PUT|GET) \S*manifests"


def inject(proxy: FaultProxy, rng: random.Random) -> str:
    """Arm a random mix of faults for the next save; return what was armed."""
    armed = []
    choice = rng.random()
    if choice < 0.35:
        n = rng.randint(1, 6)
        proxy.lose_answers(MANIFEST_PUT, n)
        armed.append(f"lose {n} manifest PUT answers")
    elif choice < 0.55:
        n = rng.randint(2, 10)
        proxy.lose_answers(MANIFEST_ANY, n)
        armed.append(f"lose {n} manifest answers")
    if rng.random() < 0.4:
        n = rng.randint(1, 6)
        mode: FailMode = "drop" if rng.random() < 0.5 else "503"
        proxy.fail_next(n, mode)
        armed.append(f"fail {n} connections ({mode})")
    return ", ".join(armed) or "no faults"


def disarm(proxy: FaultProxy) -> None:
    proxy.lose_answers(MANIFEST_ANY, 0)
    proxy.set_mode("pass")


@pytest.mark.slow
async def test_lost_answers_campaign(
    fault_proxy: FaultProxy, s3_bucket: str, moto_server: str
) -> None:
    """Saves through the proxy with lost answers, dropped and refused connections: a
    resolved handle means the step is visible and verifies; plain UploadError means it
    is not visible; CommitUnknownError means it may be, but never half; the job's exit
    raises the failure; the next job resumes from the newest visible step."""
    total = 32
    outcomes: dict[str, int] = {}
    visible: dict[int, bytes] = {}  # step -> bytes, as a reader on a working path sees
    with replayable(campaign_seed(), "lost answers on S3") as rng:
        saves = 0
        async with Checkpointer(make_s3_store(moto_server, s3_bucket)) as reader:

            async def seen_at(step: int) -> bytes | None:
                """The verified bytes at ``step`` (None: not committed)."""
                try:
                    ckpt = await reader.get(step)
                except CheckpointNotFoundError:
                    return None
                return await ckpt.read()  # never half-visible: it verifies

            while saves < total:
                store = make_s3_store(fault_proxy.url, s3_bucket, retry_config=FAIL_FAST)
                failure: UploadError | None = None
                try:
                    async with Checkpointer(store, store=asynccp.StoreOptions(io_attempts=2)) as cp:
                        found = await cp.load_latest(lambda c: c.read())
                        newest = max(visible, default=None)
                        assert (found[0].step if found else None) == newest
                        assert found is None or found[1] == visible[found[0].step]
                        step = 0 if newest is None else newest + 1
                        while saves < total and failure is None:
                            saves += 1
                            data = f"step {step} save {saves}|".encode() * rng.randint(1, 50)
                            armed = inject(fault_proxy, rng)
                            lost = fault_proxy.lost_answers
                            try:
                                ckpt = await (await cp.save(step, data))
                            except UploadError as e:
                                failure = e
                            finally:
                                disarm(fault_proxy)
                            seen = await seen_at(step)
                            if failure is None:
                                assert ckpt.step == step
                                assert seen == data, f"resolved, but not visible ({armed})"
                                outcome = "committed"
                                if fault_proxy.lost_answers > lost:
                                    outcome += " through a lost answer"
                            elif isinstance(failure, CommitUnknownError):
                                assert seen in (None, data), armed
                                outcome = "unknown: " + ("committed" if seen else "not committed")
                            else:
                                assert seen is None, f"UploadError, yet committed ({armed})"
                                outcome = "not committed"
                            outcomes[outcome] = outcomes.get(outcome, 0) + 1
                            if seen is not None:
                                visible[step] = data
                                step += 1
                except UploadError as e:
                    assert e is failure, "the job's exit raised something else"
                else:
                    assert failure is None, "the job's exit did not raise its failure"
            listed = await reader.list()
            assert [c.step for c in listed] == sorted(visible)
            for c in listed:
                assert await c.read() == visible[c.step]
        print("outcomes:", outcomes, "answers lost:", fault_proxy.lost_answers)
        assert fault_proxy.lost_answers > 0


# -- regressions found by the campaign ----------------------------------------------------


def record_keys(site: Site, step: int) -> list[str]:
    """The manifest objects of ``step``, by revision (the step's record last)."""
    keys = [k for k in site.raw.keys("manifests/") if k.startswith(f"manifests/{step:020d}")]
    return sorted(keys, key=lambda k: int(k.split(".")[1]) if k.count(".") == 2 else 0)


async def resume_and_save(site: Site, step: int, data: bytes) -> Checkpoint:
    """A job: resume past ``step``, whose record is broken (skipped, with a warning at
    open and when loading), then save ``step``."""
    broken = rf"checkpoint {step}\b.*not JSON"
    with pytest.warns(CorruptCheckpointWarning, match=broken):  # opening: the floor
        async with Checkpointer(site.make_location()) as cp:
            with pytest.warns(CorruptCheckpointWarning, match=broken):
                found = await cp.load_latest(lambda c: c.read())
            assert found is not None and found[0].step == step - 1
            return await (await cp.save(step, data))


async def test_a_step_replaced_twice_commits_again(any_site: Site) -> None:
    """A step whose record was replaced once (revision 1; revision 0 a tombstone, its
    content in quarantine) and then found broken again: saving it again must commit,
    above the broken record.

    Found by the corruption campaign: when replaced records were deleted, the new record
    was created at the free revision 0, *below* the broken revision 1, and the handle
    resolved for a commit no reader saw (they all resumed from the step before).
    """
    async with Checkpointer(any_site.make_location()) as cp:
        for step in range(3):
            await (await cp.save(step, b"first %d" % step))
    for again in (b"second", b"third"):
        key = record_keys(any_site, 2)[-1]  # the step's record: its highest revision
        any_site.raw.put(key, b"garbage{")
        await resume_and_save(any_site, 2, again)
        async with Checkpointer(any_site.make_location()) as reader:
            latest = await reader.latest()
            assert latest is not None and latest.step == 2
            assert await latest.read() == again
    keys = record_keys(any_site, 2)
    assert keys[-1] == "manifests/00000000000000000002.2.json"
    for stone in keys[:-1]:  # the replaced revisions stay, as tombstones: never reused
        assert json.loads(any_site.raw.get(stone))["tombstone"] is True
    quarantined = any_site.raw.keys("quarantine/")
    assert [any_site.raw.get(k) for k in quarantined] == [b"garbage{", b"garbage{"]


async def test_a_stale_writer_cannot_commit_below_a_replaced_record(any_site: Site) -> None:
    """Writer A resumed before writer B replaced a broken step; A's save of that step
    finds revision 0 taken (a tombstone) and B's checkpoint the step's record: A gets
    StepAlreadyCommittedError, as with any step another writer committed, and leaves
    nothing behind. (When replaced records were deleted, A's handle resolved for a
    record at revision 0 that nobody reads.)"""
    async with Checkpointer(any_site.make_location()) as cp:
        for step in range(3):
            await (await cp.save(step, b"first %d" % step))
    any_site.raw.put("manifests/00000000000000000002.json", b"garbage{")
    broken = r"checkpoint 2\b.*not JSON"
    with pytest.warns(CorruptCheckpointWarning, match=broken):  # opening: the floor
        async with Checkpointer(any_site.make_location()) as a:
            with pytest.warns(CorruptCheckpointWarning, match=broken):
                found = await a.load_latest(lambda c: c.read())
            assert found is not None and found[0].step == 1
            await resume_and_save(any_site, 2, b"b's")  # writer B
            handle = await a.save(2, b"a's")
            with pytest.raises(asynccp.StepAlreadyCommittedError):
                await handle
            with pytest.raises(asynccp.StepAlreadyCommittedError):
                await a.flush()
    assert record_keys(any_site, 2)[-1] == "manifests/00000000000000000002.1.json"
    async with Checkpointer(any_site.make_location()) as reader:
        assert await (await reader.get(2)).read() == b"b's"
