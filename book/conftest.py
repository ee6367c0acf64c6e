"""pytest settings for the chapters: ``pytest --nbval book/`` runs them in quick mode.

The chapters' kernels inherit this process's environment, so setting
``VAETUT_MODE`` here (unless the caller set it) makes a plain
``pytest --nbval book/`` run every chapter in quick mode, in about a minute each at
most, as ``./run.sh test`` does. ``VAETUT_MODE=full pytest --nbval book/`` runs the
full budgets (most of an hour on a laptop).
"""

import os

os.environ.setdefault("VAETUT_MODE", "quick")
os.environ.pop("MPLBACKEND", None)  # figures are stored (and not compared) as in the full runs
