"""The public type aliases: what the entry points accept, named once.

They are exported from :mod:`asynccp` for annotating code that calls it
(``def restore_from(loc: asynccp.LocationLike) -> ...``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, Literal, Union

from obstore.store import AzureStore, GCSStore, HTTPStore, LocalStore, MemoryStore, S3Store

from ._retry import Backoff, RetryEvent

__all__ = ["BackoffSpec", "LocationLike", "OnRetry", "Payload", "Policy", "Recoverable"]

LocationLike = Union[
    str,
    "os.PathLike[str]",
    S3Store,
    GCSStore,
    AzureStore,
    LocalStore,
    MemoryStore,
    HTTPStore,
]
"""Where checkpoints live: a path, a URL (``file://``, ``memory://``, ``s3://``,
``gs://``, ``az://``, ``http(s)://``) or an obstore store object."""

Payload = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", Mapping[str, Any], Any]
"""What ``save()`` takes: ``bytes`` (kept, zero-copy), any buffer such as a numpy array
(copied once), ``str`` (UTF-8 text), a path to a file or directory (copied to
staging), or a mapping of file names to those. (``Any`` stands for "any object with
the buffer protocol", which Python 3.10's typing cannot name.)"""

Policy = Literal["block", "latest"]
"""What a full queue does to ``save()``: wait (``"block"``) or drop the oldest
checkpoint not yet started (``"latest"``)."""

BackoffSpec = float | timedelta | Backoff | Callable[[int], float | timedelta]
"""What ``supervise(backoff=...)`` accepts: seconds, a ``timedelta``, a
:class:`~asynccp.Backoff`, or ``retry_number -> seconds``."""

Recoverable = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
"""What ``supervise(recoverable=...)`` accepts: exception type(s), or a predicate."""

OnRetry = Union[Callable[[RetryEvent], Any], Iterable[Callable[[RetryEvent], Any]], None]  # noqa: UP007
"""What ``supervise(on_retry=...)`` accepts: a callback (sync or async), or several."""
