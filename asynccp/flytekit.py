"""asynccp as a flytekit task plugin: ``@task(task_config=asynccp.flytekit.Checkpointing())``.

::

    import asynccp.flytekit
    from flytekit import current_context, task

    @task(retries=3, task_config=asynccp.flytekit.Checkpointing())
    def train(epochs: int) -> float:
        cp = current_context().checkpoint       # asynccp-backed, flytekit's interface
        prev = cp.read()                        # newest checkpoint that verifies, or None
        ...
        cp.write(state)                         # returns at once; uploaded in the background

Inside such a task (``def`` or ``async def``):

- ``flytekit.current_context().checkpoint`` keeps flytekit's ``Checkpoint`` interface
  (``prev_exists``, ``restore``, ``read``, ``save``, ``write``) and its file names
  (``write(b)`` and ``save(reader)`` store one file, ``_dst_cp``). ``write``/``save``
  hand the checkpoint to asynccp's queue and return (``save`` of a path once it is
  copied); each one is a new step, and the newest three are kept unless ``keep=`` says
  otherwise. ``read``/``restore``/``prev_exists`` are about the checkpoint the attempt
  resumes from: the newest one saved before it that verifies — or, when an earlier
  attempt ran without the plugin, what flytekit's own ``SyncCheckpoint`` wrote there.
- ``asynccp.current()`` is the attempt's :class:`~asynccp.Checkpointer` on the attempt's
  checkpoint prefix, whose reads also see the earlier attempts.
- The task's end flushes every checkpoint, also when the body raises, before the error
  reaches flytekit.

Resume across attempts: Flyte gives every attempt its own prefix and the previous
attempt's. Each attempt writes ``<prefix>/asynccp-attempt.json`` first, naming the
previous prefix; an attempt resumes from the newest checkpoint that verifies on its own
prefix, the previous attempt's, and those before, following the records — and, past an
attempt that never started (no record), Flyte's own naming of attempt prefixes — so
attempts that saved nothing do not lose what an earlier one saved. Earlier attempts'
prefixes are only read.

Run locally (``python wf.py``, ``pyflyte run`` without ``--remote``), the task's
``retries`` are real retries, run by :func:`asynccp.supervise` in the process, each
resuming. On a cluster Flyte retries (a new pod per attempt) and asynccp resumes. Both
retry ``FlyteRecoverableException`` and :class:`asynccp.RecoverableError` (and what
``recoverable=`` adds); SIGTERM flushes within ``grace`` seconds, then exits with code 75.

Needs the ``flytekit`` extra: ``pip install 'asynccp[flytekit]'``.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Union

try:
    from flytekit.core.checkpointer import Checkpoint as _FlytekitCheckpoint
    from flytekit.core.context_manager import ExecutionParameters, FlyteContextManager
    from flytekit.core.python_function_task import AsyncPythonFunctionTask, PythonFunctionTask
    from flytekit.core.task import TaskPlugins
    from flytekit.exceptions.user import FlyteRecoverableException
except ImportError as _e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"asynccp.flytekit needs flytekit: pip install 'asynccp[flytekit]' ({_e})"
    ) from None

from ._bridge import SyncBridge, run_blocking, run_in_thread
from ._checkpoint import Checkpoint
from ._options import CheckpointerOptions, Unpack
from ._plugin import Attempt, PluginOptions, run_task
from ._propeller import previous_prefix
from ._supervise import DEFAULT_GRACE
from ._supervise._retry_policy import DEFAULT_BACKOFF
from ._types import BackoffSpec, OnRetry, Recoverable
from .errors import CheckpointError, RetriesExhausted

__all__ = ["AsyncCheckpoint", "Checkpointing"]

#: The file flytekit's ``SyncCheckpoint`` stores ``write(b)`` and ``save(reader)`` as
#: (its ``TMP_DST_PATH``): the plugin stores them under the same name, so ``restore()``
#: gives back the same folder either way.
WRITE_NAME = "_dst_cp"
#: The framework whose own checkpoints an earlier attempt's prefix may hold.
_FOREIGN = "flytekit"


class Checkpointing:
    """The ``task_config`` that runs a flytekit task with asynccp checkpoints.

    Keyword arguments are those of :func:`asynccp.supervise` that fit a task
    (``recoverable``, ``backoff``, ``on_retry``, ``grace``, ``handle_signals``, ``notices``,
    ``notice_endpoint``) and the
    values a :class:`~asynccp.Checkpointer` takes (``keep``, ``policy``, ``limits``,
    ``retention``, ``store`` — its obstore options reach every checkpoint prefix —,
    ``flush_timeout``, ``staging_dir``). All are checked here, when the task is declared.
    The number of retries is the task's own ``retries``. ``keep`` is 3 unless given
    (``keep=None`` keeps every checkpoint).
    """

    def __init__(
        self,
        *,
        recoverable: Recoverable = (),
        backoff: BackoffSpec = DEFAULT_BACKOFF,
        on_retry: OnRetry = None,
        grace: float | timedelta = DEFAULT_GRACE,
        handle_signals: bool = True,
        notices: str | None = None,
        notice_endpoint: str | None = None,
        **checkpointer_options: Unpack[CheckpointerOptions],
    ) -> None:
        self.options = PluginOptions.check(
            recoverable=recoverable,
            backoff=backoff,
            on_retry=on_retry,
            grace=grace,
            handle_signals=handle_signals,
            notices=notices,
            notice_endpoint=notice_endpoint,
            **checkpointer_options,
        )

    def __repr__(self) -> str:
        return f"Checkpointing({self.options.describe()})"


class AsyncCheckpoint(_FlytekitCheckpoint):  # type: ignore[misc]
    """flytekit's ``Checkpoint`` interface on asynccp, for one attempt of a task.

    What ``flytekit.current_context().checkpoint`` is inside a task configured with
    :class:`Checkpointing`. Usable from the task's own thread, from threads it starts,
    and (for small saves) from the event loop of an ``async def`` task.
    """

    def __init__(self, attempt: Attempt, workdir: str | None) -> None:
        self._attempt = attempt
        self._bridge: SyncBridge = attempt.bridge
        self._workdir = workdir
        self._resumed: Checkpoint | None = None
        self._restored: Path | None = None

    def prev_exists(self) -> bool:
        """Whether a checkpoint saved before this attempt exists (valid, not yet verified).

        flytekit's own answers whether a previous prefix was given; this one whether
        there is something to resume from (False for a given prefix that is empty or
        missing, as a previous attempt that saved nothing leaves it).
        """
        return self._attempt.resume is not None

    def restore(self, path: Union[Path, str, None] = None) -> Path | None:  # noqa: UP007
        """Download the newest checkpoint saved before this attempt that verifies into
        ``path`` (an existing directory; a temporary one by default); return the path,
        or None when there is none. Later calls return the same path without downloading.

        None also when the previous attempt's prefix is missing (flytekit's own raises
        ``FlyteDataNotFoundException``): an attempt that saved nothing leaves none, and
        the attempts before it are searched all the same.
        """
        if self._restored is not None:
            return self._restored
        if path is None:
            dest = Path(tempfile.mkdtemp(prefix="asynccp-restore-", dir=self._workdir))
        else:
            dest = Path(path)
            if not dest.is_dir():
                raise ValueError("Checkpoints can be restored to a directory only.")

        async def download(ckpt: Checkpoint) -> Path:
            # flytekit's own restore (download_directory) replaces what is in ``path``:
            # this plugin keeps its semantics.
            return await ckpt.download(dest, overwrite=True)

        found: Path | None = self._bridge.call(self._load, download)
        if found is not None:
            self._restored = found
        return found

    def read(self) -> bytes | None:
        """The bytes of the newest checkpoint saved before this attempt that verifies
        (it must hold one file: ``write()`` saves one), or None when there is none."""

        async def read_one(ckpt: Checkpoint) -> bytes | None:
            if not ckpt.files:
                return None
            # flytekit counts what restore() puts in the folder: files and folders.
            top = {name.split("/", 1)[0] for name in ckpt.files}
            if len(top) > 1:
                raise ValueError(f"Expected exactly one checkpoint - found {len(top)}")
            if len(ckpt.files) > 1:
                raise ValueError(
                    f"Expected exactly one checkpoint - found a folder of {len(ckpt.files)} "
                    "files: restore() it"
                )
            return await ckpt.read()

        data: bytes | None = self._bridge.call(self._load, read_one)
        return data

    async def _load(self, loader: Callable[[Checkpoint], Awaitable[Any]]) -> Any:
        """``loader`` on the resume point: the checkpoint chosen the first time, else the
        newest one before this attempt that verifies (corrupt ones are skipped)."""
        if self._resumed is not None:
            return await loader(self._resumed)
        attempt = self._attempt
        found = await attempt.reader.lineage.load_latest(
            loader, exclude_writer=attempt.checkpointer.writer_id
        )
        if found is None or found[0] is None:
            return None
        self._resumed = found[0]
        return found[1]

    def save(self, cp: Union[Path, str, io.BufferedReader]) -> None:  # noqa: UP007
        """Save a file or a folder (its whole tree), or what a reader yields, as the next
        checkpoint; returns once it is copied, before it is uploaded. Names as flytekit
        stores them: a file under its name, a folder's tree, a reader's bytes as
        ``_dst_cp``."""
        if isinstance(cp, (str, os.PathLike)):
            self._bridge.put_path(Path(cp))
            return
        if not isinstance(cp, io.IOBase):
            raise ValueError(
                f"Only a valid path or IOBase type (reader) should be provided, received {type(cp)}"
            )
        data = cp.read()
        self.write(data.encode() if isinstance(data, str) else data)

    def write(self, b: bytes) -> None:
        """Save ``b`` as the next checkpoint, one file named ``_dst_cp`` (as flytekit
        names it); returns at once (the upload is queued)."""
        if isinstance(b, (bytearray, memoryview)):
            b = bytes(b)  # the caller may reuse its buffer
        if not isinstance(b, bytes):
            raise TypeError(f"write() takes bytes, got {type(b).__name__}")
        self._bridge.put({WRITE_NAME: b})


class _CheckpointedMixin:
    """What both task classes share: run the body as asynccp attempts."""

    task_config: Checkpointing
    metadata: Any
    name: str

    def _run_checkpointed(self, body: Callable[[], Awaitable[Any]]) -> Any:
        ctx = FlyteContextManager.current_context()
        state = ctx.execution_state
        params = state.user_space_params if state is not None else None
        base = getattr(params, "_checkpoint", None)
        own = getattr(base, "_checkpoint_dest", None)
        if params is None or not own:
            raise CheckpointError(
                f"task {self.name} runs without a checkpoint location: flytekit gives one to "
                "every task execution (setup_execution's checkpoint_path, or the local "
                "sandbox); run it as a flytekit task"
            )
        previous = getattr(base, "_checkpoint_src", None) or None
        local = state.is_local_execution()
        workdir = params.working_directory
        workdir = getattr(workdir, "name", workdir)

        async def attempt(a: Attempt) -> Any:
            with _checkpoint_installed(AsyncCheckpoint(a, workdir)):
                return await body()

        async def main() -> Any:
            return await run_task(
                self.task_config.options,
                attempt,
                own=str(own),
                previous=None if previous is None else str(previous),
                retries=self.metadata.retries if local else 0,
                name=self.name,
                also_recoverable=(FlyteRecoverableException,),
                foreign=_FOREIGN,
                earlier=previous_prefix,
                resume=_LOCAL_RESUME if local else _CLUSTER_RESUME,
            )

        try:
            return run_blocking(main)
        except RetriesExhausted as e:
            cause = e.__cause__
            if local or not isinstance(cause, Exception):
                raise
            # On a cluster Flyte retries, and only what it knows to be recoverable.
            if isinstance(cause, FlyteRecoverableException):
                raise cause from None
            raise FlyteRecoverableException(f"{type(cause).__name__}: {cause}") from cause


#: What resumes from a local run's checkpoints, as its messages say it: nothing run later
#: (each flytekit run gets a new sandbox), only the task's retries within the run.
_LOCAL_RESUME = (
    "a local run of flytekit starts in a new sandbox, so running it again starts from "
    "scratch; within one run, only the task's own retries resume"
)
#: On a cluster: the next attempt, which Flyte gives this prefix as the previous one.
_CLUSTER_RESUME = "the task's next attempt, if Flyte retries it, resumes from there"


@contextmanager
def _checkpoint_installed(checkpoint: AsyncCheckpoint) -> Iterator[None]:
    """Make ``current_context().checkpoint`` return ``checkpoint`` inside the block."""
    ctx = FlyteContextManager.current_context()
    state = ctx.execution_state
    assert state is not None and state.user_space_params is not None
    builder = ExecutionParameters.new_builder(state.user_space_params)
    builder.checkpoint = checkpoint
    with FlyteContextManager.with_context(
        ctx.with_execution_state(state.with_params(user_space_params=builder.build()))
    ):
        yield


class CheckpointedTask(_CheckpointedMixin, PythonFunctionTask[Checkpointing]):  # type: ignore[misc]
    """A ``def`` task with asynccp checkpoints (the body runs in a thread of its own,
    beside the event loop that uploads)."""

    def __init__(
        self, task_config: Checkpointing, task_function: Callable[..., Any], **kwargs: Any
    ):
        _check_config(task_config)
        super().__init__(task_config, task_function, **kwargs)
        if self.execution_mode != self.ExecutionBehavior.DEFAULT:
            raise TypeError("asynccp.flytekit.Checkpointing works with @task, not @dynamic")

    def execute(self, **kwargs: Any) -> Any:
        fn = functools.partial(self._task_function, **kwargs)
        return self._run_checkpointed(lambda: run_in_thread(fn))


class CheckpointedAsyncTask(
    _CheckpointedMixin,
    AsyncPythonFunctionTask[Checkpointing],  # type: ignore[misc]
):
    """An ``async def`` task with asynccp checkpoints (the body runs on the event loop
    that uploads). Registered for :class:`Checkpointing`; a ``def`` function gets a
    :class:`CheckpointedTask` instead."""

    def __new__(
        cls,
        task_config: Checkpointing,
        task_function: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if cls is CheckpointedAsyncTask and not inspect.iscoroutinefunction(task_function):
            # flytekit asks the plugin registered for the config type for both kinds.
            return CheckpointedTask(task_config, task_function, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self, task_config: Checkpointing, task_function: Callable[..., Any], **kwargs: Any
    ):
        _check_config(task_config)
        super().__init__(task_config, task_function, **kwargs)

    def execute(self, **kwargs: Any) -> Any:
        return self._run_checkpointed(lambda: self._task_function(**kwargs))


def _check_config(config: object) -> None:
    if not isinstance(config, Checkpointing):
        raise TypeError(f"task_config must be asynccp.flytekit.Checkpointing, got {config!r}")


TaskPlugins.register_pythontask_plugin(Checkpointing, CheckpointedAsyncTask)
