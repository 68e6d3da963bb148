"""Running a job again from its newest checkpoint: the supervisor (:mod:`._supervisor`),
what to retry and how long to wait (:mod:`._retry_policy`), and SIGTERM / SIGINT as
pre-emption (:mod:`._signals`). It talks to the checkpointer through its public methods
and two package-internal ones, ``_flush_within`` (a flush with a deadline and a typed
result) and ``_continue_from`` (the earlier attempts' writers), nothing else."""

from ._retry_policy import Backoff, RetryEvent
from ._signals import DEFAULT_GRACE
from ._supervisor import checkpointed, current, supervise

__all__ = ["DEFAULT_GRACE", "Backoff", "RetryEvent", "checkpointed", "current", "supervise"]
