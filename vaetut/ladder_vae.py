"""The Ladder VAE: L stochastic layers, a top-down posterior that shares the prior.

Paper: Mittas, *Variational Autoencoders*, §4 (with the slip in the posterior
variance corrected, see the errata page of the book (``book/errata.md``) §4); Sønderby et al. (2016),
"Ladder Variational Autoencoders", eq. (1)–(3) for the generative model and
eq. (16)–(19) for the inference model. Taught in the book chapter "Ladder VAE".
The options beyond the Ladder VAE: bottom-up inference and the networks of
Burda et al. (2016), "Importance Weighted Autoencoders", §5.1 and Appendix C;
skip connections from every latent layer to the decoder as in BIVA (Maaløe et
al. 2019, "BIVA: A Very Deep Hierarchy of Latent Variables for Generative
Modeling").

The generative model is a chain of Gaussians from a standard normal top layer
down to the pixels (layers are numbered 1 = bottom, next to x, ... L = top)::

    p(z_L) = N(0, I)
    p(z_i | z_{i+1}) = N(mu_{p,i}(z_{i+1}), diag var_{p,i}(z_{i+1}))     i = L-1 .. 1
    p(x | z_1) = Bernoulli(sigmoid(logits(z_1)))

Ladder inference (``inference="ladder"``, the default) runs in two passes. The
*bottom-up* pass is deterministic:
``d_0 = x``, ``d_i = MLP(d_{i-1})`` and from each ``d_i`` a Gaussian estimate
``mu_hat_i = Linear(d_i)``, ``var_hat_i = softplus(Linear(d_i))``. The *top-down*
pass samples ``z_L ~ q(z_L | x) = N(mu_hat_L, var_hat_L)`` and then, going down,
combines the bottom-up estimate of layer i with the generative model's own
prediction p(z_i | z_{i+1}) by precision weighting (:func:`precision_weighted`)::

    q(z_i | z_{i+1}, x) = N(mu_q_i, var_q_i),
    1 / var_q_i = 1 / var_hat_i + 1 / var_{p,i}     (the paper prints this as sigma)
    mu_q_i = var_q_i * (mu_hat_i / var_hat_i + mu_{p,i} / var_{p,i})

so the networks of p(z_i | z_{i+1}) are used twice: by the generative model and,
through the precision weighting, by the inference model.

With L = 1 there is no top-down step: q(z_1 | x) is the bottom-up estimate and
the model is the one-layer VAE of :mod:`vaetut.vae` (whose encoder predicts
``log_var`` with a linear layer instead of ``var`` through a softplus).

**Bottom-up inference** (``inference="bottom_up"``). The same generative model
with the inference model of the classic hierarchical VAE that the Ladder VAE is
compared with (Sønderby et al. 2016, Figure 1a; Burda et al. 2016, §5.1)::

    q(z | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})
    q(z_1 | x) = N(mu_{q,1}(x), diag var_{q,1}(x))
    q(z_i | z_{i-1}) = N(mu_{q,i}(z_{i-1}), diag var_{q,i}(z_{i-1}))     i = 2 .. L

Each layer's posterior reads the *sample* of the layer below, so it sees x only
through z_{i-1}, and no network is shared between inference and generation.

**Deterministic layers.** Each entry of ``hidden`` is one width (one layer, as
in the book chapter) or a tuple of widths (several layers). Entry i-1 is used
three times, mirrored on the generative side: below z_i on the way up
(``x -> hidden[0] -> mu, var of z_1``), and reversed on the way down
(``z_{i+1} -> reversed(hidden[i]) -> mu_p, var_p of z_i``, ``z_1 ->
reversed(hidden[0]) -> logits``). So ``LadderVAE(latent_dims=(100, 50),
hidden=((200, 200), (100, 100)), activation="tanh", inference="bottom_up",
variance="exp")`` is the two-stochastic-layer network of Burda et al. (2016),
§5.1 and Appendix C: q is 784-200-200-100 then 100-100-100-50, p is 50-100-100-100
then 100-200-200-784, every deterministic unit tanh, each Gaussian's mean a linear
map and its variance exp of another (§5.1: "an exp nonlinearity was applied to
the predicted variances"; ``variance="softplus"``, the default, gives the same
layer sizes and parameter count, 521,084).

**Skip connections** (``skip=True``). As in the skip-connected generative model
of BIVA (Maaløe et al. 2019), every latent layer reaches the pixels directly,
p(x | z_1, ..., z_L): each z_i (i >= 2) is mapped by a linear map without bias
into the decoder's first hidden layer and added to the map of z_1, which is one
linear map of the concatenation [z_1, ..., z_L]. The prior chain is unchanged
(BIVA's other parts, its bidirectional inference and the deterministic paths
between its generative layers, are not reproduced). Works with either inference;
with L = 1 it changes nothing. With bottom-up inference note what q cannot see:
the exact posterior p(z_2 | z_1, x) now depends on x directly (z_2 reaches the
pixels), but q(z_2 | z_1) reads x only through z_1.

Batch normalisation (optional, as in Sønderby et al.) is applied after every
hidden linear layer. **Modes:** every method runs in the module's current mode.
In training mode batch norm normalises with the statistics of the batch (for
:meth:`LadderVAE.log_weights`, of all k x B samples of each layer) and updates its
running averages; in evaluation mode (``model.eval()``) it uses the running
averages, so each example's value depends on that example only and
``log_weights(x, k).mean(0)`` estimates the same quantity as ``elbo(x).elbo``.
Evaluate bounds, samples and reconstructions in evaluation mode.

Imports torch and :mod:`vaetut.distributions` only. To use it outside vaetut, copy
this file and ``distributions.py`` into one folder; then, from that folder::

    import torch
    from ladder_vae import LadderVAE

    model = LadderVAE(latent_dims=(8, 4), hidden=(64, 32))
    x = torch.rand(8, 1, 28, 28)                   # pixels in [0, 1]
    print(model.elbo(x).kl_layers.shape)           # torch.Size([8, 2])
    print(model.log_weights(x, k=5).shape)         # torch.Size([5, 8])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

try:  # inside the vaetut package
    from .distributions import check_batch, check_count, kl_normal, log_bernoulli, log_normal, reparameterize
except ImportError:  # copied into a folder beside distributions.py (see the module docstring)
    from distributions import (  # type: ignore[no-redef]
        check_batch,
        check_count,
        kl_normal,
        log_bernoulli,
        log_normal,
        reparameterize,
    )

__all__ = ["LadderVAEConfig", "LadderVAE", "LadderELBO", "Layer", "precision_weighted"]

INFERENCES = ("ladder", "bottom_up")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
VARIANCES = ("softplus", "exp")


@dataclass(frozen=True)
class LadderVAEConfig:
    """Shape of a Ladder VAE; entry i of each tuple belongs to stochastic layer i+1.

    Attributes:
        image_shape: ``(C, H, W)`` of one input image (pixels in [0, 1]).
        latent_dims: sizes of z_1 (bottom) ... z_L (top); L = ``len(latent_dims)``.
        hidden: the deterministic layers below each z_i, bottom first: per layer
            one width (an int) or a tuple of widths (several layers), e.g.
            ``(512, 256)`` or ``((200, 200), (100, 100))``. On the way up,
            entry i (0-based) runs from the layer below (d_i under ladder
            inference, z_i under bottom-up inference; x for i = 0) to the Gaussian
            of z_{i+1}; on the way down, the network from z_{i+2} to z_{i+1} has
            the widths of entry i+1 reversed, and the decoder from z_1 to x those
            of entry 0 reversed, mirroring the way up.
        activation: ``"relu"`` or ``"tanh"`` (Burda et al.'s networks), after
            every hidden linear layer (and its batch norm).
        inference: ``"ladder"`` (precision-weighted top-down inference, Sønderby
            et al.) or ``"bottom_up"`` (q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})).
        skip: connect every latent layer to the decoder, p(x | z_1, ..., z_L)
            (BIVA's skip-connected generative model, Maaløe et al. 2019).
        variance: how every Gaussian head makes its variance from a linear
            output a: ``"softplus"`` (softplus(a), Sønderby et al.) or ``"exp"``
            (exp(a), Burda et al.; it overflows for large a, softplus does not);
            ``min_var`` is added to either.
        batch_norm: batch normalisation after every hidden linear layer.
        min_var: added to every variance, so log-variances stay finite.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dims: tuple[int, ...] = (64, 32)
    hidden: tuple[int | tuple[int, ...], ...] = (512, 256)
    activation: str = "relu"
    inference: str = "ladder"
    skip: bool = False
    variance: str = "softplus"
    batch_norm: bool = False
    min_var: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.image_shape, (tuple, list)) or len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", tuple(check_count(s, "each image_shape size") for s in self.image_shape))
        if not isinstance(self.latent_dims, (tuple, list)) or len(self.latent_dims) == 0:
            raise ValueError(
                f"latent_dims must be a non-empty tuple with one size per stochastic layer, e.g. (64, 32), "
                f"got {self.latent_dims!r}; a Ladder VAE needs at least one stochastic layer (L >= 1)"
            )
        if not isinstance(self.hidden, (tuple, list)) or len(self.hidden) != len(self.latent_dims):
            raise ValueError(
                f"hidden must give one deterministic width per stochastic layer (an int, or a tuple of widths "
                f"for several layers): latent_dims={self.latent_dims!r} has {len(self.latent_dims)} layers "
                f"but hidden={self.hidden!r}"
            )
        # counts may come as NumPy integers: store them as Python ints
        dims = tuple(check_count(s, "each entry of latent_dims") for s in self.latent_dims)
        object.__setattr__(self, "latent_dims", dims)
        object.__setattr__(self, "hidden", tuple(_check_widths(h, i) for i, h in enumerate(self.hidden)))
        for name, options in (("activation", tuple(ACTIVATIONS)), ("inference", INFERENCES), ("variance", VARIANCES)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        for name in ("skip", "batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        try:
            min_var = float(self.min_var)
        except (TypeError, ValueError):
            min_var = math.nan
        if isinstance(self.min_var, bool) or not 0 <= min_var < math.inf:
            raise ValueError(f"min_var must be a finite number >= 0, got {self.min_var!r}")
        object.__setattr__(self, "min_var", min_var)

    @property
    def layers(self) -> int:
        """The number of stochastic layers L."""
        return len(self.latent_dims)

    @property
    def widths(self) -> tuple[tuple[int, ...], ...]:
        """``hidden`` with every entry as a tuple of widths, bottom first (way-up order)."""
        return tuple((h,) if isinstance(h, int) else h for h in self.hidden)


def _check_widths(entry: object, i: int) -> int | tuple[int, ...]:
    """One entry of ``hidden``: a positive int, or a non-empty tuple of them (NumPy integers become ints)."""
    if isinstance(entry, (tuple, list)):
        if len(entry) == 0:
            raise ValueError(
                f"hidden[{i}] is empty: each entry of hidden must be a positive integer or a non-empty tuple "
                "of them (at least one deterministic layer per stochastic layer)"
            )
        return tuple(check_count(w, f"each width in hidden[{i}]") for w in entry)
    return check_count(entry, "each entry of hidden", hint="or a non-empty tuple of positive integers")


class LadderELBO(NamedTuple):
    """The ELBO of a Ladder VAE per example, with each layer's share of the KL.

    ``elbo = log_px_z - kl`` and ``kl = kl_layers.sum(-1)``; ``log_px_z`` is
    log p(x | z_1) (log p(x | z_1, ..., z_L) with ``skip=True``) at one sample.
    Column i of ``kl_layers`` is layer i+1 (bottom first); every column is a
    one-sample estimate of E_q[log q(z_i | .) - log p(z_i | .)], and the columns
    add up to an estimate of KL(q(z | x) || p(z)):

    * ``inference="ladder"``: for the top layer the analytic KL(q(z_L|x) || N(0, I));
      for i < L the analytic KL(q(z_i | z_{i+1}, x) || p(z_i | z_{i+1})) at the
      *sampled* z_{i+1}. Every entry is >= 0.
    * ``inference="bottom_up"``: for the top layer the analytic
      KL(q(z_L | z_{L-1}) || N(0, I)) at the sampled z_{L-1}; for i < L,
      log q(z_i | z_{i-1}) - log p(z_i | z_{i+1}) at the drawn z_i and z_{i+1}
      (z_0 = x). No analytic form applies there, because z_{i+1} is drawn given
      z_i; an entry can be negative, its expectation is the layer's share.
    """

    elbo: Tensor  # [B]
    log_px_z: Tensor  # [B]
    kl: Tensor  # [B]
    kl_layers: Tensor  # [B, L]


class Layer(NamedTuple):
    """One stochastic layer of a posterior pass, each field ``[..., B, D_i]``.

    ``z`` is the sample (or the mean, on a mean pass), ``mu, log_var`` the posterior
    factor of this layer (q(z_i | z_{i+1}, x) under ladder inference, q(z_i | z_{i-1})
    under bottom-up inference, q(z_1 | x) at its bottom) and ``mu_p, log_var_p`` the
    prior p(z_i | z_{i+1}) at the z_{i+1} of the same pass (zeros at the top
    layer, where p(z_L) = N(0, I)).
    """

    z: Tensor
    mu: Tensor
    log_var: Tensor
    mu_p: Tensor
    log_var_p: Tensor


def precision_weighted(mu_hat: Tensor, var_hat: Tensor, mu_p: Tensor, var_p: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two Gaussian estimates of the same variable by their precisions.

    N(z; mu, var) is proportional to N(z; mu_hat, var_hat) * N(z; mu_p, var_p): the
    precisions add and the mean is the precision-weighted average of the means
    (Sønderby et al. 2016, eq. 18–19, with the paper's sigma read as the variance,
    book/errata.md §4). Elementwise; arguments broadcast.

    Args:
        mu_hat, var_hat: the bottom-up estimate, ``[..., D]`` (variances > 0).
        mu_p, var_p: the top-down prior, ``[..., D]``.

    Returns:
        ``(mu, var)``, each the broadcast shape.
    """
    # $\sigma_q^2 = 1 / (\hat\sigma^{-2} + \sigma_p^{-2}) = \hat\sigma^2 \sigma_p^2 / (\hat\sigma^2 + \sigma_p^2)$
    total = var_hat + var_p
    var = var_hat * var_p / total
    # $\mu_q = (\hat\mu \hat\sigma^{-2} + \mu_p \sigma_p^{-2}) \sigma_q^2 = (\hat\mu \sigma_p^2 + \mu_p \hat\sigma^2) / (\hat\sigma^2 + \sigma_p^2)$
    mu = (mu_hat * var_p + mu_p * var_hat) / total
    return mu, var


def _mlp(n_in: int, widths: Sequence[int], activation: str, batch_norm: bool) -> nn.Sequential:
    """Deterministic layers ``n_in -> widths[0] -> ... -> widths[-1]``: each Linear, optional
    BatchNorm, activation, in one flat Sequential. ``[N, n_in]`` -> ``[N, widths[-1]]``."""
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Linear(n_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(ACTIVATIONS[activation]())
        n_in = width
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Two linear maps from features to a diagonal Gaussian: ``mu`` and
    ``var = softplus(.) + min_var`` (or ``exp(.) + min_var``). ``[..., F]`` -> ``([..., D], [..., D])``."""

    def __init__(self, n_in: int, n_out: int, min_var: float, variance: str = "softplus"):
        super().__init__()
        self.to_mu = nn.Linear(n_in, n_out)
        self.to_var = nn.Linear(n_in, n_out)
        self.min_var = min_var
        self.variance = variance

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        a = self.to_var(h)
        # $\sigma^2 = \mathrm{softplus}(W h + b)$ (Sønderby et al.) or $\exp(W h + b)$ (Burda et al.)
        var = torch.exp(a) if self.variance == "exp" else nn.functional.softplus(a)
        return self.to_mu(h), var + self.min_var


def _flat_apply(net: nn.Module, t: Tensor) -> Tensor:
    """Apply a network on ``[N, F]`` to ``t`` of shape ``[..., F]``: ``[..., F]`` -> ``[..., F']``."""
    lead = t.shape[:-1]
    return net(t.reshape(-1, t.shape[-1])).reshape(*lead, -1)


class LadderVAE(nn.Module):
    """A Ladder VAE with L stochastic layers, MLP networks and a Bernoulli decoder.

    Example::

        model = LadderVAE(latent_dims=(64, 32), hidden=(512, 256))
        terms = model.elbo(x)                 # x: [B, 1, 28, 28] in [0, 1]
        loss = -terms.elbo.mean()             # terms.kl_layers: [B, 2]

        # Burda et al.'s two-layer net: bottom-up inference, two tanh layers per stochastic layer
        iwae_net = LadderVAE(latent_dims=(100, 50), hidden=((200, 200), (100, 100)),
                             activation="tanh", inference="bottom_up", variance="exp")

    Attributes (i is 0-based; widths as in :class:`LadderVAEConfig`):
        up: the deterministic layers of the way up, ``up[i]: d_i -> d_{i+1}`` with
            ``d_0 = x`` under ladder inference; ``up[i]: z_i -> d_{i+1}`` (``z_0 = x``)
            under bottom-up inference.
        up_heads: ``up_heads[i]: d_{i+1} -> (mu, var)`` of layer i+1: the bottom-up
            estimate (ladder) or q(z_{i+1} | z_i) itself (bottom-up).
        down: ``down[i]: z_{i+2} -> features``, for i < L - 1.
        down_heads: ``down_heads[i]: features -> (mu_p, var_p)`` of layer i+1.
        decoder: ``z_1 -> reversed(hidden[0]) -> logits`` of p(x | z_1).
        skips: with ``skip=True``, ``skips[i]: z_{i+2} -> `` the decoder's first
            hidden layer (linear, no bias); empty otherwise.
    """

    def __init__(self, config: LadderVAEConfig | None = None, **overrides):
        super().__init__()
        self.config = cfg = replace(config or LadderVAEConfig(), **overrides)
        c, h, w = cfg.image_shape
        L, dims, widths = cfg.layers, cfg.latent_dims, cfg.widths
        if cfg.inference == "ladder":  # x -> d_1 -> d_2 -> ...
            inputs = [c * h * w] + [ws[-1] for ws in widths[:-1]]
        else:  # x -> z_1 -> z_2 -> ...
            inputs = [c * h * w, *dims[:-1]]
        self.up = nn.ModuleList(_mlp(n, ws, cfg.activation, cfg.batch_norm) for n, ws in zip(inputs, widths))
        self.up_heads = nn.ModuleList(
            GaussianHead(ws[-1], d, cfg.min_var, cfg.variance) for ws, d in zip(widths, dims)
        )
        self.down = nn.ModuleList(
            _mlp(dims[i + 1], widths[i + 1][::-1], cfg.activation, cfg.batch_norm) for i in range(L - 1)
        )
        self.down_heads = nn.ModuleList(
            GaussianHead(widths[i + 1][0], dims[i], cfg.min_var, cfg.variance) for i in range(L - 1)
        )
        self.decoder = nn.Sequential(
            _mlp(dims[0], widths[0][::-1], cfg.activation, cfg.batch_norm), nn.Linear(widths[0][0], c * h * w)
        )
        first = widths[0][-1]  # width of the decoder's first hidden layer
        self.skips = nn.ModuleList(nn.Linear(d, first, bias=False) for d in dims[1:]) if cfg.skip else nn.ModuleList()

    # ----------------------------------------------------------------- networks
    @property
    def layers(self) -> int:
        """The number of stochastic layers L."""
        return self.config.layers

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with a hint unless x is a ``[B, C, H, W]`` batch of pixels in [0, 1]."""
        check_batch(x, self.config.image_shape, dtype=self.decoder[-1].weight.dtype, unit_interval=True)

    def _require(self, inference: str, method: str) -> None:
        if self.config.inference != inference:
            raise ValueError(
                f"{method} belongs to inference={inference!r}, but this model uses "
                f"inference={self.config.inference!r}; posterior(x) works for both"
            )

    def _check_layer(self, i: int, top: int, method: str) -> None:
        """ValueError unless ``i`` is a layer in 1..L-1+top (``top = 1`` admits the top layer L)."""
        last = self.layers - 1 + top
        if check_count(i, f"{method}'s layer i") > last:
            raise ValueError(f"{method} takes a layer i in 1..{last} (1 = bottom), got {i}")

    def bottom_up(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Ladder inference's deterministic pass: ``(mu_hat_i, var_hat_i)`` for i = 1..L, each ``[B, D_i]``."""
        self._require("ladder", "bottom_up(x), the deterministic pass,")
        self.check_input(x)
        d = x.flatten(1)  # [B, C*H*W]
        estimates = []
        for block, head in zip(self.up, self.up_heads):
            # $d_i = \mathrm{MLP}(d_{i-1})$, $\hat\mu_i = \mathrm{Linear}(d_i)$, $\hat\sigma^2_i = \mathrm{softplus}(\mathrm{Linear}(d_i))$ (or exp)
            d = block(d)  # [B, hidden[i][-1]]
            estimates.append(head(d))
        return estimates

    def posterior_step(self, i: int, below: Tensor) -> tuple[Tensor, Tensor]:
        """One factor of bottom-up inference, ``(mu, var)``: q(z_1 | x) for ``i = 1``
        (``below = x``, ``[B, C, H, W]`` -> ``[B, D_1]``) or q(z_i | z_{i-1}) for i in 2..L
        (``below = z_{i-1}``, ``[..., D_{i-1}]`` -> ``[..., D_i]``)."""
        self._require("bottom_up", "posterior_step")
        self._check_layer(i, 1, "posterior_step")
        if i == 1:
            self.check_input(below)
            below = below.flatten(1)  # [B, C*H*W]
        # $q(z_i | z_{i-1}) = N(\mu_{q,i}(z_{i-1}), \sigma^2_{q,i}(z_{i-1}))$
        h = _flat_apply(self.up[i - 1], below)  # [..., hidden[i-1][-1]]
        return self.up_heads[i - 1](h)  # [..., D_i] each

    def prior(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """p(z_i | z_{i+1}) for layer ``i`` in 1..L-1: ``(mu_p, var_p)``, ``[..., D_{i+1}]`` -> ``[..., D_i]``."""
        self._check_layer(i, 0, "prior")
        h = _flat_apply(self.down[i - 1], z_above)  # [..., hidden[i][0]]
        return self.down_heads[i - 1](h)  # [..., D_i] each

    def decode(self, z1: Tensor, z_above: Sequence[Tensor] = ()) -> Tensor:
        """Bernoulli logits of p(x | z_1), or of p(x | z_1, ..., z_L) with ``skip=True``.

        Args:
            z1: ``[..., D_1]``.
            z_above: ``[z_2, ..., z_L]``, each ``[..., D_i]``; required with ``skip=True``,
                ignored without (so callers may always pass every layer).

        Returns:
            ``[..., C, H, W]``.
        """
        lead = z1.shape[:-1]
        stack, to_logits = self.decoder
        h = stack[0](z1.reshape(-1, z1.shape[-1]))  # [N, first hidden width]
        if self.config.skip and self.layers > 1:
            if len(z_above) != self.layers - 1:
                raise ValueError(
                    f"with skip=True the decoder reads every layer: decode(z1, [z_2, ..., z_L]) needs "
                    f"{self.layers - 1} tensors in z_above, got {len(z_above)}"
                )
            # $h = W_1 z_1 + b + \sum_{i \ge 2} W_i z_i$: every layer reaches the decoder directly (BIVA)
            for skip, z in zip(self.skips, z_above):
                h = h + skip(z.reshape(-1, z.shape[-1]))
        logits = to_logits(stack[1:](h))  # [N, C*H*W]
        return logits.reshape(*lead, *self.config.image_shape)

    def _decode_layers(self, layers: Sequence[Layer]) -> Tensor:
        """Logits from the samples of a posterior pass, ``[..., C, H, W]``."""
        return self.decode(layers[0].z, [layer.z for layer in layers[1:]])

    # ------------------------------------------------------------ the posterior
    def posterior(self, x: Tensor, k: int | None = None, *, mean: bool = False) -> list[Layer]:
        """Sample every layer's posterior: one :class:`Layer` per stochastic layer, bottom first.

        Ladder inference (below) runs the deterministic bottom-up pass once and then
        samples top-down, z_L first (Sønderby et al. 2016, eq. 16–19); bottom-up
        inference (:meth:`_bottom_up_posterior`) samples z_1 first and each layer given
        the one below. Either way the priors p(z_i | z_{i+1}) are evaluated at the
        sampled z_{i+1}.

        Args:
            x: ``[B, C, H, W]`` in [0, 1].
            k: ``None`` for one sample per example (fields ``[B, D_i]``), or a number of
                samples (fields ``[k, B, D_i]``). The networks that read x run once either way.
            mean: pass each layer's posterior mean on instead of a sample (so
                ``z = mu``); used by :meth:`reconstruct`.

        Returns:
            ``[layer_1, ..., layer_L]``.
        """
        if k is not None:
            k = check_count(k, "k")
        lead = () if k is None else (k,)
        if self.config.inference == "bottom_up":
            return self._bottom_up_posterior(x, lead, mean)
        estimates = self.bottom_up(x)
        layers: list[Layer] = []
        z = None
        for i in range(self.layers, 0, -1):  # top-down: i = L, ..., 1
            mu_hat, var_hat = estimates[i - 1]  # [B, D_i]
            if i == self.layers:
                # $q(z_L | x) = N(\hat\mu_L, \hat\sigma^2_L)$, $p(z_L) = N(0, I)$
                mu, var = mu_hat.expand(*lead, *mu_hat.shape), var_hat.expand(*lead, *var_hat.shape)
                mu_p, var_p = torch.zeros_like(mu), torch.ones_like(var)
            else:
                mu_p, var_p = self.prior(i, z)  # [*lead, B, D_i]
                mu, var = precision_weighted(mu_hat, var_hat, mu_p, var_p)
            log_var = var.log()
            if mean:
                z = mu
            else:
                eps = torch.randn((*lead, *mu_hat.shape), dtype=mu.dtype, device=mu.device)
                z = reparameterize(mu, log_var, eps)  # [*lead, B, D_i]
            layers.append(Layer(z, mu, log_var, mu_p, var_p.log()))
        return layers[::-1]

    def _bottom_up_posterior(self, x: Tensor, lead: tuple[int, ...], mean: bool) -> list[Layer]:
        """Bottom-up inference q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}): fields ``[*lead, B, D_i]``."""
        qs, zs = [], []
        below = x
        for i in range(1, self.layers + 1):  # bottom-up: i = 1, ..., L
            mu, var = self.posterior_step(i, below)  # [B, D_1] for i = 1, else [*lead, B, D_i]
            if i == 1:
                mu, var = mu.expand(*lead, *mu.shape), var.expand(*lead, *var.shape)
            log_var = var.log()
            if mean:
                z = mu
            else:
                # $z_i = \mu_{q,i}(z_{i-1}) + \sigma_{q,i}(z_{i-1}) \odot \epsilon_i$, with $z_0 = x$
                eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)
                z = reparameterize(mu, log_var, eps)  # [*lead, B, D_i]
            qs.append((mu, log_var))
            zs.append(z)
            below = z
        layers = []
        for i in range(1, self.layers + 1):
            if i == self.layers:
                mu_p, log_var_p = torch.zeros_like(zs[-1]), torch.zeros_like(zs[-1])  # $p(z_L) = N(0, I)$
            else:
                # $p(z_i | z_{i+1})$ at the $z_{i+1}$ drawn given $z_i$
                mu_p, var_p = self.prior(i, zs[i])
                log_var_p = var_p.log()
            layers.append(Layer(zs[i - 1], *qs[i - 1], mu_p, log_var_p))
        return layers

    # ------------------------------------------------------------ the bounds
    def elbo(self, x: Tensor) -> LadderELBO:
        """One-sample ELBO with per-layer KL terms: ``[B]`` terms and ``kl_layers`` ``[B, L]``.

        What each column of ``kl_layers`` holds under each inference is listed in
        :class:`LadderELBO`: analytic KLs where they exist, one-sample estimates
        of log q - log p at the drawn samples where they do not.
        """
        layers = self.posterior(x)
        log_px_z = log_bernoulli(x, self._decode_layers(layers))  # [B]
        kl_layers = []
        for i, l in enumerate(layers, start=1):
            if self.config.inference == "ladder" or i == self.layers:
                # $KL_i = KL(q(z_i | \cdot) \| p(z_i | z_{i+1}))$, analytic given the sampled conditioning layer
                kl_layers.append(kl_normal(l.mu, l.log_var, l.mu_p, l.log_var_p))
            else:
                # $\log q(z_i | z_{i-1}) - \log p(z_i | z_{i+1})$ at the samples: $z_{i+1}$ depends on $z_i$
                kl_layers.append(log_normal(l.z, l.mu, l.log_var) - log_normal(l.z, l.mu_p, l.log_var_p))
        kl_layers = torch.stack(kl_layers, dim=-1)  # [B, L]
        kl = kl_layers.sum(-1)  # [B]
        return LadderELBO(log_px_z - kl, log_px_z, kl, kl_layers)

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z) - log q(z | x) for k samples of all L layers, ``[k, B]``.

        log p(x, z) = log p(x | z_1) + sum_i log p(z_i | z_{i+1}) (with ``skip=True``
        log p(x | z_1, ..., z_L)) and log q(z | x) = sum_i log q(z_i | .), the factors
        of the model's inference (q(z_i | z_{i+1}, x) or q(z_i | z_{i-1})). Exact for
        either inference. Runs in the module's current mode, like :meth:`elbo`
        (use ``model.eval()`` for evaluation).
        """
        k = check_count(k, "k")
        layers = self.posterior(x, k)
        log_px_z = log_bernoulli(x, self._decode_layers(layers))  # [k, B]
        # $\log w = \log p(x|z) + \sum_i [\log p(z_i|z_{i+1}) - \log q(z_i|\cdot)]$
        log_pz = sum(log_normal(l.z, l.mu_p, l.log_var_p) for l in layers)  # [k, B]
        log_qz = sum(log_normal(l.z, l.mu, l.log_var) for l in layers)  # [k, B]
        return log_px_z + log_pz - log_qz

    # ---------------------------------------------------- sampling and means
    def _noise_device(self, generator: torch.Generator | None) -> torch.device:
        """The generator's device when one is given, else the parameters' device."""
        return generator.device if generator is not None else self.decoder[-1].weight.device

    @torch.no_grad()
    def generate(self, eps: list[Tensor]) -> Tensor:
        """Decoder means for given standard normal noise, one ``[n, D_i]`` per layer, bottom first.

        ``z_L = eps_L`` and ``z_i = mu_{p,i}(z_{i+1}) + std_{p,i}(z_{i+1}) * eps_i``; returns
        ``sigmoid(logits(z_1))`` (``logits(z_1, ..., z_L)`` with ``skip=True``), ``[n, C, H, W]``.
        """
        if len(eps) != self.layers:
            raise ValueError(f"generate needs one noise tensor per layer ({self.layers}), got {len(eps)}")
        weight = self.decoder[-1].weight
        eps = [e.to(weight.device, weight.dtype) for e in eps]
        zs = [eps[-1]]  # top first
        for i in range(self.layers - 1, 0, -1):
            mu_p, var_p = self.prior(i, zs[0])
            zs.insert(0, reparameterize(mu_p, var_p.log(), eps[i - 1]))
        return torch.sigmoid(self.decode(zs[0], zs[1:]))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means for n draws from the generative model, ``[n, C, H, W]``."""
        n = check_count(n, "n")
        eps = [None] * self.layers
        for i in range(self.layers - 1, -1, -1):  # draw the top layer's noise first
            eps[i] = torch.randn(n, self.config.latent_dims[i], generator=generator, device=self._noise_device(generator))
        return self.generate(eps)

    @torch.no_grad()
    def sample_layers(
        self, n: int, free: int | Iterable[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """n samples that share the noise of every layer except the ``free`` ones.

        The noise eps_i of each layer not in ``free`` is drawn once and shared by
        all n samples; the free layers get fresh noise per sample. Layers are
        numbered 1 (bottom) .. L (top). Two uses:

        * ``free=range(1, l)``: the top layers l..L are fixed and the lower layers vary,
          showing what the lower layers add to one high-level sample;
        * ``free=l``: only layer l's noise varies; the layers below keep their noise
          but follow the new z_l through p(z_i | z_{i+1}).

        Returns:
            ``[n, C, H, W]`` decoder means.
        """
        n = check_count(n, "n")
        free = {free} if hasattr(free, "__index__") else set(free)
        free = {check_count(i, f"each free layer (1..{self.layers}, 1 = bottom)") for i in free}
        if not all(1 <= i <= self.layers for i in free):
            raise ValueError(f"free layers must be integers in 1..{self.layers} (1 = bottom), got {sorted(free)}")
        eps = [None] * self.layers
        device = self._noise_device(generator)
        for i in range(self.layers, 0, -1):
            d = self.config.latent_dims[i - 1]
            if i in free:
                eps[i - 1] = torch.randn(n, d, generator=generator, device=device)
            else:
                eps[i - 1] = torch.randn(1, d, generator=generator, device=device).expand(n, d)
        return self.generate(eps)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means on the mean path (each z_i set to its posterior mean), ``[B, C, H, W]``."""
        return torch.sigmoid(self._decode_layers(self.posterior(x, mean=True)))

    @torch.no_grad()
    def posterior_means(self, x: Tensor, k: int = 10) -> list[Tensor]:
        """Monte Carlo estimates of E_q[z_i | x], one ``[B, D_i]`` per layer, bottom first.

        Ladder inference: E_q[z_i] = E_q[mu_q_i(z_{i+1}, x)], averaged over k samples of
        the layers above (exact at the top layer). Bottom-up inference:
        E_q[z_i] = E_q[mu_q_i(z_{i-1})], averaged over k samples of the layers below
        (exact at the bottom layer). These are the statistics of the active-units
        diagnostic (a unit is active when the variance over x of E_q[z_i] is large).
        """
        return [layer.mu.mean(0) for layer in self.posterior(x, k)]
