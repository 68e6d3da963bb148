"""The destination of a download: a local folder the checkpoint's files are moved into.

A download never trusts the names it writes (they come from a manifest anyone with
write access to the bucket could edit) nor the folder it writes into (the caller's, and
anything may change in it meanwhile). Files are downloaded into a private folder inside
the destination (:func:`make_tmp`) and moved into place only once every one verified
(:func:`move_into_place`): folders are opened relative to their parent without
following links, so nothing is ever written outside the destination, and a link, a file
or a folder in the way is refused before anything moves. A file (or link) already where
a checkpoint's file goes is replaced only when the caller said ``overwrite=True``;
otherwise it is a :class:`DestinationExistsError` raised before anything is written,
and the final moves never replace a file that appeared meanwhile (hard link, then
unlink: create-if-absent).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import CheckpointError, CorruptCheckpointError, DestinationExistsError

__all__ = ["inside", "make_tmp", "move_into_place", "unwritable"]

#: Name prefix of the private download folder inside a destination.
TMP_PREFIX = ".asynccp-download-"


def inside(root: Path, name: str) -> Path:
    """``root/name``, refusing any name that would land outside ``root``."""
    target = Path(os.path.normpath(root / name))
    if os.path.commonpath([root, target]) != str(root) or target == root:
        raise CorruptCheckpointError(f"file name {name!r} would be written outside {root}")
    return target


#: errno values of a name the destination cannot hold (too long, refused characters) or
#: of names that clash in it; every other OSError is the destination's own trouble.
_NAME_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EEXIST, errno.ENOTDIR, errno.EISDIR}
)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
#: Whether folders can be walked without following links (POSIX: openat, O_NOFOLLOW).
#: ``os.replace`` is missing from ``os.supports_dir_fd`` but takes ``dst_dir_fd``
#: wherever ``os.rename`` does (the same system call).
_AT_CALLS = (
    hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
    and {os.open, os.mkdir, os.rename} <= os.supports_dir_fd
)


def unwritable(step: int, name: str, dest: Path, e: OSError) -> OSError | CheckpointError:
    """The error for writing file ``name`` under ``dest`` failing with ``e``.

    A name the destination cannot hold is a CheckpointError naming it; anything else
    (a full disk, no permission, a read-only file system) is ``e`` itself.
    """
    if e.errno not in _NAME_ERRNOS:
        return e
    why = e.strerror or str(e)
    if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        why += " (names that differ only in case clash on a case-insensitive file system)"
    return CheckpointError(
        f"checkpoint {step}: file {name!r} cannot be written under {dest}: {why}"
    )


def _check_dest(dest: Path, names: list[str], step: int, overwrite: bool) -> None:
    """Refuse, before anything is written, a destination a download would misuse.

    Each name's folders under ``dest`` must be absent or real folders (a symbolic link
    is never followed, a file is in the way), and its own place must not be a folder.
    A link or a file in a file's place is replaced when ``overwrite``, else it is a
    :class:`DestinationExistsError` naming it.
    """
    for name in names:
        parts = name.split("/")
        path = dest
        for i, part in enumerate(parts):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                break  # created by the move; nothing below it exists
            except OSError as e:
                raise unwritable(step, name, dest, e) from e
            if i == len(parts) - 1:
                if stat.S_ISDIR(mode):
                    raise CheckpointError(
                        f"checkpoint {step}: cannot restore file {name!r}: {path} is a folder"
                    )
                if not overwrite:
                    raise _exists(step, name, path)
            elif stat.S_ISLNK(mode):
                raise CheckpointError(
                    f"checkpoint {step}: cannot restore file {name!r}: {path} is a symbolic "
                    "link, and links inside the destination are never followed; remove it "
                    "or restore elsewhere"
                )
            elif not stat.S_ISDIR(mode):
                raise CheckpointError(
                    f"checkpoint {step}: cannot restore file {name!r}: {path} is a file where "
                    "the checkpoint needs a folder"
                )


def _exists(step: int, name: str, path: Path | str) -> DestinationExistsError:
    return DestinationExistsError(
        f"checkpoint {step}: restoring file {name!r} would overwrite {path}, which exists; "
        "pass overwrite=True to replace it (asynccp restore --force), or restore into "
        "another folder",
        str(path),
    )


def make_tmp(
    dest_dir: str, names: list[str], step: int, overwrite: bool = False
) -> tuple[Path, Path]:
    """The absolute destination (created, checked for ``names``) and a private download
    folder inside it."""
    dest = Path(os.path.abspath(dest_dir))
    dest.mkdir(parents=True, exist_ok=True)
    _check_dest(dest, names, step, overwrite)
    return dest, Path(tempfile.mkdtemp(dir=dest, prefix=TMP_PREFIX))


def move_into_place(
    tmp: Path, dest: Path, names: list[str], step: int, overwrite: bool = False
) -> None:
    """Move the verified files from ``tmp`` to their places under ``dest``.

    The destination is checked again first (it may have changed during the download),
    so a conflict moves nothing. Folders are then opened relative to their parent
    without following links (``openat`` with ``O_NOFOLLOW``), so a link planted while
    we move is refused too, not followed; ``rename`` replaces a link in a file's place
    (``overwrite``); without it a file is linked into place, never replacing one.
    """
    _check_dest(dest, names, step, overwrite)
    if not _AT_CALLS:  # pragma: no cover - Windows: no openat; rely on the check above
        for name in names:
            target = inside(dest, name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if not overwrite and os.path.lexists(target):
                    raise _exists(step, name, target)
                os.replace(inside(tmp, name), target)
            except DestinationExistsError:
                raise
            except OSError as e:
                raise unwritable(step, name, dest, e) from e
        return
    top = os.open(dest, _DIR_FLAGS)  # dest itself may be a link: the caller chose it
    try:
        for name in names:
            *folders, leaf = name.split("/")
            fd = _open_folders(top, dest, folders, name, step)
            try:
                if overwrite:
                    os.replace(inside(tmp, name), leaf, dst_dir_fd=fd)
                else:
                    _move_no_replace(inside(tmp, name), leaf, fd, step, name, dest)
            except DestinationExistsError:
                raise
            except OSError as e:
                raise unwritable(step, name, dest, e) from e
            finally:
                if fd != top:
                    os.close(fd)
    finally:
        os.close(top)


#: errno values of a file system that cannot make this hard link.
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})


def _move_no_replace(src: Path, leaf: str, fd: int, step: int, name: str, dest: Path) -> None:
    """Move ``src`` to ``leaf`` in folder ``fd`` unless something is there already: a
    hard link (which never replaces), then the source unlinked. Where the file system
    has no hard links, a check and a rename (the check before the download covers it)."""
    try:
        os.link(src, leaf, dst_dir_fd=fd, follow_symlinks=False)
    except FileExistsError:
        raise _exists(step, name, dest / name) from None
    except (OSError, NotImplementedError) as e:
        if isinstance(e, OSError) and e.errno not in _NO_LINK_ERRNOS:
            raise
        try:
            os.lstat(leaf, dir_fd=fd)
        except FileNotFoundError:
            os.replace(src, leaf, dst_dir_fd=fd)
            return
        raise _exists(step, name, dest / name) from None
    os.unlink(src)


def _open_folders(top: int, dest: Path, folders: list[str], name: str, step: int) -> int:
    """A descriptor of ``dest/folders...`` (created as needed), never following a link."""
    fd, path = top, dest
    flags = _DIR_FLAGS | os.O_NOFOLLOW
    try:
        for part in folders:
            path = path / part
            try:
                try:
                    sub = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    sub = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    what = (
                        "a symbolic link (links inside the destination are never followed)"
                        if os.path.islink(path)
                        else "a file where the checkpoint needs a folder"
                    )
                    raise CheckpointError(
                        f"checkpoint {step}: cannot restore file {name!r}: {path} is {what}"
                    ) from e
                raise unwritable(step, name, dest, e) from e
            if fd != top:
                os.close(fd)
            fd = sub
    except BaseException:
        if fd != top:
            os.close(fd)
        raise
    return fd
