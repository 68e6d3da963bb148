"""Every exception asynccp raises, and the one warning it gives.

Everything asynccp raises about checkpoints derives from :class:`CheckpointError`, so one
``except asynccp.CheckpointError`` catches them all. Where Python convention expects a
built-in type (a bad value), the class also derives from it: :class:`InvalidNameError`
is a ``ValueError`` too. Store failures are chained (``__cause__``) to the error of the
store client that caused them, and name the key and the location. An argument of the
wrong type is a plain ``TypeError``, one of the right type but a bad value a plain
``ValueError`` (or one of the classes here that derive from it).

::

    Exception
    ├── CheckpointError
    │   ├── InvalidNameError (ValueError)      a file name that cannot be stored safely
    │   ├── StepOrderError (ValueError)        a step not above the previous / newest one
    │   ├── StepAlreadyCommittedError          another writer committed the step
    │   │   └── ShardConflictError             another writer recorded this shard's part
    │   ├── ShardMismatchError (ValueError)    a sharded step read with another shards=
    │   ├── StoreError                         the store failed (after retries)
    │   │   └── UploadError                    a checkpoint did not commit
    │   │       └── CommitUnknownError         ... or may have: its answer was lost
    │   ├── CorruptCheckpointError             invalid record, missing or changed bytes
    │   ├── CheckpointNotFoundError (LookupError)
    │   ├── DestinationExistsError (FileExistsError)  a restore would overwrite a file
    │   ├── SupersededError                    dropped for a newer one (policy="latest")
    │   ├── FlushTimeoutError                  abandoned after flush_timeout / grace
    │   ├── CheckpointClosedError (RuntimeError)   used outside ``async with``
    │   ├── AutosaveError                      autosave() failed max_failures times in a row
    │   └── RetriesExhausted                   supervise(): every attempt failed
    ├── RecoverableError                       raise it in a supervised job to retry
    ├── ObjectExists                           internal: a create-if-absent found the key
    └── Abandoned                              internal: a worker thread's call was given up on
    TypeError
    └── NotAwaitableError                      supervise(): fn(cp) is not awaitable
    SystemExit
    └── Preempted                              supervise(), asynccp.sync: stopped by a signal
    BaseException
    └── Terminated                             internal: SIGTERM inside an asynccp.sync block
    UserWarning
    └── CorruptCheckpointWarning               a read skipped a checkpoint that failed
"""

from __future__ import annotations

import errno
import signal

__all__ = [
    "AutosaveError",
    "PREEMPTED_EXIT_CODE",
    "CheckpointClosedError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CommitUnknownError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "DestinationExistsError",
    "FlushTimeoutError",
    "InvalidNameError",
    "NotAwaitableError",
    "ObjectExists",
    "Preempted",
    "RecoverableError",
    "RetriesExhausted",
    "ShardConflictError",
    "ShardMismatchError",
    "StepAlreadyCommittedError",
    "StepOrderError",
    "StoreError",
    "SupersededError",
    "Terminated",
    "UploadError",
]

PREEMPTED_EXIT_CODE = 75
"""Exit code of a process stopped by SIGTERM/SIGINT after flushing its checkpoints.
75 is ``EX_TEMPFAIL`` in sysexits.h ("temporary failure, try again later"): distinct
from 0/1/2, from the shell's 126/127, and from the 128+N of a process killed by a
signal (143 for SIGTERM, 137 for SIGKILL, 130 for Ctrl-C, 134 for an abort)."""


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


class DestinationExistsError(CheckpointError, FileExistsError):
    """A restore or download would overwrite a file already in its destination.

    ``restore(dest)`` and ``Checkpoint.download(dest)`` never replace the caller's files
    unasked: pass ``overwrite=True`` (``asynccp restore --force``) to replace them.
    Raised before anything is written; ``filename`` is the file in the way.
    """

    def __init__(self, message: str, filename: str = "") -> None:
        super().__init__(message)
        self.errno = errno.EEXIST
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])


class StoreError(CheckpointError):
    """The object store failed (after retries); the message names the key and the
    location, and ``__cause__`` holds the store client's own error."""


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


class AutosaveError(CheckpointError):
    """The autosave gave up, or its final save on exit failed.

    Raised from the ``async with`` block after ``max_failures`` saves in a row failed
    (the block's body is cancelled first), or when the save made on exit failed.
    ``__cause__`` is the last failure; ``failures`` counts the failures in a row.
    """

    def __init__(self, message: str, *, failures: int) -> None:
        super().__init__(message)
        self.failures = failures


class RecoverableError(Exception):
    """Raise (or subclass) this inside a supervised job to ask for a retry.

    ``retry_after`` (seconds), when given, overrides the supervisor's backoff for
    this retry: a server that said "come back in 30 s" knows best.
    """

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        if retry_after is not None:
            from ._checks import check_seconds  # here: errors.py imports nothing of asynccp's

            check_seconds("retry_after", retry_after)
        self.retry_after = retry_after


class RetriesExhausted(CheckpointError):
    """Every attempt of a supervised job failed with a recoverable error.

    ``__cause__`` is the last attempt's error; ``attempts`` counts the calls made.
    """

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class NotAwaitableError(TypeError):
    """``fn(cp)`` returned something that cannot be awaited: a usage error, never retried."""


class Preempted(SystemExit):
    """A signal stopped the job; its checkpoints were flushed (within ``grace``).

    A ``SystemExit`` whose ``code`` is :data:`PREEMPTED_EXIT_CODE`: left uncaught, the
    process exits with that code and no traceback, and the orchestrator restarts it.
    ``errors`` lists what went wrong while flushing (empty when every staged
    checkpoint committed); they are also logged.
    """

    def __init__(
        self,
        message: str,
        *,
        signal: signal.Signals,
        attempt: int,
        last_step: int | None,
        errors: tuple[str, ...] = (),
    ) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message
        self.signal = signal
        self.attempt = attempt
        self.last_step = last_step
        self.errors = errors

    def __str__(self) -> str:
        return self.message


class ObjectExists(Exception):
    """Internal: a create-if-absent write found the object already there.

    Raised by the stores (:mod:`asynccp._store`) and handled by the commit; it never
    reaches a caller of the public API.
    """


class Terminated(BaseException):
    """Internal: SIGTERM received in the main thread inside an ``asynccp.sync``
    ``with`` block. Raised there by the signal handler (like ``KeyboardInterrupt``, it
    stops the loop's code where it is); the block's exit flushes and turns it into
    :class:`Preempted`. A ``BaseException``: an ``except Exception`` in the loop must
    not swallow it."""


class Abandoned(Exception):
    """Internal: a worker thread waiting for its turn to commit found its call given up
    on (its caller was cancelled), and stops without creating a record.

    Raised in the worker thread (:mod:`asynccp._write._turns`); nobody waits for that
    call's outcome any more, so it never reaches a caller.
    """
