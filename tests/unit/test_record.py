"""Unit tests of ``asynccp._write._record``: whether a step's existing record is a commit
of the same launch (a sharded step's manifest, which every shard may create).

Records are compact JSON now; earlier releases wrote the same document indented. A
shard that finds the step's manifest already created compares the documents, not the
bytes, so a record of the same part records written either way is "ours".
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import asynccp
from asynccp import Checkpointer
from asynccp._catalog import Record
from asynccp._store import resolve
from asynccp._write._record import _why_replaceable


def manifest_key(step: int) -> str:
    return f"manifests/{step:020d}.json"


async def test_a_sharded_record_written_indented_is_the_same_commit(tmp_path: Path) -> None:
    opts = asynccp.StoreOptions(durable=False)
    async with AsyncExitStack() as stack:
        cps = [
            await stack.enter_async_context(
                Checkpointer(
                    tmp_path,
                    store=opts,
                    sharding=asynccp.Sharding(shard=r, shards=2, generation="g"),
                )
            )
            for r in range(2)
        ]
        for cp in cps:
            await (await cp.save(0, {"state": b"part %d" % (cp.shard or 0)}))
        writer = cps[0].writer_id
    path = tmp_path / manifest_key(0)
    ours = path.read_bytes()
    assert b"\n" not in ours  # compact: what this release writes
    path.write_bytes(json.dumps(json.loads(ours), indent=1, sort_keys=True).encode())
    store = resolve(tmp_path, opts)
    record = Record(0, manifest_key(0), 0)

    assert await _why_replaceable(store, record, writer, set(), ours) == "ours"
    other = json.loads(ours)
    other["parts"][1]["files"]["state"]["size"] += 1
    why = await _why_replaceable(store, record, writer, set(), json.dumps(other).encode())
    assert why == "its record names this step's part records but differs from them"
