"""The ``asynccp`` command line: ``bench``, ``ls``, ``show``, ``verify``, ``restore``, ``gc``.

A client of the library, kept out of it: ``import asynccp`` does not import this
package, and ``asynccp ls`` does not import the bench engine, rich or matplotlib.

* :mod:`._main` — :func:`main`: parse, run the command, map its end to an exit code;
* :mod:`._parser` — the argparse tree and its argument types;
* :mod:`._messages` — what is said on stderr (one line, one prefix), the two failures;
* :mod:`._location` — the location a command works on, opened; a step loaded;
* :mod:`._inspect` (``ls``, ``show``, ``verify``), :mod:`._restore`, :mod:`._gc`,
  :mod:`._bench_command` — the commands;
* :mod:`._format` — sizes, figures, one-line errors, tables, JSON on stdout: shared by all;
* ``asynccp bench``'s engine: :mod:`._bench` (the run), :mod:`._bench_options`,
  :mod:`._bench_store` (where it writes), :mod:`._bench_engine` (the rounds),
  :mod:`._bench_stats` (medians, ratios), :mod:`._bench_memory` (the peak-memory
  probe), :mod:`._bench_targets` (the targets met or missed);
* what bench shows: :mod:`._bench_report` (the result as tables, a verdict line, a
  figure) and :mod:`._bench_display` (the progress while it runs).

The console script ``asynccp`` and ``python -m asynccp`` both call :func:`main`.
"""

from ._main import main

__all__ = ["main"]
