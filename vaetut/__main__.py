"""``python -m vaetut ...``: the command line of :mod:`vaetut.cli`."""

import sys

from .cli import main

sys.exit(main())
