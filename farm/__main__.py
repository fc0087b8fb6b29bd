"""`python -m farm` is the same program as the `povfarm` console script."""

import sys

from farm.cli import main

if __name__ == "__main__":
    sys.exit(main())
