"""The explorers on the built book's own pages, opened from disk as a reader (and browse-book)
does, and from a local web server.

Runs after the book build (./run.sh test). Which pages must have which explorers is read from
the chapter sources: a chapter that calls ``latent_plane_explorer(...)`` must show a working
latent plane. ``VAETUT_BOOK_HTML`` points at another built book (default ``_build/html``).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
import warnings
from pathlib import Path

import pytest

from explorer_checks import baseline_errors, check_page

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("VAETUT_BOOK_HTML", ROOT / "_build" / "html"))
KINDS = {"latent_plane_explorer": "latent-plane", "latent_sliders_explorer": "latent-sliders", "planar_flow_explorer": "planar-flow"}


def expected() -> dict[str, list[str]]:
    """Chapter name -> the explorer kinds its source places, in order."""
    out = {}
    for md in sorted((ROOT / "book").glob("*.md")):
        calls = re.findall(r"^[^#\n]*\b(" + "|".join(KINDS) + r")\(", md.read_text(), flags=re.M)
        if calls:
            out[md.stem] = [KINDS[c] for c in calls]
    return out


EXPECTED = expected()


@pytest.fixture(scope="module")
def known_errors(browser):
    """Errors that the book's pages show without any explorer (its theme's own scripts); the
    explorer pages are held to having no others. They are reported, not hidden."""
    page = HTML / "book" / "intro.html"
    if not page.exists():
        return None
    log = baseline_errors(browser, page)
    if log.page_errors or log.console_errors or log.external:
        warnings.warn(
            f"every page of the built book has these errors, not caused by the explorers: page errors "
            f"{log.page_errors}, console errors {log.console_errors}, outside requests {log.external}"
        )
    return log


@pytest.fixture(scope="module")
def server():
    """The built book served over HTTP on 127.0.0.1 (as a reader's web server would)."""
    if not HTML.exists():
        pytest.skip(f"no built book at {HTML}: run ./run.sh book first")
    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_the_chapters_place_explorers():
    assert {"gaussian_vae", "beta_vae", "normalizing_flows"} <= set(EXPECTED), EXPECTED


@pytest.mark.parametrize("chapter", sorted(EXPECTED))
def test_built_page(browser, known_errors, chapter):
    page = HTML / "book" / f"{chapter}.html"
    if not page.exists():
        pytest.skip(f"no built book at {HTML}: run ./run.sh book first")
    if "data-vaetut-explorer" not in page.read_text():
        pytest.fail(
            f"book/{chapter}.md places an explorer but the built page has none: the stored outputs of "
            f"book/{chapter}.ipynb predate it; re-run the chapter in full mode (./run.sh chapters book/{chapter}.md)"
        )
    assert check_page(browser, page, known=known_errors) == EXPECTED[chapter]


@pytest.mark.parametrize("chapter", sorted(EXPECTED))
def test_built_page_over_http(browser, server, chapter):
    page = HTML / "book" / f"{chapter}.html"
    if "data-vaetut-explorer" not in page.read_text():
        pytest.fail(f"book/{chapter}.md places an explorer but the built page has none: re-run the chapter in full mode")
    known = baseline_errors(browser, HTML / "book" / "intro.html", url=server + "book/intro.html", site=server)
    url = server + f"book/{chapter}.html"
    assert check_page(browser, page, known=known, url=url, site=server) == EXPECTED[chapter]
