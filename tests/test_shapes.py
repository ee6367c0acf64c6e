"""The dSprites-like generator: reproducible, and its images agree with its factors."""

import itertools
import math

import pytest
import torch

from vaetut import shapes as S
from vaetut.shapes import FACTOR_SIZES, factor_values, make_shapes, render


def _values(shape, scale=1.0, theta=0.0, x=0.5, y=0.5):
    return torch.tensor([[float(shape), scale, theta, x, y]])


def _centroid(images):
    """Centre of mass of ``[N, 1, H, W]`` images as fractions of the side: (x, y), each ``[N]``."""
    h = images.shape[-1]
    t = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    img = images[:, 0].double()
    mass = img.sum((1, 2))
    return (img.sum(1) * t).sum(1) / mass, (img.sum(2) * t).sum(1) / mass


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_shapes(300, seed=5), make_shapes(300, seed=5), make_shapes(300, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors)
    assert a.images.shape == (300, 1, 32, 32) and a.images.dtype == torch.float32
    assert a.factors.shape == (300, 5) and a.factors.dtype == torch.long
    assert set(a.images.unique().tolist()) <= {0.0, 1.0}
    for col, k in enumerate(FACTOR_SIZES):
        assert a.factors[:, col].min() == 0 and a.factors[:, col].max() == k - 1


def test_factor_values_grid():
    idx = torch.tensor([[0, 0, 0, 0, 0], [2, 5, 10, 31, 31], [1, 2, 39, 16, 3]])
    v = factor_values(idx)
    torch.testing.assert_close(v[0], torch.tensor([0.0, 0.5, 0.0, 0.3, 0.3]))
    torch.testing.assert_close(v[1], torch.tensor([2.0, 1.0, math.pi / 2, 0.7, 0.7]))
    assert abs(v[2, 2].item() - 2 * math.pi * 39 / 40) < 1e-6


def test_centroid_of_the_drawn_mass_is_the_position():
    # every shape at every scale and many angles and positions, at 64 px with 3x3 supersampling
    d = make_shapes(300, 64, seed=1, supersample=3)
    cx, cy = _centroid(d.images)
    assert (cx - d.values[:, 3]).abs().max() < 0.5 / 64
    assert (cy - d.values[:, 4]).abs().max() < 0.5 / 64


def test_area_grows_with_scale_and_matches_the_geometry():
    size, h = 64, S.HALF_SIZE
    scales = torch.linspace(0.5, 1.0, 6)
    for shape in range(3):
        v = torch.cat([_values(shape, s.item(), 0.3) for s in scales])
        area = render(v, size, supersample=4).sum((1, 2, 3)) / size**2  # fraction of the image
        assert torch.all(area[1:] > area[:-1])
        if shape == 0:  # square of side 2 h s
            exact = (2 * h * scales) ** 2
        elif shape == 1:  # ellipse with semi-axes r1 h s and r2 h s
            exact = math.pi * S.ELLIPSE_AXES[0] * S.ELLIPSE_AXES[1] * (h * scales) ** 2
        else:  # area scales as s^2
            exact = area[-1] * scales**2
        torch.testing.assert_close(area, exact, rtol=0.03, atol=0)


def test_axis_aligned_square_covers_exactly_the_pixels_inside_it():
    size, s, x, y = 32, 0.7, 0.41, 0.57
    img = render(_values(0, s, 0.0, x, y), size)[0, 0]
    t = (torch.arange(size) + 0.5) / size
    half = S.HALF_SIZE * s
    inside_cols = (t - x).abs() <= half
    inside_rows = (t - y).abs() <= half
    assert torch.equal(img.bool(), inside_rows[:, None] & inside_cols[None, :])


def test_rotation_turns_the_image_counter_clockwise():
    size = 64
    heart = render(_values(2, 1.0, 0.0), size)[0, 0]
    quarter = render(_values(2, 1.0, math.pi / 2), size)[0, 0]
    half = render(_values(2, 1.0, math.pi), size)[0, 0]
    # a quarter turn of the shape is a quarter turn of the image about its centre (torch.rot90
    # turns an image counter-clockwise as displayed); a half turn is a point reflection
    assert (quarter != torch.rot90(heart, 1, (0, 1))).sum() <= 2
    assert (half != torch.flip(heart, (0, 1))).sum() <= 2
    # the heart has no rotational symmetry, the square a quarter-turn one, the ellipse a half-turn one
    assert (heart != quarter).sum() > 50 and (heart != half).sum() > 50
    for shape, turn in ((0, math.pi / 2), (1, math.pi)):
        a = render(_values(shape, 1.0, 0.0), size)[0, 0]
        b = render(_values(shape, 1.0, turn), size)[0, 0]
        assert (a != b).sum() <= 2
    # a heart at orientation 0 points down: its lobes (the wider part) are in the upper half
    rows = heart.sum(1)
    assert rows[: size // 2].sum() > rows[size // 2 :].sum()


def test_window_rendering_matches_a_full_frame_evaluation():
    d = make_shapes(200, 32, seed=3)
    t = (torch.arange(32) + 0.5) / 32
    py, px = torch.meshgrid(t, t, indexing="ij")
    shape, scale, theta, cx, cy = (d.values[:, i, None, None] for i in range(5))  # [N, 1, 1]
    u = (px - cx) / (S.HALF_SIZE * scale)
    w = (cy - py) / (S.HALF_SIZE * scale)
    a, b = torch.cos(theta) * u + torch.sin(theta) * w, -torch.sin(theta) * u + torch.cos(theta) * w
    full = S._inside(shape.flatten(1), a.flatten(1), b.flatten(1)).float().view(-1, 1, 32, 32)
    assert torch.equal(full, d.images)


def test_shapes_never_touch_the_border():
    corners = [
        [shape, 5, o, px, py]
        for shape, o, px, py in itertools.product(range(3), range(0, 40, 5), (0, 31), (0, 31))
    ]
    images = render(factor_values(torch.tensor(corners)), 32)
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
    assert border.sum() == 0
    assert images.sum((1, 2, 3)).min() > 20


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="positive integer"):
        make_shapes(0)
    with pytest.raises(ValueError, match="at least 8"):
        make_shapes(10, size=4)
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        render(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="0 <= index"):
        factor_values(torch.tensor([[3, 0, 0, 0, 0]]))
