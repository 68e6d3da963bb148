"""The exceptions asynccp raises.

Everything asynccp raises about checkpoints derives from :class:`CheckpointError`, so
one ``except asynccp.CheckpointError`` catches them all. Where Python convention
expects a built-in type (a bad argument), the class also derives from it:
:class:`InvalidNameError` is a ``ValueError`` too. Store failures are chained
(``__cause__``) to the obstore error that caused them.
"""

from __future__ import annotations

__all__ = [
    "CheckpointClosedError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CommitUnknownError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "FlushTimeoutError",
    "InvalidNameError",
    "RecoverableError",
    "RetriesExhausted",
    "ShardConflictError",
    "ShardMismatchError",
    "StepAlreadyCommittedError",
    "StepOrderError",
    "StoreError",
    "SupersededError",
    "UploadError",
]


class CheckpointError(Exception):
    """Base class of every checkpoint error asynccp raises."""


class InvalidNameError(CheckpointError, ValueError):
    """A file name inside a checkpoint cannot be stored and restored safely everywhere.

    Names are relative, ``/``-separated paths such as ``"model/weights.bin"``: at most
    1024 characters, valid Unicode (no lone surrogate: a file name that is not UTF-8 on
    disk cannot be saved); no leading ``/``, no ``..`` or ``.`` segment, no empty
    segment, no segment longer than 255 bytes in UTF-8 (a local file system's limit);
    no backslash or control character. Every other character, ``#`` and ``:``
    included, round-trips on every store. Raised by ``save()`` before anything is
    staged; a manifest naming such a file is a :class:`CorruptCheckpointError`.
    """


class StepOrderError(CheckpointError, ValueError):
    """A step was saved that is not greater than the previous one.

    Steps must grow within a :class:`~asynccp.Checkpointer`; checkpoints commit in the
    order they are saved.
    """


class StepAlreadyCommittedError(CheckpointError):
    """The step is already committed at this location (perhaps by another writer).

    Committed checkpoints are never overwritten. Resume from ``await cp.latest()``
    and save a later step.
    """


class ShardConflictError(StepAlreadyCommittedError):
    """Another process already recorded this part (same shard, step and generation).

    Each part of a sharded step is recorded once, by a create-if-absent put: of two
    processes claiming the same shard, exactly one records its part; the other gets this
    error and its payload is deleted. Two processes were started with the same
    ``shard=``, or a relaunch reused the generation of a launch that already recorded
    this part: give every launch its own generation.
    """


class ShardMismatchError(CheckpointError, ValueError):
    """Shard counts disagree: the part records of one step and generation name
    different ``shards``, or a checkpoint of ``n`` shards is restored with another
    ``shards=`` (or asked for a part it does not have).

    A step whose part records disagree is never committed. To read a checkpoint with a
    different number of processes (resharding), open it with a plain ``Checkpointer``
    and read every part: ``ckpt.shard(r)`` for ``r`` in ``range(ckpt.shards)``.
    """


class StoreError(CheckpointError):
    """The object store failed (after its own retries); ``__cause__`` holds obstore's error."""


class UploadError(StoreError):
    """A checkpoint could not be uploaded or committed; nothing of it is committed
    (except for :class:`CommitUnknownError`, which says the outcome is unknown)."""


class CommitUnknownError(UploadError):
    """A checkpoint's commit request failed and the store could not be asked whether it
    landed: the checkpoint may or may not be committed.

    Its payload is kept. Readers decide: if the commit landed, ``latest()`` finds it.
    """


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's manifest is invalid, or a payload object is missing, truncated,
    or fails its checksum."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """No committed checkpoint exists for the requested step or file name."""


class SupersededError(CheckpointError):
    """The checkpoint was dropped before upload because a newer one replaced it.

    Only happens with ``policy="latest"`` when the queue is full: the newest state
    is what matters, so the oldest checkpoint not yet started is dropped.
    """


class FlushTimeoutError(CheckpointError):
    """Pending checkpoints did not commit within ``flush_timeout`` and were abandoned."""


class CheckpointClosedError(CheckpointError, RuntimeError):
    """The :class:`~asynccp.Checkpointer` is not open (use it as ``async with``)."""


class CorruptCheckpointWarning(UserWarning):
    """A restore skipped a checkpoint that failed verification and fell back to an older one."""


class RecoverableError(Exception):
    """Raise (or subclass) this inside a supervised job to ask for a retry.

    ``retry_after`` (seconds), when given, overrides the supervisor's backoff for
    this retry: a server that said "come back in 30 s" knows best.
    """

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        if retry_after is not None and not retry_after >= 0:
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {retry_after!r}")
        self.retry_after = retry_after


class RetriesExhausted(CheckpointError):
    """Every attempt of a supervised job failed with a recoverable error.

    ``__cause__`` is the last attempt's error; ``attempts`` counts the calls made.
    """

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts
