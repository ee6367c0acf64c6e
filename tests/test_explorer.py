"""The explorers' Python side (vaetut.explorer) and their JavaScript run in node against PyTorch."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from vaetut import VAE
from vaetut import explorer as ex
from vaetut.flows import FlowStack, PlanarFlow, planar, planar_u_hat

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "tests" / "js" / "explorer_cli.mjs"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node not found: install Node.js (18 or later) to run the JavaScript tests")


def run_node(request: dict, tmp_path: Path) -> dict:
    req = tmp_path / "request.json"
    req.write_text(json.dumps(request))
    done = subprocess.run([NODE, str(CLI), str(req)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def models() -> dict[str, VAE]:
    """Decoders of every layer kind the explorer runs: ReLU, Tanh, sigmoid and identity outputs, no hidden layer."""
    torch.manual_seed(0)
    out = {
        "chapter_2d": VAE(latent_dim=2, hidden=(512, 256)),  # the Gaussian VAE chapter's 2-D model
        "tanh": VAE(latent_dim=5, hidden=(64,), activation="tanh"),
        "gaussian": VAE(latent_dim=3, hidden=(32,), likelihood="gaussian", sigma=1.0),
        "linear": VAE(latent_dim=4, hidden=()),
    }
    out["strong"] = scaled(VAE(latent_dim=10, hidden=(256,)), 2.0)  # logits of several units, as after training
    # a first layer so sharp that float16 alone moves pixels by 3e-3: that layer needs the residual
    sharp = VAE(latent_dim=2, hidden=(128, 64), activation="tanh")
    with torch.no_grad():
        sharp.decoder[0][0].weight.mul_(40.0)
        sharp.decoder[0][-1].weight.mul_(4.0)
    out["sharp"] = sharp
    return out


def dtypes(path: Path) -> list[str]:
    return [l["dtype"] for l in ex.load_export(path)["decoder"]["layers"] if l["type"] == "linear"]


def scaled(model: VAE, factor: float) -> VAE:
    """The model with every decoder weight multiplied by ``factor``."""
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(factor)
    return model


def codes(d: int, n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.cat([torch.randn(n // 2, d, generator=g), (torch.rand(n - n // 2, d, generator=g) * 2 - 1) * 3])


# ------------------------------------------------------------------- export
def test_export_round_trip(tmp_path):
    model = models()["chapter_2d"]
    path, err = ex.export_decoder(model, "fixture", {"note": "x"}, out_dir=tmp_path)
    assert path == tmp_path / "fixture.js" and 0 < err < 1e-3
    data = ex.load_export(path)
    assert data["format"] == ex.FORMAT and data["name"] == "fixture" and data["extras"] == {"note": "x"}
    assert data["config"]["latent_dim"] == 2 and data["config"]["hidden"] == [512, 256]
    assert "mode=quick" in data["written_by"]
    assert [l["type"] for l in data["decoder"]["layers"]] == ["linear", "relu", "linear", "relu", "linear", "sigmoid"]
    # float16: two bytes per weight, and about half a million weights
    n = sum(p.numel() for p in model.decoder.parameters())
    assert dtypes(path) == ["float16"] * 3
    assert data["decoder"]["n_values"] == n and 500_000 < n < 600_000
    assert len(base64.b64decode(data["decoder"]["weights"])) == 2 * n
    z = codes(2)
    with torch.no_grad():
        exported = ex.decoder_from_export(data)(z)
        rounded = ex.rounded_decoder(model, dtypes(path))
        torch.testing.assert_close(exported, rounded.mean(rounded.decode(z)), rtol=0, atol=1e-6)
        assert (exported - model.mean(model.decode(z))).abs().max() < 1e-3


def test_quick_mode_never_writes_the_book_files(monkeypatch):
    monkeypatch.delenv("VAETUT_EXPLORER_DIR", raising=False)
    monkeypatch.setenv("VAETUT_MODE", "quick")
    assert ex.STATIC not in ex.export_dir().parents and ex.export_dir() != ex.STATIC
    monkeypatch.setenv("VAETUT_MODE", "full")
    assert ex.export_dir() == ex.STATIC
    monkeypatch.setenv("VAETUT_EXPLORER_DIR", "/tmp/elsewhere")
    assert ex.export_dir() == Path("/tmp/elsewhere")


def test_export_rejects_what_the_browser_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="MLP decoders only"):
        ex.export_decoder(VAE(latent_dim=2, arch="conv", channels=(8, 16)), "conv", out_dir=tmp_path)
    with pytest.raises(ValueError, match="a-z0-9_"):
        ex.export_decoder(models()["linear"], "../evil", out_dir=tmp_path)
    with pytest.raises(ValueError, match="would not show the same model"):  # the check is live
        ex.export_decoder(models()["linear"], "impossible", out_dir=tmp_path, tolerance=0.0)
    with pytest.raises(ValueError, match="float16's range"):
        ex.encode_array(torch.tensor([1e6]), "float16")
    assert not list(tmp_path.iterdir())


def test_precision_is_raised_only_where_float16_is_not_enough(tmp_path):
    sharp = models()["sharp"]
    plain = ex._rounding_error(sharp, ["float16"] * 3, lim=3.0)
    assert plain > ex.F16_TOLERANCE, "the fixture must need more than float16"
    path, err = ex.export_decoder(sharp, "sharp", out_dir=tmp_path)
    kinds = dtypes(path)
    assert kinds == ["float16x2", "float16", "float16"], kinds  # the big layers stay compact
    assert err < ex.F16_TOLERANCE
    data = ex.load_export(path)
    z = codes(2, 256)
    with torch.no_grad():
        torch.testing.assert_close(ex.decoder_from_export(data)(z), sharp.mean(sharp.decode(z)), rtol=0, atol=1e-3)


def test_arrays_round_trip():
    x = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    assert torch.equal(ex.decode_array(ex.encode_array(x, "uint8")), torch.tensor([[0, 128], [255, 64]], dtype=torch.uint8))
    y = torch.randn(3, 4)
    torch.testing.assert_close(ex.decode_array(ex.encode_array(y, "float16")), y.half().float())


# --------------------------------------------------------------------- HTML
def explorers(tmp_path) -> list[ex.Explorer]:
    torch.manual_seed(0)
    plane = VAE(latent_dim=2, hidden=(32,))
    sliders = VAE(latent_dim=4, hidden=(32,))
    x = torch.rand(3, 1, 28, 28)
    return [
        ex.latent_plane_explorer(plane, torch.randn(50, 2), torch.randint(0, 10, (50,)), name="plane", out_dir=tmp_path),
        ex.latent_sliders_explorer(sliders, x, kl=torch.tensor([0.1, 2.0, 0.0, 1.0]), name="sliders", out_dir=tmp_path),
        ex.planar_flow_explorer([-3.0, -1.0], [1.0, 0.5], 0.3),
    ]


class Scripts(HTMLParser):
    """The script elements of an HTML fragment, as a browser's parser splits them."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[dict, str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.found.append((dict(attrs), ""))

    def handle_data(self, data):
        if self.lasttag == "script" and self.found and self.cdata_elem == "script":
            attrs, text = self.found[-1]
            self.found[-1] = (attrs, text + data)


def test_html_inlines_the_module_verbatim_and_loads_only_book_files(tmp_path):
    module = ex.MODULE.read_text()
    for e in explorers(tmp_path):
        html = e._repr_html_()
        scripts = Scripts(html).found
        kinds = [a.get("type", "src" if "src" in a else "?") for a, _ in scripts]
        assert kinds == ["application/json"] + (["src"] if e.name else []) + ["module"], kinds
        assert module in scripts[-1][1], "the module script must carry explorer.mjs verbatim, uncut"
        assert scripts[-1][1].rstrip().endswith("mountAll();")
        json.loads(scripts[0][1])
        srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert all(s.startswith(("data:image/png;base64,", "../_static/explorers/")) for s in srcs), srcs
        if e.name:
            assert f'<script src="../_static/explorers/{e.name}.js"></script>' in html
            assert html.index(f"{e.name}.js") < html.index('<script type="module">'), "weights load before the module runs"
    for text in [module, *(p.read_text() for p in tmp_path.glob("*.js"))]:
        assert not re.search(r"https?://|\bfetch\(|\bimport\(|XMLHttpRequest", text), "the explorers request nothing"


def test_sliders_are_ordered_by_kl_and_reset_to_rounded_means(tmp_path):
    e = explorers(tmp_path)[1]
    data = ex.load_export(e.path)["extras"]
    assert data["order"] == [1, 3, 0, 2]
    means = torch.tensor(data["means"])
    assert means.shape == (3, 4) and torch.equal((means * 100).round() / 100, means)
    assert ex.decode_array(data["references"]["images"]).shape == (3, 784)


def test_explorers_leave_the_random_state_alone(tmp_path):
    """A chapter's later cells must draw the same random numbers with or without its explorer cell."""
    models_ = models()
    x = torch.rand(2, 1, 28, 28)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    ex.planar_flow_explorer([1.0, 0.0], [0.5, 0.5], 0.0)
    ex.latent_plane_explorer(models_["chapter_2d"], torch.zeros(3, 2), name="rng_plane", out_dir=tmp_path)
    ex.latent_sliders_explorer(models_["tanh"], x, name="rng_sliders", out_dir=tmp_path)
    ex.decoder_from_export(ex.load_export(tmp_path / "rng_plane.js"))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_fallback_images_are_png(tmp_path):
    for e in explorers(tmp_path):
        png = re.search(r'<img src="data:image/png;base64,([^"]+)"', e.html)
        assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
        assert '<figure class="vx-fallback">' in e.html


def test_committed_weights_come_from_full_runs():
    files = sorted(ex.STATIC.glob("*.js"))
    for f in files:
        data = ex.load_export(f)
        assert data["name"] == f.stem
        assert "mode=full" in data["written_by"], f"{f.name} was written by a quick run: {data['written_by']}"


# ----------------------------------------------------------- JavaScript
@needs_node
def test_js_half_floats_are_exact(tmp_path):
    bits = list(range(0, 65536, 7)) + [0x0000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0x8001, 0xFC00, 0x7E00]
    got = np.array([float(v) for v in run_node({"half": bits}, tmp_path)["half"]])
    want = np.array(bits, dtype=np.uint16).view(np.float16).astype(np.float64)
    assert np.array_equal(got, want, equal_nan=True)


@needs_node
@pytest.mark.parametrize("kind", ["chapter_2d", "tanh", "gaussian", "linear", "strong", "sharp"])
def test_js_decoder_matches_torch(kind, tmp_path):
    model = models()[kind]
    path, _ = ex.export_decoder(model, kind, out_dir=tmp_path)
    z = codes(model.latent_dim)
    js = torch.tensor(run_node({"decode": {"data": str(path), "codes": z.tolist()}}, tmp_path)["decode"])
    with torch.no_grad():
        exact = model.mean(model.decode(z)).flatten(1)
        rounded = ex.rounded_decoder(model, dtypes(path))
        same_weights = rounded.mean(rounded.decode(z)).flatten(1)
    assert js.shape == exact.shape
    # the same float16 weights: float32 (torch) against float64 (JavaScript) arithmetic only
    assert (js - same_weights).abs().max() < 1e-5
    # the chapter's float32 model: what the reader is promised
    assert (js - exact).abs().max() < 1e-3
    assert (js - exact).abs().max() > 0, "the comparison must see the float16 rounding"


def planar_cases():
    g = torch.Generator().manual_seed(3)
    cases = [
        ([-3.0, -1.0], [1.0, 0.5], 0.3),  # the chapter's example: raw w.u = -3.5 folds space
        ([2.0, 0.0], [1.5, 0.0], -1.0),
        ([0.5, 0.5], [1e-3, 0.0], 0.0),  # almost no w
        ([-4.0, 4.0], [4.0, -4.0], 4.0),  # the sliders' corner: w.u = -32
    ]
    for _ in range(6):
        cases.append(tuple(torch.randn(5, generator=g).mul(2).split([2, 2, 1])))
    return [([float(v) for v in u], [float(v) for v in w], float(b if isinstance(b, float) else b[0])) for u, w, b in cases]


@needs_node
def test_js_planar_flow_matches_vaetut(tmp_path):
    t = torch.linspace(-4, 4, 17, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)  # [289, 2]
    cases = planar_cases()
    got = run_node({"planar": [{"u": u, "w": w, "b": b, "points": pts.tolist()} for u, w, b in cases]}, tmp_path)["planar"]
    for (u, w, b), js in zip(cases, got):
        u_, w_, b_ = torch.tensor(u, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        u_hat = planar_u_hat(u_, w_)
        torch.testing.assert_close(torch.tensor(js["u_hat"], dtype=torch.float64), u_hat, rtol=1e-12, atol=1e-12)
        assert (w_ @ torch.tensor(js["u_hat"], dtype=torch.float64)).item() > -1
        z_new, log_det = planar(pts, u_hat, w_, b_)
        torch.testing.assert_close(torch.tensor([f["z"] for f in js["forward"]], dtype=torch.float64), z_new)
        torch.testing.assert_close(torch.tensor([f["logDet"] for f in js["forward"]], dtype=torch.float64), log_det)
        layer = PlanarFlow(2).double()
        with torch.no_grad():
            layer.u.copy_(u_), layer.w.copy_(w_), layer.b.copy_(b_)
            want = FlowStack([layer]).log_prob(pts)
        # float64 on both sides; the sliders' corner (w.u_hat = -1 + 1e-14) makes 1 + h' w.u_hat lose digits
        torch.testing.assert_close(torch.tensor(js["log_density"], dtype=torch.float64), want, rtol=1e-6, atol=1e-6)
