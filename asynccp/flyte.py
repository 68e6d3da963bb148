"""asynccp in Flyte 2 tasks: ``@asynccp.flyte.checkpointed(...)`` over ``@env.task(...)``.

::

    import flyte
    import asynccp.flyte

    env = flyte.TaskEnvironment(name="train")

    @asynccp.flyte.checkpointed(keep=3)
    @env.task(retries=3)
    async def train(epochs: int) -> float:
        cp = flyte.ctx().checkpoint             # asynccp-backed flyte.BaseCheckpoint
        prev = await cp.load()                  # path of the newest checkpoint that verifies
        ...
        await cp.save(state_bytes)              # returns once staged; uploads in the background

Inside a task so decorated (``def`` or ``async def``):

- ``flyte.ctx().checkpoint`` is an :class:`AsyncCheckpoint`, a ``flyte.Checkpoint``
  with the same methods (``path``, ``prev_exists``, ``load``/``load_sync``,
  ``save``/``save_sync``), whose saves are asynccp checkpoints: each save is a new
  step, returns once the data is staged, and is committed atomically, with checksums.
  ``load()`` restores the newest checkpoint saved before this attempt that verifies —
  or, when there is none, one written by Flyte's own ``flyte.Checkpoint`` (one object,
  or a tarred directory), so a running project switches without losing its progress.
- ``asynccp.current()`` is the attempt's :class:`~asynccp.Checkpointer`, whose reads
  also see the earlier attempts.
- The task's end flushes every checkpoint, also when the body raises, before the error
  reaches Flyte.

SIGTERM: an ``async def`` task in a pod (on Flyte's event loop, in the main thread)
flushes within ``grace`` and exits with code 75. A ``def`` task, which Flyte runs in a
thread of its own, and any task of a local run (on Flyte's background thread) cannot
handle signals: only the main thread can (docs/flyte.md, "Signals and pre-emption").

Flyte retries the task (locally too, in ``flyte.run`` local mode), and asynccp resumes:
an attempt reads its own prefix, the previous attempt's, and those before it, following
the ``asynccp-attempt.json`` record each attempt writes first, so attempts that saved
nothing do not lose what an earlier one saved.

Needs the ``flyte`` extra: ``pip install 'asynccp[flyte]'``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, overload

import anyio
import anyio.to_thread

try:
    import flyte
    from flyte._checkpoint import CHECKPOINT_CACHE_KEY
    from flyte._task import AsyncFunctionTaskTemplate
except ImportError as _e:  # pragma: no cover - exercised without the extra
    raise ImportError(f"asynccp.flyte needs flyte 2: pip install 'asynccp[flyte]' ({_e})") from None

from ._bridge import SyncBridge, run_blocking, run_in_thread
from ._checkpoint import Checkpoint
from ._options import CheckpointerOptions, Unpack
from ._plugin import Attempt, PluginOptions, run_task
from ._supervise import DEFAULT_GRACE
from .errors import RetriesExhausted

__all__ = ["AsyncCheckpoint", "checkpointed"]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: Metadata key telling how a checkpoint was saved through :class:`AsyncCheckpoint`.
_KIND = "flyte_checkpoint"
#: The file name a single blob (bytes, or one file) is saved and restored under.
_PAYLOAD = "payload"


# flyte.Checkpoint is typed where flyte 2 is installed, Any where it is not (mypy runs both).
class AsyncCheckpoint(flyte.Checkpoint):  # type: ignore[misc, unused-ignore]
    """``flyte.ctx().checkpoint`` on asynccp, for one attempt of a task.

    A ``flyte.Checkpoint`` (so ``flyte.BaseCheckpoint``) with its layout on load: a
    saved blob (bytes, or one file) appears as ``path / "payload"``, a saved directory
    as the tree under ``path``. Saves return once the data is staged (the upload runs
    in the background); each save is a new step.
    """

    def __init__(self, attempt: Attempt, dest: str, src: str | None) -> None:
        super().__init__(dest, src)
        self._attempt = attempt
        self._bridge: SyncBridge = attempt.bridge
        self._loaded = False
        self._load_result: Path | None = None

    def prev_exists(self) -> bool:
        """Whether there is a checkpoint to resume from: a valid asynccp checkpoint saved
        before this attempt, or (when there is none) a previous-attempt prefix that may
        hold one written by ``flyte.Checkpoint``."""
        return self._attempt.resume is not None or self.remote_source is not None

    async def load(self) -> Path | None:
        """Restore the checkpoint to resume from into :attr:`path`; its path, or None.

        The newest checkpoint saved before this attempt that verifies (corrupt ones are
        skipped with a warning); failing that, one ``flyte.Checkpoint`` wrote at an
        earlier attempt's prefix. Returns ``path / "payload"`` for a blob, ``path``
        for a directory. Later calls return the same path without downloading again.
        """
        if self._loaded:
            return self._load_result
        attempt = self._attempt
        await anyio.to_thread.run_sync(_clear, self.path)
        found = await attempt.reader.lineage.load_latest(
            self._download,
            exclude_writer=attempt.checkpointer.writer_id,
            fallback=self._load_flyte,
        )
        self._load_result = None if found is None else found[1]
        self._loaded = True
        return self._load_result

    def load_sync(self) -> Path | None:
        """:meth:`load`, from synchronous task code."""
        return self._bridge.call(self.load)

    async def _download(self, ckpt: Checkpoint) -> Path:
        # self.path is the checkpoint's own folder (Flyte's semantics), emptied by
        # load() first: an earlier fallback's files in it are replaced.
        await ckpt.download(self.path, overwrite=True)
        blob = ckpt.metadata.get(_KIND) == "blob" or set(ckpt.files) == {_PAYLOAD}
        folder: Path = self.path
        return folder / _PAYLOAD if blob else folder

    async def _load_flyte(self, prefix: str) -> Path | None:
        """A checkpoint ``flyte.Checkpoint`` wrote at ``prefix`` (one object), restored
        as Flyte restores it; None when there is none."""
        legacy = flyte.Checkpoint(self.remote_destination, prefix)
        try:
            got = await legacy.load()
            if got is None:
                return None
            folder: Path = self.path
            await anyio.to_thread.run_sync(_move_children, legacy.path, folder)
            return folder / _PAYLOAD if got != legacy.path else folder
        finally:
            await _remove_folder(legacy)

    async def save(self, data: Path | str | bytes) -> None:
        """Save bytes, a file, or a directory (its whole tree) as the next checkpoint.

        Returns once the data is staged (copied), before it is uploaded.
        """
        attempt = self._attempt
        payload, kind = _payload(data)
        await attempt.checkpointer.save(attempt.reader.next_step(), payload, metadata={_KIND: kind})

    def save_sync(self, data: Path | str | bytes) -> None:
        """:meth:`save`, from synchronous task code: bytes return at once (queued), a
        path once it is copied."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._bridge.put({_PAYLOAD: bytes(data)}, metadata={_KIND: "blob"})
            return
        path = _existing(data)
        if path.is_dir():
            self._bridge.put_path(path, metadata={_KIND: "tree"})
        else:
            self._bridge.put_path(path, name=_PAYLOAD, metadata={_KIND: "blob"})


def _payload(data: Path | str | bytes) -> tuple[Any, str]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return {_PAYLOAD: bytes(data)}, "blob"
    path = _existing(data)
    return (path, "tree") if path.is_dir() else ({_PAYLOAD: path}, "blob")


def _existing(data: object) -> Path:
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"save() takes bytes, a file or a directory, got {type(data).__name__}")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint source path does not exist: {path}")
    return path


def _clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _move_children(src: Path, dest: Path) -> None:
    for child in src.iterdir():
        shutil.move(child, dest / child.name)


async def _remove_folder(checkpoint: flyte.Checkpoint) -> None:
    """Remove the temporary folder of ``checkpoint`` (its :attr:`path`) now, in a worker
    thread, even when cancelled: ``flyte.Checkpoint`` removes it only when the object is
    freed, and an object an exception's traceback keeps in a reference cycle (a failed
    attempt's) waits for the garbage collector, with the checkpoint restored into it."""
    folder = getattr(checkpoint, "_td", None)  # flyte's tempfile.TemporaryDirectory
    if folder is None:
        return
    try:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(folder.cleanup)
    except OSError as e:  # logged: never in place of the attempt's own outcome
        log.warning("asynccp: could not remove the temporary folder %s: %s", folder.name, e)


# -- the decorator ----------------------------------------------------------------------

F = TypeVar("F", bound="AsyncFunctionTaskTemplate[..., Any, Any]")


@overload
def checkpointed(task: F, /) -> F: ...
@overload
def checkpointed(
    task: None = None,
    /,
    *,
    grace: float | timedelta = DEFAULT_GRACE,
    handle_signals: bool = True,
    notices: str | None = None,
    notice_endpoint: str | None = None,
    **checkpointer_options: Unpack[CheckpointerOptions],
) -> Callable[[F], F]: ...
def checkpointed(
    task: F | None = None,
    /,
    *,
    grace: float | timedelta = DEFAULT_GRACE,
    handle_signals: bool = True,
    notices: str | None = None,
    notice_endpoint: str | None = None,
    **checkpointer_options: Unpack[CheckpointerOptions],
) -> F | Callable[[F], F]:
    """Give a Flyte 2 task asynccp checkpoints; stack it over ``@env.task(...)``.

    ``@asynccp.flyte.checkpointed`` or ``@asynccp.flyte.checkpointed(keep=3, ...)``:
    keyword arguments are the values a :class:`~asynccp.Checkpointer` takes (``keep``,
    ``policy``, ``limits``, ``retention``, ``store`` — its obstore options reach every
    checkpoint prefix —, ``flush_timeout``, ``staging_dir``), ``grace`` and
    ``handle_signals``, ``notices`` and ``notice_endpoint`` (as for
    :func:`asynccp.supervise`). Retries are the task's own:
    Flyte runs them, locally too. Returns the task itself, its function wrapped.
    """
    options = PluginOptions.check(
        grace=grace,
        handle_signals=handle_signals,
        notices=notices,
        notice_endpoint=notice_endpoint,
        **checkpointer_options,
    )

    def decorate(task: F) -> F:
        if not isinstance(task, AsyncFunctionTaskTemplate):
            raise TypeError(
                "@asynccp.flyte.checkpointed goes above @env.task(...) (it decorates the "
                f"task, not the function); got {task!r}"
            )
        if getattr(task.func, "__asynccp_checkpointed__", False):
            raise TypeError(f"task {task.name} is already @asynccp.flyte.checkpointed")
        task.func = _wrap(task.func, options, task.name)
        return task

    return decorate if task is None else decorate(task)


def _wrap(func: Callable[..., Any], options: PluginOptions, name: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            if not flyte.ctx():  # called as a plain function, outside a task
                return await func(*args, **kwargs)
            return await _run(options, name, lambda: func(*args, **kwargs))

        wrapper: Callable[..., Any] = run_async
    else:

        @functools.wraps(func)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            if not flyte.ctx():
                return func(*args, **kwargs)
            body = functools.partial(func, *args, **kwargs)
            return run_blocking(lambda: _run(options, name, lambda: run_in_thread(body)))

        wrapper = run_sync
    wrapper.__asynccp_checkpointed__ = True  # type: ignore[attr-defined]
    return wrapper


async def _run(options: PluginOptions, name: str, body: Callable[[], Any]) -> Any:
    """One attempt (Flyte retries): the task's checkpoint paths, the lineage, the body."""
    tctx = flyte.ctx()
    paths = tctx.checkpoint_paths
    dest = (paths.checkpoint_path or "").strip() if paths is not None else ""
    if not dest:
        raise RuntimeError(
            f"task {name} has no checkpoint path: Flyte gives one to every task it runs "
            "(flyte.run, or a cluster); asynccp.flyte needs it"
        )
    src = (paths.prev_checkpoint_path or "").strip() or None if paths is not None else None
    own = _own_prefix(dest, tctx)

    async def attempt(a: Attempt) -> Any:
        checkpoint = AsyncCheckpoint(a, own, src)
        try:
            with _checkpoint_installed(tctx, checkpoint):
                return await body()
        finally:  # the attempt is over: what it restored goes
            await _remove_folder(checkpoint)

    try:
        return await run_task(options, attempt, own=own, previous=src, retries=0, name=name)
    except RetriesExhausted as e:
        # Flyte retries: it gets the task's own error (asynccp.RecoverableError included).
        if isinstance(e.__cause__, Exception):
            raise e.__cause__ from None
        raise


#: Beside a local run's checkpoint path, the folder of the plugin's tasks' prefixes.
_LOCAL_SUFFIX = "-asynccp"


def _own_prefix(dest: str, tctx: Any) -> str:
    """The attempt's own prefix: on a cluster, the checkpoint path Flyte gave it.

    Locally, every task of a run is given the same checkpoint path (``<raw data
    path>/checkpoint``), and each attempt of a task too: there ``flyte.Checkpoint``
    writes its one object, so the plugin keeps out of it, in a folder beside it with
    one prefix per action (``<raw data path>/checkpoint-asynccp/<action>``). Tasks with
    and without the plugin then run in one run in any order, and local retries of a
    task resume from their own prefix.
    """
    if tctx.mode != "local":
        return dest
    return f"{dest.rstrip('/')}{_LOCAL_SUFFIX}/{tctx.action.name}"


@contextmanager
def _checkpoint_installed(tctx: Any, checkpoint: AsyncCheckpoint) -> Iterator[None]:
    """Make ``flyte.ctx().checkpoint`` return ``checkpoint`` inside the block."""
    data = tctx.data
    before = data.get(CHECKPOINT_CACHE_KEY)
    data[CHECKPOINT_CACHE_KEY] = checkpoint
    try:
        yield
    finally:
        if before is None:
            data.pop(CHECKPOINT_CACHE_KEY, None)
        else:
            data[CHECKPOINT_CACHE_KEY] = before
