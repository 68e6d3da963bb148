"""A checkpointer's settings as values: :class:`Limits`, :class:`Retention`,
:class:`StoreOptions`, :class:`Sharding`, and :class:`Options`, all of them together.

Each is a frozen dataclass that checks itself when made (wrong type: ``TypeError``; bad
value: ``ValueError``; no I/O), so a setting is validated once, where it is written,
and can be made once and handed to every entry point that opens a checkpointer:
:class:`~asynccp.Checkpointer`, :func:`~asynccp.supervise`,
:func:`~asynccp.checkpointed`, :func:`~asynccp.lifespan` and the Flyte plugins all take
the same keyword arguments (:class:`CheckpointerOptions`) and turn them into one
:class:`Options` with :func:`options` — the one code path, with ``keep=`` and
``policy=`` as shortcuts for the setting used most in each value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypedDict

from ._checks import check_int, check_seconds, unknown_keyword
from ._shard_records import ShardSpec, sharding
from ._store import StoreOptions
from ._types import Policy

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - 3.10 only
    from typing_extensions import Unpack

__all__ = [
    "CheckpointerOptions",
    "DEFAULT_LOCAL_KEEP",
    "Limits",
    "Options",
    "Retention",
    "Sharding",
    "StoreOptions",
    "Unpack",
    "MOVED",
    "OPTION_NAMES",
    "check_keywords",
    "keywords",
    "options",
    "options_of",
]


@dataclass(frozen=True)
class Limits:
    """What a checkpointer holds before it is committed, and what ``save()`` does then.

    Args:
        max_pending: checkpoints staged but not yet committed before ``save()`` has to
            wait (``policy="block"``) or supersede (``policy="latest"``).
        max_pending_bytes: bytes staged but not yet committed (the memory bound). One
            checkpoint larger than this is accepted alone, once the queue is empty.
        policy: ``"block"`` (backpressure: every save commits) or ``"latest"`` (a full
            queue drops the oldest checkpoint not yet started; its handle raises
            :class:`~asynccp.SupersededError`).
        max_concurrency: files of one checkpoint uploaded at once.
    """

    max_pending: int = 4
    max_pending_bytes: int = 1 << 30
    policy: Policy = "block"
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        check_int("max_pending", self.max_pending, minimum=1)
        check_int("max_pending_bytes", self.max_pending_bytes, minimum=1)
        check_int("max_concurrency", self.max_concurrency, minimum=1)
        _check_policy(self.policy)


@dataclass(frozen=True)
class Retention:
    """Which committed checkpoints stay, and when uncommitted payload is collected.

    Retention never trades a checkpoint that verifies for one that does not (see
    ``docs/resuming.md``).

    Args:
        keep: keep the newest ``keep`` checkpoints (None keeps all).
        keep_every: also keep every step divisible by this (milestones).
        orphan_grace: seconds (or a ``timedelta``) before a payload folder no record
            names — a crashed or losing writer's — is collected; never while its
            writer is alive.
    """

    keep: int | None = None
    keep_every: int | None = None
    orphan_grace: float = 3600.0

    def __post_init__(self) -> None:
        if self.keep is not None:
            check_int("keep", self.keep, minimum=1)
        if self.keep_every is not None:
            check_int("keep_every", self.keep_every, minimum=1)
        object.__setattr__(self, "orphan_grace", check_seconds("orphan_grace", self.orphan_grace))


@dataclass(frozen=True)
class Sharding:
    """This process writes part ``shard`` (0-based) of every step, of ``shards`` parts
    written by as many processes.

    A step is committed, and seen by readers, once all its parts are recorded; a save's
    handle resolves when this part is. Only shard 0 applies retention. See
    ``docs/sharding.md``.

    Args:
        shard: this process's part, like a ``torch.distributed`` rank.
        shards: how many parts (processes) each step has.
        generation: the name of this launch of the ``shards`` processes, the same in
            each and unique to the launch; by default found in the environment
            (``ASYNCCP_GENERATION``, torchrun, Slurm).
    """

    shard: int
    shards: int
    generation: str | int | None = None

    def __post_init__(self) -> None:
        spec = sharding(self.shard, self.shards, self.generation, writer="")
        if spec is not None and spec.generation:
            object.__setattr__(self, "generation", spec.generation)

    def spec(self, writer: str) -> ShardSpec:
        """The validated spec for a writer (one shard of none: a generation of its own)."""
        spec = sharding(self.shard, self.shards, self.generation, writer=writer)
        assert spec is not None
        return spec


@dataclass(frozen=True)
class Options:
    """Everything a checkpointer is told, validated: what :func:`options` returns."""

    limits: Limits = field(default_factory=Limits)
    retention: Retention = field(default_factory=Retention)
    store: StoreOptions = field(default_factory=StoreOptions)
    sharding: Sharding | None = None
    flush_timeout: float = 300.0
    staging_dir: str | None = None
    #: The local tier's directory (None: one tier, the location); ``docs/tiers.md``.
    local: str | None = None
    #: Checkpoints kept in the local tier (with ``local`` only).
    local_keep: int | None = None


class CheckpointerOptions(TypedDict, total=False):
    """The keyword arguments every entry point that opens a checkpointer takes (see
    :class:`~asynccp.Checkpointer` for each)."""

    keep: int | None
    policy: Policy | None
    limits: Limits | None
    retention: Retention | None
    store: StoreOptions | None
    sharding: Sharding | None
    flush_timeout: float | timedelta
    staging_dir: str | os.PathLike[str] | None
    local: str | os.PathLike[str] | None
    local_keep: int | None


def options(
    *,
    keep: int | None = None,
    policy: Policy | None = None,
    limits: Limits | None = None,
    retention: Retention | None = None,
    store: StoreOptions | None = None,
    sharding: Sharding | None = None,
    flush_timeout: float | timedelta = 300.0,
    staging_dir: str | os.PathLike[str] | None = None,
    local: str | os.PathLike[str] | None = None,
    local_keep: int | None = None,
) -> Options:
    """Check a checkpointer's keyword arguments and make them one :class:`Options`.

    ``keep=`` and ``policy=`` are shortcuts for ``retention=Retention(keep=...)`` and
    ``limits=Limits(policy=...)``; given with a value that sets them differently, they
    are an error rather than a silent choice.
    """
    limits = _value("limits", limits, Limits)
    retention = _value("retention", retention, Retention)
    store = _value("store", store, StoreOptions)
    if sharding is not None and not isinstance(sharding, Sharding):
        raise TypeError(f"sharding must be an asynccp.Sharding, got {type(sharding).__name__}")
    if keep is not None:
        check_int("keep", keep, minimum=1)
        if retention.keep not in (None, keep):
            raise ValueError(f"keep={keep} and retention=Retention(keep={retention.keep}) disagree")
        retention = replace(retention, keep=keep)
    if policy is not None:
        _check_policy(policy)
        if limits.policy not in ("block", policy):
            raise ValueError(
                f"policy={policy!r} and limits=Limits(policy={limits.policy!r}) disagree"
            )
        limits = replace(limits, policy=policy)
    seconds = check_seconds("flush_timeout", flush_timeout)
    if staging_dir is not None:
        if not isinstance(staging_dir, (str, os.PathLike)):
            raise TypeError(f"staging_dir must be a path, got {type(staging_dir).__name__}")
        staging_dir = os.fspath(staging_dir)
    local, local_keep = _tier(local, local_keep, sharding)
    return Options(limits, retention, store, sharding, seconds, staging_dir, local, local_keep)


#: Checkpoints the local tier keeps unless ``local_keep=`` says otherwise.
DEFAULT_LOCAL_KEEP = 2


def _tier(
    local: str | os.PathLike[str] | None, local_keep: int | None, sharding: Sharding | None
) -> tuple[str | None, int | None]:
    """``local=`` and ``local_keep=`` checked (``local_keep`` defaults to 2 with a
    ``local``, and is an error without one)."""
    if local is None:
        if local_keep is not None:
            raise ValueError("local_keep= applies to the local tier: pass local=<directory> too")
        return None, None
    if not isinstance(local, (str, os.PathLike)):
        raise TypeError(f"local must be a local directory path, got {type(local).__name__}")
    path = os.fspath(local)
    if not isinstance(path, str) or not path:
        raise ValueError(f"local must be a local directory path, got {local!r}")
    if "://" in path:
        if not path.lower().startswith("file://"):
            raise ValueError(
                f"local must be a local directory (a path or a file:// URL), got {path!r}: "
                "the remote tier is the location"
            )
        path = path[len("file://") :]
    if sharding is not None:
        raise ValueError("local= (a local tier) is not supported with sharding= yet")
    if local_keep is None:
        return path, DEFAULT_LOCAL_KEEP
    return path, check_int("local_keep", local_keep, minimum=1)


#: The keyword arguments of :class:`CheckpointerOptions`.
OPTION_NAMES = frozenset(CheckpointerOptions.__annotations__)


#: Keyword arguments of earlier releases, and the value that holds each now.
MOVED = {
    **{k: f"limits=asynccp.Limits({k}=...)" for k in ("max_pending", "max_pending_bytes")},
    "max_concurrency": "limits=asynccp.Limits(max_concurrency=...)",
    **{k: f"retention=asynccp.Retention({k}=...)" for k in ("keep_every", "orphan_grace")},
    **{
        k: f"store=asynccp.StoreOptions({k}=...)"
        for k in ("prefix", "durable", "chunk_size", "part_concurrency", "io_attempts")
    },
    **{k: f"sharding=asynccp.Sharding({k}=...)" for k in ("shard", "shards", "generation")},
}


def check_keywords(caller: str, given: Collection[str], known: Collection[str]) -> None:
    """A ``TypeError`` for the first of ``given`` that ``caller`` does not take, naming
    the closest known name (``kep=3`` -> ``keep``), or the value that holds a keyword of
    an earlier release (``max_pending=`` -> ``limits=asynccp.Limits(max_pending=...)``);
    any other keyword may have been meant for obstore."""
    for key in sorted(given):
        if key in known:
            continue
        if key in MOVED:
            raise TypeError(f"{caller} takes no {key}= any more: pass {MOVED[key]}")
        hint = "obstore's settings go in store=asynccp.StoreOptions(obstore={...})"
        raise unknown_keyword(caller, key, known, hint=hint)


def options_of(caller: str, given: Mapping[str, Any], *, also: Collection[str] = ()) -> Options:
    """:func:`options` for an entry point that takes the checkpointer's keyword arguments
    as ``**given`` (see :func:`check_keywords` for the error on any other; ``also`` are
    the entry point's own keyword arguments)."""
    check_keywords(caller, given, OPTION_NAMES | set(also))
    return options(**given)


def keywords(o: Options) -> CheckpointerOptions:
    """``o`` as the keyword arguments that make it again (``Checkpointer(loc, **...)``)."""
    return CheckpointerOptions(
        limits=o.limits,
        retention=o.retention,
        store=o.store,
        sharding=o.sharding,
        flush_timeout=o.flush_timeout,
        staging_dir=o.staging_dir,
        local=o.local,
        local_keep=o.local_keep,
    )


def _value(name: str, value: Any, kind: type[Any]) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be an asynccp.{kind.__name__}, got {type(value).__name__}")
    return value


def _check_policy(policy: object) -> None:
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a str, got {type(policy).__name__}")
    if policy not in ("block", "latest"):
        raise ValueError(f"policy must be 'block' or 'latest', got {policy!r}")
