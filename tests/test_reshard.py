"""Load anywhere: a step saved by N processes read back by M, slices and keys fetched
alone, loads into existing tensors in place (``asynccp.Shard``, ``read_state(keys=,
slices=)``, ``load_into``; ``docs/loading.md``).

Every byte a reader fetches is counted through the store seam (:class:`CountingStore`,
a ``Store`` that forwards to the real one), and on S3 also at the wire (the fault
proxy's count of the server's answers): a reader must fetch at most 1.1 times its
share — the bytes of what it asked for. Comparisons are bit-exact; corruption is a
byte flipped in the stored object.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _proxy import FaultProxy
from _sites import Site, make_site

import asynccp
from asynccp import Checkpointer, CorruptCheckpointError, Shard, State, StoreOptions
from asynccp import _catalog as catalog
from asynccp._layout import data_dir
from asynccp._store import ObjectInfo, RangedReads, Source, Store, resolve

torch: Any
try:
    import torch
except ImportError:  # pragma: no cover - the test environment has torch
    torch = None

WORLDS = (1, 2, 3, 4, 8)
#: A tensor split along dimension 0 (rows of 64 bytes) and one split along dimension 1
#: (rows of 1 MiB): 4 MiB each, float32.
ROWS, COLS = (65536, 16), (4, 262144)


class CountingStore:
    """A store that forwards every call to ``inner`` and counts the bytes read."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.description = f"counting {inner.description}"
        self.fetched = 0
        self.requests = 0

    def open(self) -> None:
        self.inner.open()

    def put(self, key: str, source: Source, *, move: bool = False) -> None:
        self.inner.put(key, source, move=move)

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(key, data)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self.fetched += len(data)
        self.requests += 1
        return data

    def get_buffer(self, key: str) -> Any:
        data = self.inner.get_buffer(key)
        self.fetched += len(memoryview(data))
        self.requests += 1
        return data

    def chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        self.requests += 1
        for chunk in self.inner.chunks(key, chunk_size):
            self.fetched += len(chunk)
            yield chunk

    def read_ranges(
        self, key: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None:
        assert isinstance(self.inner, RangedReads)
        self.inner.read_ranges(key, ranges, out)
        self.fetched += sum(end - start for start, end in ranges)
        self.requests += len(ranges)

    def list_objects(self, folder: str) -> list[ObjectInfo]:
        return self.inner.list_objects(folder)

    def delete(self, keys: Sequence[str]) -> None:
        self.inner.delete(keys)


def global_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    return {
        "rows": rng.standard_normal(ROWS).astype(np.float32),
        "cols": rng.standard_normal(COLS).astype(np.float32),
        "bias": rng.standard_normal(5).astype(np.float64),  # replicated: every part holds it
    }


def bounds(length: int, n: int, r: int) -> tuple[int, int]:
    """Part ``r`` of ``n`` of ``length`` elements (uneven when ``n`` does not divide)."""
    return length * r // n, length * (r + 1) // n


def part_state(full: dict[str, np.ndarray], n: int, r: int) -> dict[str, Any]:
    """What process ``r`` of ``n`` saves: its rows of one tensor, its columns of the other."""
    a, b = bounds(ROWS[0], n, r)
    c, d = bounds(COLS[1], n, r)
    return {
        "rows": Shard(full["rows"][a:b].copy(), offset=(a, 0), shape=ROWS),
        "cols": Shard(np.ascontiguousarray(full["cols"][:, c:d]), offset=(0, c), shape=COLS),
        "bias": full["bias"],
        "epoch": 5,
    }


def location(site: Site, n: int) -> tuple[Any, StoreOptions | None]:
    """Where the step of ``n`` writers goes at ``site`` (one per ``n``)."""
    loc = site.make_location()
    if isinstance(loc, Path):
        return loc / f"n{n}", None
    return loc, StoreOptions(prefix=f"n{n}")


async def save_world(site: Site, full: dict[str, np.ndarray], n: int) -> None:
    """``n`` writers (as ``n`` processes would) save step 0, each its part."""

    async def writer(r: int) -> None:
        where, store = location(site, n)
        sharding = asynccp.Sharding(shard=r, shards=n, generation=f"n{n}")
        async with Checkpointer(where, store=store, sharding=sharding) as cp:
            await (await cp.save(0, State(part_state(full, n, r))))

    async with anyio.create_task_group() as tg:
        for r in range(n):
            tg.start_soon(writer, r)


def counting(site: Site, n: int) -> CountingStore:
    where, store = location(site, n)
    return CountingStore(resolve(where, store))


async def load_share(
    store: CountingStore, full: dict[str, np.ndarray], m: int, k: int
) -> tuple[int, int]:
    """Reader ``k`` of ``m`` loads its share (rows of one tensor, columns of the other)
    into fresh arrays; returns (bytes fetched, bytes of its share)."""
    a, b = bounds(ROWS[0], m, k)
    c, d = bounds(COLS[1], m, k)
    target = {
        "rows": Shard(np.full((b - a, ROWS[1]), np.nan, np.float32), offset=(a, 0), shape=ROWS),
        "cols": Shard(np.full((COLS[0], d - c), np.nan, np.float32), offset=(0, c), shape=COLS),
        "bias": np.zeros(5),
        "epoch": 0,
    }
    ckpt = await catalog.latest(store)
    assert ckpt is not None
    before = store.fetched
    loaded = await ckpt.load_into(target)
    assert sorted(loaded) == ["bias", "cols", "epoch", "rows"]
    np.testing.assert_array_equal(target["rows"].array, full["rows"][a:b], strict=True)
    np.testing.assert_array_equal(target["cols"].array, full["cols"][:, c:d], strict=True)
    np.testing.assert_array_equal(target["bias"], full["bias"], strict=True)
    assert target["epoch"] == 5
    share = sum(v.array.nbytes if isinstance(v, Shard) else 0 for v in target.values())
    return store.fetched - before, share + full["bias"].nbytes


@pytest.mark.parametrize("n", WORLDS)
async def test_n_to_m_bit_exact_each_reader_fetching_its_share(site: Site, n: int) -> None:
    """Saved by n processes, each tensor as its block (split along dimension 0 for one,
    dimension 1 for the other), loaded by m readers for every m: each reader gets its
    region bit for bit and fetches at most 1.1 times its share."""
    full = global_state()
    await save_world(site, full, n)
    store = counting(site, n)
    worst = 0.0
    for m in WORLDS:
        for k in range(m):
            fetched, share = await load_share(store, full, m, k)
            ratio = fetched / share
            worst = max(worst, ratio)
            assert ratio <= 1.1, f"{n} -> {m}: reader {k} fetched {fetched} for {share}"
    assert worst >= 1.0


async def test_the_wire_carries_no_more_than_the_store_seam_counts(
    moto_server: str, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """On S3 the count at the store seam is what goes over the wire: obstore fetches no
    gaps between the ranges (coalesce=0). 4 writers, 3 readers through a proxy that
    counts the bytes of the server's answers."""
    full = global_state()
    await save_world(make_site("s3", tmp_path, moto_server, s3_bucket), full, 4)
    via_proxy = make_site("s3", tmp_path, fault_proxy.url, s3_bucket)
    for k in range(3):
        store = counting(via_proxy, 4)
        fault_proxy.reset_counts()
        fetched, share = await load_share(store, full, 3, k)
        # the manifest listing and reads before load_into count too: still within 1.1
        assert fault_proxy.answered_bytes <= 1.1 * share, (k, fault_proxy.answered_bytes, share)
        assert fetched <= fault_proxy.answered_bytes


# -- keys, slices and corruption -------------------------------------------------------


def tensor_span(raw: bytes, name: str) -> tuple[int, int]:
    """Where tensor ``name``'s data is in a safetensors file (read past asynccp)."""
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


async def saved_one(site: Site) -> tuple[asynccp.Checkpoint, dict[str, Any], str]:
    rng = np.random.default_rng(5)
    state = {
        "model": {
            "a": rng.standard_normal((512, 256)).astype(np.float32),  # 512 KiB
            "b": rng.standard_normal((256, 1024)).astype(np.float32),  # 1 MiB
        },
        "step": 9,
    }
    async with Checkpointer(site.make_location()) as cp:
        ckpt = await (await cp.save(0, State(state)))
    key = f"{data_dir(ckpt.step, ckpt.writer)}/state.safetensors"
    return ckpt, state, key


async def test_keys_and_slices_fetch_only_what_they_ask_and_check_it(site: Site) -> None:
    _, state, key = await saved_one(site)
    store = CountingStore(resolve(site.make_location()))
    found = await catalog.latest(store)
    assert found is not None
    json_size = found.files["state.json"].size

    got = await found.read_state(keys=["model/a"])
    assert list(got) == ["model"] and list(got["model"]) == ["a"]
    np.testing.assert_array_equal(got["model"]["a"], state["model"]["a"], strict=True)
    a_bytes = state["model"]["a"].nbytes
    assert store.fetched <= json_size + 4096 + a_bytes  # the JSON, the header, "a"

    store.fetched = 0
    rows = (slice(100, 164), slice(None))
    got = await found.read_state(keys=["model/b"], slices={"model/b": rows}, framework="torch")
    assert isinstance(got["model"]["b"], torch.Tensor)
    np.testing.assert_array_equal(got["model"]["b"].numpy(), state["model"]["b"][rows])
    assert store.fetched <= json_size + 4096 + 64 * 1024 * 4 + 2 * 4096

    store.fetched = 0
    cols = (slice(None), slice(300, 700))  # 400 of 1024 columns: a run per row
    got = await found.read_state(slices={"model/b": cols}, keys=["model/b"])
    np.testing.assert_array_equal(got["model"]["b"], state["model"]["b"][cols], strict=True)
    assert store.fetched <= json_size + 4096 + 256 * (400 * 4 + 2 * 4096)

    # A byte flipped in "a": a read of "a" (whole, or a slice holding the byte) fails;
    # a read of "b" alone, or of a slice of "a" away from it, is fine (not fetched).
    raw = bytearray(site.raw.get(key))
    begin, _ = tensor_span(bytes(raw), "model/a")
    row = 300
    raw[begin + row * 256 * 4 + 17] ^= 0x40
    site.raw.put(key, bytes(raw))
    for read in (
        found.read_state(keys=["model/a"]),
        found.read_state(keys=["model"], slices={"model/a": (slice(row, row + 1),)}),
        found.load_into({"model": {"a": np.zeros((512, 256), np.float32)}}, strict=False),
    ):
        with pytest.raises(CorruptCheckpointError, match=r"model/a.*fails its checksum"):
            await read
    got = await found.read_state(keys=["model/b", "step"])
    assert got["step"] == 9
    np.testing.assert_array_equal(got["model"]["b"], state["model"]["b"], strict=True)
    far = (slice(0, 200),)  # 200 rows of 1 KiB: the flipped row's chunk is not among them
    got = await found.read_state(keys=["model/a"], slices={"model/a": far})
    np.testing.assert_array_equal(got["model"]["a"], state["model"]["a"][far], strict=True)

    # A byte flipped in the header: every partial read refuses the file.
    raw[12] ^= 0x01
    site.raw.put(key, bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=r"header .* fails its checksum"):
        await found.read_state(keys=["model/b"])


async def test_keys_name_subtrees_and_missing_keys_are_named(tmp_path: Path) -> None:
    state = {
        "model": {"w": np.arange(6, dtype=np.int64).reshape(2, 3), "n": 2},
        "optim": {"state": {0: {"m": np.ones(3)}}, "groups": [{"lr": 0.1}, {"lr": 0.2}]},
        "pairs": [np.zeros(2), np.ones(2)],
    }
    async with Checkpointer(tmp_path) as cp:
        ckpt = await (await cp.save(0, State(state)))
    got = await ckpt.read_state(keys=["optim/state/0", "pairs/1", "optim/groups/1/lr"])
    assert list(got) == ["optim", "pairs"]
    np.testing.assert_array_equal(got["optim"]["state"][0]["m"], np.ones(3))
    assert got["optim"]["groups"] == [None, {"lr": 0.2}]  # positions kept
    assert got["pairs"][0] is None and list(got["pairs"][1]) == [1.0, 1.0]
    with pytest.raises(asynccp.CheckpointNotFoundError, match="model/x"):
        await ckpt.read_state(keys=["model/x"])
    with pytest.raises(asynccp.CheckpointNotFoundError, match="slices names 'model/n'"):
        await ckpt.read_state(slices={"model/n": slice(0, 1)})
    with pytest.raises(TypeError, match="keys must be a list"):
        await ckpt.read_state(keys="model")
    with pytest.raises(ValueError, match="step other than 1"):
        await ckpt.read_state(slices={"model/w": slice(0, 2, 2)})
    with pytest.raises(ValueError, match="has 3 slices"):
        await ckpt.read_state(slices={"model/w": (slice(0, 1),) * 3})


async def test_a_block_that_does_not_cover_what_is_asked_is_named(tmp_path: Path) -> None:
    """One process saved only rows 0-3 of 8: the whole tensor is not there; the rows it
    saved are."""
    w = np.arange(32, dtype=np.float32).reshape(8, 4)
    async with Checkpointer(tmp_path) as cp:
        ckpt = await (await cp.save(0, State({"w": Shard(w[:4], offset=(0, 0), shape=(8, 4))})))
    with pytest.raises(asynccp.CheckpointNotFoundError, match="only the block"):
        await ckpt.read_state()
    got = await ckpt.read_state(slices={"w": (slice(1, 3),)})
    np.testing.assert_array_equal(got["w"], w[1:3], strict=True)
    with pytest.raises(asynccp.CheckpointNotFoundError, match="do not cover"):
        await ckpt.read_state(slices={"w": (slice(3, 5),)})


# -- load_into ---------------------------------------------------------------------------


@pytest.mark.skipif(torch is None, reason="torch is not installed")
async def test_load_into_keeps_every_tensor_storage_and_names_mismatches(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(8, 16)).sum().backward()
    opt.step()  # the optimizer's state exists (Adam makes it at its first step)
    saved = {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 4}
    async with Checkpointer(tmp_path) as cp:
        ckpt = await (await cp.save(1, State(saved)))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {i: s["exp_avg"].clone() for i, s in opt.state_dict()["state"].items()}

    fresh = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    fresh(torch.randn(8, 16)).sum().backward()
    fresh_opt.step()
    target = {"model": fresh.state_dict(), "optim": fresh_opt.state_dict(), "epoch": 0}
    pointers = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    loaded = await ckpt.load_into(target)
    assert "model/0.weight" in loaded and "optim/state/0/exp_avg" in loaded and "epoch" in loaded
    for k, v in fresh.state_dict().items():
        assert v.data_ptr() == pointers[k], k  # the same storage, filled in place
        assert torch.equal(v, expected[k]), k
    for i, s in fresh_opt.state_dict()["state"].items():  # the optimizer's own tensors
        assert torch.equal(s["exp_avg"], moments[i])
    assert target["epoch"] == 4 and target["optim"]["param_groups"][0]["lr"] == 0.01

    wrong_shape = {"model": {**fresh.state_dict(), "2.bias": torch.zeros(5)}}
    with pytest.raises(ValueError, match=r"model/2.bias: the target's shape is \(5,\)"):
        await ckpt.load_into(wrong_shape, strict=False)
    wrong_dtype = {"model": {**fresh.state_dict(), "2.bias": torch.zeros(4, dtype=torch.float64)}}
    with pytest.raises(ValueError, match=r"model/2\.bias: the target's dtype"):
        await ckpt.load_into(wrong_dtype, strict=False)
    with pytest.raises(ValueError, match="optim: the checkpoint holds it, the target does not"):
        await ckpt.load_into({"model": fresh.state_dict(), "epoch": 0})
    with pytest.raises(ValueError, match="extra: the target holds it"):
        await ckpt.load_into({**target, "extra": 1})
    before = fresh.state_dict()["0.weight"].clone()
    with pytest.raises(ValueError, match="epoch: the target holds a tensor"):
        await ckpt.load_into({**target, "epoch": torch.zeros(1)})
    assert torch.equal(fresh.state_dict()["0.weight"], before)  # nothing loaded before the check


async def test_load_into_numpy_keeps_the_buffer(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((300, 300))
    async with Checkpointer(tmp_path) as cp:
        ckpt = await (await cp.save(0, State({"w": w, "tag": b"raw"})))
    target = {"w": np.zeros((300, 300)), "tag": b""}
    address = target["w"].ctypes.data
    assert await ckpt.load_into(target) == ["w", "tag"]
    assert target["w"].ctypes.data == address and target["tag"] == b"raw"
    np.testing.assert_array_equal(target["w"], w, strict=True)
    with pytest.raises(TypeError, match="load_into takes a mapping"):
        await ckpt.load_into([w])  # type: ignore[arg-type]


# -- a sharded checkpointer resuming on another number of processes ---------------------


async def test_a_sharded_checkpointer_loads_a_step_of_another_size(tmp_path: Path) -> None:
    """A launch of 3 resumes from a step of 2: load_latest hands it over (every part
    verified), load_into reads each process's share; its own part of the old layout
    is refused by name."""
    full = global_state()
    where = tmp_path / "run"

    async def old(r: int) -> None:
        sharding = asynccp.Sharding(r, 2, generation="old")
        async with Checkpointer(where, sharding=sharding) as cp:
            await (await cp.save(3, State(part_state(full, 2, r))))

    async with anyio.create_task_group() as tg:
        for r in range(2):
            tg.start_soon(old, r)
    for r in range(3):
        async with Checkpointer(where, sharding=asynccp.Sharding(r, 3, generation="new")) as cp:
            a, b = bounds(ROWS[0], 3, r)
            mine = {"rows": Shard(np.zeros((b - a, 16), np.float32), offset=(a, 0), shape=ROWS)}
            found = await cp.load_latest(lambda c, mine=mine: c.load_into(mine, strict=False))
            assert found is not None and found[0].step == 3 and found[1] == ["rows"]
            np.testing.assert_array_equal(mine["rows"].array, full["rows"][a:b], strict=True)
            with pytest.raises(asynccp.ShardMismatchError, match="not this process's part"):
                await cp.load_latest(lambda c, r=r: c.shard(r).read("state.json"))
            await cp.save(4, State(part_state(full, 3, r)))
