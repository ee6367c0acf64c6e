#!/usr/bin/env bash
# The project's commands. Each one sets up what it needs first (a virtual
# environment in .venv with vaetut and its book and test extras).
#
#   ./run.sh book               build the HTML book into _build/html (from stored outputs)
#   ./run.sh test               unit tests, the chapters under nbval (quick mode), and a
#                               book build with warnings as errors
#   ./run.sh chapters [FILES]   re-run chapters in full mode and store their outputs
#                               (all chapters by default; e.g. book/elbo.md)
#   ./run.sh bench              the training-speed benchmark
#
# Environment: PYTHON (default python3, 3.10-3.12), VAETUT_DATA (folder holding
# MNIST/raw; default ../shared/data when it exists, else ~/.cache/vaetut/data),
# VAETUT_SCALE (multiplies full-mode budgets, e.g. 5 on a GPU).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ -z "${VAETUT_DATA:-}" ] && [ -d ../shared/data/MNIST ]; then
  VAETUT_DATA=$(cd ../shared/data && pwd)
fi
export VAETUT_DATA=${VAETUT_DATA:-}
export PYTHONHASHSEED=0

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
    echo "vaetut needs Python 3.10-3.12; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)." >&2
    echo "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 2
  fi
  local stamp=$VENV/.vaetut-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== setting up $VENV (vaetut with its book and test extras)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[book,test]"
    touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

build_book() {
  # -W: warnings are errors; -n: nitpicky (broken internal references)
  jupyter-book build . --path-output . "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
  book)
    setup
    build_book
    echo "== the book is in _build/html/index.html"
    ;;
  test)
    setup
    export VAETUT_MODE=quick
    echo "== unit tests"
    python -m pytest tests -q
    echo "== chapters under nbval (quick mode)"
    python -m pytest --nbval book/ --nbval-current-env -q
    echo "== book build with warnings as errors"
    build_book -W -n --keep-going
    ;;
  chapters)
    setup
    python scripts/execute_chapters.py "$@"
    ;;
  bench)
    setup
    python benchmarks/train_epoch.py "$@"
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
