"""Manifests are untrusted input: every field is validated before use."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import crc32c
import pytest

from asynccp import CorruptCheckpointError
from asynccp._layout import manifest_key, parse_data_dir, parse_manifest_key
from asynccp._manifest import FileInfo, Manifest
from asynccp._retention import steps_to_delete

KEY = manifest_key(7)


def record(files: dict[str, FileInfo], **fields: Any) -> dict[str, Any]:
    """A manifest of step 7 holding ``files``, as its record's JSON."""
    m = Manifest(
        **{
            "step": 7,
            "writer": "abc123",
            "attempt": 1,
            "created_at": datetime(2026, 1, 2, tzinfo=timezone.utc),
            "metadata": {"loss": 0.25},
            "files": files,
            **fields,
        }
    )
    return json.loads(m.encode())


def good() -> dict[str, Any]:
    return record({"a/b.bin": FileInfo(3, 0xDEADBEEF)})


def test_round_trip() -> None:
    m = Manifest.decode(json.dumps(good()).encode(), key=KEY)
    assert m.step == 7 and m.writer == "abc123" and m.attempt == 1
    assert m.files == {"a/b.bin": FileInfo(3, 0xDEADBEEF)}
    assert m.data == f"data/{7:020d}-abc123"
    assert Manifest.decode(m.encode(), key=KEY) == m


def mutate(path: list[str], value: Any) -> bytes:
    doc = good()
    target = doc
    for p in path[:-1]:
        target = target[p]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (mutate(["format"], 2), "format"),
        (mutate(["format"], True), "format"),
        (mutate(["step"], 8), "stored as step 7"),
        (mutate(["step"], -1), "step"),
        (mutate(["step"], "7"), "step"),
        (mutate(["writer"], "../x"), "writer"),
        (mutate(["attempt"], None), "attempt"),
        (mutate(["created_at"], "yesterday"), "created_at"),
        (mutate(["created_at"], KeyError), "created_at"),
        (mutate(["data"], "data/../../etc"), "data folder"),
        (mutate(["metadata"], [1]), "metadata"),
        (mutate(["files"], []), "files"),
        (mutate(["files"], {"../../x": {"size": 1, "crc32c": "00000000"}}), "'..'"),
        (mutate(["files"], {"/etc/passwd": {"size": 1, "crc32c": "00000000"}}), "absolute"),
        (mutate(["files"], {"a//b": {"size": 1, "crc32c": "00000000"}}), "empty segment"),
        (mutate(["files", "a/b.bin", "size"], -5), "size"),
        (mutate(["files", "a/b.bin", "size"], 1.5), "size"),
        (mutate(["files", "a/b.bin", "crc32c"], "xyz"), "crc32c"),
        (mutate(["files", "a/b.bin"], 3), "not an object"),
    ],
)
def test_invalid_manifests_are_errors_not_crashes(raw: bytes, why: str) -> None:
    with pytest.raises(CorruptCheckpointError, match=why):
        Manifest.decode(raw, key=KEY)


def inline_doc() -> dict[str, Any]:
    return record({"a": FileInfo(3, crc32c.crc32c(b"abc"), b"abc"), "b": FileInfo(0, 0, b"")})


def test_a_tiny_checkpoints_bytes_round_trip_inside_its_record() -> None:
    """Format 3: each file's bytes, base64, beside its size and checksum. A record
    without inline files stays format 1, which every asynccp reads."""
    doc = inline_doc()
    assert doc["format"] == 3 and doc["files"]["a"]["inline"] == "YWJj"
    m = Manifest.decode(json.dumps(doc).encode(), key=KEY)
    assert m.files["a"].inline == b"abc" and m.files["b"].inline == b""
    assert m.files["a"] == FileInfo(3, crc32c.crc32c(b"abc"))  # a file is its size and crc
    assert m.has_inline and m.stored == {}
    assert Manifest.decode(m.encode(), key=KEY) == m
    assert json.loads(Manifest.decode(json.dumps(good()).encode(), key=KEY).encode())["format"] == 1


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda f: f.update(inline="YWJ"), "not base64"),
        (lambda f: f.update(inline="YWJj!"), "not base64"),
        (lambda f: f.update(inline=3), "not a base64 string"),
        (lambda f: f.update(inline="YWJjZA=="), "4 long, its size says 3"),
        (lambda f: f.update(inline="YWI="), "2 long, its size says 3"),
    ],
)
def test_invalid_inline_bytes_make_the_record_invalid(
    edit: Callable[[dict[str, Any]], None], why: str
) -> None:
    """Bytes that do not decode, or of another length than the recorded size, make the
    record invalid (as a truncated payload object makes a checkpoint incomplete)."""
    doc = inline_doc()
    edit(doc["files"]["a"])
    with pytest.raises(CorruptCheckpointError, match=why):
        Manifest.decode(json.dumps(doc).encode(), key=KEY)


def test_an_inline_field_in_a_format_1_record_is_not_read() -> None:
    """Format 1 has no inline bytes: a record that claims format 1 names payload
    objects, as an asynccp that predates format 3 would read it."""
    doc = inline_doc()
    doc["format"] = 1
    m = Manifest.decode(json.dumps(doc).encode(), key=KEY)
    assert m.files["a"].inline is None and set(m.stored) == {"a", "b"}


def test_key_parsing() -> None:
    assert parse_manifest_key(manifest_key(42)) == (42, 0)
    assert parse_manifest_key(manifest_key(42, 3)) == (42, 3)
    assert parse_manifest_key("manifests/42.json") is None
    assert parse_manifest_key("manifests/.00000000000000000042.json.x.asynccp-tmp") is None
    assert parse_data_dir(f"data/{5:020d}-ab12") == (5, "ab12")
    assert parse_data_dir("data/5-ab12") is None


@pytest.mark.parametrize(
    ("keep", "every", "doomed"),
    [
        (None, None, []),
        (3, None, [0, 1, 2, 3, 4, 5, 6]),
        (3, 5, [1, 2, 3, 4, 6]),
        (0, None, list(range(10))),
        (20, None, []),
    ],
)
def test_retention_arithmetic(keep: int | None, every: int | None, doomed: list[int]) -> None:
    assert steps_to_delete(list(range(10)), keep, every) == doomed
