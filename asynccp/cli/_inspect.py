"""The commands that look: ``ls`` (the catalog), ``show`` (one checkpoint), ``verify``.

``ls`` and ``show`` print a checkpoint the same way in both of their forms: a row or a
page for people, a JSON document (:func:`_ckpt_doc`) with ``--json``. ``verify`` reads
every byte and exits 1 when a checkpoint fails.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from asynccp._catalog import list_steps, load, quarantined, survey
from asynccp._checkpoint import Checkpoint
from asynccp._shards import PartGroup, uncommitted
from asynccp._store import resolve
from asynccp.errors import CheckpointError, StoreError

from ._format import clip, emit, fmt_size, one_line, table, to_json
from ._location import load_step, open_location

__all__ = ["cmd_ls", "cmd_show", "cmd_verify"]


def _ckpt_doc(c: Checkpoint) -> dict[str, Any]:
    doc = {
        "step": c.step,
        "created_at": c.created_at.isoformat(),
        "attempt": c.attempt,
        "writer": c.writer,
        "size": c.size,
        "metadata": dict(c.metadata),
        "files": {n: {"size": f.size, "checksum": f.checksum} for n, f in c.files.items()},
        "shards": c.shards,
    }
    if c.generation is not None:
        doc["generation"] = c.generation
        doc["parts"] = [
            {
                "shard": r,
                "writer": p.writer,
                "attempt": p.attempt,
                "created_at": p.created_at.isoformat(),
                "size": p.size,
                "files": len(p.files),
                "metadata": dict(p.metadata),
            }
            for r, p in enumerate(c.shard(r) for r in range(c.shards))
        ]
    return doc


def _writer(c: Checkpoint) -> str:
    """The WRITER column: the writer, or a sharded step's generation."""
    if c.generation is None:
        return c.writer
    gen = c.generation if len(c.generation) <= 24 else c.generation[:23] + "…"
    return f"gen {gen}"


def _pending(g: PartGroup) -> str:
    """One line on a step whose parts are not all in (what `ls` prints after the table)."""
    counts = g.shard_counts
    head = f"step {g.step} (generation {g.generation}): "
    if len(counts) > 1:
        return head + (
            f"part records disagree on the number of shards ({', '.join(map(str, counts))}): "
            "never committed"
        )
    missing = g.missing
    shown = ", ".join(map(str, missing[:8])) + (", …" if len(missing) > 8 else "")
    if not missing:
        return head + f"all {counts[0]} parts recorded, no manifest (its last part died?)"
    return head + f"{len(g.records)} of {counts[0]} parts recorded; waiting for {shown}"


def _pending_doc(g: PartGroup) -> dict[str, Any]:
    return {
        "step": g.step,
        "generation": g.generation,
        "shards": g.shard_counts,
        "recorded": sorted(r for r, _ in g.records),
        "missing": g.missing,
    }


def _when(c: Checkpoint) -> str:
    return c.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _meta(meta: Any, width: int = 48) -> str:
    """The METADATA column: compact JSON, cut to ``width`` terminal cells."""
    return clip(to_json(dict(meta), separators=(",", ":")), width) if meta else ""


async def cmd_ls(args: argparse.Namespace) -> int:
    loc = open_location(args)
    steps = await survey(loc)
    quarantine = await quarantined(loc)
    pending = await uncommitted(loc)
    ckpts = [e.checkpoint for e in steps if e.checkpoint is not None]
    invalid = [e for e in steps if e.checkpoint is None]
    local, lag = await _local_tier(args.local, ckpts)
    tiers = {c.step: "local+remote" if c.step in local else "remote" for c in ckpts}
    tiers.update({s: "local" for s in local if s not in tiers})
    # (step, the tiers, the checkpoint or None, why not), oldest first
    shown = [(e.record.step, "remote", e.checkpoint, e.problem) for e in steps]
    shown += [(s, "local", local[s], None) for s in tiers if tiers[s] == "local"]
    shown.sort(key=lambda entry: entry[0])

    def text() -> str:
        if not shown and not quarantine and not pending:
            return f"no checkpoints in {loc.description}"
        rows = []
        for step, where, c, problem in shown:
            if c is None:
                why = clip(" ".join((problem or "").split()), 100)
                rows.append([str(step), "INVALID", "", "", "", "", "", why])
                if lag is not None:
                    rows[-1].insert(1, where)
                continue
            rows.append(
                [
                    str(c.step),
                    _when(c),
                    str(c.shards),
                    str(len(c.files)),
                    fmt_size(c.size),
                    str(c.attempt),
                    _writer(c),
                    _meta(c.metadata),
                ]
            )
            if lag is not None:
                rows[-1].insert(1, tiers[c.step])
        head = ["STEP", "CREATED (UTC)", "SHARDS", "FILES", "SIZE", "ATTEMPT", "WRITER", "METADATA"]
        right = {0, 2, 3, 4, 5}
        if lag is not None:
            head.insert(1, "TIERS")
            right = {0, 3, 4, 5, 6}
        total = sum(c.size for c in ckpts)
        out = table(head, rows, right=right) if rows else ""
        summary = f"{len(ckpts)} valid checkpoint(s), {fmt_size(total)}"
        summary += f", newest valid step {ckpts[-1].step}" if ckpts else ""
        if invalid:
            summary += (
                f"; {len(invalid)} invalid (skipped by readers; `gc --invalid quarantine` "
                "moves them aside)"
            )
        out += ("\n" if out else "") + summary
        if quarantine:
            out += f"\nquarantine/ holds {len(quarantine)} record(s) kept for inspection:"
            out += "".join(f"\n  {k}" for k in quarantine)
        if pending:
            out += (
                f"\n{len(pending)} sharded step(s) not committed (readers do not see them; "
                "`gc` collects the parts of launches that are gone):"
            )
            out += "".join(f"\n  {_pending(g)}" for g in pending)
        if lag is not None:
            out += (
                f"\nlocal tier {args.local}: {len(local)} checkpoint(s); replication lag "
                f"{lag['steps']} step(s), {fmt_size(lag['bytes'])}, {lag['seconds']:.1f} s"
            )
        return out

    doc: dict[str, Any] = {
        "location": loc.description,
        "checkpoints": [_ckpt_doc(c) for c in ckpts],
        "invalid": [
            {"step": e.record.step, "key": e.record.key, "problem": e.problem} for e in invalid
        ],
        "quarantine": quarantine,
        "uncommitted_parts": [_pending_doc(g) for g in pending],
    }
    if lag is not None:
        doc["local"] = args.local
        doc["tiers"] = {str(s): tiers[s] for s in sorted(tiers)}
        doc["local_checkpoints"] = [_ckpt_doc(local[s]) for s in sorted(local)]
        doc["replication_lag"] = lag
    emit(args.json, doc, text)
    return 0


async def _local_tier(
    path: str | None, remote: list[Checkpoint]
) -> tuple[dict[int, Checkpoint], dict[str, Any] | None]:
    """The local tier's valid checkpoints by step, and how far the remote tier is behind
    it (the local steps newer than the remote's newest: steps, bytes, seconds)."""
    if path is None:
        return {}, None
    found = await survey(resolve(path))  # (a directory that is gone: nothing)
    local = {e.checkpoint.step: e.checkpoint for e in found if e.checkpoint is not None}
    newest = remote[-1].step if remote else -1
    behind = [c for s, c in local.items() if s > newest]
    oldest = min((c.created_at for c in behind), default=None)
    seconds = 0.0 if oldest is None else (datetime.now(timezone.utc) - oldest).total_seconds()
    return local, {
        "steps": len(behind),
        "bytes": sum(c.size for c in behind),
        "seconds": round(max(0.0, seconds), 3),
    }


async def cmd_show(args: argparse.Namespace) -> int:
    loc = open_location(args)
    c = await load_step(loc, args.step)

    def text() -> str:
        lines = [
            f"step        {c.step}",
            f"created_at  {c.created_at.isoformat()}",
            f"attempt     {c.attempt}",
            f"writer      {c.writer}",
            f"size        {fmt_size(c.size)} ({c.size} bytes) in {len(c.files)} file(s)",
            f"metadata    {to_json(dict(c.metadata))}",
            "",
        ]
        if c.generation is not None:
            lines[3:4] = [
                f"shards      {c.shards}",
                f"generation  {c.generation}",
                "writer      (of each part below; attempt and metadata above are part 0's)",
            ]
            parts = [c.shard(r) for r in range(c.shards)]
            prow = [
                [str(r), p.writer, str(p.attempt), str(len(p.files)), fmt_size(p.size)]
                for r, p in enumerate(parts)
            ]
            head = ["SHARD", "WRITER", "ATTEMPT", "FILES", "SIZE"]
            lines += [table(head, prow, right={0, 2, 3, 4}), ""]
        rows = [[n, str(f.size), f.checksum] for n, f in sorted(c.files.items())]
        return "\n".join(lines) + table(["FILE", "BYTES", "CHECKSUM"], rows, right={1})

    emit(args.json, {"location": loc.description, **_ckpt_doc(c)}, text)
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    loc = open_location(args)
    steps = [args.step] if args.step is not None else await list_steps(loc)
    results = []
    for step in steps:
        entry: dict[str, Any] = {"step": step, "ok": False, "error": None}
        try:
            c = await load(loc, step)
            entry.update(files=len(c.files), size=c.size, shards=c.shards)
            await c.verify()
            entry["ok"] = True
        except StoreError as e:
            entry["error"] = f"store error: {one_line(e)}"
        except CheckpointError as e:
            entry["error"] = one_line(e)
        results.append(entry)
        if not args.json:
            if entry["ok"]:
                parts = f" in {entry['shards']} shards" if entry["shards"] > 1 else ""
                print(
                    f"step {step}: ok ({entry['files']} file(s){parts}, {fmt_size(entry['size'])})"
                )
            else:
                print(f"step {step}: FAILED: {entry['error']}")
    failed = [r["step"] for r in results if not r["ok"]]
    if args.json:
        print(
            json.dumps(
                {"location": loc.description, "ok": not failed, "checkpoints": results}, indent=2
            )
        )
    elif not results:
        print(f"no checkpoints in {loc.description}")
    else:
        print(
            f"{len(results) - len(failed)} of {len(results)} checkpoint(s) verified"
            + (f"; failed: {failed}" if failed else "")
        )
    return 1 if failed else 0
