"""The ``asynccp`` command line: ``bench``, ``ls``, ``show``, ``verify``, ``restore``, ``gc``.

A client of the library, kept out of it: ``import asynccp`` does not import this
package, and ``asynccp ls`` does not import the bench engine, rich or matplotlib.

* :mod:`._main` — argument parsing, the commands, messages and exit codes;
* :mod:`._bench` — the engine behind ``asynccp bench`` (measures, returns a dict);
* :mod:`._bench_report` — that dict as tables, a verdict line or a figure;
* :mod:`._format` — sizes, figures, one-line errors and tables, shared by both.

The console script ``asynccp`` and ``python -m asynccp`` both call :func:`main`.
"""

from ._main import main

__all__ = ["main"]
