"""Autosave: keep a service's in-memory state saved, with no checkpoint code in its handlers.

A training loop saves at each step; a service has no steps. :func:`autosave` owns the
cadence instead: every ``every`` seconds (and/or every ``every_changes`` changes the
service reports with :meth:`Autosave.changed`) it reads the state from a callable,
skips it when nothing changed, saves it under a generated step, and saves once more
when its block exits. :func:`lifespan` adds the other half a service needs: restore
the newest state that verifies at startup, then autosave until shutdown, in the shape
of a Starlette / FastAPI lifespan.

How it behaves:

- **Steps.** Generated: one more than the newest valid step at the location (or than
  the checkpointer's last committed one), then growing by one per save. The autosave
  owns the checkpointer's step numbers: do not ``save()`` on it yourself meanwhile.
- **Unchanged state is skipped.** ``skip="digest"`` (the default) compares the size and
  CRC32C of each file of the payload with the newest checkpoint committed or on its
  way (the manifest records exactly these, so this holds across restarts: a restored,
  untouched state is not saved again). ``skip="changes"`` does not even call the state
  callable while no change was reported since the last save (cheapest, but the
  service must call :meth:`Autosave.changed`). ``skip="never"`` saves every time.
- **Coalesced.** An autosave goes into the checkpointer's bounded queue and the next one
  is taken while it uploads; at most one more ever waits outside the queue (for room,
  under ``policy="block"``). A save that waits longer than an interval (or while
  ``every_changes`` more changes arrive) is dropped and the state read again, so what
  eventually goes in is the newest state, never a backlog. With ``policy="latest"``
  the queue itself supersedes autosaves not yet started.
- **Failures** (the state callable raising, an upload failing) are logged with their
  traceback on the ``asynccp`` logger, counted (:attr:`Autosave.stats`), and retried at
  the next interval: the service keeps running. After ``max_failures`` failures in a
  row the autosave gives up: :class:`AutosaveError` cancels the block's body and is
  raised from the ``async with``, and no task of the autosave outlives its block.
  A payload that can never be saved (a type the state callable must not return, an
  invalid file name) is raised at its first use, not retried.
- **Exit.** Leaving the block (normally, by an exception, or cancelled) stops the
  cadence, saves the state once more (unless unchanged) and waits for it and the
  autosaves in flight to commit, within ``final_timeout`` (default: the checkpointer's
  ``flush_timeout``); past it, the checkpointer's own exit flush takes over. A final
  save that fails is raised as :class:`AutosaveError` (or noted on the body's
  exception).

Log records carry structured fields (``extra=``) a log pipeline can index: ``event``
(``autosave.commit``, ``autosave.skip``, ``autosave.failure``, ``autosave.replaced``,
``autosave.give_up``, ``autosave.restore``), ``step``, ``location``, ``writer``,
``duration`` (seconds) and ``failures`` (in a row).

With the OpenTelemetry API installed (the ``otel`` extra), the autosave records
counters ``asynccp.autosave.saves``, ``.skips``, ``.failures``, ``.replaced``, a
histogram ``asynccp.autosave.duration`` (seconds from reading the state to the commit)
and spans ``asynccp.autosave.save`` and ``asynccp.autosave.restore``, through the
providers passed in or the global ones (no-ops until an SDK is configured). Without
it installed, nothing is recorded and nothing else changes.

The modules: :mod:`._options` (the settings, one value), :mod:`._payload` (the state
as files, their digest), :mod:`._outcomes` (counts, logs, telemetry, giving up),
:mod:`._engine` (the cadence and the final save), :mod:`._saver` (:class:`Autosave`:
the block, its task group, its errors), :mod:`._lifespan` (restore, then autosave).
"""

from ..errors import AutosaveError
from ._lifespan import Lifespan, ServiceState, lifespan
from ._outcomes import AutosaveStats
from ._saver import Autosave, autosave

__all__ = [
    "Autosave",
    "AutosaveError",
    "AutosaveStats",
    "Lifespan",
    "ServiceState",
    "autosave",
    "lifespan",
]
