"""Save and restore a few checkpoints on several stores, then exit: the exit code must be 0.

Run many times by tests/test_exit_code.py under CPU load (obstore's asyncio API can abort
the interpreter at exit; asynccp, which calls its synchronous API, must not)::

    python exit_code_run.py asyncio|trio [S3_URL]

Uses a local directory and an in-memory store, plus ``S3_URL`` when given (endpoint
and credentials from the ``AWS_*`` environment variables). Prints ``ok <backend>
<n stores>`` when every checkpoint read back equal, then returns normally so that the
interpreter's own shutdown is what is tested.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

import anyio
from obstore.store import MemoryStore

import asynccp


def payload(step: int) -> dict[str, bytes]:
    rng = random.Random(step)
    return {"model.bin": rng.randbytes(200_000), "meta/state.txt": f"step {step}".encode()}


async def round_trip(location: Any, tmp: Path) -> None:
    """Save three steps, then read, verify and restore them with a second checkpointer."""
    async with asynccp.Checkpointer(location) as cp:
        prev = await cp.latest()
        start = 0 if prev is None else prev.step + 1
        for step in range(start, start + 3):
            await cp.save(step, payload(step))
    async with asynccp.Checkpointer(location) as cp:
        latest = await cp.latest()
        assert latest is not None and latest.step == start + 2, latest
        await latest.verify()
        assert await latest.read("model.bin") == payload(latest.step)["model.bin"]
        out = await cp.restore(tmp / "restored")
        assert out is not None
        assert (out / "meta" / "state.txt").read_bytes() == f"step {start + 2}".encode()


async def main(backend: str, s3_url: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="asynccp-exit-") as tmp:
        locations: list[Any] = [Path(tmp) / "local", MemoryStore()]
        if s3_url:
            locations.append(s3_url)
        for i, location in enumerate(locations):
            await round_trip(location, Path(tmp) / f"out{i}")
        print(f"ok {backend} {len(locations)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=["asyncio", "trio"])
    parser.add_argument("s3_url", nargs="?", default=None)
    args = parser.parse_args()
    anyio.run(main, args.backend, args.s3_url, backend=args.backend)
