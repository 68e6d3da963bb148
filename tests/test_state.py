"""Training state as a payload: ``save(step, asynccp.State(...))`` and ``read_state()``.

Round trips on every kind of store (local, memory, moto S3) for numpy and torch, the
files opened with the ``safetensors`` library itself, bad input refused before anything
is staged, corruption caught and fallen back past, and the snapshot taken at the call.
torch is optional: its tests skip when it is not installed; numpy-only behaviour is
also checked in a fresh interpreter where ``import torch`` fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _sites import Site

import asynccp
from asynccp import Checkpointer, State
from asynccp._layout import data_dir

torch: Any
try:
    import torch
except ImportError:  # pragma: no cover - the test environment has torch
    torch = None

safetensors_numpy: Any
try:
    import safetensors.numpy as safetensors_numpy
except ImportError:  # pragma: no cover
    safetensors_numpy = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
needs_safetensors = pytest.mark.skipif(
    safetensors_numpy is None, reason="safetensors is not installed"
)
needs_cuda = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available(), reason="no CUDA device here"
)


def numpy_state() -> dict[str, Any]:
    """A nested state with every kind of value a state may hold (numpy only)."""
    rng = np.random.default_rng(7)
    return {
        "model": {
            "layer.0/weight": rng.standard_normal((64, 32)).astype(np.float32),
            "layer.0/bias": np.zeros(32, np.float32),
            "embed~x": rng.integers(0, 1000, (10, 3), dtype=np.int64),
            "half": rng.standard_normal(7).astype(np.float16),
            "mask": np.array([True, False, True]),
            "empty": np.zeros((0, 5), np.float64),
            "big": rng.standard_normal(1 << 20).astype(np.float32),  # 4 MiB: off the loop
        },
        "optim": {"state": {0: {"m": np.ones(4, np.float64)}, 1: {"m": np.zeros(4)}}, "lr": 0.1},
        "epoch": 3,
        "loss": 0.25,
        "nan": math.nan,
        "inf": -math.inf,
        "name": "run-42 ✓",
        "done": False,
        "nothing": None,
        "pair": (1, [2.5, "x"]),
        "scalar": np.float32(1.5),
        "zero_d": np.array(7, np.uint16),
        "raw": b"\x00\x01bytes",
        "complex": np.array([1 + 2j], np.complex64),
    }


def assert_same(saved: Any, restored: Any, path: str = "state") -> None:
    """``restored`` has the nesting, types, dtypes, shapes and values of ``saved``."""
    if isinstance(saved, (np.ndarray, np.generic)):
        saved = np.asarray(saved)
        assert isinstance(restored, np.ndarray), path
        assert restored.dtype == saved.dtype and restored.shape == saved.shape, path
        np.testing.assert_array_equal(restored, saved, err_msg=path)
    elif torch is not None and isinstance(saved, torch.Tensor):
        assert isinstance(restored, torch.Tensor), path
        assert restored.dtype == saved.dtype and restored.shape == saved.shape, path
        assert torch.equal(raw_bytes(restored), raw_bytes(saved)), path
    elif isinstance(saved, dict):
        assert isinstance(restored, dict) and list(restored) == list(saved), path
        for key in saved:
            assert_same(saved[key], restored[key], f"{path}[{key!r}]")
    elif isinstance(saved, (list, tuple)):
        assert type(restored) is type(saved) and len(restored) == len(saved), path
        for i, (a, b) in enumerate(zip(saved, restored, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(saved, float) and math.isnan(saved):
        assert isinstance(restored, float) and math.isnan(restored), path
    else:
        assert type(restored) is type(saved) and restored == saved, path


def raw_bytes(t: Any) -> Any:
    """A tensor's bytes as a uint8 tensor (``torch.equal`` has no kernel for some dtypes)."""
    return t.detach().reshape(-1).view(torch.uint8)


def safetensors_bytes(site: Site, ckpt: asynccp.Checkpoint, name: str) -> bytes:
    """The stored bytes of one file of ``ckpt``, read past asynccp."""
    return site.raw.get(f"{data_dir(ckpt.step, ckpt.writer)}/{name}")


# -- round trips ----------------------------------------------------------------------


@needs_safetensors
async def test_numpy_state_round_trips(any_site: Site) -> None:
    state = numpy_state()
    async with Checkpointer(any_site.make_location()) as cp:
        ckpt = await (await cp.save(0, State(state), metadata={"kind": "state"}))
    assert set(ckpt.files) == {"state.json", "state.safetensors"}
    async with Checkpointer(any_site.make_location()) as cp:
        found = await cp.load_latest(lambda c: c.read_state())
    assert found is not None
    restored = found[1]
    assert_same(state, restored)
    # the safetensors library reads the same tensors, by their path in the nesting
    tensors = safetensors_numpy.load(safetensors_bytes(any_site, ckpt, "state.safetensors"))
    np.testing.assert_array_equal(
        tensors["model/layer.0~1weight"], state["model"]["layer.0/weight"]
    )
    np.testing.assert_array_equal(tensors["model/embed~0x"], state["model"]["embed~x"])
    np.testing.assert_array_equal(tensors["optim/state/1/m"], state["optim"]["state"][1]["m"])
    assert tensors["raw"].tobytes() == state["raw"]
    # and the scalars are plain JSON
    doc = json.loads(any_site.raw.get(f"{data_dir(ckpt.step, ckpt.writer)}/state.json"))
    assert doc["tree"]["dict"]["epoch"] == 3 and doc["tree"]["dict"]["name"] == "run-42 ✓"


@needs_safetensors
async def test_repeated_shapes_reuse_their_plan_and_a_new_shape_gets_its_own(
    tmp_path: Path,
) -> None:
    """A loop saves the same shapes save after save: their layout (the safetensors
    header) is made once; a tensor that changes shape, or name, gets a layout of its
    own, and every checkpoint reads back what was saved in it."""
    from asynccp._state._encode import plan_state

    def header(state: dict[str, Any]) -> bytes:
        (_, tensors) = plan_state(State(state), "state")[1]
        assert not isinstance(tensors, bytes)
        return tensors.head

    one = {"w": np.zeros((4, 3), np.float32), "b": np.ones(3)}
    assert header(one) is header({"w": np.ones((4, 3), np.float32), "b": np.zeros(3)})
    assert header({"w": np.zeros((3, 4), np.float32), "b": np.ones(3)}) != header(one)
    assert header({"v": np.zeros((4, 3), np.float32), "b": np.ones(3)}) != header(one)
    states = [
        {"w": np.full((4, 3), s, np.float32), "b": np.arange(3.0) + s}
        if s != 2
        else {"w": np.full((3, 4), s, np.float32), "b": np.arange(3.0) + s}
        for s in range(4)
    ]
    async with Checkpointer(tmp_path / "loc") as cp:
        done = [await (await cp.save(s, State(st))) for s, st in enumerate(states)]
    for ckpt, st in zip(done, states, strict=True):
        got = await ckpt.read_state()
        assert all(np.array_equal(got[k], st[k]) and got[k].shape == st[k].shape for k in st)


async def test_every_numpy_scalar_reads_back_as_a_0d_array_of_its_dtype(tmp_path: Path) -> None:
    """np.float64 subclasses float, and once came back as the Python float 1.5 while
    np.float32 and np.int64 came back as 0-d arrays: every numpy scalar keeps its dtype
    (np.bool_ too); Python scalars stay Python scalars."""
    scalars = {
        "f64": np.float64(1.5),
        "f64nan": np.float64(math.nan),
        "f32": np.float32(1.5),
        "f16": np.float16(1.5),
        "i64": np.int64(-3),
        "u8": np.uint8(200),
        "b": np.bool_(True),
    }
    plain = {"f": 1.5, "i": 3, "t": True}
    async with Checkpointer(tmp_path) as cp:
        ckpt = await (await cp.save(0, State({**scalars, **plain})))
        back = await ckpt.read_state()
    for key, saved in scalars.items():
        got = back[key]
        assert isinstance(got, np.ndarray) and got.shape == (), key
        assert got.dtype == saved.dtype, (key, got.dtype)
        np.testing.assert_array_equal(got, np.asarray(saved), err_msg=key)
    assert back["f"] == 1.5 and type(back["f"]) is float
    assert back["i"] == 3 and type(back["i"]) is int
    assert back["t"] is True


@needs_torch
@needs_safetensors
async def test_torch_state_dict_round_trips_into_a_model(any_site: Site) -> None:
    import safetensors.torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 16)).sum().backward()
    opt.step()
    extra = {
        "bf16": torch.randn(5, 3).to(torch.bfloat16),
        "f16": torch.randn(4).half(),
        "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u16": torch.tensor([1, 2, 65535], dtype=torch.uint16),
        "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "f8": torch.randn(6).to(torch.float8_e4m3fn),
    }
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "extra": extra, "step": 1}
    async with Checkpointer(any_site.make_location()) as cp:
        ckpt = await (await cp.save(1, State(state)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch.frombuffer on a read-only buffer
            restored = await ckpt.read_state(framework="torch")
    assert_same(state["model"], restored["model"])
    assert_same(extra, restored["extra"])
    assert restored["step"] == 1
    # an optimizer state_dict has int keys and tuples: both come back as they were
    assert list(restored["optim"]["state"]) == list(state["optim"]["state"])
    assert restored["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
    fresh = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4)
    )
    fresh.load_state_dict(restored["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(restored["optim"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    for i, group in opt.state_dict()["state"].items():
        for k, v in group.items():
            assert torch.equal(fresh_opt.state_dict()["state"][i][k], v), (i, k)
    # numpy cannot hold bfloat16: a clear error naming the tensor, not a wrong dtype
    with pytest.raises(TypeError, match=r"extra/bf16.*framework='torch'"):
        await ckpt.read_state()
    loaded = safetensors.torch.load(safetensors_bytes(any_site, ckpt, "state.safetensors"))
    assert torch.equal(raw_bytes(loaded["extra/f8"]), raw_bytes(extra["f8"]))
    assert torch.equal(loaded["extra/bf16"], extra["bf16"])
    assert torch.equal(loaded["model/0.weight"], state["model"]["0.weight"])


async def test_state_next_to_files_in_one_checkpoint(any_site: Site) -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    payload = {"train": State({"w": weights, "epoch": 2}), "notes.txt": "hello", "raw": weights}
    async with Checkpointer(any_site.make_location()) as cp:
        ckpt = await (await cp.save(0, payload))
        assert set(ckpt.files) == {"train.json", "train.safetensors", "notes.txt", "raw"}
        assert await ckpt.read("notes.txt") == b"hello"
        assert await ckpt.read("raw") == weights.tobytes()  # a plain mapping value: its bytes
        restored = await ckpt.read_state("train")
        assert_same({"w": weights, "epoch": 2}, restored)
        with pytest.raises(asynccp.CheckpointNotFoundError, match=r"no state named 'state'.*train"):
            await ckpt.read_state()
        only_scalars = await (await cp.save(1, State({"epoch": 3, "lr": [0.1, 0.01]})))
        assert set(only_scalars.files) == {"state.json"}  # no tensor: no safetensors file
        assert await only_scalars.read_state() == {"epoch": 3, "lr": [0.1, 0.01]}


async def test_state_changed_right_after_save_holds_the_values_at_the_call(
    tmp_path: Path,
) -> None:
    big = np.zeros(3 << 20, np.float32)  # 12 MiB: copied in worker threads
    small = np.zeros(16, np.int64)  # copied on the loop
    state = {"big": big, "small": small, "epoch": 0}
    async with Checkpointer(tmp_path / "loc") as cp:
        handles = []
        for step in range(3):
            handles.append(await cp.save(step, State(state)))
            big += 1
            small += 1
            state["epoch"] = step + 1  # the mapping itself changes too
        ckpts = [await h for h in handles]
    for step, ckpt in enumerate(ckpts):
        restored = await ckpt.read_state()
        assert restored["epoch"] == step
        assert (restored["big"] == step).all() and (restored["small"] == step).all()


@needs_torch
async def test_torch_tensors_changed_right_after_save(any_site: Site) -> None:
    weight = torch.zeros(2 << 20)  # 8 MiB
    async with Checkpointer(any_site.make_location()) as cp:
        first = await cp.save(0, State({"w": weight}))
        weight.add_(5.0)
        second = await cp.save(1, State({"w": weight}))
        weight.mul_(0)
        a, b = await first, await second
    assert torch.equal((await a.read_state(framework="torch"))["w"], torch.zeros(2 << 20))
    assert torch.equal((await b.read_state(framework="torch"))["w"], torch.full((2 << 20,), 5.0))


async def test_local_read_state_maps_the_file_copy_on_write(tmp_path: Path) -> None:
    """On a local disk the arrays are views of a private map of the file: writable, and a
    write changes the caller's copy only, never the checkpoint."""
    weights = np.arange(1 << 20, dtype=np.float32)
    async with Checkpointer(tmp_path / "loc") as cp:
        ckpt = await (await cp.save(0, State({"w": weights})))
        restored = await ckpt.read_state()
        w = restored["w"]
        assert w.flags.writeable and not w.flags.owndata
        w += 1  # in place, on the mapped pages
        again = await ckpt.read_state()
        np.testing.assert_array_equal(again["w"], weights)
        await ckpt.verify()


# -- bad input: a clear error naming the key, nothing staged ----------------------------


def _bad_numpy_states() -> list[tuple[str, dict[Any, Any], type[Exception], str]]:
    cyclic: dict[str, Any] = {"inner": {}}
    cyclic["inner"]["back"] = cyclic
    looped: list[Any] = [1]
    looped.append(looped)
    return [
        ("object array", {"a": {"objs": np.array([1, "x"], dtype=object)}}, TypeError,
         r"state\['a'\]\['objs'\] is an object array"),
        ("complex128", {"c": np.zeros(2, np.complex128)}, TypeError,
         r"state\['c'\] has dtype complex128, which safetensors cannot hold"),
        ("datetime", {"d": np.array(["2024-01-01"], dtype="datetime64[D]")}, TypeError,
         r"state\['d'\] has dtype datetime64"),
        ("not contiguous", {"m": {"w": np.zeros((4, 4))[:, 1]}}, TypeError,
         r"state\['m'\]\['w'\] is not C-contiguous"),
        ("big-endian", {"b": np.zeros(3, ">f4")}, TypeError, r"state\['b'\] is big-endian"),
        ("tuple key", {"m": {(1, 2): np.zeros(2)}}, TypeError,
         r"key \(1, 2\) in state\['m'\] is a tuple: state keys must be str or int"),
        ("float key", {1.5: 1}, TypeError, r"key 1.5 in state is a float"),
        ("bool key", {"m": {True: 1}}, TypeError, r"key True in state\['m'\] is a bool"),
        ("surrogate key", {"m": {"a\ud800": np.zeros(2)}}, TypeError,
         r"key 'a\\ud800' in state\['m'\] is not valid Unicode"),
        ("surrogate key of a scalar", {"a\udc80": 1}, TypeError,
         r"key 'a\\udc80' in state is not valid Unicode"),
        ("surrogate value", {"name": ["ok", "b\ud800"]}, ValueError,
         r"state\['name'\]\[1\] \('b\\ud800'\) is not valid Unicode"),
        ("cycle", cyclic, ValueError,
         r"state\['inner'\]\['back'\] refers back to state, which contains it"),
        ("list cycle", {"l": looped}, ValueError, r"state\['l'\]\[1\] refers back to state\['l'\]"),
        ("an object", {"cfg": {"obj": object()}}, TypeError,
         r"state\['cfg'\]\['obj'\] is a object"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [pytest.param(s, e, m, id=i) for i, s, e, m in _bad_numpy_states()],
)
async def test_bad_state_is_refused_before_anything_is_staged(
    tmp_path: Path, state: dict[Any, Any], error: type[Exception], match: str
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    async with Checkpointer(tmp_path / "loc", staging_dir=staging) as cp:
        with pytest.raises(error, match=match):
            await cp.save(0, State(state))
        assert cp.stats.saves == 0 and cp.stats.queue_bytes == 0
        assert not [p for p in staging.rglob("*") if p.is_file() and p.name != ".lock"]
        ckpt = await (await cp.save(0, State({"ok": np.ones(1024)})))  # the step is still free
    folders = sorted(p.name for p in (tmp_path / "loc" / "data").iterdir())
    assert folders == [data_dir(ckpt.step, ckpt.writer).split("/")[-1]]


@needs_torch
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.zeros(4, 4).t(), r"state\['model'\]\['w'\] is not contiguous"),
        (lambda: torch.zeros(3, device="meta"), r"is on device meta.*x\.cpu\(\)"),
        (lambda: torch.zeros(3, dtype=torch.complex128), r"has dtype torch\.complex128"),
        (lambda: torch.zeros(3).to_sparse(), r"torch\.sparse_coo tensor"),
        (lambda: torch.zeros(2, dtype=torch.complex64).conj(), r"lazy conjugate"),
    ],
    ids=["not-contiguous", "not-on-cpu-or-cuda", "complex128", "sparse", "lazy-conj"],
)
async def test_bad_tensors_are_refused(tmp_path: Path, make: Any, match: str) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        with pytest.raises(TypeError, match=match):
            await cp.save(0, State({"model": {"w": make()}, "ok": torch.ones(2)}))
        assert cp.stats.saves == 0


@needs_torch
@pytest.mark.skipif(
    torch is not None and torch.cuda.is_available(), reason="CUDA is available here"
)
def test_no_cuda_here_means_no_gpu_tensor_can_reach_save() -> None:
    """Where CUDA is missing no CUDA tensor can exist (torch refuses to make one); the
    check for one (``is on cuda:0, but CUDA is not available``) guards a tensor made
    where it was and unpickled here. The not-on-the-CPU path is tested with ``meta``."""
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


@needs_cuda
async def test_gpu_tensor_is_copied_through_pinned_memory(
    tmp_path: Path,
) -> None:  # pragma: no cover - needs a CUDA device
    weight = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    async with Checkpointer(tmp_path / "loc") as cp:
        handle = await cp.save(0, State({"w": weight, "cpu": torch.ones(3)}))
        weight.add_(1)
        ckpt = await handle
    restored = await ckpt.read_state(framework="torch")
    assert torch.equal(restored["w"], torch.arange(1 << 20, dtype=torch.float32))
    assert torch.equal(restored["cpu"], torch.ones(3))


async def test_a_plain_mapping_with_state_values_says_to_use_state(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        with pytest.raises(TypeError, match=r"payload\['model'\] is a mapping.*asynccp\.State"):
            await cp.save(0, {"model": {"w": np.zeros(2)}})
        with pytest.raises(TypeError, match=r"unsupported payload type int \(file 'epoch'\)"):
            await cp.save(0, {"epoch": 3})
        with pytest.raises(TypeError, match="State takes a mapping"):
            State([1, 2])  # type: ignore[arg-type]
        assert cp.stats.saves == 0


# -- failures in storage ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_damaged_state_file_falls_back_to_the_previous_checkpoint(
    any_site: Site, damage: str
) -> None:
    async with Checkpointer(any_site.make_location()) as cp:
        good = await (await cp.save(0, State({"w": np.full(1000, 1.0), "epoch": 0})))
        bad = await (await cp.save(1, State({"w": np.full(1000, 2.0), "epoch": 1})))
    key = f"{data_dir(bad.step, bad.writer)}/state.safetensors"
    body = bytearray(any_site.raw.get(key))
    if damage == "flip":
        body[-3] ^= 0x40
    else:
        del body[-100:]
    any_site.raw.put(key, bytes(body))
    # a truncated file is seen by opening (it finds the floor: sizes only), a flip is not
    truncated = r"checkpoint 1\b.*payload objects .* missing or truncated"
    opening = pytest.warns(asynccp.CorruptCheckpointWarning, match=truncated)
    with opening if damage == "truncate" else contextlib.nullcontext():
        async with Checkpointer(any_site.make_location()) as cp:
            with pytest.raises(asynccp.CorruptCheckpointError, match=r"state\.safetensors"):
                await bad.read_state()
            with pytest.warns(asynccp.CorruptCheckpointWarning, match=r"checkpoint 1\b"):
                found = await cp.load_latest(lambda c: c.read_state())
    assert found is not None and found[0].step == good.step == 0
    assert found[1]["epoch"] == 0 and (found[1]["w"] == 1.0).all()


async def test_damaged_state_json_is_corruption(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        # (a tensor larger than a record holds: its two files are payload objects)
        ckpt = await (await cp.save(0, State({"epoch": 0, "w": np.zeros(1024)})))
    path = tmp_path / "loc" / data_dir(ckpt.step, ckpt.writer) / "state.json"
    path.write_bytes(path.read_bytes().replace(b"0", b"1"))
    with pytest.raises(asynccp.CorruptCheckpointError, match=r"state\.json"):
        await ckpt.read_state()


@pytest.mark.parametrize("size", [3 << 20, 33 << 20], ids=["received-whole", "streamed"])
async def test_flipped_or_truncated_large_objects_are_corruption(any_site: Site, size: int) -> None:
    """A remote object of a few MiB is received whole and copied into memory made
    during the download, a larger one streamed in: both are checked against the
    manifest, by ``read()`` and by ``read_state()``, on every store."""
    w = np.random.default_rng(2).integers(0, 255, size, dtype=np.uint8)
    async with Checkpointer(any_site.make_location()) as cp:
        blob = await (await cp.save(0, w.tobytes()))
        state = await (await cp.save(1, State({"w": w, "epoch": 1})))
    assert await blob.read() == w.tobytes()
    assert np.array_equal((await state.read_state())["w"], w)
    keys = {
        blob: f"{data_dir(blob.step, blob.writer)}/data",
        state: f"{data_dir(state.step, state.writer)}/state.safetensors",
    }
    for ckpt, key in keys.items():
        good = any_site.raw.get(key)
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x10
        for damaged, why in ((bytes(flipped), "checksum"), (good[:-1], "bytes")):
            any_site.raw.put(key, damaged)
            read = ckpt.read() if ckpt is blob else ckpt.read_state()
            with pytest.raises(asynccp.CorruptCheckpointError, match=why):
                await read
        any_site.raw.put(key, good)
    assert await blob.read() == w.tobytes()  # the checks kept nothing of the damage


async def test_read_state_arguments(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path / "loc") as cp:
        ckpt = await (await cp.save(0, b"not a state"))
        with pytest.raises(asynccp.CheckpointNotFoundError, match="no state named 'state'"):
            await ckpt.read_state()
        state = await (await cp.save(1, State({"a": 1})))
        with pytest.raises(ValueError, match="framework must be 'numpy' or 'torch'"):
            await state.read_state(framework="jax")  # type: ignore[arg-type]


# -- optional dependencies --------------------------------------------------------------


def test_numpy_state_works_without_torch(tmp_path: Path) -> None:
    """In an interpreter where ``import torch`` fails, numpy state saves and reads, and
    asking for torch tensors says what to install."""
    script = f"""
import sys
sys.modules["torch"] = None  # import torch raises ImportError
import anyio, numpy as np, asynccp

async def main():
    async with asynccp.Checkpointer({str(tmp_path / "loc")!r}) as cp:
        ckpt = await (await cp.save(0, asynccp.State({{"w": np.arange(5.0), "n": 1}})))
        out = await ckpt.read_state()
        assert out["n"] == 1 and out["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        try:
            await ckpt.read_state(framework="torch")
        except ModuleNotFoundError as e:
            print("torch:", e)
anyio.run(main)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "asynccp[torch]" in proc.stdout


def test_import_asynccp_loads_neither_torch_nor_safetensors() -> None:
    code = "import asynccp, sys, json; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in names if m.split(".")[0] in ("torch", "safetensors", "numpy")]
    assert "asynccp._state" in names


# -- staging memory ---------------------------------------------------------------------


async def test_staging_memory_stays_within_the_budget_as_sizes_change(tmp_path: Path) -> None:
    """Buffers are pooled for reuse, a slightly smaller state reuses a larger buffer, and
    staged plus pooled memory never exceeds ``max_pending_bytes``."""
    budget = 48 << 20
    async with Checkpointer(
        tmp_path / "loc", limits=asynccp.Limits(max_pending_bytes=budget, max_pending=2)
    ) as cp:
        stager = cp._pipeline._stager
        sizes_mib = [8, 8, 7, 16, 12, 24, 8, 20]
        for step, mib in enumerate(sizes_mib):
            arr = np.full(mib << 18, step, np.float32)  # mib MiB
            await cp.save(step, State({"w": arr}))
            assert stager._free_bytes + cp.stats.queue_bytes <= budget
        await cp.flush()
        assert stager._free_bytes <= budget
        reused_before = len(stager._free)
        await (await cp.save(100, State({"w": np.zeros(5 << 18, np.float32)})))  # 5 MiB
        assert len(stager._free) <= reused_before + 1
        ckpt = await cp.latest()
        assert ckpt is not None and ckpt.step == 100
        assert (await ckpt.read_state())["w"].shape == (5 << 18,)


async def test_no_temporary_files_are_left_after_commits(tmp_path: Path) -> None:
    async with Checkpointer(tmp_path / "loc", keep=2) as cp:
        for step in range(4):
            await cp.save(step, State({"w": np.full(1 << 20, step, np.float32)}))
    left = [p.name for p in (tmp_path / "loc").rglob("*") if p.name.endswith(".asynccp-tmp")]
    assert left == []


async def test_remote_read_returns_bytes(site: Site) -> None:
    """``read()`` gives ``bytes`` on every store, large objects included."""
    body = np.random.default_rng(1).integers(0, 255, 3 << 20, dtype=np.uint8).tobytes()
    async with Checkpointer(site.make_location()) as cp:
        ckpt = await (await cp.save(0, body))
        data = await ckpt.read()
    assert type(data) is bytes and data == body


async def test_prepare_gets_staging_memory_ready_within_the_budget(tmp_path: Path) -> None:
    state = {"w": np.ones(3 << 20, np.float32), "b": np.ones(10), "epoch": 1}  # 12 MiB
    async with Checkpointer(
        tmp_path / "loc", limits=asynccp.Limits(max_pending_bytes=64 << 20)
    ) as cp:
        ready = await cp.prepare(State(state))
        assert ready >= 12 << 20
        assert await cp.prepare(State(state)) == 0  # a buffer that fits is pooled already
        pooled = len(cp._pipeline._stager._free)
        handle = await cp.save(0, State(state))
        assert len(cp._pipeline._stager._free) == pooled - 1  # the save took the prepared buffer
        await handle
        assert await cp.prepare(b"x" * (8 << 20)) == 0  # bytes are kept as they are
        with pytest.raises(TypeError, match="object array"):
            await cp.prepare(State({"o": np.array([None])}))
    async with Checkpointer(
        tmp_path / "loc2", limits=asynccp.Limits(max_pending_bytes=4 << 20)
    ) as cp:
        assert await cp.prepare(State(state)) == 0  # no room in the budget
        assert cp._pipeline._stager._free_bytes == 0


async def test_each_shard_saves_and_reads_its_own_state(tmp_path: Path) -> None:
    """Sharded writers save a State per process; each part reads back as it was saved."""
    loc = tmp_path / "loc"
    async with (
        Checkpointer(loc, sharding=asynccp.Sharding(shard=0, shards=2, generation="g1")) as first,
        Checkpointer(loc, sharding=asynccp.Sharding(shard=1, shards=2, generation="g1")) as second,
    ):
        a = await first.save(0, State({"w": np.arange(4.0), "rank": 0}))
        b = await second.save(0, State({"w": np.arange(4.0) + 10, "rank": 1}))
        await a
        await b
    async with Checkpointer(loc) as cp:
        ckpt = await cp.latest()
        assert ckpt is not None and ckpt.shards == 2
        for rank in range(2):
            state = await ckpt.shard(rank).read_state()
            assert state["rank"] == rank
            np.testing.assert_array_equal(state["w"], np.arange(4.0) + 10 * rank)
