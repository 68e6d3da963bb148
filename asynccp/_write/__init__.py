"""The write path: staging (:mod:`._stager`, :mod:`._staging`), the bounded queue
(:mod:`._queue`), the commit of one checkpoint (:mod:`._commit`), the pipeline that
orders them (:mod:`._pipeline`), the step order (:mod:`._order`) and the handle
``save()`` returns (:mod:`._handle`)."""

from ._commit import Committed
from ._handle import SaveHandle
from ._order import StepOrder
from ._pipeline import FlushResult, Pipeline, Replication, Stats
from ._staging import open_staging

__all__ = [
    "Committed",
    "FlushResult",
    "Replication",
    "Pipeline",
    "SaveHandle",
    "Stats",
    "StepOrder",
    "open_staging",
]
