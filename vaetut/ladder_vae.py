"""The Ladder VAE: L stochastic layers, a top-down posterior that shares the prior.

Paper: Mittas, *Variational Autoencoders*, §4 (with the slip in the posterior
variance corrected, see ``reference/ERRATA.md`` §4); Sønderby et al. (2016),
"Ladder Variational Autoencoders", eq. (1)–(3) for the generative model and
eq. (16)–(19) for the inference model. Taught in the book chapter "Ladder VAE".

The generative model is a chain of Gaussians from a standard normal top layer
down to the pixels (layers are numbered 1 = bottom, next to x, ... L = top)::

    p(z_L) = N(0, I)
    p(z_i | z_{i+1}) = N(mu_{p,i}(z_{i+1}), diag var_{p,i}(z_{i+1}))     i = L-1 .. 1
    p(x | z_1) = Bernoulli(sigmoid(logits(z_1)))

Inference runs in two passes. The *bottom-up* pass is deterministic:
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

from collections.abc import Iterable
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


@dataclass(frozen=True)
class LadderVAEConfig:
    """Shape of a Ladder VAE; entry i of each tuple belongs to stochastic layer i+1.

    Attributes:
        image_shape: ``(C, H, W)`` of one input image (pixels in [0, 1]).
        latent_dims: sizes of z_1 (bottom) ... z_L (top); L = ``len(latent_dims)``.
        hidden: width of the deterministic layer d_i below each z_i, bottom first.
            The bottom-up pass is ``x -> hidden[0] -> ... -> hidden[L-1]``; the
            top-down network from z_{i+1} to z_i has width ``hidden[i]``
            (0-based), and the decoder from z_1 to x has width ``hidden[0]``,
            mirroring the bottom-up pass.
        batch_norm: batch normalisation after every hidden linear layer.
        min_var: added to every softplus variance, so log-variances stay finite.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dims: tuple[int, ...] = (64, 32)
    hidden: tuple[int, ...] = (512, 256)
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
                f"hidden must give one deterministic width per stochastic layer: latent_dims={self.latent_dims!r} "
                f"has {len(self.latent_dims)} layers but hidden={self.hidden!r}"
            )
        for name in ("latent_dims", "hidden"):
            sizes = tuple(check_count(s, f"each entry of {name}") for s in getattr(self, name))
            object.__setattr__(self, name, sizes)  # NumPy integers become Python ints
        if not self.min_var >= 0:
            raise ValueError(f"min_var must be >= 0, got {self.min_var!r}")

    @property
    def layers(self) -> int:
        """The number of stochastic layers L."""
        return len(self.latent_dims)


class LadderELBO(NamedTuple):
    """The ELBO of a Ladder VAE per example, with each layer's share of the KL.

    ``elbo = log_px_z - kl`` and ``kl = kl_layers.sum(-1)``. Column i of
    ``kl_layers`` is layer i+1 (bottom first): for the top layer the analytic
    KL(q(z_L|x) || N(0, I)); for i < L the analytic
    KL(q(z_i | z_{i+1}, x) || p(z_i | z_{i+1})) at the *sampled* z_{i+1}, a one-sample
    estimate of that layer's expected KL.
    """

    elbo: Tensor  # [B]
    log_px_z: Tensor  # [B]
    kl: Tensor  # [B]
    kl_layers: Tensor  # [B, L]


class Layer(NamedTuple):
    """One stochastic layer of a top-down pass, each field ``[..., B, D_i]``.

    ``z`` is the sample (or the mean, on a mean pass), ``mu, log_var`` the posterior
    q(z_i | z_{i+1}, x) and ``mu_p, log_var_p`` the prior p(z_i | z_{i+1})
    (zeros at the top layer, where p(z_L) = N(0, I)).
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
    ERRATA.md §4). Elementwise; arguments broadcast.

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


def _block(n_in: int, n_out: int, batch_norm: bool) -> nn.Sequential:
    """One deterministic layer: Linear, optional BatchNorm, ReLU."""
    layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(n_out))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Two linear maps from features to a diagonal Gaussian: ``mu`` and
    ``var = softplus(.) + min_var``. ``[N, F]`` -> ``([N, D], [N, D])``."""

    def __init__(self, n_in: int, n_out: int, min_var: float):
        super().__init__()
        self.to_mu = nn.Linear(n_in, n_out)
        self.to_var = nn.Linear(n_in, n_out)
        self.min_var = min_var

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        # $\sigma^2 = \mathrm{softplus}(W h + b)$
        return self.to_mu(h), nn.functional.softplus(self.to_var(h)) + self.min_var


class LadderVAE(nn.Module):
    """A Ladder VAE with L stochastic layers, MLP networks and a Bernoulli decoder.

    Example::

        model = LadderVAE(latent_dims=(64, 32), hidden=(512, 256))
        terms = model.elbo(x)                 # x: [B, 1, 28, 28] in [0, 1]
        loss = -terms.elbo.mean()             # terms.kl_layers: [B, 2]

    Attributes:
        up: the bottom-up blocks, ``up[i]: d_i -> d_{i+1}`` (0-based, d_0 = x).
        up_heads: ``up_heads[i]: d_{i+1} -> (mu_hat, var_hat)`` of layer i+1.
        down: ``down[i]: z_{i+2} -> hidden[i+1]`` features, for i < L - 1.
        down_heads: ``down_heads[i]: features -> (mu_p, var_p)`` of layer i+1.
        decoder: ``z_1 -> hidden[0] -> logits`` of p(x | z_1).
    """

    def __init__(self, config: LadderVAEConfig | None = None, **overrides):
        super().__init__()
        self.config = cfg = replace(config or LadderVAEConfig(), **overrides)
        c, h, w = cfg.image_shape
        widths = [c * h * w, *cfg.hidden]
        self.up = nn.ModuleList(_block(a, b, cfg.batch_norm) for a, b in zip(widths[:-1], widths[1:]))
        self.up_heads = nn.ModuleList(GaussianHead(n, d, cfg.min_var) for n, d in zip(cfg.hidden, cfg.latent_dims))
        L = cfg.layers
        self.down = nn.ModuleList(
            _block(cfg.latent_dims[i + 1], cfg.hidden[i + 1], cfg.batch_norm) for i in range(L - 1)
        )
        self.down_heads = nn.ModuleList(
            GaussianHead(cfg.hidden[i + 1], cfg.latent_dims[i], cfg.min_var) for i in range(L - 1)
        )
        self.decoder = nn.Sequential(
            _block(cfg.latent_dims[0], cfg.hidden[0], cfg.batch_norm), nn.Linear(cfg.hidden[0], c * h * w)
        )

    # ----------------------------------------------------------------- networks
    @property
    def layers(self) -> int:
        """The number of stochastic layers L."""
        return self.config.layers

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with a hint unless x is a ``[B, C, H, W]`` batch of pixels in [0, 1]."""
        check_batch(x, self.config.image_shape, dtype=self.decoder[-1].weight.dtype, unit_interval=True)

    def bottom_up(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The deterministic pass: ``(mu_hat_i, var_hat_i)`` for i = 1..L, each ``[B, D_i]``."""
        self.check_input(x)
        d = x.flatten(1)  # [B, C*H*W]
        estimates = []
        for block, head in zip(self.up, self.up_heads):
            # $d_i = \mathrm{MLP}(d_{i-1})$, $\hat\mu_i = \mathrm{Linear}(d_i)$, $\hat\sigma^2_i = \mathrm{softplus}(\mathrm{Linear}(d_i))$
            d = block(d)  # [B, hidden[i]]
            estimates.append(head(d))
        return estimates

    def prior(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """p(z_i | z_{i+1}) for layer ``i`` in 1..L-1: ``(mu_p, var_p)``, ``[..., D_{i+1}]`` -> ``[..., D_i]``."""
        lead = z_above.shape[:-1]
        h = self.down[i - 1](z_above.reshape(-1, z_above.shape[-1]))  # [N, hidden[i]]
        mu_p, var_p = self.down_heads[i - 1](h)  # [N, D_i] each
        return mu_p.reshape(*lead, -1), var_p.reshape(*lead, -1)

    def decode(self, z1: Tensor) -> Tensor:
        """Bernoulli logits of p(x | z_1): ``[..., D_1]`` -> ``[..., C, H, W]``."""
        lead = z1.shape[:-1]
        logits = self.decoder(z1.reshape(-1, z1.shape[-1]))  # [N, C*H*W]
        return logits.reshape(*lead, *self.config.image_shape)

    # ------------------------------------------------------------ the posterior
    def posterior(self, x: Tensor, k: int | None = None, *, mean: bool = False) -> list[Layer]:
        """The two inference passes: one :class:`Layer` per stochastic layer, bottom first.

        Args:
            x: ``[B, C, H, W]`` in [0, 1].
            k: ``None`` for one sample per example (fields ``[B, D_i]``), or a number of
                samples (fields ``[k, B, D_i]``). The bottom-up pass runs once either way.
            mean: pass each layer's posterior mean down instead of a sample (so
                ``z = mu``); used by :meth:`reconstruct`.

        Returns:
            ``[layer_1, ..., layer_L]``.
        """
        if k is not None:
            k = check_count(k, "k")
        estimates = self.bottom_up(x)
        lead = () if k is None else (k,)
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

    # ------------------------------------------------------------ the bounds
    def elbo(self, x: Tensor) -> LadderELBO:
        """One-sample ELBO with analytic per-layer KL terms: ``[B]`` terms and ``kl_layers`` ``[B, L]``."""
        layers = self.posterior(x)
        log_px_z = log_bernoulli(x, self.decode(layers[0].z))  # [B]
        # $KL_i = KL(q(z_i | z_{i+1}, x) \| p(z_i | z_{i+1}))$ at the sampled $z_{i+1}$
        kl_layers = torch.stack([kl_normal(l.mu, l.log_var, l.mu_p, l.log_var_p) for l in layers], dim=-1)  # [B, L]
        kl = kl_layers.sum(-1)  # [B]
        return LadderELBO(log_px_z - kl, log_px_z, kl, kl_layers)

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z) - log q(z | x) for k samples of all L layers, ``[k, B]``.

        log p(x, z) = log p(x | z_1) + sum_i log p(z_i | z_{i+1}) and
        log q(z | x) = sum_i log q(z_i | z_{i+1}, x). Runs in the module's current
        mode, like :meth:`elbo` (use ``model.eval()`` for evaluation).
        """
        k = check_count(k, "k")
        layers = self.posterior(x, k)
        log_px_z = log_bernoulli(x, self.decode(layers[0].z))  # [k, B]
        # $\log w = \log p(x|z_1) + \sum_i [\log p(z_i|z_{i+1}) - \log q(z_i|z_{i+1},x)]$
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
        ``sigmoid(logits(z_1))``, ``[n, C, H, W]``.
        """
        if len(eps) != self.layers:
            raise ValueError(f"generate needs one noise tensor per layer ({self.layers}), got {len(eps)}")
        weight = self.decoder[-1].weight
        eps = [e.to(weight.device, weight.dtype) for e in eps]
        z = eps[-1]
        for i in range(self.layers - 1, 0, -1):
            mu_p, var_p = self.prior(i, z)
            z = reparameterize(mu_p, var_p.log(), eps[i - 1])
        return torch.sigmoid(self.decode(z))

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
        return torch.sigmoid(self.decode(self.posterior(x, mean=True)[0].z))

    @torch.no_grad()
    def posterior_means(self, x: Tensor, k: int = 10) -> list[Tensor]:
        """Monte Carlo estimates of E_q[z_i | x], one ``[B, D_i]`` per layer, bottom first.

        E_q[z_i] = E_q[mu_q_i(z_{i+1})], averaged over k samples of the layers above
        (exact at the top layer). These are the statistics of the active-units
        diagnostic (a unit is active when the variance over x of E_q[z_i] is large).
        """
        return [layer.mu.mean(0) for layer in self.posterior(x, k)]
