"""``python -m asynccp.cli``: the same command line as the ``asynccp`` console script."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
