"""Save a file payload again and again, with a staging folder of its own, until killed.

Run by tests/test_staging.py as a subprocess, which SIGKILLs it::

    python staging_saver.py LOCATION STAGING_DIR SOURCE_FILE

Opens a Checkpointer on the local directory LOCATION with ``staging_dir=STAGING_DIR``
and saves SOURCE_FILE (so it is copied into the staging folder) at every step. Prints
``ready`` once the first checkpoint has committed: the process then has an open
Checkpointer, and a staging folder that is in use.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import anyio

import asynccp


async def main(location: Path, staging_dir: Path, source: Path) -> None:
    async with asynccp.Checkpointer(location, staging_dir=staging_dir, keep=2) as cp:
        await (await cp.save(0, source))
        print("ready", flush=True)
        for step in itertools.count(1):
            await cp.save(step, source)  # staged copies come and go until the kill
            await anyio.sleep(0.005)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location", type=Path)
    parser.add_argument("staging_dir", type=Path)
    parser.add_argument("source", type=Path)
    args = parser.parse_args()
    anyio.run(main, args.location, args.staging_dir, args.source)
