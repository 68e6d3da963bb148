"""What some stores can do beyond the :class:`~asynccp._store.Store` protocol.

The protocol holds only what every store does. A store that can do more says so by
having the methods of one of these protocols; the write path and the readers ask with
``isinstance(store, Capability)`` (they are ``runtime_checkable``) and take the faster
way where it is there, the plain one otherwise. Today :class:`~asynccp._store.LocalDir`
has all three, :class:`~asynccp._store.ObjectStore` ranged reads only; a third-party
store needs none.

- :class:`LocalFiles`: a store that is a directory of plain files. Readers size their
  thread use by it (local reads are CPU-bound, remote ones latency-bound) and read a
  file as a private memory map instead of a copy; the command line checks the
  directory exists. :func:`local_root` is the directory, or None.
- :class:`RangedReads`: a store that reads byte ranges of an object (a local file's
  ``pread``, an object store's range requests): a partial read of a training state
  fetches only the chunks it needs. Without it, the object is read whole.
- :class:`DurableCommits`: a store whose writes become durable only when it fsyncs
  them, and which can therefore batch the fsyncs of a commit: payload objects put
  without waiting for their bytes (:meth:`~DurableCommits.put_unsynced`), the record
  prepared beside them and everything made durable in one journal commit
  (:meth:`~DurableCommits.prepare_create`), the commit itself one link and one folder
  fsync (:meth:`~DurableCommits.link_prepared`); several small checkpoints share those
  (:meth:`~DurableCommits.prepare_group`, :meth:`~DurableCommits.link_group`: the group
  commit of :mod:`asynccp._write._group`). On an object store a put is durable when it
  returns: nothing to batch.

Every method is synchronous and blocking and keeps the conventions of
:mod:`asynccp._store._base` (called through :func:`~asynccp._store.call`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._base import Source

__all__ = [
    "DurableCommits",
    "LocalFiles",
    "RangedReads",
    "durable_commits",
    "local_files",
    "local_root",
]


@runtime_checkable
class LocalFiles(Protocol):
    """A store that is a local directory: each key is a file under :attr:`root`."""

    @property
    def root(self) -> Path:
        """The directory (keys are paths relative to it)."""
        ...

    def map(self, key: str) -> Any:
        """A private, writable memory map of the object (a local file: no copy, and
        writes to it never reach the file), or None when the store cannot map it;
        FileNotFoundError when there is no object."""
        ...

    def recycle_records(self, on: bool) -> None:
        """Keep the records this store's writer deletes, to write its next records over
        them instead of creating files (off: delete every one kept)."""
        ...


@runtime_checkable
class RangedReads(Protocol):
    """A store that reads byte ranges of an object, each into a buffer of the caller's."""

    def read_ranges(
        self, key: str, ranges: Sequence[tuple[int, int]], out: Sequence[memoryview]
    ) -> None:
        """Fill ``out[i]`` (``end - start`` bytes, writable) with the bytes
        ``[start, end)`` of the object, for each ``ranges[i]``. Only those bytes are
        fetched (ranges that touch may go as one request; none that leave a gap).
        FileNotFoundError when there is no object; EOFError when it ends before a
        range does."""
        ...


@runtime_checkable
class DurableCommits(Protocol):
    """A store that makes writes durable itself, and can batch a commit's fsyncs.

    ``prepared`` values are the store's own (opaque to the caller): what
    :meth:`prepare_create` or :meth:`prepare_group` returned, handed back to
    :meth:`link_prepared`, :meth:`link_group`, :meth:`discard_prepared` or
    :meth:`discard_group`.
    """

    @property
    def durable(self) -> bool:
        """Whether writes are fsynced at all (False: a scratch location; every method
        still works, without the fsyncs, and nothing is prepared)."""
        ...

    def put_unsynced(self, key: str, source: Source, *, move: bool = False) -> None:
        """:meth:`~asynccp._store.Store.put` for a payload object, made durable later.

        A reader trusts a payload object only once a manifest names it with its size
        and checksum, so the store may give it its final name before its bytes are on
        disk; :meth:`prepare_create` (its ``sync``) then makes it durable.
        """
        ...

    def prepare_create(self, folder: str, data: bytes | None, *, sync: Sequence[str]) -> Any:
        """Get a commit ready: make the ``sync`` objects (:meth:`put_unsynced`), their
        folders and ``data`` (the record's bytes, written to a temporary file in
        ``folder``; None: no record) durable at once (a local directory: one journal
        commit). Returns what :meth:`link_prepared` links into place, or None (no
        record, or nothing to prepare: a store that is not :attr:`durable`)."""
        ...

    def link_prepared(self, prepared: Any, key: str) -> None:
        """Create ``key`` from what :meth:`prepare_create` made, if ``key`` does not
        exist (else raise ObjectExists, and ``prepared`` stays for another key or
        :meth:`discard_prepared`), and make it durable: the commit."""
        ...

    def discard_prepared(self, prepared: Any) -> None:
        """Remove what :meth:`prepare_create` wrote when no link took it."""
        ...

    def make_durable(self, keys: Sequence[str]) -> None:
        """Make the folders holding ``keys`` durable."""
        ...

    def prepare_group(self, records: Sequence[tuple[str, bytes, Sequence[str]]]) -> list[Any]:
        """:meth:`prepare_create` for several records at once (a :attr:`durable` store
        only): each ``(folder, data, sync)`` written, then all of it made durable
        together. Returns the prepared records, in order, for :meth:`link_group`."""
        ...

    def link_group(self, links: Sequence[tuple[Any, str]]) -> int:
        """Create each ``key`` from its prepared record, in order, stopping at the first
        that fails (it raises when it is the first). Returns how many were linked; the
        rest stay prepared. :meth:`make_durable` of the linked keys then makes them
        durable (one fsync per folder)."""
        ...

    def discard_group(self, prepared: Sequence[Any]) -> None:
        """Remove prepared records no link took."""
        ...


#: Each store's capabilities, found once: ``isinstance`` against a ``runtime_checkable``
#: protocol walks its members every time (tens of microseconds, paid per checkpoint by
#: a loop of tiny saves).
_FOUND: weakref.WeakKeyDictionary[Any, tuple[LocalFiles | None, DurableCommits | None]] = (
    weakref.WeakKeyDictionary()
)


def _capabilities(store: object) -> tuple[LocalFiles | None, DurableCommits | None]:
    try:
        return _FOUND[store]
    except (KeyError, TypeError):  # (TypeError: a store that takes no weak reference)
        pass
    found = (
        store if isinstance(store, LocalFiles) else None,
        store if isinstance(store, DurableCommits) else None,
    )
    with contextlib.suppress(TypeError):
        _FOUND[store] = found
    return found


def local_files(store: object) -> LocalFiles | None:
    """``store`` as :class:`LocalFiles` when it is a directory; None otherwise."""
    return _capabilities(store)[0]


def durable_commits(store: object) -> DurableCommits | None:
    """``store`` as :class:`DurableCommits` when it batches its fsyncs; None otherwise."""
    return _capabilities(store)[1]


def local_root(store: object) -> Path | None:
    """The directory of a store that is one (:class:`LocalFiles`); None otherwise."""
    found = local_files(store)
    return None if found is None else found.root
