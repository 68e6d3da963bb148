"""Writer leases: how an orphan collector tells a live writer from a dead one.

A payload folder with no manifest is either abandoned (its writer crashed or lost a
race) or still uploading (its writer is about to commit). Age alone cannot tell them
apart: a commit held up by a slow store, a suspended process, or two hosts whose clocks
disagree all make a live upload look old. So every open :class:`~asynccp.Checkpointer`
keeps a small lease object, ``writers/<writer>.json``, rewritten every
:data:`RENEW_SECONDS`. A collector never takes the folders of a writer whose lease is
younger than :data:`EXPIRES_SECONDS`, and it judges every age by the *store's* clock:
the modification time of its own lease, written just before, is "now".

The lease of a sharded writer also names its generation (its launch): while any writer
of a generation is alive, no part that generation recorded is collected, since
another of its shards may yet complete the step.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime

import anyio

from ._location import Location, ObjectInfo
from ._manifest import WRITERS

__all__ = [
    "EXPIRES_SECONDS",
    "RENEW_SECONDS",
    "Leases",
    "drop",
    "lease_key",
    "read_leases",
    "renew",
]

log = logging.getLogger("asynccp")

#: How often an open writer rewrites its lease.
RENEW_SECONDS = 30.0
#: A lease not rewritten for this long belongs to a writer presumed dead.
EXPIRES_SECONDS = 300.0


def lease_key(writer: str) -> str:
    """The key of ``writer``'s lease (relative to the location)."""
    return f"{WRITERS}{writer}.json"


def _machine() -> str:
    """This process's machine and pid namespace: pids are comparable only within it."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # not Linux: the host name alone
        pass
    return "/".join(parts)


def _body(writer: str, generation: str | None) -> bytes:
    doc: dict[str, object] = {"writer": writer, "machine": _machine(), "pid": os.getpid()}
    if generation is not None:
        doc["generation"] = generation
    return json.dumps(doc).encode()


def _pid_gone(pid: int) -> bool:
    """Whether process ``pid`` of this machine is gone (dead, or a zombie not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


async def renew(location: Location, writer: str, generation: str | None = None) -> None:
    """Write (or rewrite) ``writer``'s lease (naming its ``generation`` when sharded)."""
    await anyio.to_thread.run_sync(
        location.put, lease_key(writer), _body(writer, generation), abandon_on_cancel=True
    )


async def drop(location: Location, writer: str) -> None:
    """Delete ``writer``'s lease (the writer closed)."""
    await anyio.to_thread.run_sync(location.delete, [lease_key(writer)], abandon_on_cancel=True)


class Leases:
    """The leases found at a location, and the store's clock as they show it.

    A lease younger than :data:`EXPIRES_SECONDS` means its writer is alive, unless the
    lease names a process of this very machine that is gone: then it was killed (a
    SIGKILL leaves its lease behind) and its uploads can be collected at once.
    """

    def __init__(
        self,
        objs: list[ObjectInfo],
        now: datetime,
        dead: set[str],
        generations: dict[str, str] | None = None,
    ) -> None:
        self.now = now
        self._dead = dead
        self._generations = generations or {}
        self._seen = {
            o.key[len(WRITERS) :].removesuffix(".json"): o.last_modified
            for o in objs
            if o.key.endswith(".json")
        }

    def alive(self, writer: str) -> bool:
        """Whether ``writer`` renewed its lease recently (by the store's clock)."""
        seen = self._seen.get(writer)
        if seen is None or writer in self._dead:
            return False
        return (self.now - seen).total_seconds() < EXPIRES_SECONDS

    def live_generations(self) -> set[str]:
        """The generations (launches of a sharded job) with a writer alive."""
        return {g for w, g in self._generations.items() if self.alive(w)}

    def expired(self) -> list[str]:
        """Keys of leases whose writers are gone: to delete."""
        return [
            lease_key(w)
            for w, seen in self._seen.items()
            if w in self._dead or (self.now - seen).total_seconds() > 4 * EXPIRES_SECONDS
        ]


async def read_leases(location: Location, collector: str, generation: str | None = None) -> Leases:
    """Renew ``collector``'s own lease (naming its ``generation``, if it is a sharded
    writer), then list every lease; its time is "now"."""
    await renew(location, collector, generation)
    objs = await anyio.to_thread.run_sync(location.list, WRITERS, abandon_on_cancel=True)
    own = lease_key(collector)
    stamp = next((o.last_modified for o in objs if o.key == own), None)
    if stamp is None:  # pragma: no cover - a store that lost a write it acknowledged
        raise RuntimeError(f"the lease {own} just written is not listed")
    others = [o.key for o in objs if o.key != own and o.key.endswith(".json")]
    dead, generations = await anyio.to_thread.run_sync(
        _dead_here, location, others, abandon_on_cancel=True
    )
    return Leases(objs, stamp, dead, generations)


def _dead_here(location: Location, keys: list[str]) -> tuple[set[str], dict[str, str]]:
    """Writers whose lease names a process of this machine that is gone, and the
    generation each sharded writer's lease names (worker thread)."""
    machine = _machine()
    dead = set()
    generations = {}
    for key in keys:
        try:
            doc = json.loads(location.get(key))
        except Exception:  # deleted meanwhile, or not ours to read: judged by age alone
            continue
        if not isinstance(doc, dict):
            continue
        writer = key[len(WRITERS) :].removesuffix(".json")
        if isinstance(doc.get("generation"), str):
            generations[writer] = doc["generation"]
        pid = doc.get("pid")
        if doc.get("machine") == machine and isinstance(pid, int) and _pid_gone(pid):
            dead.add(writer)
    return dead, generations
