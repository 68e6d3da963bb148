"""The one way to call a store: in a worker thread, abandonable, failures as StoreError.

Every store call of the library goes through :func:`call`:

- it runs in a worker thread (``anyio.to_thread.run_sync``), never on the event loop;
- when the task awaiting it is cancelled (the exit flush ran out of time, a reader was
  cancelled), it is abandoned at once rather than awaited — the thread finishes its
  current request on its own — and that call alone stops retrying: the store's retry
  loop waits through :func:`wait_abandoned`, which returns early for an abandoned call.
  Nothing else is shared, so one checkpointer giving up never stops another reader's
  calls (a :class:`~asynccp.Checkpoint` outlives its checkpointer);
- failures become :class:`~asynccp.StoreError` naming the action, the key and the
  location (:func:`store_errors`), except asynccp's own errors, "not found"
  (``FileNotFoundError``, for the caller to interpret) and ``ObjectExists``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread

from ..errors import CheckpointError, ObjectExists, StoreError
from ._base import Store

__all__ = [
    "abandoned",
    "call",
    "describe_error",
    "describe_keys",
    "store_errors",
    "wait_abandoned",
]

T = TypeVar("T")

_thread = threading.local()


def describe_keys(key: str | Sequence[str] | None) -> str:
    """``key`` (or the first few of several) for a message."""
    if key is None:
        return ""
    if isinstance(key, str):
        return f" {key}"
    keys = list(key)
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f" {shown}" if keys else ""


#: obstore ends each message with a dump of its Rust error value, "Debug source:" and
#: a few dozen lines: what a person reads stops before it (``__cause__`` keeps it all).
_DEBUG_DUMP = "\n\nDebug source:"
#: The last places the AWS credential chain looks: the instance metadata service
#: (IMDSv2's token, then the instance role's credentials). A request to them that
#: failed means no credentials were found before it.
_AWS_METADATA_PATHS = ("/latest/api/token", "/latest/meta-data/iam/security-credentials")
_NO_AWS_CREDENTIALS = (
    "; no AWS credentials found (obstore reads the AWS_* variables and the instance "
    "metadata service, not ~/.aws): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
    "for a ~/.aws profile pass StoreOptions(obstore={'credential_provider': "
    "obstore.auth.boto3.Boto3CredentialProvider()})"
)


def describe_error(e: BaseException, *, advice: bool = True) -> str:
    """A store error as a person reads it: obstore's message without its debug dump,
    and (``advice``) what to do when AWS credentials were not found."""
    text = str(e).split(_DEBUG_DUMP, 1)[0].strip()
    if not advice:
        return text.replace(_NO_AWS_CREDENTIALS, "")
    if any(path in text for path in _AWS_METADATA_PATHS) and _NO_AWS_CREDENTIALS not in text:
        text += _NO_AWS_CREDENTIALS
    return text


@contextlib.contextmanager
def store_errors(store: Store, key: str | Sequence[str] | None, action: str) -> Iterator[None]:
    """Turn a store failure inside the block into :class:`StoreError`.

    The message reads ``"<action> <key> in <location> failed: <cause>"``; ``__cause__``
    is the original error. asynccp's own errors, ``ObjectExists`` and
    ``FileNotFoundError`` pass unchanged — except a bucket that does not exist, which
    S3 also reports as "not found" and which is a store failure.
    """
    try:
        yield
    except (CheckpointError, ObjectExists):
        raise
    except FileNotFoundError as e:
        if "NoSuchBucket" not in str(e):
            raise
        raise StoreError(
            f"{action}{describe_keys(key)} in {store.description} failed: the bucket does not exist"
        ) from e
    except Exception as e:
        raise StoreError(
            f"{action}{describe_keys(key)} in {store.description} failed: {describe_error(e)}"
        ) from e


def wait_abandoned(seconds: float) -> bool:
    """Sleep ``seconds`` in a store's retry loop; True (at once) if the call running in
    this thread was abandoned: then it must not retry."""
    stop: threading.Event | None = getattr(_thread, "stop", None)
    if stop is None:  # not called through call(): an ordinary sleep
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


async def call(
    store: Store,
    fn: Callable[..., T],
    *args: object,
    key: str | Sequence[str] | None = None,
    action: str = "a store call on",
    limiter: anyio.CapacityLimiter | None = None,
    abandon: bool = True,
    map_errors: bool = True,
) -> T:
    """Run ``fn(*args)`` (a store method, or a function using ``store``) in a worker thread.

    Args:
        store: the store ``fn`` works on (named in error messages).
        key: the key(s) it works on, for error messages.
        action: what it does, for error messages ("reading", "writing"...).
        limiter: the worker-thread limiter to use (default: anyio's).
        abandon: abandon the thread when cancelled (the default). False waits for it:
            for a function that must not outlive its caller (a download writing into a
            folder the caller removes).
        map_errors: turn failures into :class:`StoreError` (the default). False for a
            function that does so itself, around its store calls only (a download,
            whose own destination's errors are not the store's).
    """
    stop = threading.Event()

    def run() -> T:
        _thread.stop = stop
        try:
            if not map_errors:
                return fn(*args)
            with store_errors(store, key, action):
                return fn(*args)
        finally:
            _thread.stop = None

    try:
        return await anyio.to_thread.run_sync(run, limiter=limiter, abandon_on_cancel=abandon)
    except anyio.get_cancelled_exc_class():
        stop.set()
        raise


def abandoned() -> bool:
    """Whether the call running in this thread was abandoned (its caller cancelled): a
    function doing several things in one call stops between them."""
    stop: threading.Event | None = getattr(_thread, "stop", None)
    return stop is not None and stop.is_set()
