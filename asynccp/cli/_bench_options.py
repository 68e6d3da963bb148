"""What ``asynccp bench`` measures: its options, validated, and the names they use.

Light on purpose: the command line's parser checks ``--kinds`` against :data:`KINDS`
without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asynccp._types import Policy

__all__ = ["KINDS", "BenchError", "MiB", "Options"]

KINDS = ("bytes", "bytearray", "file", "files")
MiB = 1 << 20


class BenchError(ValueError):
    """A bad benchmark option or an unusable location (reported in one line)."""


@dataclass
class Options:
    """What ``asynccp bench`` measures (the CLI's options, validated)."""

    url: str | None = None
    sizes: list[int] = field(default_factory=lambda: [MiB, 16 * MiB, 64 * MiB])
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    saves: int = 4
    #: Rounds per case at least; more, up to ``max_rounds``, until the spread is known.
    rounds: int = 3
    max_rounds: int = 5
    policy: Policy = "block"
    max_pending: int = 4
    max_pending_bytes: int = 256 * MiB
    small_saves: int = 10_000
    #: 16-byte saves with policy="block", every one committed (0 skips the test).
    small_block_saves: int = 2_000
    files_per_save: int = 64
    durable: bool = True
    memory: bool = True
    tick_seconds: float = 0.005
    store_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise BenchError, in one line, on the first bad option; sort the sizes."""
        if not self.sizes:
            raise BenchError("give at least one payload size")
        if any(not isinstance(s, int) or s <= 0 for s in self.sizes):
            raise BenchError(f"payload sizes must be positive, got {self.sizes}")
        self.sizes = sorted(set(self.sizes))
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise BenchError(f"unknown payload kind(s) {bad}; choose from {', '.join(KINDS)}")
        if self.policy not in ("block", "latest"):
            raise BenchError(f"unknown policy {self.policy!r}; choose 'block' or 'latest'")
        self.max_rounds = max(self.max_rounds, self.rounds)
        for name in ("saves", "rounds", "max_pending", "max_pending_bytes", "files_per_save"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.small_saves < 0:
            raise BenchError(f"--small-saves must be >= 0, got {self.small_saves}")
        if self.small_block_saves < 0:
            raise BenchError(f"--small-block-saves must be >= 0, got {self.small_block_saves}")
        if not self.tick_seconds > 0:
            raise BenchError("the ticker interval must be > 0")
