"""``asynccp restore``: a checkpoint downloaded into a folder, verified.

The newest checkpoint that verifies (or ``--step N``, no fallback); a sharded step
whole, or one part of it (``--shard R``). Files appear in DEST only once all of them
verified; a failed restore leaves no folder it created behind.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from asynccp._catalog import newest as newest_verified
from asynccp._checkpoint import Checkpoint
from asynccp.errors import CorruptCheckpointError, DestinationExistsError

from ._format import emit, fmt_size, one_line
from ._location import Location, load_step, open_location
from ._messages import Failure, UsageError

__all__ = ["cmd_restore"]


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or a
    parent), or None when ``path`` exists: what a failed restore must remove again."""
    missing = None
    path = path.absolute()
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


async def cmd_restore(args: argparse.Namespace) -> int:
    loc = open_location(args)
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():  # noqa: ASYNC240 - a CLI, one stat
        raise UsageError(f"DEST {dest} exists and is not a directory")
    created = _first_missing(dest)
    try:
        c, path = await _restore(loc, dest, args.step, args.shard, args.force)
    except DestinationExistsError as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise Failure(
            f"restoring would overwrite {e.filename}, which exists: nothing restored; "
            "pass --force to replace it"
        ) from None
    except BaseException:
        # Nothing was restored: leave no empty destination behind, but only remove
        # what this command created (a DEST that existed before stays as it was).
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    doc = {
        "location": loc.description,
        "step": c.step,
        "dest": str(path),
        "files": sorted(c.files),
        "size": c.size,
    }
    what = "step" if c.part is None else f"part {c.part} of {c.shards} of step"
    if c.part is not None:
        doc["shard"] = c.part
    emit(
        args.json,
        doc,
        lambda: f"restored {what} {c.step} ({len(c.files)} file(s), {fmt_size(c.size)}) to {path}",
    )
    return 0


async def _restore(
    loc: Location, dest: Path, step: int | None, shard: int | None, force: bool
) -> tuple[Checkpoint, Path]:
    """Download ``step`` (or the newest checkpoint that verifies) into ``dest``: the
    whole of it, or part ``shard`` (of a step whose every part verifies). Files in
    ``dest`` are replaced only when ``force``."""

    async def one(c: Checkpoint) -> tuple[Checkpoint, Path]:
        if shard is None:
            return c, await c.download(dest, overwrite=force)
        part = c.shard(shard)  # a clear error if it has no such part
        if c.shards > 1:
            await c.verify()  # every part, as a resuming shard would judge the step
        return part, await part.download(dest, overwrite=force)

    if step is not None:
        c = await load_step(loc, step)
        try:
            return await one(c)
        except CorruptCheckpointError as e:
            raise Failure(f"checkpoint {step} failed verification: {one_line(e)}") from None
    found = await newest_verified(loc, one)
    if found is None:
        raise Failure(f"no checkpoint in {loc.description} verifies; nothing restored")
    return found[1]
