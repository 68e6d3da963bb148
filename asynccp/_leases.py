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

from ._layout import WRITERS, lease_key, parse_lease_key
from ._store import ObjectInfo, Store, call

__all__ = [
    "EXPIRES_SECONDS",
    "RENEW_SECONDS",
    "LeaseKeeper",
    "Leases",
    "drop",
    "read_leases",
    "renew",
]

log = logging.getLogger("asynccp")

#: How often an open writer rewrites its lease.
RENEW_SECONDS = 30.0
#: A lease not rewritten for this long belongs to a writer presumed dead.
EXPIRES_SECONDS = 300.0


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


async def renew(store: Store, writer: str, generation: str | None = None) -> None:
    """Write (or rewrite) ``writer``'s lease (naming its ``generation`` when sharded)."""
    key = lease_key(writer)
    body = _body(writer, generation)
    await call(store, store.put, key, body, key=key, action="writing the lease")


async def drop(store: Store, writer: str) -> None:
    """Delete ``writer``'s lease (the writer closed)."""
    key = lease_key(writer)
    await call(store, store.delete, [key], key=key, action="deleting the lease")


class LeaseKeeper:
    """An open writer's lease: written at once, rewritten every :data:`RENEW_SECONDS`
    while :meth:`run` runs (until :meth:`stop`), deleted by :meth:`release`.

    ``written`` is set once the first write is done (or failed: a writer without a
    lease only risks its slow commits being checked afterwards); uploads wait for it.
    Failures are logged, never raised: the lease protects the writer's uploads, it is
    no reason to stop them. :meth:`run` is shielded from its caller's cancellation: the
    lease must outlive a cancelled body while the exit flush runs.
    """

    def __init__(self, store: Store, writer: str, generation: str | None = None) -> None:
        self.store = store
        self.writer = writer
        self.generation = generation
        self.written = anyio.Event()
        self._stopped = False
        self._scope: anyio.CancelScope | None = None

    async def run(self) -> None:
        """Keep the lease until :meth:`stop`."""
        with anyio.CancelScope(shield=True) as self._scope:
            while not self._stopped:
                try:
                    await renew(self.store, self.writer, self.generation)
                except Exception as e:
                    log.warning(
                        "asynccp: could not write the lease of writer %s: %s", self.writer, e
                    )
                finally:
                    self.written.set()
                await anyio.sleep(RENEW_SECONDS)

    def stop(self) -> None:
        """Stop renewing (the writer is closing)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def release(self, seconds: float) -> None:
        """Delete the lease, giving up after ``seconds`` (an expired lease is harmless too)."""
        with anyio.move_on_after(seconds):
            try:
                await drop(self.store, self.writer)
            except Exception as e:
                log.info("asynccp: could not delete the lease of writer %s: %s", self.writer, e)


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
            writer: o.last_modified for o in objs if (writer := parse_lease_key(o.key)) is not None
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


async def read_leases(store: Store, collector: str, generation: str | None = None) -> Leases:
    """Renew ``collector``'s own lease (naming its ``generation``, if it is a sharded
    writer), then list every lease; its time is "now"."""
    await renew(store, collector, generation)
    objs = await call(store, store.list_objects, WRITERS, key=WRITERS, action="listing")
    own = lease_key(collector)
    stamp = next((o.last_modified for o in objs if o.key == own), None)
    if stamp is None:  # pragma: no cover - a store that lost a write it acknowledged
        raise RuntimeError(f"the lease {own} just written is not listed")
    others = [o.key for o in objs if o.key != own and parse_lease_key(o.key) is not None]
    dead, generations = await call(
        store, _dead_here, store, others, key=WRITERS, action="reading leases in"
    )
    return Leases(objs, stamp, dead, generations)


def _dead_here(store: Store, keys: list[str]) -> tuple[set[str], dict[str, str]]:
    """Writers whose lease names a process of this machine that is gone, and the
    generation each sharded writer's lease names (worker thread)."""
    machine = _machine()
    dead = set()
    generations: dict[str, str] = {}
    for key in keys:
        try:
            doc = json.loads(store.get(key))
        except Exception:  # deleted meanwhile, or not ours to read: judged by age alone
            continue
        if not isinstance(doc, dict):
            continue
        pid, writer = doc.get("pid"), parse_lease_key(key)
        if writer and isinstance(doc.get("generation"), str):
            generations[writer] = doc["generation"]
        if doc.get("machine") == machine and isinstance(pid, int) and _pid_gone(pid) and writer:
            dead.add(writer)
    return dead, generations
