"""``python -m prunelab`` (and ``torchrun ... -m prunelab run CONFIG``): the command line."""

import sys

from prunelab.cli import main

if __name__ == "__main__":
    sys.exit(main())
