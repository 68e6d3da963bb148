"""What the state callable returns, as the files of a checkpoint and their digest.

The digest is what a manifest records of each file (size and CRC32C), so the state
read now compares with any committed checkpoint, across restarts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Union

import crc32c

from .._manifest import FileInfo
from .._write._stager import DEFAULT_NAME, maybe_offload

__all__ = ["Digest", "StatePayload", "call", "digest", "manifest_digest", "payload_files"]

#: What the state callable may return: bytes, str, a buffer, or a mapping of file
#: names to those (one file each).
StatePayload = Union[bytes, bytearray, memoryview, str, Mapping[str, Any], Any]  # noqa: UP007
#: Each file's size and CRC32C, by name.
Digest = dict[str, tuple[int, int | None]]


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, awaited when it returns an awaitable (sync and async callables)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def payload_files(payload: object) -> dict[str, bytes | memoryview]:
    """The files of an autosave payload, by name (a single value is named ``"data"``)."""
    if isinstance(payload, Mapping):
        files: dict[str, bytes | memoryview] = {}
        for name, value in payload.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"state() returned a mapping with a {type(name).__name__} key {name!r}; "
                    "file names are str"
                )
            files[name] = _as_file(value, f"state()[{name!r}]")
        return files
    return {DEFAULT_NAME: _as_file(payload, "state()")}


def _as_file(value: object, what: str) -> bytes | memoryview:
    """One file of an autosave payload as bytes or a flat byte view; TypeError otherwise."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    hint = (
        "return bytes, str, a buffer (bytearray, memoryview, numpy array) or a flat "
        "mapping of file names to those: serialise the state (e.g. "
        "json.dumps(state).encode()); for files on disk, call cp.save() yourself"
    )
    if isinstance(value, Mapping):
        raise TypeError(f"{what} is a nested mapping; nest file names with '/' instead. {hint}")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what} is a {type(value).__name__}, which autosave cannot save: {hint}"
        ) from None
    if not view.c_contiguous:
        raise TypeError(f"{what} is a buffer that is not C-contiguous; {hint}")
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


async def digest(files: Mapping[str, bytes | memoryview]) -> Digest:
    """Size and CRC32C of each file, as a manifest records them (large ones off the loop)."""

    def crcs() -> Digest:
        return {name: (len(memoryview(d)), crc32c.crc32c(d)) for name, d in files.items()}

    return await maybe_offload(crcs, sum(len(memoryview(d)) for d in files.values()))


def manifest_digest(files: Mapping[str, FileInfo]) -> Digest:
    """The digest of a committed checkpoint, from its manifest."""
    return {name: (info.size, info.crc32c) for name, info in files.items()}
