#!/usr/bin/env bash
# The project's commands. Each one sets up what it needs first (a virtual
# environment in .venv with vaetut and its book and test extras).
#
#   ./run.sh book               build the HTML book into _build/html (from stored outputs)
#   ./run.sh test               unit tests, the chapters under nbval (quick mode), a book
#                               build with warnings as errors, and the live explorers of the
#                               built pages in headless Chromium (skipped, and said so,
#                               without chromium)
#   ./run.sh chapters [FILES]   re-run chapters in full mode and store their outputs
#                               (all chapters by default; e.g. book/elbo.md)
#   ./run.sh bench              the speed benchmarks: a training epoch, and the k = 5000
#                               log-likelihood estimator
#
# Environment: PYTHON (default python3, 3.10-3.12), VAETUT_DATA (folder holding
# MNIST/raw; default ../shared/data when it exists, else ~/.cache/vaetut/data),
# VAETUT_SCALE (multiplies full-mode budgets, e.g. 5 on a GPU), CHROMIUM (the browser
# for the explorers' test; default: chromium on PATH).
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

browser_tests() {
  # the live explorers on the built book's pages, opened from file:// in headless Chromium
  # (Debian's chromium driven by Playwright's Python package; CHROMIUM=/path overrides)
  echo "== the book's live explorers in headless Chromium"
  local chromium=${CHROMIUM:-$(command -v chromium || true)}
  if [ -n "$chromium" ] && [ -x "$chromium" ] && python -c "import playwright" 2>/dev/null; then
    CHROMIUM=$chromium python -m pytest tests/browser -q
  elif [ -n "${VAETUT_REQUIRE_BROWSER:-}" ]; then
    echo "the browser test needs Chromium (apt-get install chromium) and playwright (pip install playwright)" >&2
    exit 1
  else
    echo "SKIPPED: no Chromium or no playwright, so the explorers were not checked in a browser" \
      "(apt-get install chromium; pip install playwright)"
  fi
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
    command -v node >/dev/null || echo "note: no node on PATH: the explorers' JavaScript tests are skipped (install Node.js 18+)"
    python -m pytest tests -q --ignore=tests/browser
    echo "== chapters under nbval (quick mode)"
    python -m pytest --nbval book/ --nbval-current-env -q
    echo "== book build with warnings as errors"
    build_book -W -n --keep-going
    browser_tests
    ;;
  chapters)
    setup
    python scripts/execute_chapters.py "$@"
    ;;
  bench)
    setup
    python benchmarks/train_epoch.py "$@"
    python benchmarks/eval_ll.py "$@"
    ;;
  *)
    sed -n '2,18p' "$0"
    exit 2
    ;;
esac
