"""Unit tests of ``asynccp._propeller``: Flyte's checkpoint prefix of each attempt.

The expected values are flytepropeller's: FNV-1a 32 (Go's ``hash/fnv``, whose published
test vectors are used here), shards from the 36 * 36 ``[a-z0-9]`` pairs, and the
``<raw>/<shard>/<execution>-<node>-<attempt>/_flytecheckpoints`` layout.
"""

from __future__ import annotations

import pytest

from asynccp._propeller import fnv32a, previous_prefix, shard_of


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)],
)
def test_fnv32a_matches_the_published_vectors(data: bytes, expected: int) -> None:
    assert fnv32a(data) == expected


def test_the_shard_is_the_hash_bucket_of_the_pairs() -> None:
    # fnv32a("a") = 0xe40c292c = 3826002220; % 1296 = 268 = 7 * 36 + 16: "h" then "q"
    assert shard_of("a") == "hq"
    shards = {shard_of(f"exec-n0-{k}") for k in range(500)}
    assert all(len(s) == 2 and s.isalnum() and s == s.lower() for s in shards)
    assert len(shards) > 300  # spread over the 1296 buckets


def prefix(base: str, unique_id: str) -> str:
    return f"{base}/{shard_of(unique_id)}/{unique_id}/_flytecheckpoints"


@pytest.mark.parametrize("base", ["s3://bucket/metadata/raw", "/tmp/raw", "gs://b/x/y"])
def test_the_previous_attempt_follows_by_the_layout(base: str) -> None:
    third = prefix(base, "a8xkdj3lslk2-n0-2")
    assert previous_prefix(third) == prefix(base, "a8xkdj3lslk2-n0-1")
    assert previous_prefix(third + "/") == prefix(base, "a8xkdj3lslk2-n0-1")
    assert previous_prefix(prefix(base, "a8xkdj3lslk2-n0-1")) == prefix(base, "a8xkdj3lslk2-n0-0")
    assert previous_prefix(prefix(base, "a8xkdj3lslk2-n0-10")) == prefix(base, "a8xkdj3lslk2-n0-9")


@pytest.mark.parametrize(
    "path",
    [
        prefix("s3://b/raw", "exec-n0-0"),  # the first attempt: no attempt before it
        prefix("s3://b/raw", "fvh2k3mq"),  # a hashed id (a long one): cannot be undone
        "s3://b/raw/zz/exec-n0-2/_flytecheckpoints",  # the shard does not match the id
        "s3://b/raw/exec-n0-2/_flytecheckpoints",  # no shard folder
        prefix("s3://b/raw", "exec-n0-2").replace("_flytecheckpoints", "checkpoints"),
        "/tmp/run/attempt-2",  # not Flyte's layout at all
        "/tmp/flyte-sandbox/local_flytekit/__cp",  # a local run's sandbox
        "",
    ],
)
def test_no_previous_attempt_outside_the_layout(path: str) -> None:
    assert previous_prefix(path) is None
