"""What a reader's browser must see on a page with explorers, checked in headless Chromium.

Shared by test_browser_fixture.py (a page built here from fixture models) and
test_browser_book.py (the built book's chapter pages). For each explorer element on a page
opened from ``file://``: it mounts (no console error, no request outside the book's files),
its still image is hidden, pointer / keys / sliders change its canvas, and the image it
decodes at a chosen code matches the reference that PyTorch stored beside the weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from vaetut.explorer import decode_array, load_export

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PIXEL_TOLERANCE = 2  # of 255: float16 weights (< 1e-3) plus rounding to 8 bits


def chromium_path() -> str | None:
    """Debian's chromium (``CHROMIUM`` overrides)."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    return shutil.which("chromium") or (("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None)


@dataclass
class PageLog:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


def open_page(browser, url: str, wait_for_explorers: bool = True, site: str | None = None):
    """A fresh page at ``url`` with its console errors, page errors and outside requests recorded
    (outside requests are also aborted). ``site``: the URL prefix of a web server that serves the
    book (its requests are the book's own); by default only file: URLs are."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    log = PageLog()
    own = ("file:", "data:", "blob:") + ((site,) if site else ())
    outside = re.compile(r"^(https?|wss?|ftp)://")
    context.route(lambda u: bool(outside.match(u)) and not u.startswith(own), lambda route: route.abort())
    page = context.new_page()
    page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(own) else log.external.append(r.url))
    page.goto(url)
    if wait_for_explorers:
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-vaetut-explorer]')].every(e => e.dataset.vaetutState)",
            timeout=20_000,
        )
    else:
        page.wait_for_load_state("load")
        page.wait_for_timeout(500)
    return page, log


def baseline_errors(browser, html_file: Path, url: str | None = None, site: str | None = None) -> PageLog:
    """The errors of a page without explorers (the same theme, scripts and loading): what every
    page of that book shows, which the explorer checks do not blame on the explorers."""
    page, log = open_page(browser, url or html_file.resolve().as_uri(), wait_for_explorers=False, site=site)
    page.context.close()
    return log


def canvas_hash(page, selector: str) -> int:
    """A hash (FNV-1a, computed in the page) of a canvas's pixels: equal pictures, equal hashes."""
    return page.eval_on_selector(
        selector,
        """c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let h = 0x811c9dc5;
            for (let i = 0; i < d.length; i++) h = Math.imul(h ^ d[i], 16777619) >>> 0;
            return h;
        }""",
    )


def decoded_pixels(node, selector: str, shape: tuple[int, int]) -> torch.Tensor:
    """The grey levels of the image drawn on a canvas, one per image pixel (at each cell's centre)."""
    h, w = shape
    values = node.eval_on_selector(
        selector,
        """(c, [h, w]) => {
            const s = c.width / w, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const out = [];
            for (let i = 0; i < h; i++) for (let j = 0; j < w; j++)
                out.push(d[4 * (Math.floor((i + 0.5) * s) * c.width + Math.floor((j + 0.5) * s))]);
            return out;
        }""",
        [h, w],
    )
    return torch.tensor(values, dtype=torch.int32).reshape(h * w)


def explorer_nodes(page) -> list:
    return page.query_selector_all("[data-vaetut-explorer]")


def check_mounted(page, log: PageLog, known: PageLog | None = None) -> list:
    """Every explorer on the page started, with no error and no outside request (beyond the
    ``known`` ones of every page of the book); returns the nodes."""
    nodes = explorer_nodes(page)
    assert nodes, "no explorer on this page"
    for node in nodes:
        state = node.get_attribute("data-vaetut-state")
        message = node.eval_on_selector_all(".vx-error", "es => es.map(e => e.textContent).join(' ')")
        assert state == "ready", f"explorer {node.get_attribute('data-vaetut-explorer')} did not start: {message}"
        assert node.eval_on_selector(".vx-fallback", "f => f.hidden"), "the still image should give way to the widget"
    new_errors(log, known)
    return nodes


def new_errors(log: PageLog, known: PageLog | None) -> None:
    """Fail on any page error, console error or outside request not in ``known``."""
    known = known or PageLog()
    page_errors = [e for e in log.page_errors if e not in known.page_errors]
    console = [e for e in log.console_errors if e not in known.console_errors]
    external = [u for u in log.external if u not in known.external]
    assert not page_errors, f"page errors: {page_errors}"
    assert not console, f"console errors: {console}"
    assert not external, f"requests outside the book's files: {external}"


def data_of(node, html_file: Path) -> dict:
    """The exported data a node's weights script carries, read from the file beside the page."""
    src = node.get_attribute("data-src")
    return load_export((html_file.parent / src).resolve())


def check_latent_plane(page, node, html_file: Path) -> None:
    data = data_of(node, html_file)
    _, h, w = data["decoder"]["image_shape"]
    refs = data["extras"]["references"]
    ref_images = decode_array(refs["images"]).to(torch.int32)  # [R, H*W]
    plane, decoded = ".vx-plane", ".vx-decoded"
    before = canvas_hash(node, decoded)
    # the pointer: hover near a corner of the plane
    node.query_selector(plane).scroll_into_view_if_needed()
    box = node.query_selector(plane).bounding_box()
    page.mouse.move(box["x"] + 0.85 * box["width"], box["y"] + 0.2 * box["height"])
    z_pointer = node.evaluate("n => n.vaetutExplorer.getCode()")
    assert z_pointer[0] > 1 and z_pointer[1] > 1, z_pointer
    assert canvas_hash(node, decoded) != before, "moving the pointer did not change the decoded image"
    # the keyboard: Home, then arrows to the reference code (1.0, -0.5)
    node.query_selector(plane).focus()
    page.keyboard.press("Home")
    at_origin = canvas_hash(node, decoded)
    page.keyboard.press("ArrowRight")
    assert node.evaluate("n => n.vaetutExplorer.getCode()") == [0.1, 0]
    assert canvas_hash(node, decoded) != at_origin, "an arrow key did not change the decoded image"
    assert "z = (+0.10, +0.00)" in node.eval_on_selector(".vx-sr", "e => e.textContent"), "the live region did not speak"
    for _ in range(9):
        page.keyboard.press("ArrowRight")
    for _ in range(5):
        page.keyboard.press("ArrowDown")
    assert node.evaluate("n => n.vaetutExplorer.getCode()") == [1, -0.5]
    k = [tuple(z) for z in refs["z"]].index((1.0, -0.5))
    got = decoded_pixels(node, decoded, (h, w))
    assert (got - ref_images[k]).abs().max() <= PIXEL_TOLERANCE, "the image at z = (1, -0.5) differs from PyTorch's"
    # every stored reference, set through the widget's handle
    for z, ref in zip(refs["z"], ref_images):
        node.evaluate("(n, z) => n.vaetutExplorer.setCode(z)", z)
        diff = (decoded_pixels(node, decoded, (h, w)) - ref).abs().max().item()
        assert diff <= PIXEL_TOLERANCE, f"decoded image at z = {z} differs from PyTorch's by {diff}/255"


def check_latent_sliders(page, node, html_file: Path) -> None:
    data = data_of(node, html_file)
    _, h, w = data["decoder"]["image_shape"]
    ex = data["extras"]
    ref_images = decode_array(ex["references"]["images"]).to(torch.int32)  # [M, H*W]
    labels = node.eval_on_selector_all(".vx-sliders label", "ls => ls.map(l => l.textContent)")
    assert [int(re.match(r"z(\d+)", t).group(1)) for t in labels] == ex["order"], "sliders must follow the KL order"
    n_sliders = node.eval_on_selector_all(".vx-sliders input[type=range]", "ss => ss.filter(s => s.labels.length && s.getAttribute('aria-label')).length")
    assert n_sliders == len(ex["order"]), "every slider needs a label"
    decoded = ".vx-decoded"
    before = canvas_hash(node, decoded)
    first = node.query_selector(".vx-sliders input[type=range]")
    first.focus()
    for _ in range(40):
        page.keyboard.press("ArrowRight")
    assert canvas_hash(node, decoded) != before, "moving the first slider did not change the decoded image"
    for k in reversed(range(len(ex["means"]))):
        node.query_selector("select").select_option(str(k))
        node.query_selector("button").click()
        code = node.evaluate("n => n.vaetutExplorer.getCode()")
        assert code == pytest.approx(ex["means"][k], abs=1e-9), "reset must restore the posterior mean"
        diff = (decoded_pixels(node, decoded, (h, w)) - ref_images[k]).abs().max().item()
        assert diff <= PIXEL_TOLERANCE, f"decoded image at the mean of test image {k} differs from PyTorch's by {diff}/255"
        assert "posterior mean" in node.eval_on_selector(".vx-status", "e => e.textContent")


def check_planar_flow(page, node, html_file: Path) -> None:
    opts = json.loads(node.eval_on_selector("script.vx-options", "s => s.textContent"))["data"]
    n, ref = opts["grid"], opts["reference"]
    step = (n - 1) // (ref["n"] - 1)
    logq = torch.tensor(node.evaluate("n => Array.from(n.vaetutExplorer.logDensity())"), dtype=torch.float64).reshape(n, n)
    want = torch.tensor(ref["log_density"], dtype=torch.float64)
    torch.testing.assert_close(logq[::step, ::step], want, rtol=1e-6, atol=1e-5)
    density = ".vx-density"
    before = canvas_hash(node, density)
    sliders = node.query_selector_all(".vx-sliders input[type=range]")
    assert len(sliders) == 5 and all(s.get_attribute("aria-label") for s in sliders)
    sliders[-1].focus()  # b
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    assert node.evaluate("n => n.vaetutExplorer.params().b") == pytest.approx(opts["b"] - 0.5, abs=1e-9)
    assert canvas_hash(node, density) != before, "moving the b slider did not change the density"
    status = node.eval_on_selector(".vx-status", "e => e.textContent")
    assert "w·û" in status, status
    node.query_selector("button").click()
    assert canvas_hash(node, density) == before, "reset must restore the first density"


CHECKS = {"latent-plane": check_latent_plane, "latent-sliders": check_latent_sliders, "planar-flow": check_planar_flow}


def check_page(
    browser,
    html_file: Path,
    expect_kinds: list[str] | None = None,
    known: PageLog | None = None,
    url: str | None = None,
    site: str | None = None,
) -> list[str]:
    """Open ``html_file`` from disk (or at ``url`` from a web server at ``site``) and run every
    check on its explorers; returns their kinds.

    ``known``: errors that a page of the same book without explorers shows too (see
    :func:`baseline_errors`); any other error or outside request fails the check.
    """
    page, log = open_page(browser, url or html_file.resolve().as_uri(), site=site)
    try:
        nodes = check_mounted(page, log, known)
        kinds = [n.get_attribute("data-vaetut-explorer") for n in nodes]
        if expect_kinds is not None:
            assert kinds == expect_kinds
        for node, kind in zip(nodes, kinds):
            CHECKS[kind](page, node, html_file)
        new_errors(log, known)  # the interactions raised nothing either
        return kinds
    finally:
        page.context.close()
