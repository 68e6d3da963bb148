"""Two tiers: a local directory committed first, a remote location replicated behind it
(:mod:`._tiered`: the checkpointer's side; :mod:`._replicator`: the copying;
:mod:`._reader`: reads across both)."""

from ._reader import TieredReader
from ._replicator import Replicator
from ._tiered import Tiers

__all__ = ["Replicator", "TieredReader", "Tiers"]
