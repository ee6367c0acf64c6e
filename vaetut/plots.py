"""Figures used across the book: image grids, reconstructions, the 2-D latent
manifold, the class-coloured latent scatter, and training curves.

Each function draws into a given matplotlib ``Axes`` (or makes one) and returns
the ``Figure``, so chapters can compose them. Imports torch and matplotlib only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import torch
from torch import Tensor

__all__ = [
    "make_grid",
    "plot_images",
    "plot_reconstructions",
    "plot_latent_manifold",
    "plot_latent_scatter",
    "plot_history",
    "plot_traversals",
]


def make_grid(x: Tensor, nrow: int = 10, pad: int = 1, pad_value: float = 1.0) -> Tensor:
    """Tile images ``[N, C, H, W]`` into one ``[C, rows*(H+pad)-pad, nrow*(W+pad)-pad]`` image."""
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = torch.full((c, nrows * (h + pad) - pad, ncol * (w + pad) - pad), float(pad_value), dtype=x.dtype)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = x[i]
    return grid


def _imshow(ax, grid: Tensor, title: str | None = None) -> None:
    img = grid.clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def _axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_images(x: Tensor, nrow: int = 10, title: str | None = None, ax=None, scale: float = 0.6):
    """Show images ``[N, C, H, W]`` (values in [0, 1]) as a grid."""
    ncol = min(nrow, len(x))
    fig, ax = _axes(ax, (scale * ncol, scale * -(-len(x) // ncol) + (0.4 if title else 0)))
    _imshow(ax, make_grid(x, nrow), title)
    return fig


def plot_reconstructions(x: Tensor, x_hat: Tensor, n: int = 10, title: str | None = None, ax=None):
    """Inputs (top row) above their reconstructions (bottom row), ``n`` of each."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    n = min(n, len(x))
    both = torch.cat([x[:n].detach().cpu(), x_hat[:n].detach().cpu()])
    fig, ax = _axes(ax, (0.7 * n, 1.8))
    _imshow(ax, make_grid(both, nrow=n), title or "inputs (top) and reconstructions (bottom)")
    return fig


@torch.no_grad()
def plot_latent_manifold(
    decode: Callable[[Tensor], Tensor],
    n: int = 15,
    lim: float = 2.0,
    ax=None,
    title: str | None = None,
    device: torch.device | str | None = None,
):
    """Decode an ``n x n`` grid of 2-D codes in ``[-lim, lim]^2`` and tile the images.

    ``decode`` maps codes ``[n*n, 2]`` to images ``[n*n, C, H, W]`` in [0, 1]
    (for a VAE: ``lambda z: model.mean(model.decode(z))``). The vertical axis
    increases upward, as on a scatter plot.
    """
    t = torch.linspace(-lim, lim, n)
    zy, zx = torch.meshgrid(t.flip(0), t, indexing="ij")  # rows top to bottom: z2 from +lim to -lim
    z = torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1)  # [n*n, 2]
    if device is not None:
        z = z.to(device)
    images = decode(z).cpu()
    fig, ax = _axes(ax, (6, 6))
    grid = make_grid(images, nrow=n, pad=0)
    img = grid.clamp(0, 1)
    kwargs = dict(extent=(-lim, lim, -lim, lim), interpolation="nearest")
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, **kwargs)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), **kwargs)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return fig


def plot_latent_scatter(z: Tensor, labels: Tensor, ax=None, title: str | None = None, s: float = 2.0):
    """Scatter 2-D codes ``[N, 2]`` coloured by integer labels ``[N]`` (e.g. digits)."""
    if z.dim() != 2 or z.shape[1] != 2:
        raise ValueError(f"expected 2-D codes [N, 2], got shape {tuple(z.shape)}; project them first")
    z, labels = z.detach().cpu(), labels.detach().cpu()
    fig, ax = _axes(ax, (6, 5))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=s, alpha=0.7, linewidths=0)
    classes = sorted(set(labels.tolist()))
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=points.cmap(points.norm(c)), label=str(c)) for c in classes
    ]
    ax.legend(handles=handles, title="label", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    return fig


def plot_history(history, keys: Sequence[str] = ("elbo", "log_px_z", "kl"), ax=None, title: str | None = None):
    """Training curves: one line per term of ``history.terms`` against the step."""
    if ax is None:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple)) else [ax]
        fig = axes[0].figure
    labels = {"elbo": "ELBO", "log_px_z": "E[log p(x|z)]", "kl": "KL(q(z|x) || p(z))", "loss": "loss"}
    for a, key in zip(axes, keys):
        if key not in history.terms:
            raise KeyError(f"history has no term {key!r}; it has {sorted(history.terms)}")
        a.plot(history.steps, history.terms[key])
        a.set_xlabel("step")
        a.set_title(labels.get(key, key) + " (nats)")
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_traversals(
    decode: Callable[[Tensor], Tensor],
    z0: Tensor,
    dims: Sequence[int],
    values: Tensor | None = None,
    ax=None,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
):
    """Latent traversals: row i decodes ``z0`` with dimension ``dims[i]`` set to each of ``values``.

    Args:
        decode: codes ``[M, D]`` -> images ``[M, C, H, W]`` in [0, 1].
        z0: the anchor code ``[D]`` (for example the posterior mean of a test image).
        dims: latent dimensions, one row each, in the order to show.
        values: ``[V]`` values to set (default 9 values in [-3, 3]).
    """
    if z0.dim() != 1:
        raise ValueError(f"z0 must be one code [D], got shape {tuple(z0.shape)}")
    values = torch.linspace(-3, 3, 9) if values is None else values
    rows = []
    for d in dims:
        z = z0.expand(len(values), -1).clone()  # [V, D]
        z[:, d] = values.to(z)
        rows.append(z)
    images = decode(torch.cat(rows)).cpu()  # [len(dims)*V, C, H, W]
    fig, ax = _axes(ax, (0.6 * len(values) + 0.8, 0.6 * len(dims) + 0.4))
    _imshow(ax, make_grid(images, nrow=len(values)), title)
    h = images.shape[-2] + 1
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([h * i + h / 2 - 1 for i in range(len(dims))])
    ax.set_yticklabels(row_labels if row_labels is not None else [f"$z_{{{d}}}$" for d in dims])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig
