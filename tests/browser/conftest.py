"""Headless Chromium for the explorer tests (Debian's chromium driven by Playwright's Python package).

Both are optional for the unit tests: without them these tests skip and say why. CI installs
Chromium first (.ci/run), and ./run.sh test runs this folder after the book build.
"""

from __future__ import annotations

import pytest

from explorer_checks import CHROMIUM_ARGS, chromium_path


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium: apt-get install chromium (or set CHROMIUM=/path/to/chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()
