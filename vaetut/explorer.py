"""Live explorers for the HTML book: a chapter's decoder (or a planar flow) in the reader's browser.

A still grid of decoded codes is the weakest way to show what a latent space does. The
models of the book are small enough to run in a browser: the 2-D Gaussian VAE's decoder
has about half a million weights, a forward pass is a few dozen lines of JavaScript. This
module is the Python half of that: it writes a decoder's weights where the book's pages
can read them, and returns the HTML that places an explorer under a figure. The JavaScript
half is one dependency-free ES module, ``book/_static/explorers/explorer.mjs``.

Three explorers, one per chapter (see the chapters "Gaussian VAE", "beta-VAE" and
"Normalizing flows"):

* :func:`latent_plane_explorer`: the 2-D latent plane with the test codes' scatter; the
  code under the pointer (or moved with the arrow keys) is decoded beside it;
* :func:`latent_sliders_explorer`: one slider per latent unit, ordered by KL, and a reset
  to the posterior mean of a chosen test image;
* :func:`planar_flow_explorer`: one planar layer's u, w and b on sliders and the density
  of f(z), z ~ N(0, I), by the change of variables on a grid (the formulas of
  :class:`vaetut.flows.PlanarFlow`, constraint u_hat included).

How a page gets the code and the weights, and why. Readers open the built book from a web
server or straight from disk (``file://``), and under ``file://`` Chromium refuses
``<script type="module" src=...>``, ``import`` and ``fetch()`` of local files. So:

* the explorer's HTML (a chapter cell's ``text/html`` output, which MyST-NB passes through
  as raw HTML) carries ``explorer.mjs`` *verbatim* in an inline ``<script type="module">``,
  followed by ``mountAll();``: there is no build step, and the file stays a real ES module
  that node's tests import;
* a decoder's weights go into a classic script ``book/_static/explorers/<name>.js`` that
  assigns ``globalThis.VAETUT_EXPLORERS[name]`` and that the page loads with
  ``<script src="../_static/explorers/<name>.js">`` (classic scripts load under
  ``file://``); Sphinx copies the folder into the built book's ``_static`` (``_config.yml``,
  ``html_static_path``). The weights stay out of the notebook and out of the page;
* a planar flow needs five numbers, so its explorer carries them inline.

The data file holds one JSON object (format ``"vaetut-explorer-1"``)::

    {"format", "name", "written_by": run_info(), "config": VAEConfig as a dict,
     "decoder": {"layers": [{"type": "linear", "in": 2, "out": 256, "dtype": "float16"},
                            {"type": "relu"}, ..., {"type": "sigmoid"}],
                 "image_shape": [C, H, W], "max_error": ...,
                 "weights": base64 of float16 little-endian: per linear layer W [out, in]
                            row-major, then b [out]; a layer of dtype "float16x2" stores
                            W, b rounded to float16 and then the rounding's residual W - W16,
                            b - b16, also in float16},
     "extras": what the explorer shows beside the decoder (test codes, posterior means,
               reference images decoded by PyTorch for the tests)}

Arrays in ``extras`` are ``{"dtype": "float16" or "uint8", "shape": [...], "b64": ...}``.

Float16 keeps about 3 significant digits, which moves a trained decoder's pixel
probabilities by a few 1e-4; the export measures that change on random codes and, while it
exceeds ``F16_TOLERANCE`` (1e-3), stores the smallest remaining layer as "float16x2" (two
halves, about float32's precision), so the browser never shows a visibly different model.

Where the weights go: in full mode (the run whose outputs the book shows) into
``book/_static/explorers/``, committed with the chapter's outputs; in quick mode (the
tests) into a temporary folder, so a test run never overwrites the published files; the
environment variable ``VAETUT_EXPLORER_DIR`` overrides both.

Example (a chapter cell)::

    from vaetut.explorer import latent_plane_explorer
    latent_plane_explorer(vae2, mu_test, y_test, name="gaussian_vae_2d")   # displays the explorer
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import is_quick, run_info

__all__ = [
    "FORMAT",
    "MODULE",
    "STATIC",
    "STATIC_URL",
    "Explorer",
    "export_dir",
    "decoder_spec",
    "rounded_decoder",
    "choose_precision",
    "export_decoder",
    "load_export",
    "decoder_from_export",
    "encode_array",
    "decode_array",
    "explorer_html",
    "latent_plane_explorer",
    "latent_sliders_explorer",
    "planar_flow_explorer",
]

FORMAT = "vaetut-explorer-1"
ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "book" / "_static" / "explorers"  # copied to _build/html/_static/explorers
MODULE = STATIC / "explorer.mjs"
STATIC_URL = "../_static/explorers"  # the same folder seen from a chapter page, book/<name>.html
F16_TOLERANCE = 1e-3  # largest change of a decoded pixel that float16 weights may cause
_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass
class Explorer:
    """An explorer's HTML (shown by Jupyter through ``_repr_html_``) and what was written for it.

    Attributes:
        kind: ``"latent-plane"``, ``"latent-sliders"`` or ``"planar-flow"``.
        html: the HTML that places it: a still image, the widget's element, the weights'
            ``<script src>`` and the inline module.
        name: the weights' name (``None`` for a planar flow, whose numbers are inline).
        path: the weights file written, or ``None``.
        max_error: largest |pixel mean| change that the stored precision of the weights
            caused on random codes (kept below ``F16_TOLERANCE``).
    """

    kind: str
    html: str
    name: str | None = None
    path: Path | None = None
    max_error: float | None = None

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        where = f", weights in {self.path}" if self.path else ""
        return f"<vaetut {self.kind} explorer{f' {self.name!r}' if self.name else ''}{where}>"


# ------------------------------------------------------------------ where files go
def export_dir() -> Path:
    """Where :func:`export_decoder` writes: ``VAETUT_EXPLORER_DIR`` if set; else the book's
    static folder in full mode and a temporary folder in quick mode (tests must not
    overwrite the published weights)."""
    env = os.environ.get("VAETUT_EXPLORER_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    if is_quick():
        return Path(tempfile.gettempdir()) / "vaetut-explorers"
    return STATIC


# ------------------------------------------------------------------------ arrays
def encode_array(t: Tensor | np.ndarray | Sequence, dtype: str) -> dict:
    """``{"dtype", "shape", "b64"}`` of an array as little-endian ``float16`` or ``uint8``.

    ``uint8`` takes values in [0, 1] (pixels) and stores ``round(255 * v)``.
    """
    a = torch.as_tensor(t).detach().cpu()
    if dtype == "float16":
        half = a.to(torch.float16)
        if not torch.isfinite(half).all():
            raise ValueError(f"values beyond float16's range (|v| > 65504): largest |v| = {a.abs().max().item():.3g}")
        raw = half.numpy().astype("<f2").tobytes()
    elif dtype == "uint8":
        raw = (a.double().clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    else:
        raise ValueError(f"dtype must be 'float16' or 'uint8', got {dtype!r}")
    return {"dtype": dtype, "shape": list(a.shape), "b64": base64.b64encode(raw).decode("ascii")}


def decode_array(a: dict) -> Tensor:
    """The inverse of :func:`encode_array`: float16 -> float32 tensor, uint8 -> uint8 tensor."""
    raw = base64.b64decode(a["b64"])
    if a["dtype"] == "float16":
        out = torch.from_numpy(np.frombuffer(raw, dtype="<f2").astype(np.float32))
    elif a["dtype"] == "uint8":
        out = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
    else:
        raise ValueError(f"unknown dtype {a['dtype']!r}")
    return out.reshape(a["shape"])


# ------------------------------------------------------------------------ decoder
def decoder_spec(model: nn.Module) -> tuple[list[dict], list[Tensor]]:
    """The layers of an MLP decoder as the JavaScript runs them, and its tensors in file order.

    Args:
        model: a :class:`vaetut.VAE` (or any module with ``decoder`` and a ``config`` with
            ``image_shape`` and ``likelihood``) whose decoder is Linear, ReLU and Tanh
            layers (``arch="mlp"``).

    Returns:
        ``(layers, tensors)``: e.g. ``[{"type": "linear", "in": 2, "out": 256},
        {"type": "relu"}, ..., {"type": "sigmoid"}]``; the last entry is the output:
        ``"sigmoid"`` for a Bernoulli decoder (pixel probabilities), ``"identity"`` for a
        Gaussian one (its means). ``tensors`` lists each linear layer's ``W [out, in]``
        then ``b [out]``.
    """
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "decoder"):
        raise ValueError("export needs a VAE-like model with .decoder and .config (image_shape, likelihood)")
    if getattr(cfg, "arch", "mlp") != "mlp":
        raise ValueError(
            f"the browser explorer runs MLP decoders only (Linear, ReLU, Tanh); this model has arch={cfg.arch!r}"
        )
    layers: list[dict] = []
    tensors: list[Tensor] = []
    for m in model.decoder.modules():
        if isinstance(m, (nn.Sequential, nn.Flatten, nn.Unflatten)):
            continue
        if isinstance(m, nn.Linear):
            layers.append({"type": "linear", "in": m.in_features, "out": m.out_features})
            bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
            tensors += [m.weight.detach(), bias.detach()]
        elif isinstance(m, nn.ReLU):
            layers.append({"type": "relu"})
        elif isinstance(m, nn.Tanh):
            layers.append({"type": "tanh"})
        else:
            raise ValueError(
                f"the browser explorer runs Linear, ReLU and Tanh layers; this decoder has {type(m).__name__}"
            )
    if not layers or layers[0]["type"] != "linear":
        raise ValueError("the decoder must start with a Linear layer")
    layers.append({"type": "sigmoid" if cfg.likelihood == "bernoulli" else "identity"})
    return layers, tensors


def _decode_mean(model: nn.Module, z: Tensor) -> Tensor:
    """E[x | z] ``[N, C, H, W]`` of the model for codes ``[N, D]`` (the explorer's picture)."""
    return model.mean(model.decode(z))


def _round(t: Tensor, dtype: str) -> Tensor:
    """``t`` as the browser reads it: rounded to float16, or float16 plus its float16 residual."""
    hi = t.detach().cpu().float().half().float()
    if dtype == "float16":
        return hi
    if dtype == "float16x2":
        return hi + (t.detach().cpu().float() - hi).half().float()
    raise ValueError(f"dtype must be 'float16' or 'float16x2', got {dtype!r}")


def rounded_decoder(model: nn.Module, dtypes: Sequence[str] | None = None) -> nn.Module:
    """A CPU float32 copy of ``model`` whose decoder weights are rounded as the browser reads
    them: one dtype per linear layer of the decoder (default all ``"float16"``)."""
    out = copy.deepcopy(model).cpu().float().eval()
    linears = [m for m in out.decoder.modules() if isinstance(m, nn.Linear)]
    dtypes = list(dtypes) if dtypes is not None else ["float16"] * len(linears)
    if len(dtypes) != len(linears):
        raise ValueError(f"{len(linears)} linear layers but {len(dtypes)} dtypes")
    with torch.no_grad():
        for m, dtype in zip(linears, dtypes):
            for p in m.parameters():
                p.copy_(_round(p, dtype))
    return out


@torch.no_grad()
def _rounding_error(model: nn.Module, dtypes: Sequence[str], lim: float, n: int = 1024) -> float:
    """Largest |E[x|z]| change the rounding causes, over n codes: half uniform on [-lim, lim]^D
    (what the explorers reach), half from the prior N(0, I)."""
    ref = copy.deepcopy(model).cpu().float().eval()
    g = torch.Generator().manual_seed(0)
    d = model.config.latent_dim
    z = torch.cat([(torch.rand(n // 2, d, generator=g) * 2 - 1) * lim, torch.randn(n - n // 2, d, generator=g)])
    return (_decode_mean(ref, z) - _decode_mean(rounded_decoder(model, dtypes), z)).abs().max().item()


def choose_precision(model: nn.Module, lim: float = 3.0, tolerance: float = F16_TOLERANCE) -> tuple[list[str], float]:
    """Per linear layer ``"float16"`` or ``"float16x2"``: all float16 if that keeps every decoded
    pixel within ``tolerance``, else the smallest layers first get the residual too.

    Returns ``(dtypes, max_error)``; raises ValueError if even all-``float16x2`` misses.
    """
    linears = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    dtypes = ["float16"] * len(linears)
    err = _rounding_error(model, dtypes, lim)
    for i in sorted(range(len(linears)), key=lambda i: linears[i].weight.numel()):
        if err < tolerance:
            break
        dtypes[i] = "float16x2"
        err = _rounding_error(model, dtypes, lim)
    if not err < tolerance:
        raise ValueError(
            f"the stored weights change the decoder's pixel means by up to {err:.2e} (tolerance {tolerance:g}): "
            "the explorer would not show the same model"
        )
    return dtypes, err


def export_decoder(
    model: nn.Module,
    name: str,
    extras: dict | None = None,
    out_dir: str | Path | None = None,
    lim: float = 3.0,
    tolerance: float = F16_TOLERANCE,
) -> tuple[Path, float]:
    """Write a decoder's float16 weights and config as ``<out_dir>/<name>.js``.

    Args:
        model: a VAE with an MLP decoder (see :func:`decoder_spec`).
        name: the key in ``globalThis.VAETUT_EXPLORERS`` and the file's stem (``[a-z0-9_]+``).
        extras: JSON-ready data the explorer shows beside the decoder.
        out_dir: default :func:`export_dir` (the book's static folder in full mode only).
        lim: codes in ``[-lim, lim]`` are used to check the rounding.
        tolerance: largest allowed change of a pixel's mean by the rounding of the weights
            (see :func:`choose_precision`, which picks each layer's precision to stay below it).

    Returns:
        ``(path, max_error)``.
    """
    if not _NAME.match(name):
        raise ValueError(f"name must match [a-z0-9_]+ (it names a file and a JavaScript key), got {name!r}")
    layers, tensors = decoder_spec(model)
    dtypes, err = choose_precision(model, lim, tolerance)
    parts = []
    for layer, w, b, dtype in zip([l for l in layers if l["type"] == "linear"], tensors[0::2], tensors[1::2], dtypes):
        layer["dtype"] = dtype
        hi = [t.detach().cpu().float().reshape(-1).half().float() for t in (w, b)]
        parts += hi
        if dtype == "float16x2":  # the rounding's residual, W - W16 then b - b16
            parts += [t.detach().cpu().float().reshape(-1) - h for t, h in zip((w, b), hi)]
    flat = torch.cat(parts)  # [n_values]
    cfg = asdict(model.config)
    data = {
        "format": FORMAT,
        "name": name,
        "written_by": run_info(),
        "config": cfg,
        "decoder": {
            "layers": layers,
            "image_shape": list(model.config.image_shape),
            "n_values": flat.numel(),
            "max_error": float(f"{err:.3g}"),
            "weights": encode_array(flat, "float16")["b64"],
        },
        "extras": extras or {},
    }
    out = Path(out_dir) if out_dir is not None else export_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.js"
    text = (
        f"// vaetut explorer data {name!r} ({FORMAT}): a decoder's float16 weights and config,\n"
        f"// written by vaetut.explorer.export_decoder ({data['written_by']}). Do not edit: the\n"
        "// chapter that trains the model rewrites it in its full run.\n"
        f"(globalThis.VAETUT_EXPLORERS = globalThis.VAETUT_EXPLORERS || {{}})[{json.dumps(name)}] = "
        + json.dumps(data, separators=(",", ":"))
        + ";\n"
    )
    tmp = path.with_suffix(".js.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path, err


def load_export(path: str | Path) -> dict:
    """The JSON object of a data file written by :func:`export_decoder`."""
    text = Path(path).read_text()
    m = re.search(r"\)\[\"[a-z0-9_]+\"\] = ", text)
    if not m or not text.rstrip().endswith(";"):
        raise ValueError(f"{path} is not a vaetut explorer data file")
    data = json.loads(text[m.end():].rstrip().rstrip(";"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    return data


def decoder_from_export(data: dict) -> nn.Sequential:
    """The exported decoder as a float32 ``nn.Sequential``: codes ``[N, D]`` -> ``[N, C, H, W]``
    in the output's scale (probabilities after a sigmoid, Gaussian means otherwise)."""
    spec = data["decoder"]
    w = decode_array({"dtype": "float16", "shape": [spec["n_values"]], "b64": spec["weights"]})
    mods: list[nn.Module] = []
    off = 0
    for layer in spec["layers"]:
        t = layer["type"]
        if t == "linear":
            with torch.random.fork_rng(devices=[]):  # the init is overwritten: leave the caller's RNG alone
                lin = nn.Linear(layer["in"], layer["out"])
            n = layer["in"] * layer["out"] + layer["out"]  # W then b
            values = w[off:off + n]
            off += n
            if layer["dtype"] == "float16x2":
                values = values + w[off:off + n]
                off += n
            with torch.no_grad():
                lin.weight.copy_(values[:-layer["out"]].reshape(layer["out"], layer["in"]))
                lin.bias.copy_(values[-layer["out"]:])
            mods.append(lin)
        else:
            mods.append({"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}[t]())
    if off != w.numel():
        raise ValueError(f"the layers use {off} weights, the file holds {w.numel()}")
    return nn.Sequential(*mods, nn.Unflatten(1, tuple(spec["image_shape"])))


# --------------------------------------------------------------------------- HTML
def _module_source() -> str:
    if not MODULE.exists():
        raise FileNotFoundError(
            f"{MODULE} (the explorers' JavaScript) is missing: the explorers are built from the "
            "vaetut repository's book folder"
        )
    src = MODULE.read_text()
    low = src.lower()
    if "</script" in low or "<!--" in low:
        raise ValueError(f"{MODULE} must not contain '</script' or '<!--': it is inlined in a <script> element")
    return src


def _json_for_html(obj) -> str:
    # inside <script type="application/json">: no "<" may appear (no "</script>", no "<!--")
    return json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c")


def _png_data_uri(img: np.ndarray, cmap: str = "gray") -> str:
    """A PNG data URI of an ``[H, W]`` array in [0, 1] (the still image shown without JavaScript)."""
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def explorer_html(
    kind: str,
    *,
    label: str,
    fallback_src: str,
    fallback_alt: str,
    options: dict | None = None,
    name: str | None = None,
    static_url: str = STATIC_URL,
) -> str:
    """The HTML of one explorer.

    A ``<div data-vaetut-explorer=kind>`` holding its options as JSON and a still image (with
    JavaScript off, or if the widget cannot start, that image is what the reader sees;
    the widget hides it), then the weights' classic ``<script src>`` (when ``name`` is
    given) and ``explorer.mjs`` inlined in a ``<script type="module">`` that mounts it.
    """
    src = f"{static_url}/{name}.js" if name else None
    attrs = f'class="vx" data-vaetut-explorer="{_escape(kind)}" role="region" aria-label="{_escape(label)}"'
    if name:
        attrs += f' data-name="{_escape(name)}" data-src="{_escape(src)}"'
    parts = [
        f"<div {attrs}>",
        f'<script type="application/json" class="vx-options">{_json_for_html(options or {})}</script>',
        '<figure class="vx-fallback">',
        f'<img src="{fallback_src}" alt="{_escape(fallback_alt)}" style="max-width: 100%; image-rendering: pixelated">',
        f"<figcaption>Still image: {_escape(fallback_alt)} The live explorer needs JavaScript.</figcaption>",
        "</figure>",
        "</div>",
    ]
    if src:
        parts.append(f'<script src="{_escape(src)}"></script>')
    parts += [
        '<script type="module">',
        "// book/_static/explorers/explorer.mjs, inlined verbatim by vaetut.explorer: pages opened from",
        "// disk (file://) may not load module files, so the page carries the module itself.",
        _module_source(),
        "mountAll();",
        "</script>",
    ]
    return "\n".join(parts)


def _tile(images: Tensor, nrow: int) -> np.ndarray:
    """``[N, 1, H, W]`` -> one ``[rows * H, nrow * W]`` array, row-major."""
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    out = np.zeros((rows * h, nrow * w))
    for k in range(n):
        r, c = divmod(k, nrow)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[k, 0].numpy()
    return out


def _check_grey(model: nn.Module) -> None:
    if model.config.image_shape[0] != 1:
        raise ValueError(f"the explorers show one-channel images, got image_shape={model.config.image_shape}")


# ---------------------------------------------------------------------- explorers
@torch.no_grad()
def latent_plane_explorer(
    model: nn.Module,
    codes: Tensor,
    labels: Tensor | None = None,
    name: str = "latent_plane",
    lim: float = 3.0,
    references: Sequence[Sequence[float]] = ((0.0, 0.0), (1.0, -0.5), (-1.5, 2.0), (2.5, 1.2)),
    out_dir: str | Path | None = None,
    static_url: str = STATIC_URL,
) -> Explorer:
    """The 2-D latent plane of ``model``: test codes' scatter, the pointer's code decoded live.

    Args:
        model: a VAE with a 2-D code and an MLP decoder.
        codes: ``[N, 2]`` codes to scatter, e.g. the test images' posterior means.
        labels: ``[N]`` integer labels (0-9) that colour the dots, or None.
        name: the weights file's stem.
        lim: the plane shows ``[-lim, lim]^2``.
        references: codes whose decoded images (by PyTorch, float32) are stored for the
            tests; multiples of 0.1, which the arrow keys reach from (0, 0).

    Returns:
        an :class:`Explorer`; the weights are written by :func:`export_decoder`.
    """
    if model.config.latent_dim != 2:
        raise ValueError(f"the latent plane needs latent_dim=2, this model has {model.config.latent_dim}")
    _check_grey(model)
    codes = torch.as_tensor(codes).detach().cpu().float()
    if codes.dim() != 2 or codes.shape[1] != 2:
        raise ValueError(f"codes must be [N, 2], got {tuple(codes.shape)}")
    ref = copy.deepcopy(model).cpu().float().eval()
    z_ref = torch.tensor([list(map(float, r)) for r in references], dtype=torch.float32)  # [R, 2]
    extras = {
        "codes": encode_array(codes, "float16"),
        "references": {"z": z_ref.tolist(), "images": encode_array(_decode_mean(ref, z_ref).flatten(1), "uint8")},
    }
    if labels is not None:
        labels = torch.as_tensor(labels).detach().cpu()
        if labels.shape != codes.shape[:1] or labels.min() < 0 or labels.max() > 255:
            raise ValueError(f"labels must be [N] integers in 0..255 for codes [N, 2], got {tuple(labels.shape)}")
        extras["labels"] = encode_array(labels.double() / 255, "uint8")
    path, err = export_decoder(model, name, extras, out_dir=out_dir, lim=lim)
    # the still image: the decoded grid, z2 upward as on the scatter (as plot_latent_manifold)
    t = torch.linspace(-lim, lim, 10)
    zy, zx = torch.meshgrid(t.flip(0), t, indexing="ij")
    grid = _tile(_decode_mean(ref, torch.stack([zx.reshape(-1), zy.reshape(-1)], 1)).clamp(0, 1), 10)
    html = explorer_html(
        "latent-plane",
        label="Live latent plane explorer",
        fallback_src=_png_data_uri(grid),
        fallback_alt=f"codes on a 10 by 10 grid over [{-lim:g}, {lim:g}]², decoded; z2 increases upward.",
        options={"lim": lim},
        name=name,
        static_url=static_url,
    )
    return Explorer("latent-plane", html, name, path, err)


@torch.no_grad()
def latent_sliders_explorer(
    model: nn.Module,
    x: Tensor,
    kl: Tensor | None = None,
    name: str = "latent_sliders",
    image_names: Sequence[str] | None = None,
    lim: float = 3.0,
    out_dir: str | Path | None = None,
    static_url: str = STATIC_URL,
) -> Explorer:
    """One slider per latent unit (largest KL first) and a reset to a test image's posterior mean.

    Args:
        model: a VAE with an MLP decoder.
        x: ``[M, 1, H, W]`` a few test images; their posterior means, rounded to the
            sliders' step of 0.01, are exported with them.
        kl: ``[D]`` mean KL per unit (e.g. :func:`vaetut.diagnostics.kl_per_dimension`),
            which orders the sliders and labels them; None keeps the units' order.
        image_names: M names for the image menu (default "test image 1", ...).
        lim: slider range ``[-lim, lim]``, widened to cover every posterior mean.
    """
    _check_grey(model)
    ref = copy.deepcopy(model).cpu().float().eval()
    x = torch.as_tensor(x).detach().cpu().float()
    mu, _ = ref.encode(x)  # [M, D]
    means = (mu * 100).round() / 100  # the sliders' step
    d = model.config.latent_dim
    if kl is not None:
        kl = torch.as_tensor(kl).detach().cpu().double()
        if kl.shape != (d,):
            raise ValueError(f"kl must be [{d}] (one value per latent unit), got {tuple(kl.shape)}")
        order = kl.argsort(descending=True).tolist()
    else:
        order = list(range(d))
    if image_names is not None and len(image_names) != len(x):
        raise ValueError(f"{len(x)} images but {len(image_names)} names")
    extras = {
        # plain decimals (JSON numbers), which the sliders hold exactly
        "means": [[round(float(v), 2) for v in row] for row in means],
        "images": encode_array(x.flatten(1), "uint8"),
        "order": order,
        "kl": [round(float(v), 4) for v in kl] if kl is not None else None,
        "image_names": list(image_names) if image_names is not None else None,
        "references": {"images": encode_array(_decode_mean(ref, means).flatten(1), "uint8")},
    }
    path, err = export_decoder(model, name, extras, out_dir=out_dir, lim=lim)
    # the still image: traversals of the first image, one row per unit (largest KL first)
    values = torch.linspace(-lim, lim, 7)
    z = means[0].repeat(len(order) * len(values), 1)  # [D * 7, D]
    for r, u in enumerate(order):
        z[r * len(values):(r + 1) * len(values), u] = values
    still = _tile(_decode_mean(ref, z).clamp(0, 1), len(values))
    html = explorer_html(
        "latent-sliders",
        label="Live latent unit explorer",
        fallback_src=_png_data_uri(still),
        fallback_alt=(
            f"each row sets one latent unit (largest KL at the top) to {len(values)} values from {-lim:g} to {lim:g}, "
            "the others at the posterior mean of the first test image."
        ),
        options={"lim": lim},
        name=name,
        static_url=static_url,
    )
    return Explorer("latent-sliders", html, name, path, err)


@torch.no_grad()
def planar_flow_explorer(
    u: Sequence[float] | Tensor,
    w: Sequence[float] | Tensor,
    b: float | Tensor,
    lim: float = 4.0,
    grid: int = 101,
    slider_range: float = 4.0,
) -> Explorer:
    """One planar layer's u, w, b on sliders and the density of f(z), z ~ N(0, I), on a grid.

    Args:
        u, w: ``[2]`` the layer's raw parameters (the page applies the constraint u_hat, as
            :class:`vaetut.flows.PlanarFlow` does); b: a number.
        lim: the image shows ``[-lim, lim]^2``.
        grid: points per side of the density grid (``grid - 1`` divisible by 20: a 21 x 21
            subgrid of it is stored as a reference, computed by ``PlanarFlow``).
        slider_range: each slider spans ``[-slider_range, slider_range]``.
    """
    from .flows import FlowStack, PlanarFlow  # the formulas the page reproduces

    u_, w_ = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (u, w)]
    b_ = torch.as_tensor(b, dtype=torch.float64).reshape(())
    if u_.shape != (2,) or w_.shape != (2,):
        raise ValueError(f"u and w must hold 2 numbers each, got {tuple(u_.shape)} and {tuple(w_.shape)}")
    if (grid - 1) % 20:
        raise ValueError(f"grid - 1 must be divisible by 20, got grid={grid}")
    with torch.random.fork_rng(devices=[]):  # PlanarFlow's random init must not move the chapter's RNG
        layer = PlanarFlow(2).double()
    layer.u.copy_(u_), layer.w.copy_(w_), layer.b.copy_(b_)
    flow = FlowStack([layer])

    def log_q(n: int) -> Tensor:
        t = torch.linspace(-lim, lim, n, dtype=torch.float64)
        ys, xs = torch.meshgrid(t.flip(0), t, indexing="ij")  # row 0 at the top, as the page draws it
        return flow.log_prob(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)).reshape(n, n)

    ref = log_q(21)
    data = {
        "u": [round(float(v), 6) for v in u_], "w": [round(float(v), 6) for v in w_], "b": round(float(b_), 6),
        "lim": lim, "grid": grid, "range": slider_range,
        "reference": {"n": 21, "log_density": [[round(float(v), 6) for v in row] for row in ref]},
    }
    dens = log_q(grid)
    still = (dens - dens.max()).exp().numpy()
    html = explorer_html(
        "planar-flow",
        label="Live planar flow explorer",
        fallback_src=_png_data_uri(still, cmap="viridis"),
        fallback_alt=(
            f"density of one planar layer applied to N(0, I) on [{-lim:g}, {lim:g}]², for u = ({u_[0]:g}, {u_[1]:g}), "
            f"w = ({w_[0]:g}, {w_[1]:g}), b = {float(b_):g}."
        ),
        options={"data": data},
    )
    return Explorer("planar-flow", html)
