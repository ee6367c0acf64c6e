"""The three explorers on a page built here from small fixture models, opened from disk.

The page has the built book's layout: the chapter page in book/, the weights in
_static/explorers/ beside it, so the explorers' relative URLs are the book's.
"""

from __future__ import annotations

import torch

from explorer_checks import check_page
from vaetut import VAE
from vaetut.explorer import latent_plane_explorer, latent_sliders_explorer, planar_flow_explorer


def sharpened(model: VAE, factor: float = 2.0) -> VAE:
    """Larger decoder weights than at initialisation, so that codes decode to visibly different images."""
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(factor)
    return model


def build_page(root, tanh: bool = False):
    torch.manual_seed(0)
    act = "tanh" if tanh else "relu"
    plane = sharpened(VAE(latent_dim=2, hidden=(64, 32), activation=act))
    sliders = sharpened(VAE(latent_dim=6, hidden=(48,), activation=act))
    x = torch.rand(4, 1, 28, 28)
    static = root / "_static" / "explorers"
    html = "\n".join(
        e.html
        for e in (
            latent_plane_explorer(plane, torch.randn(300, 2), torch.randint(0, 10, (300,)), name="fixture_plane", out_dir=static),
            latent_sliders_explorer(sliders, x, kl=torch.rand(6), name="fixture_sliders",
                                    image_names=[f"image {k}" for k in range(4)], out_dir=static),
            planar_flow_explorer([-3.0, -1.0], [1.0, 0.5], 0.3),
        )
    )
    page = root / "book" / "explorers.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>explorers</title></head>\n<body>\n{html}\n</body></html>\n')
    return page


def test_fixture_page(browser, tmp_path):
    page = build_page(tmp_path)
    assert check_page(browser, page) == ["latent-plane", "latent-sliders", "planar-flow"]


def test_missing_weights_keep_the_still_image(browser, tmp_path):
    """A page whose weights file is missing shows its still image and says why (and the check sees it)."""
    page = build_page(tmp_path, tanh=True)
    (tmp_path / "_static" / "explorers" / "fixture_plane.js").unlink()
    from explorer_checks import open_page

    p, log = open_page(browser, page.resolve().as_uri())
    try:
        node = p.query_selector('[data-vaetut-explorer="latent-plane"]')
        assert node.get_attribute("data-vaetut-state") == "error"
        assert node.eval_on_selector(".vx-fallback", "f => !f.hidden && f.querySelector('img').naturalWidth > 0")
        assert "did not load" in node.eval_on_selector(".vx-error", "e => e.textContent")
        assert any("fixture_plane" in m for m in log.console_errors)
        assert p.query_selector('[data-vaetut-explorer="latent-sliders"]').get_attribute("data-vaetut-state") == "ready"
    finally:
        p.context.close()
