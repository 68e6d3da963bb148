"""``asynccp gc``: retention, invalid checkpoints, quarantine, orphans.

Retention never trades a checkpoint that verifies for one that does not
(:func:`asynccp._retention.apply_retention`); invalid checkpoints and quarantined
records go only when asked; orphaned payload folders older than ``--orphan-grace``.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from asynccp._catalog import survey
from asynccp._layout import PARTS
from asynccp._retention import apply_retention, collect_orphans, purge_quarantine, remove_invalid

from ._format import emit, fmt_steps
from ._location import open_location
from ._messages import PROG, UsageError

__all__ = ["cmd_gc"]


async def cmd_gc(args: argparse.Namespace) -> int:
    if args.keep is None and args.invalid == "keep" and args.quarantine == "keep":
        raise UsageError(
            "gc: say what to delete: --keep N (retention), --invalid quarantine|delete or "
            f"--quarantine purge (see {PROG} gc --help)"
        )
    loc = open_location(args)
    dry = args.dry_run
    invalid = [e.record.step for e in await survey(loc) if e.checkpoint is None]
    retained = await apply_retention(loc, args.keep, args.keep_every, dry_run=dry)
    removed: list[int] = []
    if args.invalid != "keep":
        removed = invalid if dry else await remove_invalid(loc, how=args.invalid)
    purged: list[str] = []
    if args.quarantine == "purge":
        purged = await purge_quarantine(loc, dry_run=dry)
    orphans = await collect_orphans(loc, timedelta(seconds=args.orphan_grace), dry_run=dry)
    doc = {
        "location": loc.description,
        "dry_run": dry,
        "deleted_steps": retained.deleted,
        "kept_steps": retained.kept,
        "verified_steps": retained.verified,
        "not_verifying_steps": retained.not_verifying,
        "retention_held": retained.held,
        "invalid_steps": invalid,
        "invalid_action": args.invalid,
        "invalid_removed": removed,
        "quarantine_purged": purged,
        "orphans_collected": orphans,
    }

    def text() -> str:
        would = "would be " if dry else ""
        lines = []
        if args.keep is not None:
            deleted = retained.deleted
            verb = "would delete" if dry else "deleted"
            lines.append(
                f"{verb} {len(deleted)} checkpoint(s)"
                + (f": {fmt_steps(deleted)}" if deleted else "")
            )
            kept = retained.kept
            lines.append(
                f"kept {len(kept)} checkpoint(s)" + (f": {fmt_steps(kept)}" if kept else "")
            )
            if retained.verified:
                lines.append(
                    f"read and verified before relying on them: {fmt_steps(retained.verified)}"
                )
            if retained.not_verifying:
                lines.append(
                    f"{len(retained.not_verifying)} checkpoint(s) do not verify (not counted, "
                    f"not deleted; `asynccp verify` says why): {fmt_steps(retained.not_verifying)}"
                )
            if retained.held:
                lines.append(f"deleted nothing: {retained.held}")
        if invalid:
            if args.invalid == "keep":
                lines.append(
                    f"left {len(invalid)} invalid checkpoint(s) as they are: {fmt_steps(invalid)} "
                    "(--invalid quarantine or --invalid delete to remove them)"
                )
            else:
                done = {"quarantine": "moved to quarantine/", "delete": "deleted"}[args.invalid]
                lines.append(
                    f"{len(removed)} invalid checkpoint(s) {would}{done}: {fmt_steps(removed)}"
                )
        if args.quarantine == "purge":
            lines.append(f"{len(purged)} quarantined record(s) {would}deleted, with their payload")
        parts = [o for o in orphans if o.startswith(PARTS)]
        verb = "would collect" if dry else "collected"
        lines.append(
            f"{verb} {len(orphans) - len(parts)} orphaned payload folder(s) "
            f"older than {args.orphan_grace:g} s"
            + (f", and the part records of {len(parts)} abandoned sharded step(s)" if parts else "")
        )
        return "\n".join(lines)

    emit(args.json, doc, text)
    return 0
