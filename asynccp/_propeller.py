"""Flyte's checkpoint prefix of each attempt, as flytepropeller names it.

A Flyte (flytekit) task attempt is told two prefixes: its own (``--checkpoint-path``)
and the previous attempt's (``--prev-checkpoint``). flytepropeller derives both the
same way (``ComputeRawOutputPrefix``, ``ComputePreviousCheckpointPath`` and
``ConstructCheckpointPath`` in flytepropeller/flyteplugins)::

    <raw output prefix>/<shard>/<unique id>/_flytecheckpoints

- ``<unique id>`` is ``<execution name>-<node id>-<attempt>`` when that is at most 50
  characters long (the plugin's ``GeneratedNameMaxLength`` when it sets one); a longer
  one is replaced by a hash of it, ``"f"`` and seven base32 characters;
- ``<shard>`` is two characters of ``[a-z0-9]``: bucket ``fnv32a(<unique id>) % 1296``
  of the 36 * 36 pairs (``NewBase36PrefixShardSelector``).

So from attempt ``k``'s prefix the prefix of attempt ``k - 1`` follows, when the unique
id is not a hash: replace the attempt number and the shard. :func:`previous_prefix`
does that, and recognises the layout by recomputing the shard (a prefix laid out any
other way gives None). A hashed id cannot be undone: there the chain can only follow
the attempt records (see docs/flyte.md).
"""

from __future__ import annotations

import re

__all__ = ["CHECKPOINTS", "fnv32a", "previous_prefix", "shard_of"]

#: The last segment of every Flyte checkpoint prefix.
CHECKPOINTS = "_flytecheckpoints"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SHARDS = len(_ALPHABET) ** 2
#: ``<anything>-<attempt>``: an id propeller did not hash (a hash has no ``-``).
_ID_RE = re.compile(r"^(?P<stem>.+)-(?P<attempt>0|[1-9][0-9]*)$")


def fnv32a(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data`` (Go's ``hash/fnv.New32a``)."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def shard_of(unique_id: str) -> str:
    """The shard folder propeller puts ``unique_id``'s raw outputs in."""
    index = fnv32a(unique_id.encode()) % _SHARDS
    return _ALPHABET[index // len(_ALPHABET)] + _ALPHABET[index % len(_ALPHABET)]


def previous_prefix(prefix: str) -> str | None:
    """The checkpoint prefix of the attempt before the one whose prefix is ``prefix``,
    by flytepropeller's layout; None for attempt 0, for a hashed id, and for a prefix
    not laid out that way."""
    parts = prefix.rstrip("/").split("/")
    if len(parts) < 4 or parts[-1] != CHECKPOINTS:
        return None
    shard, unique_id = parts[-3], parts[-2]
    m = _ID_RE.match(unique_id)
    if m is None or shard != shard_of(unique_id):
        return None
    attempt = int(m.group("attempt"))
    if attempt == 0:
        return None
    before = f"{m.group('stem')}-{attempt - 1}"
    return "/".join([*parts[:-3], shard_of(before), before, CHECKPOINTS])
