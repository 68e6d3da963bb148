"""The obstore adapter: S3, GCS, Azure, HTTP and in-memory stores behind :class:`Store`.

obstore's *synchronous* API, run in worker threads, on purpose: its asyncio API can
abort the interpreter at exit (a tokio thread takes the GIL during shutdown: SIGABRT in
about 1 run of 3 under load) and does not work under trio at all, while the synchronous
calls in worker threads exit cleanly and release the GIL while they wait.

Retries: obstore retries 5xx answers and most dropped connections itself (its
``retry_config``), and its ``client_options`` set the timeouts (``timeout``: a whole
request, body included, 30 s by default; ``connect_timeout``). Some transport errors (a
pooled connection found dead: "connection was not ready") still surface after few or no
retries; they are ``GenericError``, while "not found", "permission denied", "already
exists" have their own types and are final. So each call is repeated up to
``io_attempts`` times on ``GenericError`` — payload puts are idempotent, and a repeated
manifest create is recognised by its writer id — waiting
``min(2, 0.05 * 2 ** (n - 1) + uniform(0, 0.05))`` seconds before retry ``n`` (the
supervisor's :class:`~asynccp._retry.Backoff` formula, with smaller numbers). The wait
ends at once when the call is abandoned (:func:`~asynccp._store.wait_abandoned`).

Each retry is logged at INFO on the ``asynccp`` logger, in asynccp's words. The loop is
asynccp's own, not stamina's: stamina reports retries only through process-wide hooks,
whose default logs a bare ``stamina.retry_scheduled`` warning on the stderr of a user
who never set up logging; muting it for asynccp's calls alone would mean replacing those
hooks for the user's own stamina calls too. INFO, not WARNING: a retried blip needs no
action, and a call that still fails raises to the caller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import obstore
from obstore.exceptions import AlreadyExistsError, GenericError, PreconditionError

from .. import _memory
from .._retry import Backoff
from ..errors import ObjectExists
from ._base import ObjectInfo, Source
from ._call import wait_abandoned

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_IO_ATTEMPTS",
    "DEFAULT_PART_CONCURRENCY",
    "ObjectStore",
]

log = logging.getLogger("asynccp")
T = TypeVar("T")

#: The wait between the attempts of one store call: about 50 ms, 100 ms... up to 2 s.
_IO_BACKOFF = Backoff(initial=0.05, max=2.0, jitter=0.05)

#: Multipart part size and parallel parts for large payload objects.
DEFAULT_CHUNK_SIZE = 8 << 20
DEFAULT_PART_CONCURRENCY = 8
#: Attempts per call on connection-level errors, on top of obstore's retry_config.
DEFAULT_IO_ATTEMPTS = 4
#: The least size of a streamed read's chunks.
_STREAM_CHUNK = 8 << 20


class ObjectStore:
    """An obstore store (and a key prefix inside it) as a :class:`~asynccp._store.Store`.

    Of the optional capabilities (:mod:`asynccp._store._capabilities`) only
    ``RangedReads``: a put is durable when it returns, and there is no file to map.
    """

    def __init__(
        self,
        description: str,
        store: Any,
        *,
        prefix: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        part_concurrency: int = DEFAULT_PART_CONCURRENCY,
        io_attempts: int = DEFAULT_IO_ATTEMPTS,
    ) -> None:
        self.description = description
        self.store = store
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.part_concurrency = part_concurrency
        self.io_attempts = io_attempts

    def __repr__(self) -> str:
        return f"<ObjectStore {self.description} prefix={self.prefix!r}>"

    def _retrying(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, repeated on connection-level errors (see the module)."""
        for attempt in range(1, self.io_attempts + 1):
            try:
                return fn(*args, **kwargs)
            except GenericError as e:
                if attempt >= self.io_attempts:
                    raise
                delay = _IO_BACKOFF.delay(attempt)
                lines = str(e).strip().splitlines()
                log.info(
                    "%s: a store call failed (attempt %d of %d), retrying in %.2f s: %s",
                    self.description,
                    attempt,
                    self.io_attempts,
                    delay,
                    lines[0] if lines else type(e).__name__,
                )
                if wait_abandoned(delay):
                    raise  # abandoned: nobody waits for the answer any more
        raise AssertionError("unreachable: io_attempts >= 1")  # pragma: no cover

    def _key(self, key: str) -> str:
        return self.prefix + key

    def open(self) -> None:
        """Nothing to prepare: buckets and containers are not created by asynccp."""

    def put(self, key: str, source: Source, *, move: bool = False) -> None:
        self._retrying(
            obstore.put,
            self.store,
            self._key(key),
            source,
            chunk_size=self.chunk_size,
            max_concurrency=self.part_concurrency,
        )

    def create(self, key: str, data: bytes) -> None:
        try:
            self._retrying(obstore.put, self.store, self._key(key), data, mode="create")
        except (AlreadyExistsError, PreconditionError) as e:
            raise ObjectExists(key) from e

    def get(self, key: str) -> bytes:
        # One copy without the GIL: Bytes.to_bytes() copies holding it (see _memory).
        return _memory.to_bytes(self.get_buffer(key))

    def get_buffer(self, key: str) -> Any:
        """obstore's ``Bytes``: a read-only buffer over what it received, not copied."""
        return self._retrying(obstore.get, self.store, self._key(key)).bytes()

    def chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        result = self._retrying(obstore.get, self.store, self._key(key))
        return iter(result.stream(min_chunk_size=chunk_size or _STREAM_CHUNK))

    def read_ranges(
        self, key: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None:
        """The ranges in one ``get_ranges`` call (its requests side by side), copied
        into ``out``. ``coalesce=0``: obstore would otherwise fetch the gaps below
        1 MiB between ranges too (touching ranges still go as one request)."""
        if not ranges:
            return
        got = self._retrying(
            obstore.get_ranges,
            self.store,
            self._key(key),
            starts=[s for s, _ in ranges],
            ends=[e for _, e in ranges],
            coalesce=0,
        )
        for (start, end), buf, body in zip(ranges, out, got, strict=True):
            if len(body) != end - start:
                raise EOFError(f"{key} ends before byte {end}")
            buf[:] = memoryview(body)

    def list_objects(self, folder: str) -> list[ObjectInfo]:
        cut = len(self.prefix)

        def collect() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            for batch in obstore.list(self.store, prefix=self._key(folder)):
                for meta in batch:
                    out.append(
                        ObjectInfo(meta["path"][cut:], int(meta["size"]), meta["last_modified"])
                    )
            return out

        return self._retrying(collect)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete objects in bulk (S3: one request per thousand keys), missing ones
        included; a store that refuses a missing object in a bulk delete gets them one
        by one."""
        if not keys:
            return
        try:
            self._retrying(obstore.delete, self.store, [self._key(k) for k in keys])
        except FileNotFoundError:
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    self._retrying(obstore.delete, self.store, self._key(key))
