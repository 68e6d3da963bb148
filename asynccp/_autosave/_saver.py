""":class:`Autosave` and :func:`autosave`: the ``async with`` block around the engine.

Entering starts the engine's two tasks in a task group (held by an
``AsyncExitStack``: the group's scope covers the block, so an :class:`AutosaveError`
from a task cancels the body); leaving runs the final save, closes the group and turns
what went wrong into the one error the owner sees (or notes on the body's own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio

from .._checkpointer import Checkpointer
from .._checks import is_int
from .._groups import add_note, first_leaf
from .._options import Unpack
from ..errors import AutosaveError
from ._engine import Engine
from ._options import AutosaveKeywords, AutosaveOptions
from ._outcomes import AutosaveStats
from ._payload import StatePayload

__all__ = ["Autosave", "autosave"]


class Autosave:
    """Saves ``state()`` on a cadence while its ``async with`` block runs; see :func:`autosave`."""

    def __init__(
        self,
        cp: Checkpointer,
        state: Callable[[], StatePayload | Awaitable[StatePayload]],
        **options: Unpack[AutosaveKeywords],
    ) -> None:
        self._engine = Engine(cp, state, _checked(cp, state, "Autosave()", options))
        self._tasks = AsyncExitStack()

    @classmethod
    def _of(
        cls,
        cp: Checkpointer,
        state: Callable[[], StatePayload | Awaitable[StatePayload]],
        options: AutosaveOptions,
    ) -> Autosave:
        """An autosave with settings checked already (by :func:`autosave`, :func:`lifespan`)."""
        self = cls.__new__(cls)
        self._engine = Engine(cp, state, options)
        self._tasks = AsyncExitStack()
        return self

    def __repr__(self) -> str:
        engine = self._engine
        return f"<Autosave {engine.cp.location} {engine.phase} next step {engine.step}>"

    @property
    def checkpointer(self) -> Checkpointer:
        """The checkpointer the autosaves go to."""
        return self._engine.cp

    @property
    def stats(self) -> AutosaveStats:
        """Counts so far: commits, skips, failures (and in a row), replaced, pending."""
        return self._engine.stats()

    def changed(self, n: int = 1) -> None:
        """Report ``n`` changes to the state (call it from the event loop's thread).

        Cheap (a counter): call it from request handlers. It makes ``every_changes``
        work and lets ``skip="changes"`` know the state is worth reading again.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"changed(n) takes an int n >= 1, got {n!r}")
        self._engine.changed(n)

    async def __aenter__(self) -> Autosave:
        engine = self._engine
        await engine.start()
        async with AsyncExitStack() as stack:
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(engine.run)
            tasks.start_soon(engine.watch)
            self._tasks = stack.pop_all()
        engine.phase = "running"
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        exc: BaseException | None = exc_info[1]
        engine = self._engine
        final_error, fatal = await engine.finish()
        child: BaseException | None = None
        try:
            await self._tasks.aclose()  # the task group: its tasks have ended already
        except BaseException as e:
            child = first_leaf(e)
        finally:
            engine.phase = "closed"
        problem = child or fatal
        if problem is None and final_error is not None:
            problem = AutosaveError(
                f"the final autosave to {engine.cp.location} failed: "
                f"{type(final_error).__name__}: {final_error}",
                failures=engine.outcomes.consecutive,
            )
            problem.__cause__ = final_error
        if exc is None or (child is not None and isinstance(exc, anyio.get_cancelled_exc_class())):
            # No body error, or the body was cancelled because the autosave gave up.
            if problem is not None:
                if problem is child and (fatal or final_error):
                    add_note(
                        problem, f"asynccp: the final autosave failed too: {fatal or final_error}"
                    )
                raise problem from problem.__cause__
            return
        if problem is not None:
            add_note(exc, f"asynccp: autosave: {type(problem).__name__}: {problem}")


def _checked(cp: object, state: object, caller: str, options: AutosaveKeywords) -> AutosaveOptions:
    """The settings of an autosave of ``state()`` to ``cp``, each argument checked."""
    if not isinstance(cp, Checkpointer):
        raise TypeError(f"autosave needs an asynccp.Checkpointer, got {type(cp).__name__}")
    if not callable(state):
        raise TypeError(
            f"state must be a callable returning the payload to save (sync or async), "
            f"got {type(state).__name__}"
        )
    return AutosaveOptions.of(caller, options)


def autosave(
    cp: Checkpointer,
    state: Callable[[], StatePayload | Awaitable[StatePayload]],
    **options: Unpack[AutosaveKeywords],
) -> Autosave:
    """Save ``state()`` every ``every`` seconds while the ``async with`` block runs.

    Example::

        async with asynccp.Checkpointer("s3://bucket/svc", policy="latest", keep=3) as cp:
            async with asynccp.autosave(cp, lambda: json.dumps(counts), every=5.0) as saver:
                await serve()          # handlers may call saver.changed()

    Args:
        cp: an open :class:`~asynccp.Checkpointer` (the autosave owns its step numbers).
        state: returns the payload to save (``bytes``, ``str``, a buffer, or a mapping
            of file names to those); sync or async. It runs on the event loop: move a
            slow serialisation to a thread inside it.

    Keyword Args:
        every (float | timedelta): seconds between autosaves (a ``timedelta`` works
            too).
        every_changes (int): also autosave as soon as this many changes were reported
            with :meth:`Autosave.changed` since the last one.
        skip (str): how unchanged state is recognised — ``"digest"`` (the default: size
            and CRC32C of each file against the newest checkpoint), ``"changes"`` (no
            change reported: the state is not even read), or ``"never"``.
        max_failures (int | None): failures in a row before :class:`AutosaveError`
            reaches the owner (default 10; None: never give up; failures are still
            logged and counted).
        final_timeout (float | timedelta): seconds the exit may wait for the final save
            to commit (default: the checkpointer's ``flush_timeout``).
        metadata (Mapping[str, Any]): JSON metadata recorded with every autosave.
        meter_provider (MeterProvider): an OpenTelemetry meter provider (default: the
            global one); ignored when the OpenTelemetry API is not installed.
        tracer_provider (TracerProvider): an OpenTelemetry tracer provider (default:
            the global one); ignored likewise.

    Raises at once: TypeError / ValueError for bad arguments. See the package docstring
    for steps, skipping, coalescing, failures and the exit.
    """
    return Autosave._of(cp, state, _checked(cp, state, "autosave()", options))
