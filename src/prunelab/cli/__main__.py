"""``python -m prunelab.cli``: the same as the ``prunelab`` command."""

import sys

from . import main

sys.exit(main())
