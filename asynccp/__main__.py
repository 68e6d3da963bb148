"""``python -m asynccp``: the same command line as the ``asynccp`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
