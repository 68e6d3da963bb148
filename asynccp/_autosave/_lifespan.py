""":func:`lifespan`: a service's state restored at startup, then autosaved until
shutdown (:class:`Lifespan`, yielding a :class:`ServiceState`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .._checkpointer import Checkpointer
from .._options import CheckpointerOptions, Unpack, keywords, options_of
from .._telemetry import AutosaveTelemetry
from ._options import NAMES, AutosaveKeywords, AutosaveOptions
from ._outcomes import log, log_fields
from ._payload import StatePayload, call
from ._saver import Autosave

if TYPE_CHECKING:
    from .._checkpoint import Checkpoint

__all__ = ["Lifespan", "LifespanKeywords", "ServiceState", "lifespan"]

T = TypeVar("T")

#: The keyword arguments of :func:`lifespan` itself (for "did you mean ...?").
_LIFESPAN_NAMES = NAMES | {"restore", "initial", "dump"}


class LifespanKeywords(AutosaveKeywords, CheckpointerOptions, total=False):
    """The keyword arguments of :func:`lifespan` besides its callables: an autosave's
    and a checkpointer's."""


class ServiceState(Generic[T]):
    """What :func:`lifespan` yields: the service's state and the autosave keeping it.

    ``value`` is the state object (restored, or made by ``initial``); the autosave
    saves ``dump(value)``, reading the attribute each time, so replacing ``value``
    works as well as mutating it.
    """

    def __init__(
        self,
        value: T,
        checkpoint: Checkpoint | None,
        checkpointer: Checkpointer,
    ) -> None:
        self.value = value
        #: The checkpoint the value was restored from (None: it came from ``initial``).
        self.checkpoint = checkpoint
        self.checkpointer = checkpointer
        self.autosave: Autosave  # set once the autosave is made

    def __repr__(self) -> str:
        step = None if self.checkpoint is None else self.checkpoint.step
        return f"<ServiceState restored from step {step} of {self.checkpointer.location}>"

    def changed(self, n: int = 1) -> None:
        """Report ``n`` changes to the autosave (see :meth:`Autosave.changed`)."""
        self.autosave.changed(n)


class Lifespan(Generic[T]):
    """The async context manager :func:`lifespan` returns."""

    def __init__(
        self,
        location: Any,
        *,
        restore: Callable[[Checkpoint], T | Awaitable[T]],
        initial: Callable[[], T | Awaitable[T]],
        dump: Callable[[T], StatePayload | Awaitable[StatePayload]],
        options: AutosaveOptions,
        checkpointer_options: CheckpointerOptions,
    ) -> None:
        for name, fn in (("restore", restore), ("initial", initial), ("dump", dump)):
            if not callable(fn):
                raise TypeError(f"{name} must be a callable, got {type(fn).__name__}")
        if isinstance(location, Checkpointer):
            if checkpointer_options:
                raise TypeError(
                    f"Checkpointer options {sorted(checkpointer_options)} were given with an "
                    "open Checkpointer: pass them to the Checkpointer, or pass a location"
                )
            self._cp, self._own = location, False
        else:
            # A service's defaults, where neither the shortcut nor its value says else.
            if "policy" not in checkpointer_options and "limits" not in checkpointer_options:
                checkpointer_options["policy"] = "latest"
            if "keep" not in checkpointer_options and "retention" not in checkpointer_options:
                checkpointer_options["keep"] = 3
            opts = options_of("lifespan()", checkpointer_options, also=_LIFESPAN_NAMES)
            self._cp, self._own = Checkpointer(location, **keywords(opts)), True
        self._restore = restore
        self._initial = initial
        self._dump = dump
        self._opts = options
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> ServiceState[T]:
        if self._stack is not None:
            raise RuntimeError("a lifespan can be used in one `async with` block only")
        async with AsyncExitStack() as stack:
            if self._own:
                await stack.enter_async_context(self._cp)
            found = await self._load()
            if found is None:
                service = ServiceState(cast(T, await call(self._initial)), None, self._cp)
            else:
                service = ServiceState(found[1], found[0], self._cp)
            service.autosave = Autosave._of(self._cp, lambda: self._dump(service.value), self._opts)
            await stack.enter_async_context(service.autosave)
            self._stack = stack.pop_all()
        return service

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._stack is not None
        await self._stack.__aexit__(*exc_info)  # never suppresses: ours do not

    async def _load(self) -> tuple[Checkpoint, T] | None:
        """The newest checkpoint that ``restore`` loads (falling back past corrupt ones)."""
        telemetry = AutosaveTelemetry(
            self._cp.location, self._opts.meter_provider, self._opts.tracer_provider
        )
        end = telemetry.open_span("asynccp.autosave.restore", start_ns=time.time_ns())
        started = time.perf_counter()

        async def load(ckpt: Checkpoint) -> T:
            return cast(T, await call(self._restore, ckpt))

        try:
            found = await self._cp.load_latest(load)
        except BaseException as e:
            end(e if isinstance(e, Exception) else None, outcome="failed")
            raise
        duration = time.perf_counter() - started
        step = None if found is None else found[0].step
        if step is None:
            end(outcome="none")
        else:
            end(outcome="restored", step=step)
        extra = log_fields(self._cp, "autosave.restore", step, duration, 0)
        if found is None:
            log.info(
                "asynccp: no checkpoint to restore in %s: starting fresh",
                self._cp.location,
                extra=extra,
            )
        else:
            log.info(
                "asynccp: restored step %d from %s in %.3f s",
                step,
                self._cp.location,
                duration,
                extra=extra,
            )
        return found


def lifespan(
    location: Any,
    *,
    restore: Callable[[Checkpoint], T | Awaitable[T]],
    initial: Callable[[], T | Awaitable[T]],
    dump: Callable[[T], StatePayload | Awaitable[StatePayload]],
    **options: Unpack[LifespanKeywords],
) -> Lifespan[T]:
    """A service's state: restored at startup, autosaved until shutdown.

    On entry it opens a :class:`~asynccp.Checkpointer` on ``location`` with the
    keyword arguments a Checkpointer takes (``policy="latest"`` unless ``policy`` or
    ``limits`` is given, ``keep=3`` unless ``keep`` or ``retention`` is; or
    uses an open ``Checkpointer`` passed as ``location``), restores the newest checkpoint
    that ``restore`` loads — falling back past corrupt ones, as ``load_latest`` does —
    or calls ``initial()`` when there is none, and starts an :func:`autosave` of
    ``dump(state.value)``. It yields a :class:`ServiceState`. On exit: the final save,
    then the checkpointer's flush.

    Starlette / FastAPI::

        @contextlib.asynccontextmanager
        async def app_lifespan(app):
            async with asynccp.lifespan(
                "s3://bucket/counter",
                restore=lambda ckpt: ckpt.read(),          # -> the state (sync or async)
                initial=lambda: b"",
                dump=lambda value: value,                   # -> bytes, str, buffer, mapping
                every=5.0,
            ) as kept:
                yield {"kept": kept}                        # request.state.kept.value

    ``restore(ckpt)`` raising :class:`~asynccp.CorruptCheckpointError` (any verified read
    of a corrupt checkpoint does) moves on to the next older checkpoint; any other error
    fails the startup. The other keyword arguments are :func:`autosave`'s (``every``,
    ``every_changes``, ``skip``, ``max_failures``, ``final_timeout``, ``metadata``,
    ``meter_provider``, ``tracer_provider``) and the Checkpointer's.
    """
    own = {k: v for k, v in options.items() if k in NAMES}
    rest = {k: v for k, v in options.items() if k not in NAMES}
    return Lifespan(
        location,
        restore=restore,
        initial=initial,
        dump=dump,
        options=AutosaveOptions.of("lifespan()", own),
        checkpointer_options=cast(CheckpointerOptions, rest),
    )
