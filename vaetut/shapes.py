"""A procedurally generated dSprites-like data set with known ground-truth factors.

dSprites (Matthey et al. 2017) is the standard test bed for disentanglement: white
shapes on black, made from five independent factors of variation. Its file cannot
be downloaded here, so this module draws the same kind of images from a seed, in a
fraction of a second, vectorised over images and pixels (no Python loop over
either). Used in the chapter "beta-VAE" (Higgins et al. 2017; Mittas,
*Variational Autoencoders*, §3.2) to measure disentanglement against the truth
with :mod:`vaetut.disentanglement`.

The five factors, in this order (``FACTORS``), each on a grid of values as in
dSprites (``FACTOR_SIZES``):

====  ============  ======  =====================================================
col   name          values  continuous value
====  ============  ======  =====================================================
0     shape         3       0 square, 1 ellipse (axes 2:1), 2 heart (categorical)
1     scale         6       evenly spaced in [0.5, 1]
2     orientation   40      2 pi i / 40 radians in [0, 2 pi), counter-clockwise
3     x             32      horizontal centre, fraction of the width, in [0.3, 0.7]
4     y             32      vertical centre, fraction of the height (downwards)
====  ============  ======  =====================================================

Each shape is drawn with its area centroid at (x, y), so the centre of mass of an
image is its position; at every scale and angle the shape stays inside the frame.
As in dSprites, the square looks the same after a quarter turn and the ellipse
after a half turn, so orientation is only partly identifiable from the image; the
heart has no rotational symmetry.

Imports torch only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .distributions import check_count

__all__ = [
    "FACTORS",
    "FACTOR_SIZES",
    "SHAPES",
    "Shapes",
    "factor_values",
    "render",
    "make_shapes",
]

FACTORS = ("shape", "scale", "orientation", "x", "y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")

# Half-size of a shape at scale 1, as a fraction of the image side. A shape's local
# frame has unit half-size; the farthest point from its centroid (the square's
# corner, at sqrt 2) then lies HALF_SIZE * sqrt 2 ~ 0.28 from the centre, inside the
# margin left by the positions' range [0.3, 0.7]. Shapes this large overlap their
# neighbours on the position grid, so the reconstruction term changes smoothly
# with position and a small model learns position quickly.
HALF_SIZE = 0.2
POSITION_RANGE = (0.3, 0.7)
SCALE_RANGE = (0.5, 1.0)
ELLIPSE_AXES = (1.4, 0.7)  # semi-axes in the local frame: area ~ that of the other two
HEART_CENTROID = 0.2935  # height of the heart curve's area centroid above its origin


class Shapes(NamedTuple):
    """A generated data set of N images.

    ``images``: ``[N, 1, H, W]`` floats in [0, 1] (exactly 0 or 1 unless supersampled);
    ``factors``: ``[N, 5]`` long, the index of each factor's value (column order
    ``FACTORS``, ranges ``FACTOR_SIZES``); ``values``: ``[N, 5]`` float, the
    continuous values of the same factors (see the module docstring).
    """

    images: Tensor
    factors: Tensor
    values: Tensor


def factor_values(factors: Tensor) -> Tensor:
    """Continuous values of factor indices: ``[N, 5]`` long -> ``[N, 5]`` float32."""
    if not torch.is_tensor(factors) or factors.dim() != 2 or factors.shape[1] != len(FACTORS):
        got = tuple(factors.shape) if torch.is_tensor(factors) else type(factors).__name__
        raise ValueError(f"factors must be [N, {len(FACTORS)}] indices in the order {FACTORS}, got {got}")
    sizes = torch.tensor(FACTOR_SIZES, device=factors.device)
    if factors.is_floating_point() or (factors < 0).any() or (factors >= sizes).any():
        raise ValueError(f"factor indices must be integers with 0 <= index < {FACTOR_SIZES} column by column")
    f = factors.float()
    lo, hi = POSITION_RANGE
    return torch.stack(
        [
            f[:, 0],
            SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * f[:, 1] / (FACTOR_SIZES[1] - 1),
            2 * math.pi * f[:, 2] / FACTOR_SIZES[2],
            lo + (hi - lo) * f[:, 3] / (FACTOR_SIZES[3] - 1),
            lo + (hi - lo) * f[:, 4] / (FACTOR_SIZES[4] - 1),
        ],
        dim=1,
    )  # [N, 5]


def _inside(shape: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Whether local points (a, b) ``[n, P]`` lie inside shape ``[n, 1]``: bool ``[n, P]``.

    (a, b) is the shape's own frame: b points up, the centroid is at the origin and
    the unit is the shape's half-size.
    """
    square = torch.maximum(a.abs(), b.abs()) <= 1
    ea, eb = a / ELLIPSE_AXES[0], b / ELLIPSE_AXES[1]
    # $a^2/r_1^2 + b^2/r_2^2 \le 1$
    ellipse = ea * ea + eb * eb <= 1
    # the heart curve $(X^2 + Y^2 - 1)^3 - X^2 Y^3 \le 0$, moved so its centroid is at the origin
    y = b + HEART_CENTROID
    a2, y2 = a * a, y * y
    r = a2 + y2 - 1
    heart = r * r * r <= a2 * y2 * y
    return torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))


def _render_chunk(v: Tensor, size: int, supersample: int) -> Tensor:
    """Draw ``[n, 5]`` values into ``[n, 1, size, size]`` images.

    Only a square window of w x w pixels around each shape (large enough for its
    farthest point at any angle) is evaluated, then written into a black image.
    """
    n, ss = len(v), supersample
    shape, scale, theta, cx, cy = (v[:, i : i + 1] for i in range(5))  # [n, 1] each
    reach = math.sqrt(2) * HALF_SIZE * scale.abs().max().item()  # farthest point from the centroid
    w = min(size, math.ceil(2 * reach * size) + 2)
    # top-left pixel of each window, kept inside the image, [n, 1] each
    col0 = torch.floor(cx * size - w / 2).long().clamp(0, size - w)
    row0 = torch.floor(cy * size - w / 2).long().clamp(0, size - w)
    # sample points: the centres of an ss x ss grid in each of the w x w pixels, [1, (w*ss)^2]
    t = (torch.arange(w * ss, dtype=v.dtype, device=v.device) + 0.5) / ss
    ty, tx = torch.meshgrid(t, t, indexing="ij")  # rows go down, columns go right
    px = (col0 + tx.reshape(1, -1)) / size  # [n, P] in image fractions
    py = (row0 + ty.reshape(1, -1)) / size
    # image -> local frame: centre, flip y upwards, divide by the half-size
    u = (px - cx) / (HALF_SIZE * scale)
    up = (cy - py) / (HALF_SIZE * scale)
    # $(a, b) = R(-\theta)(u, up)$: the shape turned by $\theta$ counter-clockwise
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = cos * u + sin * up
    b = -sin * u + cos * up
    inside = _inside(shape.round(), a, b).to(v.dtype)  # [n, P]
    window = inside.view(n, w, ss, w, ss).mean((2, 4)).reshape(n, w * w)  # [n, w*w]
    # flat index of each window pixel in the full image, [n, w*w]
    r = torch.arange(w, device=v.device)
    idx = ((row0.view(n, 1, 1) + r.view(1, w, 1)) * size + col0.view(n, 1, 1) + r.view(1, 1, w)).reshape(n, w * w)
    img = torch.zeros(n, size * size, dtype=v.dtype, device=v.device)
    img.scatter_(1, idx, window)
    return img.view(n, 1, size, size)


def render(values: Tensor, size: int = 32, *, supersample: int = 1, chunk: int = 2048) -> Tensor:
    """Draw shapes from continuous factor values.

    A pixel is white when its centre (or, with ``supersample=s``, the mean over an
    s x s grid of points inside it) falls inside the shape, so with s > 1 the edges
    get grey levels.

    Args:
        values: ``[N, 5]`` (shape index, scale, orientation in radians, x, y) as
            returned by :func:`factor_values`; any scale, angle and position are
            accepted, so one can draw in-between values.
        size: image side H = W in pixels (for example 32 or 64).
        supersample: points per pixel side.
        chunk: images drawn at once (bounds the memory).

    Returns:
        ``[N, 1, size, size]`` float32 in [0, 1].
    """
    if not torch.is_tensor(values) or values.dim() != 2 or values.shape[1] != len(FACTORS):
        got = tuple(values.shape) if torch.is_tensor(values) else type(values).__name__
        raise ValueError(f"values must be [N, {len(FACTORS)}] in the order {FACTORS}, got {got}")
    size, supersample, chunk = (check_count(v, name) for v, name in ((size, "size"), (supersample, "supersample"), (chunk, "chunk")))
    out = []
    for v in values.float().split(chunk):
        out.append(_render_chunk(v, size, supersample))
    if not out:
        return torch.zeros(0, 1, size, size, device=values.device)
    return torch.cat(out)


def make_shapes(n: int, size: int = 32, *, seed: int = 0, supersample: int = 1) -> Shapes:
    """N images with factors drawn independently and uniformly from their grids.

    Reproducible: the same ``seed`` (and arguments) gives the same data on any
    device, because the factors are drawn by a private CPU generator.

    Args:
        n: number of images.
        size: image side in pixels (32 or 64 are the sizes used in the book).
        seed: seed of the factor draw.
        supersample: see :func:`render` (1 gives binary images, like dSprites).

    Returns:
        :class:`Shapes` with ``images [n, 1, size, size]``, ``factors [n, 5]`` (long)
        and ``values [n, 5]`` (float).
    """
    n = check_count(n, "n", hint="the number of images")
    size = check_count(size, "size", minimum=8, hint="in pixels; 32 or 64 are typical")
    g = torch.Generator().manual_seed(seed)
    factors = torch.stack([torch.randint(k, (n,), generator=g) for k in FACTOR_SIZES], dim=1)  # [n, 5]
    values = factor_values(factors)
    return Shapes(render(values, size, supersample=supersample), factors, values)
