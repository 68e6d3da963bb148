"""asynccp for synchronous code: the same checkpointer, without ``async``.

A plain training loop (PyTorch, numpy, a batch job) adopts asynccp without an event
loop of its own::

    import asynccp.sync

    with asynccp.sync.Checkpointer("s3://bucket/run", keep=3) as cp:
        found = cp.load_latest(lambda ckpt: ckpt.load_into(state))
        start = found[0].step + 1 if found else 0
        for step in range(start, steps):
            ...
            cp.save(step, asynccp.State(state))   # returns once staged; uploads go on

:class:`Checkpointer` runs an :class:`asynccp.Checkpointer` on an event loop in a
background thread (anyio's blocking portal) and hands each call over: ``save()``
returns as soon as the payload is staged (the snapshot is taken, the caller may change
its tensors), with a :class:`SaveHandle` whose ``result()`` waits for the commit; the
uploads, commits and retention run in the background while the loop trains. Leaving
the ``with`` block flushes, as the async checkpointer's exit does.

Reads hand back a :class:`Checkpoint`: the same checkpoint, whose methods (``read``,
``read_state``, ``load_into``...) block until they are done. ``load_latest`` takes a
plain function of such a checkpoint, run in a worker thread of the loop.

SIGTERM: while the block runs in the main thread, a SIGTERM raises in that thread
(where the loop's code runs) and the block's exit flushes what was staged within
``grace`` seconds, then raises :class:`~asynccp.Preempted` (a ``SystemExit`` with code
:data:`~asynccp.PREEMPTED_EXIT_CODE`): uncaught, the process exits with 75 and the
orchestrator restarts it, to resume from the newest checkpoint. The handler that was
there before is put back when the block ends. (``Ctrl-C`` stays a
``KeyboardInterrupt``; the exit flushes too, within ``flush_timeout``.)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar

import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import _checkpoint, _checkpointer
from ._checks import check_seconds
from ._manifest import FileInfo
from ._supervise import DEFAULT_GRACE
from ._supervise._signals import ignore_further_signals
from ._supervise._supervisor import preempted
from ._types import LocationLike, Payload
from ._write import Stats
from .errors import CheckpointClosedError, Terminated

__all__ = ["Checkpoint", "Checkpointer", "SaveHandle"]

log = logging.getLogger("asynccp")
T = TypeVar("T")


class Checkpoint:
    """A committed checkpoint, read from synchronous code: :class:`asynccp.Checkpoint`'s
    attributes, and its methods, each blocking until it is done (see there for what
    each checks and raises)."""

    __slots__ = ("_inner", "_portal")

    def __init__(self, inner: _checkpoint.Checkpoint, portal: BlockingPortal) -> None:
        self._inner = inner
        self._portal = portal

    def __repr__(self) -> str:
        return f"<asynccp.sync.Checkpoint step={self.step} files={len(self.files)}>"

    @property
    def step(self) -> int:
        return self._inner.step

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._inner.metadata

    @property
    def files(self) -> Mapping[str, FileInfo]:
        return self._inner.files

    @property
    def created_at(self) -> datetime:
        return self._inner.created_at

    @property
    def attempt(self) -> int:
        return self._inner.attempt

    @property
    def writer(self) -> str:
        return self._inner.writer

    @property
    def shards(self) -> int:
        return self._inner.shards

    @property
    def part(self) -> int | None:
        return self._inner.part

    @property
    def generation(self) -> str | None:
        return self._inner.generation

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def unwrapped(self) -> _checkpoint.Checkpoint:
        """The :class:`asynccp.Checkpoint` itself (for async code)."""
        return self._inner

    def shard(self, r: int) -> Checkpoint:
        """Part ``r`` of a step written by many processes."""
        return Checkpoint(self._inner.shard(r), self._portal)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _call(self._portal, fn, *args, **kwargs)

    def read(self, name: str | None = None) -> bytes:
        """One file's bytes, verified."""
        data: bytes = self._call(self._inner.read, name)
        return data

    def read_all(self) -> dict[str, bytes]:
        """Every file's bytes by name, each verified."""
        files: dict[str, bytes] = self._call(self._inner.read_all)
        return files

    def read_state(
        self,
        name: str = "state",
        *,
        framework: Literal["numpy", "torch"] = "numpy",
        keys: Iterable[str] | None = None,
        slices: Mapping[str, slice | tuple[slice, ...]] | None = None,
    ) -> dict[Any, Any]:
        """The training state, verified: :meth:`asynccp.Checkpoint.read_state`."""
        state: dict[Any, Any] = self._call(
            self._inner.read_state, name, framework=framework, keys=keys, slices=slices
        )
        return state

    def load_into(
        self, target: Mapping[Any, Any], name: str = "state", *, strict: bool = True
    ) -> list[str]:
        """Copy the state into ``target``'s tensors in place:
        :meth:`asynccp.Checkpoint.load_into`."""
        loaded: list[str] = self._call(self._inner.load_into, target, name, strict=strict)
        return loaded

    def verify(self) -> None:
        """Read every file and check it."""
        self._call(self._inner.verify)

    def download(self, dest_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write every file under ``dest_dir``, verified: :meth:`asynccp.Checkpoint.download`."""
        path: Path = self._call(self._inner.download, dest_dir, overwrite=overwrite)
        return path


def _call(portal: BlockingPortal, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``await fn(*args, **kwargs)`` on the portal's loop, from any other thread."""
    try:
        return portal.call(lambda: fn(*args, **kwargs))
    except RuntimeError as e:
        if "not running" in str(e) or "portal" in str(e):
            raise CheckpointClosedError(
                "the asynccp.sync.Checkpointer that made this has closed: read "
                "inside its `with` block"
            ) from e
        raise


class SaveHandle:
    """A staged checkpoint on its way to the store (what :meth:`Checkpointer.save`
    returns). ``result()`` waits for the commit; waiting is optional: a failure also
    reaches the next ``save()``, ``flush()`` and the exit of the block."""

    __slots__ = ("_future", "_inner", "_portal")

    def __init__(self, inner: Any, portal: BlockingPortal) -> None:
        self._inner = inner
        self._portal = portal
        self._future: concurrent.futures.Future[Any] | None = None

    @property
    def step(self) -> int:
        """The step saved."""
        step: int = self._inner.step
        return step

    def __repr__(self) -> str:
        return repr(self._inner).replace("<SaveHandle", "<asynccp.sync.SaveHandle", 1)

    def done(self) -> bool:
        """Whether the checkpoint has committed or failed."""
        done: bool = self._inner.done()
        return done

    @property
    def superseded(self) -> bool:
        """Whether a newer checkpoint replaced this one before it was uploaded."""
        superseded: bool = self._inner.superseded
        return superseded

    def result(self, timeout: float | None = None) -> Checkpoint:
        """Wait (at most ``timeout`` seconds; None: as long as it takes) for the commit;
        return the committed :class:`Checkpoint` or raise why it did not commit
        (``TimeoutError`` when the time ran out first: the save goes on)."""
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        if not self._inner.done():
            if self._future is None:
                try:
                    self._future = self._portal.start_task_soon(self._inner.wait)
                except RuntimeError as e:
                    raise CheckpointClosedError(
                        f"step {self.step} was never committed: its checkpointer has closed"
                    ) from e
            try:
                self._future.result(timeout)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(
                    f"step {self.step} did not commit within {timeout} s (it still may)"
                ) from None
            except BaseException:
                pass  # the handle holds the outcome: raised below, as itself
        error = self._inner.exception()
        if error is not None:
            raise error
        return Checkpoint(self._inner._committed(), self._portal)


class Checkpointer:
    """:class:`asynccp.Checkpointer` for synchronous code; use it as a ``with`` block.

    Takes the same arguments (``location``, ``keep``, ``limits``, ``retention``,
    ``store``, ``sharding``, ``flush_timeout``...), checked when it is made, and
    ``grace``: the seconds a SIGTERM leaves the exit to flush (see the module doc).
    """

    def __init__(
        self, location: LocationLike, *, grace: float = DEFAULT_GRACE, **options: Any
    ) -> None:
        self._grace = check_seconds("grace", grace)
        self._cp = _checkpointer.Checkpointer(location, **options)
        self._portal: BlockingPortal | None = None
        self._stack = contextlib.ExitStack()
        self._previous: Any = None
        self._handled = False

    def __repr__(self) -> str:
        return repr(self._cp).replace("<Checkpointer", "<asynccp.sync.Checkpointer", 1)

    @property
    def unwrapped(self) -> _checkpointer.Checkpointer:
        """The :class:`asynccp.Checkpointer` that does the work (its loop is private)."""
        return self._cp

    @property
    def location(self) -> str:
        return self._cp.location

    @property
    def shard(self) -> int | None:
        return self._cp.shard

    @property
    def shards(self) -> int | None:
        return self._cp.shards

    @property
    def stats(self) -> Stats:
        return self._cp.stats

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Checkpointer:
        if self._portal is not None:
            raise CheckpointClosedError("the Checkpointer is already open")
        with contextlib.ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal())
            stack.enter_context(portal.wrap_async_context_manager(self._cp))
            self._portal = portal
            self._stack = stack.pop_all()
        self._handle_sigterm()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # (Never suppresses the block's exception; typed so, like the async one.)
        self._restore_sigterm()
        portal, self._portal = self._portal, None
        if portal is None:
            return
        if not isinstance(exc, Terminated):
            self._stack.__exit__(exc_type, exc, tb)
            return
        # SIGTERM: flush within grace, close, exit 75 (Preempted).
        ignore_further_signals()
        try:
            flushed = portal.call(self._cp._flush_within, self._grace)
        finally:
            self._stack.__exit__(None, None, None)
        raise preempted(
            "pre-empted by SIGTERM",
            sig=signal.SIGTERM,
            attempt=self._cp.attempt,
            last_step=flushed.last_committed,
            errors=tuple(f"{type(e).__name__}: {e}" for e in flushed.errors),
            how=f"run it again on {self.location} to resume",
        ) from None

    def _handle_sigterm(self) -> None:
        """SIGTERM raises in the main thread while the block runs (not elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
        except (ValueError, OSError):  # an interpreter that does not allow it
            return
        self._handled = True

    def _restore_sigterm(self) -> None:
        if self._handled:
            self._handled = False
            if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, self._previous)

    def _open_portal(self) -> BlockingPortal:
        if self._portal is None:
            raise CheckpointClosedError(
                "use the asynccp.sync.Checkpointer as `with asynccp.sync.Checkpointer(...) as cp`"
            )
        return self._portal

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _call(self._open_portal(), fn, *args, **kwargs)

    # -- writes --------------------------------------------------------------------------

    def save(self, step: int, payload: Payload, *, metadata: Any = None) -> SaveHandle:
        """Stage checkpoint ``step`` and return once it is staged (the caller may change
        its buffers and tensors at once); upload and commit go on in the background.
        See :meth:`asynccp.Checkpointer.save`."""
        portal = self._open_portal()
        return SaveHandle(_call(portal, self._cp.save, step, payload, metadata=metadata), portal)

    def write(self, data: bytes) -> SaveHandle:
        """Save ``data`` as the next step."""
        portal = self._open_portal()
        return SaveHandle(_call(portal, self._cp.write, data), portal)

    def flush(self) -> None:
        """Wait until every staged checkpoint has committed; raise unreported failures."""
        self._call(self._cp.flush)

    # -- reads ---------------------------------------------------------------------------

    def _wrap(self, ckpt: _checkpoint.Checkpoint | None) -> Checkpoint | None:
        return None if ckpt is None else Checkpoint(ckpt, self._open_portal())

    def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint (cheap: no payload read), or None."""
        return self._wrap(self._call(self._cp.latest))

    def list(self) -> list[Checkpoint]:
        """Every committed checkpoint with a valid manifest, oldest first."""
        portal = self._open_portal()
        return [Checkpoint(c, portal) for c in _call(portal, self._cp.list)]

    def get(self, step: int) -> Checkpoint:
        """The checkpoint committed at ``step``."""
        found = self._wrap(self._call(self._cp.get, step))
        assert found is not None
        return found

    def load_latest(self, loader: Callable[[Checkpoint], T]) -> tuple[Checkpoint, T] | None:
        """Resume: ``loader(ckpt)`` on the newest checkpoint that loads, falling back
        past corrupt ones as :meth:`asynccp.Checkpointer.load_latest` does. ``loader``
        is a plain function of a :class:`Checkpoint` (its reads block); it runs in a
        worker thread. Returns ``(checkpoint, result)`` or None."""
        if not callable(loader) or inspect.iscoroutinefunction(loader):
            raise TypeError(
                f"loader must be a plain function of a Checkpoint, got {loader!r} "
                "(async loaders go to asynccp.Checkpointer.load_latest)"
            )
        portal = self._open_portal()

        async def run(ckpt: _checkpoint.Checkpoint) -> T:
            result = await anyio.to_thread.run_sync(loader, Checkpoint(ckpt, portal))
            if inspect.isawaitable(result):
                raise TypeError("loader returned an awaitable: asynccp.sync takes a plain function")
            return result

        found = _call(portal, self._cp.load_latest, run)
        return None if found is None else (Checkpoint(found[0], portal), found[1])

    def read(self) -> bytes | None:
        """The payload of the newest checkpoint that verifies (one file), or None."""
        data: bytes | None = self._call(self._cp.read)
        return data

    def restore(self, dest_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path | None:
        """Download the newest checkpoint that verifies into ``dest_dir``."""
        path: Path | None = self._call(self._cp.restore, dest_dir, overwrite=overwrite)
        return path


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler inside a block: stop the main thread's work where it is."""
    raise Terminated(signum)
