"""What the caller passes as a location -> a :class:`~asynccp._store.Store` (no I/O).

A location is a plain path or ``file://`` URL (a :class:`LocalDir`), ``memory://`` (an
in-process store), an ``s3://``, ``gs://``, ``az://`` or ``http(s)://`` URL (the
:class:`StoreOptions`' ``obstore`` keywords go to ``obstore.store.from_url``, and the
usual environment variables apply), or an obstore store object with an optional
``StoreOptions(prefix=...)``. An obstore
``LocalStore`` object is a local directory too, written by asynccp itself.

A string that starts with a scheme asynccp knows (``s3:``, ``gs:``, ``az:``, ``abfs:``,
``http:``, ``file:``, ``memory:``, ... any letter case) but lacks the ``://`` after it
(``s3:/bucket``, ``s3:bucket``, ``memory:/``, ``file:relative``) is a mistyped URL, not
a folder named ``s3:``: it is a ``ValueError`` naming the expected form
(``s3://bucket/prefix``), never a local folder created in the working directory. Any
other colon is part of a path (``./runs/a:b``, ``runs:2024``, ``C:``-like names): a
folder that really starts with a scheme's name is written ``./s3:x``. (``file:/abs``,
which RFC 8089 allows, is refused the same way: ``file:///abs`` or the plain path
``/abs`` say it unambiguously.)
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlparse

from obstore.store import (
    AzureStore,
    GCSStore,
    HTTPStore,
    LocalStore,
    MemoryStore,
    S3Store,
    from_url,
)

from .._checks import check_bool, check_int
from ._base import Store
from ._local import LocalDir
from ._object import DEFAULT_CHUNK_SIZE, DEFAULT_IO_ATTEMPTS, DEFAULT_PART_CONCURRENCY, ObjectStore

__all__ = ["CLIENT_KEYS", "STORE_TYPES", "StoreOptions", "is_url", "resolve"]

STORE_TYPES = (S3Store, GCSStore, AzureStore, LocalStore, MemoryStore, HTTPStore)
_REMOTE_SCHEMES = {"s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https"}
#: The form a URL of each scheme takes, for the error on one that does not parse.
_EXPECTED_FORM = {
    "s3": "s3://bucket/prefix",
    "s3a": "s3a://bucket/prefix",
    "gs": "gs://bucket/prefix",
    "az": "az://container/prefix",
    "adl": "adl://container/prefix",
    "azure": "azure://container/prefix",
    "abfs": "abfs://container@account.dfs.core.windows.net/prefix",
    "abfss": "abfss://container@account.dfs.core.windows.net/prefix",
    "http": "http://host/path",
    "https": "https://host/path",
    "file": "file:///absolute/path (or the plain path)",
    "memory": "memory:// or memory://prefix",
}
#: ``scheme:`` at the start of a string, as a URL spells it (RFC 3986).
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
#: The least multipart part size S3 accepts.
_MIN_CHUNK_SIZE = 5 << 20

#: obstore's HTTP client settings as of obstore 0.12, should its type stubs be missing.
_KNOWN_CLIENT_KEYS = (
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "default_content_type",
    "default_headers",
    "http1_only",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "http2_keep_alive_while_idle",
    "http2_only",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "root_certificate",
    "randomize_addresses",
    "read_timeout",
    "timeout",
    "user_agent",
)


@functools.cache
def _client_keys() -> frozenset[str]:
    """The keys of obstore's ``ClientConfig``, read from the type stubs obstore ships
    (the type exists in no runtime module), so a newer obstore's keys are known too."""
    import obstore

    stub = Path(obstore.__file__).parent / "_store" / "_client.pyi"
    found: set[str] = set()
    try:
        tree = ast.parse(stub.read_text())
    except (OSError, SyntaxError, ValueError):
        tree = None
    for node in tree.body if tree is not None else ():
        if isinstance(node, ast.ClassDef) and node.name == "ClientConfig":
            found |= {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    return frozenset(found) | frozenset(_KNOWN_CLIENT_KEYS)


#: obstore's HTTP client settings: they belong in ``client_options={...}``; passed as
#: plain keyword arguments, some of them make obstore panic instead of raising.
CLIENT_KEYS = _client_keys()


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL string (``scheme://...``), not a path or object."""
    return isinstance(location, str) and "://" in location


@dataclass(frozen=True)
class StoreOptions:
    """How the location's store is reached and written (``Checkpointer(store=...)``).

    Checked when made (wrong type: ``TypeError``; bad value: ``ValueError``); the
    ``obstore`` keywords are checked against the location when it is resolved.

    Args:
        prefix: a key prefix inside an obstore store object given as the location
            (for a URL, put the prefix in the URL).
        durable: fsync local writes (payload, record and their folders) before a
            checkpoint counts as committed. ``False`` trades that for speed.
        chunk_size: multipart part size for large objects on remote stores (>= 5 MiB).
        part_concurrency: parts of one large object uploaded at once.
        io_attempts: attempts per store call on connection-level errors, on top of the
            retries obstore makes itself (its ``retry_config``).
        obstore: keyword arguments of ``obstore.store.from_url`` for a URL location:
            ``client_options`` (timeouts...), ``retry_config``, credentials, region...
    """

    prefix: str | None = None
    durable: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    part_concurrency: int = DEFAULT_PART_CONCURRENCY
    io_attempts: int = DEFAULT_IO_ATTEMPTS
    obstore: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefix is not None and not isinstance(self.prefix, str):
            raise TypeError(f"prefix must be a str, got {type(self.prefix).__name__}")
        check_bool("durable", self.durable)
        check_int("chunk_size", self.chunk_size, minimum=1)
        if self.chunk_size < _MIN_CHUNK_SIZE:
            raise ValueError(
                "chunk_size must be at least 5 MiB (the S3 minimum part size), "
                f"got {self.chunk_size}"
            )
        check_int("part_concurrency", self.part_concurrency, minimum=1)
        check_int("io_attempts", self.io_attempts, minimum=1)
        if not isinstance(self.obstore, Mapping):
            raise TypeError(
                "obstore must be a mapping of obstore.store.from_url keyword arguments, "
                f"got {type(self.obstore).__name__}"
            )
        for key in self.obstore:
            if not isinstance(key, str):
                raise TypeError(f"obstore option names must be str, got {key!r}")
        object.__setattr__(self, "obstore", MappingProxyType(dict(self.obstore)))


def resolve(location: object, options: StoreOptions | None = None) -> Store:
    """Turn what the user passed as a location into a store (no I/O).

    Raises:
        TypeError: a value of the wrong type, or obstore options where they cannot
            apply (a path, a store object) or that obstore does not know.
        ValueError: a bad value (an unsupported scheme, an empty path...).
    """
    if options is None:
        options = StoreOptions()
    elif not isinstance(options, StoreOptions):
        raise TypeError(f"store must be an asynccp.StoreOptions, got {type(options).__name__}")
    prefix, durable, store_options = options.prefix, options.durable, options.obstore

    def remote(description: str, store: Any, store_prefix: str = "") -> ObjectStore:
        return ObjectStore(
            description,
            store,
            prefix=store_prefix,
            chunk_size=options.chunk_size,
            part_concurrency=options.part_concurrency,
            io_attempts=options.io_attempts,
        )

    def no_options(hint: str) -> None:
        if store_options:
            raise TypeError(
                f"StoreOptions(obstore={{{', '.join(map(repr, sorted(store_options)))}: ...}}) "
                f"does not apply here: {hint}"
            )

    if isinstance(location, STORE_TYPES):
        no_options("store options apply to URL locations; configure the store object itself")
        if isinstance(location, LocalStore) and location.prefix:
            root = Path(location.prefix) / (prefix or "")
            return LocalDir(root, durable=durable, description=repr(location))
        return remote(repr(location), location, _clean_prefix(prefix))
    if prefix is not None:
        raise TypeError(
            "StoreOptions(prefix=...) only applies when the location is an obstore store "
            "object (for a URL or a path, put the prefix in it)"
        )
    if isinstance(location, os.PathLike):
        location = os.fspath(location)
    if not isinstance(location, str):
        raise TypeError(
            "location must be a path, a URL (file://, memory://, s3://, gs://, az://) "
            f"or an obstore store object, got {type(location).__name__}"
        )
    if not location:
        raise ValueError("location must not be empty")
    if not is_url(location):
        _refuse_broken_url(location)
        no_options("store options apply to URL locations only, not to local paths")
        return _local(location, durable)
    parsed = urlparse(location)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        no_options("store options apply to remote URLs only, not to file://")
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URLs must be absolute local paths, got {location!r}")
        return _local(unquote(parsed.path), durable)
    if scheme == "memory":
        no_options("store options do not apply to memory://")
        path = (parsed.netloc + parsed.path).strip("/")
        return remote(location, MemoryStore(), _clean_prefix(path))
    if scheme in _REMOTE_SCHEMES:
        return remote(location, _from_url(location, store_options))
    raise ValueError(f"unsupported location scheme {scheme!r} in {location!r}")


def _from_url(url: str, options: Mapping[str, Any]) -> Any:
    """``obstore.store.from_url`` with bad options reported as errors, not panics."""
    misplaced = sorted(CLIENT_KEYS & options.keys())
    if misplaced:
        raise TypeError(
            f"{misplaced} are HTTP client options: pass them as StoreOptions(obstore="
            f"{{'client_options': {{{', '.join(repr(k) + ': ...' for k in misplaced)}}}}})"
        )
    try:
        return from_url(url, **options)
    except Exception as e:
        if type(e).__name__ == "UnknownConfigurationKeyError":
            message = str(e)
            key = next((k for k in sorted(options) if repr(k) in message), sorted(options)[0])
            scheme = url.split("://", 1)[0]
            raise TypeError(
                f"StoreOptions(obstore=...) holds {key!r}, which obstore.store.from_url "
                f"does not know for {scheme}:// URLs"
            ) from None
        raise ValueError(f"cannot open {url!r}: {e}".splitlines()[0]) from e
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if type(e).__name__ != "PanicException":
            raise
        raise ValueError(f"cannot open {url!r} with options {sorted(options)}: {e}") from None


def _refuse_broken_url(location: str) -> None:
    """A ValueError for a string that starts like a URL of a scheme asynccp knows
    (``s3:/bucket``) without being one: such a string is a typo, not a local folder
    (see the module docstring for what stays a path)."""
    match = _SCHEME_RE.match(location)
    if match is None:
        return
    scheme = match.group(1).lower()
    if scheme in _EXPECTED_FORM:
        raise ValueError(
            f"location {location!r} is not a valid {scheme}:// URL: expected "
            f"{_EXPECTED_FORM[scheme]} (a local folder whose name starts with "
            f"{match.group(0)!r} is written './{location}')"
        )


def _local(path: str, durable: bool) -> LocalDir:
    root = Path(os.path.abspath(os.path.expanduser(path)))
    return LocalDir(root, durable=durable)


def _clean_prefix(prefix: str | None) -> str:
    prefix = (prefix or "").strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return f"{prefix}/" if prefix else ""
