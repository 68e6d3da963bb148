"""asynccp: async-first intra-task checkpointing on any object store.

Save progress without stalling (a bounded background upload queue), commit each
checkpoint atomically (payload first, then a create-if-absent manifest), restore the
newest one that verifies, and retry a job from where it left off.
"""

from ._checkpointer import Checkpointer, Stats
from ._handle import SaveHandle
from ._manifest import FileInfo
from ._restore import Checkpoint
from .errors import (
    CheckpointClosedError,
    CheckpointError,
    CheckpointNotFoundError,
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
    "Checkpoint",
    "CheckpointClosedError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "FileInfo",
    "FlushTimeoutError",
    "InvalidNameError",
    "RecoverableError",
    "RetriesExhausted",
    "SaveHandle",
    "Stats",
    "StepAlreadyCommittedError",
    "StepOrderError",
    "StoreError",
    "SupersededError",
    "UploadError",
]

__version__ = "0.1.0"
