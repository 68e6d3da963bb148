"""The ``asynccp`` command line, run as a real process (``python -m asynccp``).

Every command against a local directory, the read commands and ``bench`` against a
real S3-compatible server (moto) with the store configured from environment
variables only, and bad input: a one-line message on stderr, a non-zero exit, never a
traceback. No timing assertions: ``bench`` is smoke-tested at tiny sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import obstore
import pytest
from _moto import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, make_s3_store

import asynccp

TINY_BENCH = [
    "bench", "--sizes", "64KiB,128KiB", "--saves", "2", "--rounds", "1", "--small-saves", "30",
    "--files-per-save", "4", "--max-pending-bytes", "256KiB", "-q",
]  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Any:
    """``python -m asynccp ARGS`` in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "asynccp", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: Any, *, code: int | None = None, contains: str = "") -> str:
    """A failed command: non-zero exit, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


def save_steps(location: Any, steps: range, **options: Any) -> None:
    """Commit one checkpoint per step: a file ``data`` and, every other step, a folder."""

    async def main() -> None:
        async with asynccp.Checkpointer(location, **options) as cp:
            for s in steps:
                payload: Any = f"state {s}".encode()
                if s % 2:
                    payload = {"data": payload, "extra/notes.txt": f"notes {s}"}
                await cp.save(s, payload, metadata={"loss": 1.0 / (s + 1)})

    asyncio.run(main())


@pytest.fixture
def ckpts(tmp_path: Path) -> Path:
    loc = tmp_path / "ckpts"
    save_steps(loc, range(5))
    return loc


def payload_file(loc: Path, step: int, name: str = "data") -> Path:
    manifest = json.loads((loc / "manifests" / f"{step:020d}.json").read_bytes())
    return loc / manifest["data"] / name


# -- ls / show -----------------------------------------------------------------------


def test_ls_text_and_json(ckpts: Path) -> None:
    proc = run("ls", str(ckpts))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["STEP", "CREATED"]
    assert [ln.split()[0] for ln in lines[1:6]] == ["0", "1", "2", "3", "4"]
    assert "5 checkpoint(s)" in lines[-1] and "newest step 4" in lines[-1]

    doc = json.loads(run("ls", f"file://{ckpts}", "--json").stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 1, 2, 3, 4]
    three = doc["checkpoints"][3]
    assert set(three["files"]) == {"data", "extra/notes.txt"}
    assert three["metadata"] == {"loss": 0.25}
    assert three["files"]["data"]["size"] == len(b"state 3")
    assert three["files"]["data"]["checksum"].startswith("crc32c:")


def test_ls_empty_and_missing(tmp_path: Path) -> None:
    proc = run("ls", str(tmp_path))
    assert proc.returncode == 0 and "no checkpoints" in proc.stdout
    missing = tmp_path / "nope"
    assert_one_line_error(run("ls", str(missing)), code=1, contains="does not exist")
    assert not missing.exists()  # a read command creates nothing


def test_show(ckpts: Path) -> None:
    proc = run("show", str(ckpts), "3")
    assert proc.returncode == 0, proc.stderr
    assert "step        3" in proc.stdout
    assert "extra/notes.txt" in proc.stdout and '"loss": 0.25' in proc.stdout
    doc = json.loads(run("show", str(ckpts), "1", "--json").stdout)
    assert doc["step"] == 1 and doc["size"] == len(b"state 1") + len(b"notes 1")
    assert_one_line_error(run("show", str(ckpts), "99"), code=1, contains="no checkpoint")
    assert_one_line_error(run("show", str(ckpts), "-3"), code=2)
    assert_one_line_error(run("show", str(ckpts), "three"), code=2)


# -- verify ----------------------------------------------------------------------------


def test_verify_ok_then_corrupt(ckpts: Path) -> None:
    proc = run("verify", str(ckpts))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 of 5 checkpoint(s) verified" in proc.stdout

    victim = payload_file(ckpts, 2)
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF  # same size, wrong checksum: only a full read finds it
    victim.write_bytes(bytes(data))
    proc = run("verify", str(ckpts))
    assert proc.returncode == 1
    assert "step 2: FAILED" in proc.stdout and "checksum" in proc.stdout
    assert "4 of 5" in proc.stdout

    doc = json.loads(run("verify", str(ckpts), "--json").stdout)
    assert doc["ok"] is False
    assert [c["step"] for c in doc["checkpoints"] if not c["ok"]] == [2]
    assert run("verify", str(ckpts), "--step", "3").returncode == 0
    assert run("verify", str(ckpts), "--step", "2").returncode == 1


def test_verify_reports_bad_manifest_and_missing_object(ckpts: Path) -> None:
    (ckpts / "manifests" / f"{1:020d}.json").write_text("{not json")
    payload_file(ckpts, 4).unlink()
    proc = run("verify", str(ckpts), "--json")
    assert proc.returncode == 1
    failed = {c["step"]: c["error"] for c in json.loads(proc.stdout)["checkpoints"] if not c["ok"]}
    assert set(failed) == {1, 4}
    assert "manifest" in failed[1] and "missing" in failed[4]


# -- restore ---------------------------------------------------------------------------


def test_restore_newest_step_and_fallback(ckpts: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    proc = run("restore", str(ckpts), str(dest))
    assert proc.returncode == 0, proc.stderr
    assert "restored step 4" in proc.stdout
    assert (dest / "data").read_bytes() == b"state 4"

    dest3 = tmp_path / "out3"
    doc = json.loads(run("restore", str(ckpts), str(dest3), "--step", "3", "--json").stdout)
    assert doc["step"] == 3 and doc["files"] == ["data", "extra/notes.txt"]
    assert (dest3 / "extra" / "notes.txt").read_text() == "notes 3"

    # The newest fails its checksum: restore warns (one line) and falls back to step 3.
    victim = payload_file(ckpts, 4)
    victim.write_bytes(b"STATE 4")
    dest_fb = tmp_path / "fallback"
    proc = run("restore", str(ckpts), str(dest_fb))
    assert proc.returncode == 0, proc.stderr
    assert "restored step 3" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "checkpoint 4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (dest_fb / "data").read_bytes() == b"state 3"
    # Asking for the corrupt step explicitly fails, and leaves nothing behind.
    dest4 = tmp_path / "out4"
    assert_one_line_error(
        run("restore", str(ckpts), str(dest4), "--step", "4"), code=1, contains="verification"
    )
    assert not (dest4 / "data").exists()


def test_restore_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(
        run("restore", str(empty), str(tmp_path / "out")), code=1, contains="nothing restored"
    )


# -- gc --------------------------------------------------------------------------------


def test_gc_keep_keep_every_dry_run_and_orphans(tmp_path: Path) -> None:
    loc = tmp_path / "ckpts"
    save_steps(loc, range(10))
    orphan = loc / "data" / f"{42:020d}-deadbeef0000"
    orphan.mkdir(parents=True)
    (orphan / "data").write_bytes(b"never committed")

    proc = run("gc", str(loc), "--keep", "2", "--keep-every", "4", "--dry-run", "--json")
    doc = json.loads(proc.stdout)
    assert doc["deleted_steps"] == [1, 2, 3, 5, 6, 7] and doc["kept_steps"] == [0, 4, 8, 9]
    assert len(list((loc / "manifests").iterdir())) == 10  # dry run: nothing deleted
    assert orphan.exists()

    proc = run("gc", str(loc), "--keep", "2", "--keep-every", "4")
    assert proc.returncode == 0, proc.stderr
    assert "deleted 6 checkpoint(s)" in proc.stdout
    doc = json.loads(run("ls", str(loc), "--json").stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 4, 8, 9]
    assert orphan.exists()  # younger than the default grace (an hour)

    doc = json.loads(run("gc", str(loc), "--keep", "1", "--orphan-grace", "0", "--json").stdout)
    assert doc["deleted_steps"] == [0, 4, 8]
    assert doc["orphans_collected"] == [f"data/{42:020d}-deadbeef0000"]
    assert not orphan.exists()
    assert run("verify", str(loc)).returncode == 0


def test_gc_bad_arguments(ckpts: Path) -> None:
    assert_one_line_error(run("gc", str(ckpts)), code=2, contains="--keep")
    assert_one_line_error(run("gc", str(ckpts), "--keep", "-1"), code=2)
    assert_one_line_error(run("gc", str(ckpts), "--keep", "0"), code=2)
    assert_one_line_error(run("gc", str(ckpts), "--keep", "1", "--orphan-grace", "x"), code=2)
    assert len(list((ckpts / "manifests").iterdir())) == 5


# -- bad input common to all commands ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["ls"],
        ["ls", "ftp://host/x"],
        ["ls", "/tmp", "-o", "region=us-east-1"],
        ["restore", "s3://"],
    ],
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    assert_one_line_error(run(*args), code=2)


def test_help_and_version() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("bench", "ls", "show", "verify", "restore", "gc"):
        assert cmd in proc.stdout
    assert run("--version").stdout.strip() == f"asynccp {asynccp.__version__}"


# -- bench -----------------------------------------------------------------------------


FIGURES = {
    "stall_ms": {"asynccp", "asynccp_max", "sync_write", "ratio"},
    "throughput_mib_s": {"asynccp", "raw_obstore", "ratio"},
    "restore_mib_s": {"asynccp", "raw_obstore", "ratio"},
    "loop_lag_ms": {"asynccp", "sync_writer"},
}


def check_bench_doc(doc: dict[str, Any], kinds: set[str], sizes: set[int]) -> None:
    assert {(c["kind"], c["size"]) for c in doc["cases"]} == {(k, s) for k in kinds for s in sizes}
    for case in doc["cases"]:
        for key, figures in FIGURES.items():
            assert figures <= set(case[key]), (key, case[key])
        for who in ("asynccp", "sync_writer"):
            assert {"p50", "p99", "max", "ticks"} <= set(case["loop_lag_ms"][who])
        assert case["stall_ms"]["asynccp"] > 0 and case["stall_ms"]["sync_write"] > 0
        assert case["throughput_mib_s"]["committed_bytes"] == case["size"] * 2  # nothing lost
        assert case["restore_mib_s"]["asynccp"] > 0
        if case["kind"] == "bytearray":
            assert case["stall_ms"]["memory_copy"] > 0 and case["stall_ms"]["ratio_to_copy"] > 0
    small = doc["small_saves"]
    assert small["saves"] == 30 and small["asynccp_saves_per_s"] > 0
    assert small["sync_writes_per_s"] > 0 and small["ratio"] > 0
    assert small["committed"] >= 1
    mem = doc["memory"]
    assert mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0
    assert mem["max_pending_bytes"] == 256 << 10
    names = " ".join(t["target"] for t in doc["targets"])
    for word in ("stall", "throughput", "small saves", "loop lag", "restore", "RSS"):
        assert word in names
    assert all(isinstance(t["met"], bool) for t in doc["targets"])
    assert doc["machine"]["cpus"] and doc["machine"]["python"]


def test_bench_smoke_local(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run(*TINY_BENCH, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "targets" in proc.stdout and "caller stall" in proc.stdout
    doc = json.loads(out.read_text())
    check_bench_doc(doc, {"bytes", "bytearray", "file", "files"}, {64 << 10, 128 << 10})
    assert doc["location"]["kind"] == "local directory"


def test_bench_url_plot_and_cleanup(tmp_path: Path) -> None:
    where = tmp_path / "store"
    png = tmp_path / "bench.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional (bench extra); the rest is not
        plot: list[str] = []
    else:
        plot = ["--plot", str(png)]
    proc = run(*TINY_BENCH, "--kinds", "bytes", "--url", str(where), "--no-memory", *plot,
               "--json", "-")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["memory"] is None and [c["kind"] for c in doc["cases"]] == ["bytes", "bytes"]
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(where.iterdir()) == []  # the bench's own folder is removed


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["--sizes", "-1"], "size"),
        (["--sizes", "0"], "size"),
        (["--sizes", "12parsecs"], "size"),
        (["--policy", "fastest"], "policy"),
        (["--kinds", "pickle"], "kind"),
        (["--saves", "0"], "saves"),
        (["--max-pending-bytes", "-5MiB"], "max-pending-bytes"),
        (["--url", "nope://x"], "scheme"),
    ],
)
def test_bench_bad_options(args: list[str], contains: str) -> None:
    assert_one_line_error(run("bench", "-q", *args), contains=contains)


def test_bench_unreachable_url() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens on the discard port
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_REGION": REGION,
    }
    proc = run("bench", "-q", "--url", "s3://bucket/x", "--retries", "0", env=env, timeout=120)
    assert_one_line_error(proc, code=1, contains="cannot reach")


# -- S3 (moto), configured from the environment only -----------------------------------------


@pytest.fixture
def s3_env(moto_server: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
    }


def test_s3_commands(s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_bucket}/runs/7"
    save_steps(url, range(4))

    doc = json.loads(run("ls", url, "--json").stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 1, 2, 3]
    assert "extra/notes.txt" in run("show", url, "3").stdout
    proc = run("verify", url)
    assert proc.returncode == 0 and "4 of 4" in proc.stdout, proc.stdout + proc.stderr
    proc = run("restore", url, str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "extra" / "notes.txt").read_text() == "notes 3"
    doc = json.loads(run("gc", url, "--keep", "1", "--json").stdout)
    assert doc["deleted_steps"] == [0, 1, 2] and doc["kept_steps"] == [3]
    assert [c["step"] for c in json.loads(run("ls", url, "--json").stdout)["checkpoints"]] == [3]
    # Another prefix in the same bucket is simply empty; a missing bucket is an error.
    assert "no checkpoints" in run("ls", f"s3://{s3_bucket}/other").stdout
    assert_one_line_error(run("ls", "s3://no-such-bucket/x", "--retries", "0"), code=1)


def test_s3_bench_smoke(s3_bucket: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run(*TINY_BENCH, "--url", f"s3://{s3_bucket}/bench", "--kinds", "bytes,files",
               "--json", str(out), env=s3_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    check_bench_doc(doc, {"bytes", "files"}, {64 << 10, 128 << 10})
    assert doc["location"]["kind"] == "S3Store"
    # The bench cleaned up after itself.
    store = make_s3_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket)
    assert [m for batch in obstore.list(store) for m in batch] == []


def test_s3_configured_with_store_options_only(s3_bucket: str, moto_server: str) -> None:
    """-o takes store and HTTP client settings alike (allow_http goes to client_options)."""
    url = f"s3://{s3_bucket}/opts"
    opts = [
        "-o", f"endpoint={moto_server}", "-o", "allow_http=true", "-o", f"region={REGION}",
        "-o", f"access_key_id={ACCESS_KEY_ID}", "-o", f"secret_access_key={SECRET_ACCESS_KEY}",
    ]  # fmt: skip
    proc = run("ls", url, *opts)
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoints" in proc.stdout
