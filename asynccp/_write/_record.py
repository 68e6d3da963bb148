"""A step's record: created at its first free revision, the one in the way judged.

The record (the manifest) is created last, create-if-absent: that single conditional
put is the commit. What :func:`create_record` does when it cannot simply create it:

- The step's record already exists: if it is this writer's (a retried request whose
  first try landed), the commit succeeded. If it is another writer's valid checkpoint
  that verifies, the step reports :class:`StepAlreadyCommittedError` (the caller
  deletes its payload). If it is invalid, or known not to verify, it never blocks the
  step: the new record is created at the next revision (still create-if-absent, so
  two writers still get one winner) and the old one is moved to quarantine.
- The create request failed with no retry left: its answer may be what was lost, so
  the store is asked (:func:`look_after_failure`). This writer's record there means
  committed; none means not; a store that cannot be asked gives
  :class:`CommitUnknownError`.

:func:`check_payload` is the check after a commit that took long: had a collector
taken the payload meanwhile, the commit fails instead of resolving to a checkpoint
with no data.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from functools import partial
from typing import Any

from .. import _catalog as catalog
from .._catalog import Bad, Record
from .._layout import QUARANTINE, manifest_key
from .._manifest import decode_doc, newer_format
from .._retention import quarantine
from .._shard_records import AnyManifest, ShardedManifest, decode_record
from .._store import Store, call, describe_error, durable_commits
from ..errors import (
    CheckpointNotFoundError,
    CommitUnknownError,
    CorruptCheckpointError,
    ObjectExists,
    StepAlreadyCommittedError,
    StoreError,
    UploadError,
)

__all__ = ["check_payload", "create", "create_record", "look_after_failure"]

log = logging.getLogger("asynccp")
#: Revisions tried for one step before giving up (each is another writer's replacement).
_MAX_REVISIONS = 8


def create(store: Store, key: str, data: bytes, prepared: Any) -> None:
    """Create the record ``key`` if absent: a prepared one linked into place, else
    ``data`` written (ObjectExists either way when the key is taken)."""
    if prepared is None:
        store.create(key, data)
        return
    durable = durable_commits(store)
    assert durable is not None  # only such a store prepares
    durable.link_prepared(prepared, key)


async def create_record(
    store: Store,
    manifest: AnyManifest,
    bad: Collection[Bad],
    body: bytes | None = None,
    prepared: Any = None,
) -> str:
    """Create the step's record (or its next revision); return the key that commits.

    ``body`` is the encoded manifest (encoded here when None); ``prepared``, what a
    :class:`~asynccp._store.DurableCommits` store's ``prepare_create`` made of it.

    Revisions of a step are never deleted one by one: a record that is replaced stays
    where it was as a *tombstone* (its content moved to ``quarantine/``), and only
    retention (or ``gc --invalid``) deletes a step's revisions, all together. So a
    create that succeeds at revision ``k`` found ``k`` free, and no revision above ``k``
    can exist: the record created is the step's record, with no listing to check it.
    """
    data = manifest.encode() if body is None else body
    rev = 0
    for _ in range(_MAX_REVISIONS):
        key = manifest_key(manifest.step, rev)
        try:
            await call(
                store,
                partial(create, store, key, data, prepared),
                key=key,
                action="committing",
            )
            break
        except ObjectExists:
            pass
        except StoreError as e:
            await look_after_failure(store, manifest, key, e)  # raises unless it was ours
            break
        rev = await _judge_existing(store, manifest, bad)
        if rev < 0:  # the record there is ours: a retried request whose first try landed
            key = (await catalog.records(store, manifest.step))[-1].key
            break
    else:
        raise UploadError(
            f"step {manifest.step} in {store.description}: {_MAX_REVISIONS} replacements "
            "of its record were lost to other writers in a row; giving up"
        )
    if key != manifest_key(manifest.step):  # a replacement: what it replaced becomes a tombstone
        await _quarantine_older(store, manifest.step, key)
    return key


async def _judge_existing(store: Store, manifest: AnyManifest, bad: Collection[Bad]) -> int:
    """The step's record exists: -1 if it is ours, else the revision to replace it at.

    Raises :class:`StepAlreadyCommittedError` when it is another writer's checkpoint
    that verifies (or one asynccp cannot judge: a newer format).
    """
    step = manifest.step
    found = await catalog.records(store, step)
    if not found:
        raise StepAlreadyCommittedError(
            f"step {step} was committed in {store.description} by another writer and "
            "deleted since (retention has moved past it); save a later step"
        )
    record = found[-1]
    ours = manifest.encode() if isinstance(manifest, ShardedManifest) else None
    why = await _why_replaceable(store, record, manifest.writer, bad, ours)
    if why == "ours":
        return -1
    if why is None:
        raise StepAlreadyCommittedError(
            f"step {step} is already committed in {store.description} by another "
            f"writer (this writer is {manifest.writer}). Another process may be writing "
            "the same location; resume with `await cp.load_latest(...)` and save a later step."
        )
    log.warning(
        "asynccp: step %d in %s: %s; replacing it (the old record goes to %s)",
        step,
        store.description,
        why,
        QUARANTINE,
    )
    return record.rev + 1


async def _why_replaceable(
    store: Store,
    record: Record,
    writer: str,
    bad: Collection[Bad],
    ours: bytes | None = None,
) -> str | None:
    """Why the checkpoint ``record`` commits may be replaced; None if it must stay.

    ``ours``, for a sharded step, is the manifest this shard would write: the same
    part records give the same document, so a record of the same commit must be identical
    (compared decoded: an earlier asynccp wrote the same document indented).
    """
    gone = StepAlreadyCommittedError(
        f"step {record.step} in {store.description} was committed by another "
        "writer and deleted since; save a later step"
    )
    try:
        raw = await call(store, store.get, record.key, key=record.key, action="reading")
    except FileNotFoundError:
        raise gone from None
    try:
        existing = decode_record(raw, key=record.key)
    except CorruptCheckpointError as e:
        if newer_format(raw):
            return None  # written by a newer asynccp: not ours to judge
        return f"its record is invalid ({e})"
    if existing.writer == writer:
        # Ours: a retried request whose first try landed, or (a sharded step, whose
        # manifest is a function of its part records) the same commit by another shard.
        if ours is None or decode_doc(raw, key=record.key) == decode_doc(ours, key=record.key):
            return "ours"
        return "its record names this step's part records but differs from them"
    if not await catalog.is_complete(store, existing):
        return "its payload objects are missing or truncated"
    if (existing.step, existing.writer) in bad:
        return "it failed verification when it was read"
    try:
        await catalog.verify(store, existing)
    except CorruptCheckpointError as e:
        if not await catalog.still_committed(store, record.key):
            raise gone from None
        return f"it fails verification ({e})"
    return None


async def look_after_failure(
    store: Store, manifest: AnyManifest, key: str, error: StoreError
) -> None:
    """The request creating ``key`` failed: was it created all the same (a lost answer)?

    Returns if ``key`` holds this writer's record; raises :class:`UploadError` when it
    does not, and :class:`CommitUnknownError` when the store cannot be asked. Either way
    the payload stays (a request still in flight may yet land; if not, the orphan
    collector takes it).
    """
    step = manifest.step
    cause = error.__cause__ or error
    why = describe_error(cause)
    try:
        try:
            existing = await catalog.read_manifest(store, Record(step, key, 0))
        except (CorruptCheckpointError, CheckpointNotFoundError):
            existing = None
        if existing is not None and existing.writer == manifest.writer:
            log.warning(
                "asynccp: step %d: the answer to its commit was lost (%s), but the "
                "store holds its record: committed",
                step,
                why,
            )
            return
    except StoreError as e:
        # (The advice, if any, once: at the end of the first reason.)
        raise CommitUnknownError(
            f"checkpoint step {step} in {store.description}: the commit request failed "
            f"({why}) and the store could not be asked whether it landed "
            f"({describe_error(e, advice=False)}); it may or may not be committed. Its "
            "payload is kept; the next reader decides."
        ) from cause
    raise UploadError(
        f"checkpoint step {step} was not committed to {store.description}: {why}"
    ) from cause


async def check_payload(store: Store, manifest: AnyManifest) -> None:
    if not await catalog.is_complete(store, manifest):
        raise UploadError(
            f"checkpoint step {manifest.step} in {store.description}: its payload "
            f"({manifest.data}) was deleted while it committed (another process collected "
            "it as abandoned), so its record is invalid and readers skip it. Saving the "
            "step again replaces it."
        )


async def _quarantine_older(store: Store, step: int, key: str) -> None:
    """Turn the records below ``key`` (invalid ones it replaced) into tombstones, their
    content copied to quarantine.

    Best effort: a record left as it was is harmless (the highest revision commits).
    """
    try:
        found = await catalog.records(store, step)
        if not found or found[-1].key != key:
            return  # replaced again since (ours was found bad): the replacer tidies up
        for old in found[-1].superseded:
            await quarantine(store, old, tombstone_for=key)
    except Exception as e:
        log.warning("asynccp: could not move old records of step %d aside: %s", step, e)
