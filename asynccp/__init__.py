"""asynccp: async-first intra-task checkpointing on any object store.

Save progress without stalling (a bounded background upload queue), commit each
checkpoint atomically (payload first, then a create-if-absent manifest), restore the
newest one that verifies, and retry a job from where it left off.
"""

from ._checkpointer import Checkpointer, Stats
from ._handle import SaveHandle
from ._manifest import FileInfo
from ._restore import Checkpoint
from ._retry_policy import Backoff, RetryEvent
from ._signals import DEFAULT_GRACE, PREEMPTED_EXIT_CODE
from ._state import State
from ._supervisor import Preempted, checkpointed, current, supervise
from .errors import (
    CheckpointClosedError,
    CheckpointError,
    CheckpointNotFoundError,
    CommitUnknownError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    FlushTimeoutError,
    InvalidNameError,
    RecoverableError,
    RetriesExhausted,
    StepAlreadyCommittedError,
    StepOrderError,
    StoreError,
    SupersededError,
    UploadError,
)

__all__ = [
    "Backoff",
    "Checkpoint",
    "CheckpointClosedError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "CommitUnknownError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "DEFAULT_GRACE",
    "FileInfo",
    "FlushTimeoutError",
    "InvalidNameError",
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "RecoverableError",
    "RetriesExhausted",
    "RetryEvent",
    "SaveHandle",
    "State",
    "Stats",
    "StepAlreadyCommittedError",
    "StepOrderError",
    "StoreError",
    "SupersededError",
    "UploadError",
    "checkpointed",
    "current",
    "supervise",
]


def _version() -> str:
    """The installed distribution's version (pyproject.toml is where it is set)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asynccp")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
del _version
