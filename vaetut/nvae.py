"""NVAE: a deep hierarchy of spatial latent groups, a residual posterior, KL balancing
and spectral regularisation, sized for a CPU.

Paper: Vahdat & Kautz (2020), "NVAE: A Deep Hierarchical Variational Autoencoder"
(NeurIPS 2020), arXiv:2007.03898. This module implements §3 (the hierarchical
model with a top-down path shared by the prior and the posterior, over a
bottom-up tower), §3.1 (residual cells with Swish activations and
squeeze-and-excitation), §3.2 (residual Normal distributions and their KL;
spectral regularisation) and Appendix A (KL balancing during the KL warm-up).
Taught in the book chapter "Where the field went: BIVA and NVAE" (book/state_of_the_art.md). Not implemented: the normalizing flows of
§3.2, the depthwise-separable decoder cells, weight normalisation and the
mixture-of-logistics decoder (MNIST uses a Bernoulli decoder, as in the paper's
MNIST experiment).

**The model.** L latent groups z_1 (top, coarsest) ... z_L (finest), each a map
``[latent_channels, r, r]`` at one of the resolutions r (7x7 then 14x14 for 28x28
MNIST by default). The generative model is autoregressive over groups::

    p(z) = prod_l p(z_l | z_<l),   p(z_1) = N(0, I),
    p(z_l | z_<l) = N(mu_p,l(h_l), diag sigma_p,l(h_l)^2)            l = 2 .. L
    p(x | z) = Bernoulli(sigmoid(logits(h_L+1)))

where h_l is the state of a *top-down* residual network that starts from a
learned constant and takes in z_1, z_2, ... one after the other. The approximate
posterior has the same order, q(z | x) = prod_l q(z_l | x, z_<l), and *shares*
that top-down network: q(z_l | x, z_<l) reads h_l (what the generative model
already knows) combined with the feature of a deterministic *bottom-up* residual
tower over x at the same resolution.

**Residual Normal posterior** (§3.2). With ``residual_posterior=True`` the
posterior of each group is parameterised *relative to its prior*::

    q(z_l | x, z_<l) = N(mu_p + dmu, (sigma_p * dsigma)^2)

with dmu and log dsigma^2 predicted by the posterior head. Its KL to the prior
is, per unit, with ``mu_q = mu_p + dmu`` and ``sigma_q = sigma_p dsigma``::

    KL = log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2
       = -log dsigma + (sigma_p^2 dsigma^2 + dmu^2) / (2 sigma_p^2) - 1/2
       = 1/2 [ dmu^2 / sigma_p^2 + dsigma^2 - 1 - log dsigma^2 ]

summed over the group's units (:func:`residual_kl`). It does not depend on mu_p,
and depends on sigma_p only through dmu / sigma_p: when the prior moves, the
posterior moves with it and the KL stays put, which is what makes the
relative parameterisation easier to optimise. For the top group p(z_1) = N(0, I)
and both parameterisations coincide. ``residual_posterior=False`` predicts
``N(mu_q, sigma_q^2)`` directly (the book chapter's ablation), whose KL
is the general Gaussian formula (:func:`~vaetut.distributions.kl_normal`).

**KL balancing** (Appendix A). During the KL warm-up (KL weight w < 1) the
training loss weighs group l's KL by ``gamma_l``, proportional to the group's
average KL over the batch *divided by* its number of units, normalised so the
gammas sum to L (:func:`kl_balance_coefficients`). Groups that carry little
information per unit are penalised less and so are not switched off early. The
paper's Appendix A says "proportional to the size of the group"; its first author
calls that a typo (NVlabs/NVAE issue #26) and the official code divides by the
size, as we do. After the warm-up (w >= 1) every gamma is 1 and the loss is the
negative ELBO.

**Spectral regularisation** (§3.2). Every convolution keeps an estimate of the
largest singular value of its weight reshaped to ``[out, in * k * k]``, by power
iteration with persistent vectors (buffers, updated only in training mode); the
training loss adds ``lambda * sum`` of these estimates, bounding the Lipschitz
constant of the networks (``spectral_reg = lambda``, 0 turns it off).

Batch normalisation in the residual cells is optional (``batch_norm``, off by
default). **Modes:** every method runs in the module's current mode. In training
mode batch norm normalises with the statistics of the batch (for
:meth:`NVAE.log_weights`, of all k x B samples) and updates its running averages,
and :meth:`NVAE.spectral_norms` advances the power iteration; in evaluation mode
(``model.eval()``) batch norm uses the running averages, so each example's value
depends on that example only, and the power-iteration vectors stay fixed.
Evaluate bounds, samples and reconstructions in evaluation mode.

Imports torch and :mod:`vaetut.distributions` only. To use it outside vaetut, copy
this file and ``distributions.py`` into one folder; then, from that folder::

    import torch
    from nvae import NVAE

    model = NVAE(channels=(16, 8), groups_per_scale=(1, 1))  # 7x7 and 14x14 groups
    x = torch.rand(4, 1, 28, 28).bernoulli()       # binary pixels
    terms = model.elbo(x)
    print(terms.kl_groups.shape)                   # torch.Size([4, 2])
    print(model.training_loss(terms, kl_weight=0.5).shape)  # torch.Size([])
    print(model.log_weights(x, k=3).shape)         # torch.Size([3, 4])
    print(model.eval().sample(2).shape)            # torch.Size([2, 1, 28, 28])
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

try:  # inside the vaetut package
    from .distributions import check_batch, check_count, kl_normal, log_bernoulli, log_normal
except ImportError:  # copied into a folder beside distributions.py (see the module docstring)
    from distributions import (  # type: ignore[no-redef]
        check_batch,
        check_count,
        kl_normal,
        log_bernoulli,
        log_normal,
    )

__all__ = [
    "NVAEConfig",
    "NVAE",
    "NVAEELBO",
    "Group",
    "residual_kl",
    "kl_balance_coefficients",
    "SRConv2d",
    "ResidualCell",
    "SqueezeExcite",
]

LOG_VAR_BOUND = 10.0  # log-variances are soft-clamped to (-10, 10): sigma in (e^-5, e^5), as NVAE
BALANCE_EPS = 0.01  # nats added to each group's mean KL before balancing, as NVAE's code


@dataclass(frozen=True)
class NVAEConfig:
    """Shape of an NVAE; entry s of the per-scale tuples belongs to scale s, coarsest first.

    The defaults (7x7 and 14x14 latents, 2 groups of 4 channels at each, 32 and 16
    channels, one residual cell per group) train on dynamically binarized MNIST at
    about a minute per epoch on a 2-core CPU, and keep the decoder cheap enough
    for importance sampling with large k. The official repository's MNIST model is
    far larger (2 scales of up to 10 groups of 20 latent channels, 16 channels at
    the finest scale, several cells per scale, 400 epochs on GPUs).

    Attributes:
        image_shape: ``(C, H, W)`` of one input image, pixels in [0, 1]; H = W.
        resolutions: side length of the latent maps at each scale, strictly
            increasing; each divides the next and the last divides H (it may
            equal H).
        groups_per_scale: number of latent groups at each scale (>= 1 each);
            L = ``sum(groups_per_scale)``.
        channels: width of the residual networks at each scale (bottom-up and
            top-down alike).
        latent_channels: channels of every latent group: z_l is
            ``[latent_channels, r, r]``, D_l = ``latent_channels * r * r`` units.
        cells_per_group: residual cells per group, in the bottom-up tower and in
            the top-down path (0 is allowed: only the group heads remain).
        residual_posterior: the residual Normal posterior of §3.2 (``True``) or a
            posterior predicted directly (``False``).
        kl_balance: balance the groups' KL terms during the KL warm-up (Appendix A).
        spectral_reg: lambda of the spectral regulariser (0 = off); the official
            repository's MNIST command uses 1e-2.
        power_iterations: power-iteration steps per training-mode call of
            :meth:`NVAE.spectral_norms` (NVAE uses 4).
        batch_norm: batch normalisation in the residual cells (see the module
            docstring for how it behaves in each mode).
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    resolutions: tuple[int, ...] = (7, 14)
    groups_per_scale: tuple[int, ...] = (2, 2)
    channels: tuple[int, ...] = (32, 16)
    latent_channels: int = 4
    cells_per_group: int = 1
    residual_posterior: bool = True
    kl_balance: bool = True
    spectral_reg: float = 0.0
    power_iterations: int = 4
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.image_shape, (tuple, list)) or len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
        shape = tuple(check_count(s, "each image_shape size") for s in self.image_shape)
        object.__setattr__(self, "image_shape", shape)
        if shape[1] != shape[2]:
            raise ValueError(f"NVAE's latent maps are square: image_shape needs H = W, got {shape}")
        for name in ("resolutions", "groups_per_scale", "channels"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) == 0:
                raise ValueError(f"{name} must be a non-empty tuple with one entry per scale, got {value!r}")
            # counts may come as NumPy integers: store them as Python ints
            object.__setattr__(self, name, tuple(check_count(v, f"each entry of {name}") for v in value))
        scales = len(self.resolutions)
        for name in ("groups_per_scale", "channels"):
            if len(getattr(self, name)) != scales:
                raise ValueError(
                    f"{name} needs one entry per scale: resolutions={self.resolutions} has {scales} "
                    f"scales but {name}={getattr(self, name)}"
                )
        res = self.resolutions
        for i, r in enumerate(res):
            nxt, what = (res[i + 1], "resolution") if i + 1 < scales else (shape[1], "the image side")
            if nxt % r or (nxt == r and i + 1 < scales):
                problem = f"{r} does not divide {what} {nxt}" if nxt % r else f"resolution {r} appears twice"
                raise ValueError(
                    f"resolutions must grow by integer factors, the last one dividing the image side: {problem} "
                    f"(resolutions={res}, image {shape[1]}x{shape[2]}); e.g. (7, 14) for 28x28"
                )
        object.__setattr__(self, "latent_channels", check_count(self.latent_channels, "latent_channels"))
        object.__setattr__(
            self, "cells_per_group", check_count(self.cells_per_group, "cells_per_group", minimum=0)
        )
        object.__setattr__(self, "power_iterations", check_count(self.power_iterations, "power_iterations"))
        for name in ("residual_posterior", "kl_balance", "batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        lam = self.spectral_reg
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (0 <= lam < math.inf):
            raise ValueError(f"spectral_reg must be a finite number >= 0 (0 turns it off), got {lam!r}")
        object.__setattr__(self, "spectral_reg", float(lam))

    @property
    def groups(self) -> int:
        """The number of latent groups L."""
        return sum(self.groups_per_scale)

    @property
    def group_resolutions(self) -> tuple[int, ...]:
        """The side of each group's latent map, top (coarsest) group first, ``L`` entries."""
        return tuple(r for r, g in zip(self.resolutions, self.groups_per_scale) for _ in range(g))

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """D_l, the number of latent units of each group, top group first."""
        return tuple(self.latent_channels * r * r for r in self.group_resolutions)


class NVAEELBO(NamedTuple):
    """The ELBO of an NVAE per example, with each group's share of the KL.

    ``elbo = log_px_z - kl`` and ``kl = kl_groups.sum(-1)``. Column l of
    ``kl_groups`` is group l+1, top (coarsest) group first: the analytic
    KL(q(z_l | x, z_<l) || p(z_l | z_<l)) at the *sampled* parents z_<l, a
    one-sample estimate of that group's expected KL.
    """

    elbo: Tensor  # [B]
    log_px_z: Tensor  # [B]
    kl: Tensor  # [B]
    kl_groups: Tensor  # [B, L]


class Group(NamedTuple):
    """One latent group of a top-down pass, each map ``[..., N, latent_channels, r, r]``.

    ``z`` is the sample (the mean on a mean pass), ``mu, log_var`` the distribution
    it was drawn from (the posterior on a posterior pass, the prior on a prior pass,
    before any temperature) and ``mu_p, log_var_p`` the prior p(z_l | z_<l) (zeros
    for the top group, whose prior is N(0, I)). ``kl`` is the analytic KL of the
    posterior to the prior, ``[..., N]``, on posterior passes, else ``None``.
    """

    z: Tensor
    mu: Tensor
    log_var: Tensor
    mu_p: Tensor
    log_var_p: Tensor
    kl: Tensor | None


# ------------------------------------------------------------------ the math
def residual_kl(delta_mu: Tensor, delta_log_var: Tensor, log_var_p: Tensor) -> Tensor:
    """KL( N(mu_p + dmu, (sigma_p dsigma)^2) || N(mu_p, sigma_p^2) ), summed over the last dimension.

    The closed form of NVAE §3.2 (derived in the module docstring)::

        KL = 1/2 sum [ dmu^2 / sigma_p^2 + dsigma^2 - 1 - log dsigma^2 ]

    Args:
        delta_mu: dmu, ``[..., D]``.
        delta_log_var: log dsigma^2, ``[..., D]``.
        log_var_p: log sigma_p^2 of the prior, ``[..., D]`` (mu_p is not needed).

    Returns:
        ``[...]``.
    """
    # $KL = \frac12\sum[\Delta\mu^2/\sigma_p^2 + \Delta\sigma^2 - 1 - \log\Delta\sigma^2]$
    kl = 0.5 * (delta_mu.pow(2) * torch.exp(-log_var_p) + delta_log_var.exp() - 1.0 - delta_log_var)
    return kl.sum(-1)


def kl_balance_coefficients(kl_groups: Tensor, group_sizes: tuple[int, ...] | Tensor) -> Tensor:
    """NVAE's KL balancing coefficients gamma_l (Appendix A, as its code computes them).

    ``a_l = (mean_b KL_{b,l} + 0.01) / D_l`` and ``gamma_l = L a_l / sum_l' a_l'``:
    proportional to the group's average KL per latent unit, summing to L (so all
    gammas are 1 when every group carries the same KL per unit). The 0.01 nats
    keep a collapsed group's coefficient above 0. Returned without gradient: the
    coefficients weigh the KL terms, they are not optimised.

    Args:
        kl_groups: ``[B, L]`` per-example KL of each group.
        group_sizes: D_l, ``L`` numbers of latent units.

    Returns:
        ``[L]`` coefficients.
    """
    sizes = torch.as_tensor(group_sizes, dtype=kl_groups.dtype, device=kl_groups.device)
    with torch.no_grad():
        # $a_l = (\overline{KL_l} + 0.01) / D_l$, $\gamma_l = L\,a_l / \sum_{l'} a_{l'}$
        per_unit = (kl_groups.mean(0) + BALANCE_EPS) / sizes  # [L]
        return len(sizes) * per_unit / per_unit.sum()


def soft_clamp(t: Tensor, bound: float) -> Tensor:
    """``bound * tanh(t / bound)``: the identity near 0, smoothly limited to (-bound, bound)."""
    return bound * torch.tanh(t / bound)


# ------------------------------------------------------------------ layers
class SRConv2d(nn.Conv2d):
    """A 2-D convolution that tracks the largest singular value of its weight.

    The weight ``[out, in, k, k]`` is read as the matrix ``W = weight.reshape(out, -1)``;
    the buffers ``sn_u [out]`` and ``sn_v [in*k*k]`` are the power iteration's
    current estimates of its top left and right singular vectors, kept between
    calls (and in the state dict). ``padding`` defaults to ``kernel_size // 2``
    ("same" for odd kernels).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int | None = None):
        padding = kernel_size // 2 if padding is None else padding
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding)
        self.register_buffer("sn_u", F.normalize(torch.randn(c_out), dim=0))
        self.register_buffer("sn_v", F.normalize(torch.randn(c_in * kernel_size * kernel_size), dim=0))
        self.power_iteration(20)  # start near the top singular vectors of the initial weight

    @torch.no_grad()
    def power_iteration(self, steps: int = 1) -> None:
        """Advance the estimates of the top singular vectors by ``steps`` power-iteration steps."""
        w = self.weight.reshape(self.out_channels, -1)  # [out, in*k*k]
        u, v = self.sn_u, self.sn_v
        for _ in range(steps):
            # $v \leftarrow W^\top u / \lVert W^\top u\rVert$, $u \leftarrow W v / \lVert W v\rVert$
            v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(w @ v, dim=0, eps=1e-12)
        self.sn_u.copy_(u)
        self.sn_v.copy_(v)

    def spectral_norm(self) -> Tensor:
        """The estimate ``u^T W v`` of the largest singular value, ``[]``, differentiable in the weight.

        Its gradient with respect to W is ``u v^T``, the gradient of the true
        largest singular value when u, v are its singular vectors.
        """
        w = self.weight.reshape(self.out_channels, -1)  # [out, in*k*k]
        # $\sigma_{\max}(W) \approx u^\top W v$
        return self.sn_u @ (w @ self.sn_v)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): rescale each channel by a gate computed
    from the channel means. ``[N, C, H, W]`` -> ``[N, C, H, W]``."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 16, 4)  # NVAE's reduction
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, h: Tensor) -> Tensor:
        s = h.mean(dim=(2, 3))  # [N, C]
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # [N, C]
        return h * gate[:, :, None, None]


class ResidualCell(nn.Module):
    """NVAE's residual cell of the bottom-up tower (§3.1), used here in both directions;
    the batch norms only with ``batch_norm=True``::

        h + 0.1 * SE(conv3x3(swish(BN(conv3x3(swish(BN(h)))))))

    The residual branch is scaled by 0.1, as NVAE does, so a deep stack starts
    close to the identity. ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    def __init__(self, channels: int, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels, momentum=0.05))
            layers += [nn.SiLU(), SRConv2d(channels, channels, 3)]  # SiLU is Swish: x * sigmoid(x)
        self.branch = nn.Sequential(*layers, SqueezeExcite(channels))

    def forward(self, h: Tensor) -> Tensor:
        return h + 0.1 * self.branch(h)


def _cells(channels: int, n: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(*(ResidualCell(channels, batch_norm) for _ in range(n)))


class Down(nn.Module):
    """Bottom-up resolution change by an integer factor f: a ``f x f`` convolution with
    stride f. ``[N, C_in, r*f, r*f]`` -> ``[N, C_out, r, r]``."""

    def __init__(self, c_in: int, c_out: int, factor: int):
        super().__init__()
        self.conv = SRConv2d(c_in, c_out, factor, stride=factor, padding=0)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.silu(h))


class Up(nn.Module):
    """Top-down resolution change by an integer factor f: nearest-neighbour upsampling,
    then a 1x1 convolution (NVAE's up cells start the same way).
    ``[N, C_in, r, r]`` -> ``[N, C_out, r*f, r*f]``."""

    def __init__(self, c_in: int, c_out: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = SRConv2d(c_in, c_out, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=self.factor, mode="nearest"))


class ToLogits(nn.Module):
    """Bernoulli logits at the image resolution from the last top-down state by a
    sub-pixel convolution: Swish, a 3x3 convolution to ``C * f * f`` channels, then
    ``pixel_shuffle(f)``. ``[N, c, r, r]`` -> ``[N, C, r*f, r*f]``."""

    def __init__(self, c_in: int, image_channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = SRConv2d(c_in, image_channels * factor * factor, 3)

    def forward(self, h: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(F.silu(h)), self.factor)


# ------------------------------------------------------------------ the model
class NVAE(nn.Module):
    """NVAE with a Bernoulli decoder: spatial latent groups at several resolutions, a
    bottom-up residual tower, a top-down path shared by prior and posterior.

    Example::

        model = NVAE()                        # 2 groups at 7x7, 2 at 14x14, 28x28 input
        terms = model.elbo(x)                 # x: [B, 1, 28, 28] in [0, 1]
        loss = model.training_loss(terms, kl_weight=0.3)   # balanced KL, + spectral penalty

    Attributes:
        stem: ``x -> [B, channels[-1], H, W]`` (3x3 convolution of ``2x - 1``).
        enc_down: ``enc_down[0]`` to the finest latent resolution, then one
            :class:`Down` per coarser scale.
        enc_cells: ``enc_cells[s]``: the bottom-up cells of scale s, one
            ``cells_per_group`` stack per group.
        enc_top: Swish, 1x1 convolution, Swish on the last bottom-up feature (for z_1).
        h_top: the learned constant that starts the top-down path, ``[channels[0], r_0, r_0]``.
        dec_cells: ``dec_cells[l-1]``: the top-down cells before group l+1 (0-based l >= 1).
        dec_up: one :class:`Up` per scale after the first.
        prior_heads: ``Swish, 1x1 conv -> (mu_p, log_var_p)`` of groups 2..L.
        enc_combine: 1x1 convolutions adding the top-down state to the bottom-up
            feature of groups 2..L.
        post_heads: ``3x3 conv -> (dmu, dlog_var)`` (or ``(mu, log_var)``) of every group.
        dec_combine: ``1x1 conv(cat(h, z_l))``: how each z_l enters the top-down state.
        to_logits: :class:`ToLogits`.
    """

    def __init__(self, config: NVAEConfig | None = None, **overrides):
        super().__init__()
        self.config = cfg = replace(config or NVAEConfig(), **overrides)
        c_img, side, _ = cfg.image_shape
        ch, res, cz, bn = cfg.channels, cfg.resolutions, cfg.latent_channels, cfg.batch_norm
        S = len(res)
        # (scale, first group of its scale) for each group, top-down
        self.group_scales = [(s, g == 0) for s in range(S) for g in range(cfg.groups_per_scale[s])]
        # bottom-up
        self.stem = SRConv2d(c_img, ch[-1], 3)
        self.enc_down = nn.ModuleList(
            [Down(ch[-1], ch[-1], side // res[-1])]
            + [Down(ch[s], ch[s - 1], res[s] // res[s - 1]) for s in range(S - 1, 0, -1)]
        )
        self.enc_cells = nn.ModuleList(
            nn.ModuleList(_cells(ch[s], cfg.cells_per_group, bn) for _ in range(cfg.groups_per_scale[s]))
            for s in range(S)
        )
        self.enc_top = nn.Sequential(nn.SiLU(), SRConv2d(ch[0], ch[0], 1), nn.SiLU())
        # top-down
        self.h_top = nn.Parameter(torch.rand(ch[0], res[0], res[0]))
        later = self.group_scales[1:]
        self.dec_cells = nn.ModuleList(_cells(ch[s], cfg.cells_per_group, bn) for s, _ in later)
        self.dec_up = nn.ModuleList(Up(ch[s - 1], ch[s], res[s] // res[s - 1]) for s in range(1, S))
        self.prior_heads = nn.ModuleList(nn.Sequential(nn.SiLU(), SRConv2d(ch[s], 2 * cz, 1)) for s, _ in later)
        self.enc_combine = nn.ModuleList(SRConv2d(ch[s], ch[s], 1) for s, _ in later)
        self.post_heads = nn.ModuleList(SRConv2d(ch[s], 2 * cz, 3) for s, _ in self.group_scales)
        self.dec_combine = nn.ModuleList(SRConv2d(ch[s] + cz, ch[s], 1) for s, _ in self.group_scales)
        self.to_logits = ToLogits(ch[-1], c_img, side // res[-1])
        # convolution weights, and so the activations they produce, are stored channels-last
        # ([N, H, W, C] in memory): the same shapes and values, ~15% faster training on a CPU
        self.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------- networks
    @property
    def groups(self) -> int:
        """The number of latent groups L."""
        return self.config.groups

    def _weight(self) -> Tensor:
        return self.stem.weight  # the parameters' dtype and device

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with a hint unless x is a ``[B, C, H, W]`` batch of pixels in [0, 1]."""
        check_batch(x, self.config.image_shape, dtype=self._weight().dtype, unit_interval=True)

    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """The deterministic bottom-up tower: one feature map per group, top group first.

        The tower runs from the finest scale to the coarsest, one stack of cells
        per group; group 1 reads ``enc_top`` of its last state and group l > 1
        the state after the cells of the (L - l + 1)-th group counted from the
        bottom, so the states are read in reverse, as in NVAE. Returns
        ``[B, channels[s], r_s, r_s]`` for each group's scale s.
        """
        self.check_input(x)
        S = len(self.config.resolutions)
        h = self.stem(2 * x - 1)  # [B, channels[-1], H, W]
        h = self.enc_down[0](h)  # [B, channels[-1], r_{S-1}, r_{S-1}]
        saved: list[Tensor] = []
        for s in range(S - 1, -1, -1):  # finest scale first
            for cells in self.enc_cells[s]:
                h = cells(h)
                saved.append(h)
            if s > 0:
                h = self.enc_down[S - s](h)  # [B, channels[s-1], r_{s-1}, r_{s-1}]
        saved.pop()  # the last state feeds the top group, through enc_top
        return [self.enc_top(h)] + saved[::-1]

    def _heads(self, l: int, h: Tensor, feature: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Prior and (with a bottom-up ``feature``) posterior of group ``l`` (0-based) at state ``h``.

        Returns ``(mu, log_var, mu_p, log_var_p, kl)``, maps ``[N, latent_channels, r, r]``
        and ``kl`` ``[N]``; without a feature ``mu, log_var`` are the prior's and ``kl`` is None.
        """
        if l == 0:  # $p(z_1) = N(0, I)$
            mu_p = torch.zeros(len(h), self.config.latent_channels, *h.shape[2:], dtype=h.dtype, device=h.device)
            log_var_p = torch.zeros_like(mu_p)
        else:
            mu_p, raw = self.prior_heads[l - 1](h).chunk(2, dim=1)
            log_var_p = soft_clamp(raw, LOG_VAR_BOUND)
        if feature is None:
            return mu_p, log_var_p, mu_p, log_var_p, None
        f = feature if l == 0 else feature + self.enc_combine[l - 1](h)
        head_mu, head_log_var = self.post_heads[l](f).chunk(2, dim=1)
        head_log_var = soft_clamp(head_log_var, LOG_VAR_BOUND)
        if self.config.residual_posterior:
            delta_mu, delta_log_var = head_mu, head_log_var  # $\Delta\mu$, $\log\Delta\sigma^2$
            # $q(z_l|x,z_{<l}) = N(\mu_p + \Delta\mu, \sigma_p^2 \Delta\sigma^2)$
            mu, log_var = mu_p + delta_mu, log_var_p + delta_log_var
            kl = residual_kl(delta_mu.flatten(1), delta_log_var.flatten(1), log_var_p.flatten(1))  # [N]
        else:
            mu, log_var = head_mu, head_log_var
            kl = kl_normal(mu.flatten(1), log_var.flatten(1), mu_p.flatten(1), log_var_p.flatten(1))  # [N]
        return mu, log_var, mu_p, log_var_p, kl

    def _top_down(
        self,
        n: int,
        features: list[Tensor] | None,
        *,
        mean: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Group], Tensor]:
        """Walk the groups top-down from ``h_top``: posterior samples given bottom-up
        ``features`` (each ``[n, ...]``), prior samples when ``features`` is None.

        Returns the ``Group`` of each group (maps ``[n, latent_channels, r, r]``) and
        the logits ``[n, C, H, W]``.
        """
        weight = self._weight()
        h = self.h_top.expand(n, -1, -1, -1)  # [n, channels[0], r_0, r_0]
        groups: list[Group] = []
        for l, (s, first_of_scale) in enumerate(self.group_scales):
            if l > 0:
                if first_of_scale:
                    h = self.dec_up[s - 1](h)  # [n, channels[s], r_s, r_s]
                h = self.dec_cells[l - 1](h)
            mu, log_var, mu_p, log_var_p, kl = self._heads(l, h, None if features is None else features[l])
            if mean:
                z = mu
            else:
                if generator is None:
                    eps = torch.randn_like(mu)
                else:
                    eps = torch.randn(mu.shape, generator=generator, dtype=weight.dtype, device=generator.device)
                    eps = eps.to(mu.device)
                std = torch.exp(0.5 * log_var)
                if features is None:
                    std = temperature * std  # $z_l \sim N(\mu_p, (t\,\sigma_p)^2)$
                # $z = \mu + \sigma \odot \epsilon$
                z = mu + std * eps
            groups.append(Group(z, mu, log_var, mu_p, log_var_p, kl))
            h = self.dec_combine[l](torch.cat([h, z], dim=1))  # [n, channels[s], r_s, r_s]
        return groups, self.to_logits(h)

    # ------------------------------------------------------------ the posterior
    def posterior(self, x: Tensor, k: int | None = None, *, mean: bool = False) -> tuple[list[Group], Tensor]:
        """The bottom-up tower and the top-down pass with posterior samples.

        Args:
            x: ``[B, C, H, W]`` in [0, 1].
            k: ``None`` for one sample per example (maps ``[B, ...]``), or a number
                of joint samples (maps ``[k, B, ...]``). The bottom-up tower runs
                once either way.
            mean: pass each group's posterior mean down instead of a sample (z = mu).

        Returns:
            ``(groups, logits)``: one :class:`Group` per latent group, top first, and the
            decoder's logits ``[B, C, H, W]`` (``[k, B, C, H, W]``).
        """
        if k is not None:
            k = check_count(k, "k")
        features = self.bottom_up(x)
        reps = 1 if k is None else k
        B = len(x)
        if reps > 1:  # [B, ...] -> [k*B, ...], sample i of example b at row i*B + b
            features = [f.repeat(reps, 1, 1, 1) for f in features]
        groups, logits = self._top_down(reps * B, features, mean=mean)
        if k is not None:
            lead = (k, B)
            groups = [Group(*(t.reshape(*lead, *t.shape[1:]) for t in g)) for g in groups]
            logits = logits.reshape(*lead, *logits.shape[1:])  # [k, B, C, H, W]
        return groups, logits

    # ------------------------------------------------------------ the bounds
    def elbo(self, x: Tensor) -> NVAEELBO:
        """One-sample ELBO with analytic per-group KL terms: ``[B]`` terms and ``kl_groups`` ``[B, L]``."""
        groups, logits = self.posterior(x)
        log_px_z = log_bernoulli(x, logits)  # [B]
        # $KL_l = KL(q(z_l|x, z_{<l}) \| p(z_l|z_{<l}))$ at the sampled $z_{<l}$
        kl_groups = torch.stack([g.kl for g in groups], dim=-1)  # [B, L]
        kl = kl_groups.sum(-1)  # [B]
        return NVAEELBO(log_px_z - kl, log_px_z, kl, kl_groups)

    def log_weight_terms(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """The three terms of the log importance weights for k joint posterior samples.

        Returns:
            ``(log_px_z, log_pz, log_qz)``, each ``[k, B]``: log p(x | z),
            sum_l log p(z_l | z_<l) and sum_l log q(z_l | x, z_<l).
        """
        k = check_count(k, "k")
        groups, logits = self.posterior(x, k)
        log_px_z = log_bernoulli(x, logits)  # [k, B]
        log_pz = sum(log_normal(g.z.flatten(2), g.mu_p.flatten(2), g.log_var_p.flatten(2)) for g in groups)
        log_qz = sum(log_normal(g.z.flatten(2), g.mu.flatten(2), g.log_var.flatten(2)) for g in groups)
        return log_px_z, log_pz, log_qz

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z) - log q(z | x) for k joint samples of all L groups, ``[k, B]``.

        ``log w = log p(x|z) + sum_l [log p(z_l | z_<l) - log q(z_l | x, z_<l)]``. Runs
        in the module's current mode, like :meth:`elbo` (use ``model.eval()`` for
        evaluation). The decoder runs on all k x B samples at once: pass k in
        chunks (as :func:`vaetut.bounds.log_likelihood` does) to bound the memory.
        """
        log_px_z, log_pz, log_qz = self.log_weight_terms(x, k)
        # $\log w = \log p(x|z) + \sum_l [\log p(z_l|z_{<l}) - \log q(z_l|x,z_{<l})]$
        return log_px_z + log_pz - log_qz

    # ------------------------------------------------------------ training
    def spectral_norms(self) -> Tensor:
        """The estimated largest singular value of every convolution, ``[n_conv]``, differentiable.

        In training mode each convolution first advances its power iteration by
        ``config.power_iterations`` steps (updating its buffers); in evaluation
        mode the stored vectors are used as they are.
        """
        convs = [m for m in self.modules() if isinstance(m, SRConv2d)]
        if self.training:
            for conv in convs:
                conv.power_iteration(self.config.power_iterations)
        return torch.stack([conv.spectral_norm() for conv in convs])

    def training_loss(self, terms: NVAEELBO, kl_weight: float) -> Tensor:
        """The scalar loss of one training step (what :func:`vaetut.train.fit` minimises).

        ``-(log_px_z - w * sum_l gamma_l KL_l).mean() + lambda * sum(spectral norms)``,
        with ``w = kl_weight``, ``gamma_l`` from :func:`kl_balance_coefficients` when
        ``config.kl_balance`` and w < 1 (else 1), and ``lambda = config.spectral_reg``
        (the penalty is left out when 0). With neither, it is the plain KL-weighted
        negative ELBO ``-(log_px_z - w * kl).mean()``.

        Args:
            terms: :meth:`elbo` of the batch.
            kl_weight: w >= 0, the warm-up's KL weight at this step.
        """
        w = kl_weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (0 <= w < math.inf):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {w!r}")
        w = float(w)
        kl_groups = terms.kl_groups  # [B, L]
        if self.config.kl_balance and w < 1:
            gamma = kl_balance_coefficients(kl_groups, self.config.group_sizes)  # [L]
            kl = (kl_groups * gamma).sum(-1)  # [B]
        else:
            kl = kl_groups.sum(-1)  # [B]
        # $-\frac1B\sum_b[\log p(x_b|z_b) - w\sum_l \gamma_l KL_{b,l}]$
        loss = -(terms.log_px_z - w * kl).mean()
        if self.config.spectral_reg > 0:
            # $+\lambda \sum_i \sigma_{\max}(W_i)$
            loss = loss + self.config.spectral_reg * self.spectral_norms().sum()
        return loss

    # ---------------------------------------------------- sampling and means
    @torch.no_grad()
    def generate(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[list[Group], Tensor]:
        """Ancestral samples of every group from the prior: ``(groups, logits)``.

        ``z_1 ~ N(0, t^2 I)`` and ``z_l ~ N(mu_p, (t sigma_p)^2)`` with t = ``temperature``
        (t = 0: every z_l is its prior mean, a deterministic sample). Noise is drawn
        in the parameters' dtype, on the generator's device if one is given (a CPU
        generator makes samples reproducible across devices), else the parameters'.
        Maps ``[n, latent_channels, r, r]``; logits ``[n, C, H, W]``.
        """
        n = check_count(n, "n")
        t = temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (0 <= t < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        return self._top_down(n, None, temperature=float(t), generator=generator)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Pixel probabilities for n draws from the generative model, ``[n, C, H, W]``
        (see :meth:`generate` for the temperature)."""
        return torch.sigmoid(self.generate(n, temperature, generator)[1])

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Pixel probabilities on the mean path (each z_l set to its posterior mean), ``[B, C, H, W]``."""
        return torch.sigmoid(self.posterior(x, mean=True)[1])

    @torch.no_grad()
    def posterior_means(self, x: Tensor, k: int = 10) -> list[Tensor]:
        """Monte Carlo estimates of E_q[z_l | x], one flattened ``[B, D_l]`` per group, top first.

        E_q[z_l] = E_q[mu_q,l(x, z_<l)], averaged over k joint samples of the groups
        above (exact for the top group). These are the statistics of the
        active-units diagnostic (:func:`vaetut.diagnostics.active_units`).
        """
        groups, _ = self.posterior(x, k)
        return [g.mu.mean(0).flatten(1) for g in groups]
