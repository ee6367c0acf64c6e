"""The Mutual Information Gap (MIG): how well a representation disentangles known factors.

Chen et al. (2018), "Isolating Sources of Disentanglement in VAEs", §4 (eq. 5).
Used in the chapter "beta-VAE" (Higgins et al. 2017; Mittas, *Variational
Autoencoders*, §3.2, whose claim that a large beta gives each latent unit its own
factor this score lets us measure), with ground-truth factors from
:mod:`vaetut.shapes`.

For K discrete ground-truth factors v_k and D latent units z_j,

    MIG = (1/K) sum_k [ I(z_(1); v_k) - I(z_(2); v_k) ] / H(v_k),

where z_(1) and z_(2) are the units with the largest and second-largest mutual
information with v_k. A factor captured by one unit alone scores 1; a factor spread
over two units, or captured by none, scores about 0. Dividing by H(v_k) (the most
any unit can know about v_k) puts every factor on [0, 1].

Discretisation (the choice that makes MIG cheap, as in Locatello et al. 2019): each
latent unit, usually the posterior mean E_q[z_j | x], is cut into ``n_bins``
equal-width bins between its smallest and largest value over the data, and all
entropies and mutual informations are the plug-in estimates from the counts, in
nats. The plug-in estimate of I between independent variables is biased upwards
by about (bins_a - 1)(bins_b - 1) / (2N), so use thousands of examples.

Imports torch only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .distributions import check_count

__all__ = ["MIG", "discretize", "entropy", "mutual_information", "mutual_information_matrix", "mig"]


class MIG(NamedTuple):
    """The score and what it is made of.

    ``score``: scalar tensor, the mean of ``per_factor``; ``per_factor``: ``[K]``
    normalised gaps; ``mi``: ``[D, K]`` mutual information I(z_j; v_k) in nats;
    ``entropy``: ``[K]`` factor entropies H(v_k) in nats; ``best``: ``[K]`` the unit
    with the most information about each factor.
    """

    score: Tensor
    per_factor: Tensor
    mi: Tensor
    entropy: Tensor
    best: Tensor


def discretize(z: Tensor, n_bins: int = 20) -> Tensor:
    """Equal-width histogram bins of each column between its min and max.

    Args:
        z: ``[N, D]`` continuous codes (for example posterior means).
        n_bins: bins per column.

    Returns:
        ``[N, D]`` long bin indices in ``[0, n_bins)``; a constant column is all 0.
    """
    if not torch.is_tensor(z) or z.dim() != 2 or len(z) == 0:
        got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise ValueError(f"z must be a non-empty [N, D] matrix of codes (examples x units), got {got}")
    n_bins = check_count(n_bins, "n_bins", minimum=2)
    z = z.double()
    lo, hi = z.min(0).values, z.max(0).values  # [D]
    width = (hi - lo).clamp_min(torch.finfo(z.dtype).tiny)
    # bin b holds lo + b w <= z < lo + (b + 1) w, w = (hi - lo) / n_bins; the maximum goes in the last bin
    return ((z - lo) / width * n_bins).floor().long().clamp(0, n_bins - 1)


def _check_codes(a: Tensor, name: str) -> None:
    if not torch.is_tensor(a) or a.dim() != 1 or a.is_floating_point() or len(a) == 0 or (a < 0).any():
        raise ValueError(
            f"{name} must be a non-empty [N] tensor of non-negative integer codes; "
            "discretize continuous values first with discretize(z, n_bins)"
        )


def entropy(a: Tensor) -> Tensor:
    """Plug-in entropy H(a) in nats of integer codes ``a`` ``[N]``: a scalar (float64)."""
    _check_codes(a, "a")
    p = torch.bincount(a).double() / len(a)
    p = p[p > 0]
    # $H = -\sum_a p(a) \log p(a)$
    return -(p * p.log()).sum()


def mutual_information(a: Tensor, b: Tensor) -> Tensor:
    """Plug-in mutual information I(a; b) in nats of two integer codes ``[N]``: a scalar (float64)."""
    _check_codes(a, "a")
    _check_codes(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must code the same N examples, got {len(a)} and {len(b)}")
    nb = int(b.max()) + 1
    joint = torch.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).double().view(-1, nb)  # [A, B]
    p_ab = joint / len(a)
    p_a, p_b = p_ab.sum(1, keepdim=True), p_ab.sum(0, keepdim=True)
    nz = p_ab > 0
    # $I(a; b) = \sum_{a,b} p(a,b) \log \frac{p(a,b)}{p(a)p(b)}$
    return (p_ab[nz] * (p_ab[nz].log() - (p_a * p_b).expand_as(p_ab)[nz].log())).sum()


def mutual_information_matrix(codes: Tensor, factors: Tensor) -> Tensor:
    """I(code_j; factor_k) for every pair: ``[N, D]``, ``[N, K]`` integer codes -> ``[D, K]`` float64."""
    if codes.dim() != 2 or factors.dim() != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes [N, D] and factors [N, K] must have the same N, got {tuple(codes.shape)} and {tuple(factors.shape)}"
        )
    return torch.stack(
        [torch.stack([mutual_information(c, f) for f in factors.T]) for c in codes.T]
    )  # [D, K]


def mig(z: Tensor, factors: Tensor, n_bins: int = 20) -> MIG:
    """The Mutual Information Gap of codes ``z`` against discrete ground-truth ``factors``.

    Args:
        z: ``[N, D]`` continuous codes, usually the posterior means (D >= 2).
        factors: ``[N, K]`` integer factor indices (for example ``Shapes.factors``).
        n_bins: histogram bins per latent unit (see :func:`discretize`).

    Returns:
        :class:`MIG`; ``score`` lies in [0, 1].
    """
    if not torch.is_tensor(factors) or factors.dim() != 2 or factors.is_floating_point():
        got = f"{tuple(factors.shape)} {factors.dtype}" if torch.is_tensor(factors) else type(factors).__name__
        raise ValueError(
            f"factors must be [N, K] integer indices (Shapes.factors, not Shapes.values), got {got}"
        )
    codes = discretize(z, n_bins)
    if codes.shape[1] < 2:
        raise ValueError(f"MIG compares the two most informative units, so z needs D >= 2 columns, got {codes.shape[1]}")
    if len(codes) != len(factors):
        raise ValueError(f"z and factors must describe the same N examples, got {len(codes)} and {len(factors)}")
    h = torch.stack([entropy(f) for f in factors.T])  # [K]
    if (h <= 0).any():
        constant = (h <= 0).nonzero().flatten().tolist()
        raise ValueError(f"factor column(s) {constant} take a single value over the data; drop them")
    mi = mutual_information_matrix(codes, factors)  # [D, K]
    top2 = mi.topk(2, dim=0)  # values [2, K]
    # $\frac{1}{H(v_k)}\left(I(z_{(1)}; v_k) - I(z_{(2)}; v_k)\right)$
    per_factor = (top2.values[0] - top2.values[1]) / h
    return MIG(per_factor.mean(), per_factor, mi, h, top2.indices[0])
