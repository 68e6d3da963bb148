"""The file-name rule: which names a checkpoint may hold, on save and in a manifest.

One rule for every path into a checkpoint (``save()`` validates the names it is given,
the manifest decoder the names it reads), so what can be saved can be restored on every
store, and a manifest edited by someone else can never name a file outside the
destination of a download.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidNameError

__all__ = ["MAX_NAME", "MAX_SEGMENT_BYTES", "check_names", "validate_name"]

#: The longest name, in characters.
MAX_NAME = 1024
#: The longest file name (one path segment) local file systems take, in bytes.
MAX_SEGMENT_BYTES = 255
#: Names, and lists of names, found valid already: a loop saves the same names save
#: after save, and each is checked once (bounded: emptied when this many are known).
_KNOWN = 4096
_valid: set[str] = set()
_valid_lists: set[tuple[str, ...]] = set()


def _remember(known: set[Any], item: Any) -> None:
    if len(known) >= _KNOWN:
        known.clear()
    known.add(item)


def validate_name(name: object) -> str:
    """Return ``name`` if it is a safe relative object name, else raise InvalidNameError.

    The rule (the same on save and when a manifest is read): a ``str`` of at most
    1024 characters that is valid Unicode (it encodes as UTF-8: no lone surrogate, which
    no store key and no file name can hold); ``/``-separated segments, none of them
    empty, ``.`` or ``..``, none longer than 255 bytes in UTF-8 (the longest file name a
    local file system takes, so every checkpoint can be restored to a local folder); no
    leading ``/``, no backslash, no control character.

    Anything else is allowed and round-trips on every store (local, memory, S3 and the
    other remote stores), ``#`` and ``:`` included. obstore's local store refuses two
    kinds of such names — a last segment whose first ``#`` is followed by digits only
    (``shard#1``, ``#7``: the names of its own temporary files), and a last segment
    ending in an ASCII letter and ``:`` or ``|`` (``weights:``, taken for a drive
    letter) — but asynccp reads, lists and deletes local directories itself.
    """
    if type(name) is str and name in _valid:  # (a str subclass is checked each time)
        return name
    if not isinstance(name, str):
        raise InvalidNameError(f"a file name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidNameError("a file name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"file name is longer than {MAX_NAME} characters: {name[:40]!r}…")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNameError(
            f"file name {name!r} is not valid UTF-8 (it holds a lone surrogate, as a file "
            "name that is not UTF-8 on disk decodes to); rename it"
        ) from None
    if name.startswith("/"):
        raise InvalidNameError(f"file name {name!r} is absolute; use a relative name like 'a/b'")
    if "\\" in name or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise InvalidNameError(f"file name {name!r} contains a backslash or control character")
    for segment in name.split("/"):
        if segment == "":
            raise InvalidNameError(
                f"file name {name!r} has an empty segment ('//' or a '/' at an end)"
            )
        if segment in (".", ".."):
            raise InvalidNameError(
                f"file name {name!r} has a {segment!r} segment; names may not escape"
            )
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidNameError(
                f"file name {name[:60]!r}… has a segment longer than {MAX_SEGMENT_BYTES} "
                f"bytes in UTF-8 ({segment[:40]!r}…): no local file system can hold it"
            )
    if type(name) is str:
        _remember(_valid, name)
    return name


def check_names(names: list[str]) -> None:
    """Reject duplicate names and a name that is also another name's folder."""
    key = tuple(names)
    if key in _valid_lists:
        return
    seen = set(names)
    if len(seen) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidNameError(f"duplicate file names in one checkpoint: {dup}")
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in seen:
                raise InvalidNameError(f"{folder!r} is both a file and the folder of {name!r}")
    _remember(_valid_lists, key)
