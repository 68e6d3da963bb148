"""Where a command works: its location opened from the command line, a step loaded.

Every command takes a location as asynccp does (a path, ``file://``, ``s3://``,
``gs://``, ``az://``, ``memory://``); remote stores read the usual environment
variables (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, ``AWS_ACCESS_KEY_ID``...) and take
extra options with ``-o KEY=VALUE``.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from asynccp._catalog import load
from asynccp._checkpoint import Checkpoint
from asynccp._store import CLIENT_KEYS, StoreOptions, local_root, resolve
from asynccp._store import Store as Location
from asynccp.errors import CheckpointError

from ._format import one_line
from ._messages import Failure, UsageError

__all__ = ["Location", "load_step", "open_location", "scheme", "store_options"]


def scheme(url: str) -> str:
    """The URL scheme, lower case; "" for a plain path."""
    return urlparse(url).scheme.lower() if "://" in url else ""


def _is_remote(url: str) -> bool:
    return scheme(url) not in ("", "file", "memory")


def store_options(args: argparse.Namespace, url: str | None) -> dict[str, Any]:
    """The obstore options of ``url`` from ``-o``, ``--retries`` and ``--timeout``."""
    opts: dict[str, Any] = dict(args.store_options)
    if url is None or not _is_remote(url):
        if opts:
            raise UsageError("-o/--store-option applies to remote URLs only")
        return {}
    # -o takes store settings and HTTP client settings alike (allow_http=true, ...):
    # obstore wants the latter apart, in client_options.
    client = {k: opts.pop(k) for k in sorted(CLIENT_KEYS & opts.keys())}
    retry: dict[str, Any] = {"max_retries": args.retries}
    if args.timeout is not None:
        client["timeout"] = timedelta(seconds=args.timeout)
        retry["retry_timeout"] = timedelta(seconds=max(args.timeout * (args.retries + 1), 1))
    if client:
        opts["client_options"] = client
    opts["retry_config"] = retry
    return opts


def open_location(args: argparse.Namespace) -> Location:
    """The location of a read/maintenance command; a local one must already exist."""
    url: str = args.url
    try:
        loc = resolve(url, StoreOptions(obstore=store_options(args, url)))
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad location {url!r}: {e}") from None
    except Exception as e:  # obstore's own parsing/configuration errors
        raise UsageError(f"bad location {url!r}: {one_line(e)}") from None
    root = local_root(loc)
    if root is not None and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise Failure(f"{root} {what}")
    return loc


async def load_step(loc: Location, step: int) -> Checkpoint:
    """Checkpoint ``step`` at ``loc``, validated; a :class:`Failure` when it is not there."""
    try:
        return await load(loc, step)
    except CheckpointError as e:
        raise Failure(str(e)) from None
