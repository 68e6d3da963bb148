"""Where bytes live: the :class:`Store` protocol (the seam), the optional capabilities
some stores add (:class:`LocalFiles`, :class:`DurableCommits`, :func:`local_root`), the
implementations, and :func:`call`, the one way the library calls a store (worker
thread, abandonable, failures as :class:`~asynccp.StoreError` naming the key and the
location)."""

from ._base import ObjectInfo, Source, Store
from ._call import abandoned, call, describe_error, store_errors, wait_abandoned
from ._capabilities import (
    DurableCommits,
    LocalFiles,
    RangedReads,
    durable_commits,
    local_files,
    local_root,
)
from ._local import LocalDir
from ._object import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_IO_ATTEMPTS,
    DEFAULT_PART_CONCURRENCY,
    ObjectStore,
)
from ._resolve import CLIENT_KEYS, StoreOptions, is_url, resolve

__all__ = [
    "CLIENT_KEYS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_IO_ATTEMPTS",
    "DEFAULT_PART_CONCURRENCY",
    "DurableCommits",
    "LocalDir",
    "LocalFiles",
    "ObjectInfo",
    "ObjectStore",
    "RangedReads",
    "Source",
    "Store",
    "StoreOptions",
    "abandoned",
    "call",
    "describe_error",
    "durable_commits",
    "is_url",
    "local_files",
    "local_root",
    "resolve",
    "store_errors",
    "wait_abandoned",
]
