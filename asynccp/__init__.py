"""asynccp: async-first intra-task checkpointing on any object store.

Save progress without stalling (a bounded background upload queue), commit each
checkpoint atomically (payload first, then a create-if-absent manifest), restore the
newest one that verifies, and retry a job from where it left off.

This module holds the public names only; ``docs/architecture.md`` maps the modules
behind them.
"""

from . import sync  # asynccp.sync: the checkpointer for synchronous code
from ._autosave import Autosave, AutosaveStats, Lifespan, ServiceState, autosave, lifespan
from ._checkpoint import Checkpoint
from ._checkpointer import Checkpointer
from ._manifest import FileInfo
from ._options import CheckpointerOptions, Limits, Retention, Sharding, StoreOptions
from ._state import Shard, State
from ._supervise import DEFAULT_GRACE, Backoff, RetryEvent, checkpointed, current, supervise
from ._types import BackoffSpec, LocationLike, OnRetry, Payload, Policy, Recoverable
from ._write import SaveHandle, Stats
from .errors import (
    PREEMPTED_EXIT_CODE,
    AutosaveError,
    CheckpointClosedError,
    CheckpointError,
    CheckpointNotFoundError,
    CommitUnknownError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    DestinationExistsError,
    FlushTimeoutError,
    InvalidNameError,
    Preempted,
    RecoverableError,
    RetriesExhausted,
    ShardConflictError,
    ShardMismatchError,
    StepAlreadyCommittedError,
    StepOrderError,
    StoreError,
    SupersededError,
    UploadError,
)

__all__ = [
    "Autosave",
    "AutosaveError",
    "AutosaveStats",
    "DEFAULT_GRACE",
    "PREEMPTED_EXIT_CODE",
    "Backoff",
    "BackoffSpec",
    "Checkpoint",
    "CheckpointClosedError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "CheckpointerOptions",
    "CommitUnknownError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "DestinationExistsError",
    "FileInfo",
    "FlushTimeoutError",
    "InvalidNameError",
    "Lifespan",
    "Limits",
    "LocationLike",
    "OnRetry",
    "Payload",
    "Policy",
    "Preempted",
    "Recoverable",
    "RecoverableError",
    "Retention",
    "RetriesExhausted",
    "RetryEvent",
    "SaveHandle",
    "ServiceState",
    "ShardConflictError",
    "Shard",
    "ShardMismatchError",
    "Sharding",
    "State",
    "Stats",
    "StepAlreadyCommittedError",
    "StepOrderError",
    "StoreError",
    "StoreOptions",
    "SupersededError",
    "UploadError",
    "autosave",
    "checkpointed",
    "current",
    "lifespan",
    "supervise",
    "sync",
]


def _present_as_public() -> None:
    """Every public class and function reports itself as ``asynccp.<name>`` (in reprs,
    tracebacks and docs), wherever it is defined inside the package."""
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__")):
            obj.__module__ = __name__


def _version() -> str:
    """The installed distribution's version (pyproject.toml is where it is set)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asynccp")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


_present_as_public()
__version__ = _version()
del _present_as_public, _version
