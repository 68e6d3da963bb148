"""The autosave's own settings as one value: :class:`AutosaveOptions`, checked once,
where it is made.

:func:`~asynccp.autosave` (and :class:`~asynccp.Autosave`) and :func:`~asynccp.lifespan`
take them as keyword arguments (:class:`AutosaveKeywords`) and make one value with
:meth:`AutosaveOptions.of`; the engine and the lifespan are handed that value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypedDict, get_args

from .._checks import check_int, check_seconds, unknown_keyword
from .._manifest import check_metadata

__all__ = ["NAMES", "AutosaveKeywords", "AutosaveOptions", "Skip"]

#: How unchanged state is recognised (see :func:`~asynccp.autosave`).
Skip = Literal["digest", "changes", "never"]
_SKIPS = get_args(Skip)


class AutosaveKeywords(TypedDict, total=False):
    """The keyword arguments of :func:`~asynccp.autosave` (see it for each); the
    defaults are :class:`AutosaveOptions`'s."""

    every: float | timedelta | None
    every_changes: int | None
    skip: Skip
    max_failures: int | None
    final_timeout: float | timedelta | None
    metadata: Mapping[str, Any] | None
    meter_provider: Any
    tracer_provider: Any


#: The keyword arguments of :class:`AutosaveKeywords`.
NAMES = frozenset(AutosaveKeywords.__annotations__)


@dataclass(frozen=True)
class AutosaveOptions:
    """An autosave's settings, validated when made (durations as float seconds,
    ``metadata`` as :func:`~asynccp._manifest.check_metadata` makes it)."""

    every: float | None = None
    every_changes: int | None = None
    skip: Skip = "digest"
    max_failures: int | None = 10
    final_timeout: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    meter_provider: Any = None
    tracer_provider: Any = None

    def __post_init__(self) -> None:
        if self.every is not None:
            self._set("every", check_seconds("every", self.every, finite=True, positive=True))
        if self.every_changes is not None:
            check_int("every_changes", self.every_changes, minimum=1)
        if self.every is None and self.every_changes is None:
            raise ValueError(
                "autosave needs a cadence: every= (seconds between saves) and/or "
                "every_changes= (changes reported with .changed() between saves)"
            )
        if self.skip not in _SKIPS:
            raise ValueError(f"skip must be one of {_SKIPS}, got {self.skip!r}")
        if self.max_failures is not None:
            check_int("max_failures", self.max_failures, minimum=1)
        if self.final_timeout is not None:
            self._set("final_timeout", check_seconds("final_timeout", self.final_timeout))
        self._set("metadata", check_metadata(self.metadata))

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def of(cls, caller: str, given: Mapping[str, Any]) -> AutosaveOptions:
        """The value of ``caller``'s keyword arguments ``given``; an unknown one is a
        ``TypeError`` naming the closest known name."""
        for key in given:
            if key not in NAMES:
                raise unknown_keyword(caller, key, NAMES)
        return cls(**given)
