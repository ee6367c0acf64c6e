"""A VAE whose approximate posterior is a diagonal Gaussian pushed through a flow.

Papers: Rezende & Mohamed (2015) (planar flows whose parameters the inference
network produces per example); Kingma et al. (2016) (IAF steps conditioned on an
extra encoder output h). Mittas, *Variational Autoencoders*, §5.1–§5.3 and
eq. (11), corrected as in the errata page of the book (``book/errata.md``) §5. Taught in the chapters
"Normalizing flows" and "Inverse autoregressive flow".

The posterior is sampled and scored in one pass::

    h = features(x),  (mu, log_var) = heads(h)
    z_0 = mu + sigma * eps,               log q(z_0|x) = log N(z_0; mu, sigma^2)
    z_T, log_det = flow(z_0, context=h),  log q(z_T|x) = log q(z_0|x) - log_det

so the KL term has no closed form and is estimated with the same sample:
``kl = log q(z_T|x) - log p(z_T)``. Here the context h is the encoder's last
hidden layer itself (Kingma et al. make h a separate encoder output; a linear map
of the same features, which the first layer of every MADE or planar head applies
anyway).

Imports torch, :mod:`vaetut.vae` (encoder, decoder, likelihoods), :mod:`vaetut.flows`
and :mod:`vaetut.distributions` (which :mod:`vaetut.vae` needs too). To use it outside
vaetut, copy this file, ``vae.py``, ``flows.py`` and ``distributions.py`` into one
folder; then, from that folder::

    import torch
    from flow_vae import FlowVAE

    model = FlowVAE(flow="iaf", steps=2, latent_dim=4, hidden=(64,))
    x = torch.rand(8, 1, 28, 28)                   # pixels in [0, 1]
    print(model.elbo(x).elbo.shape)                # torch.Size([8])
    print(model.log_weights(x, k=5).shape)         # torch.Size([5, 8])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

try:  # inside the vaetut package
    from .distributions import ELBO, check_count, log_normal, log_standard_normal, reparameterize
    from .flows import FlowStack, PlanarFlow, iaf
    from .vae import VAE, VAEConfig
except ImportError:  # copied into a folder with the three files it names (see the module docstring)
    from distributions import ELBO, check_count, log_normal, log_standard_normal, reparameterize  # type: ignore[no-redef]
    from flows import FlowStack, PlanarFlow, iaf  # type: ignore[no-redef]
    from vae import VAE, VAEConfig  # type: ignore[no-redef]

__all__ = ["FlowVAE", "FLOWS"]

FLOWS = ("planar", "iaf")


class FlowVAE(VAE):
    """:class:`~vaetut.vae.VAE` with q(z|x) = flow(N(mu(x), diag sigma^2(x)); h(x)).

    Args:
        config: a :class:`~vaetut.vae.VAEConfig` (encoder, decoder, likelihood).
        flow: ``"planar"`` (K steps, u, w, b from a linear head on h per step) or
            ``"iaf"`` (T IAF steps, each a MADE with h as unmasked context, orders
            reversed between steps).
        steps: K or T, at least 1.
        iaf_hidden: hidden widths of each IAF step's MADE.
        **overrides: fields of ``config`` to replace (e.g. ``latent_dim=2``).

    Example::

        model = FlowVAE(flow="iaf", steps=2, latent_dim=20)
        loss = -model.elbo(x).elbo.mean()       # x: [B, 1, 28, 28] in [0, 1]
    """

    def __init__(
        self,
        config: VAEConfig | None = None,
        *,
        flow: str = "planar",
        steps: int = 4,
        iaf_hidden: Sequence[int] = (128, 128),
        **overrides,
    ):
        super().__init__(config, **overrides)
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
        steps = check_count(steps, "steps", hint="the number of flow steps; for a plain diagonal posterior use VAE")
        d, f = self.latent_dim, self.feature_dim
        self.flow_kind = flow
        if flow == "planar":
            self.flow = FlowStack([PlanarFlow(d, context_dim=f) for _ in range(steps)])
        else:
            self.flow = iaf(d, steps, iaf_hidden, context_dim=f)

    def posterior(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterized draws z_T ~ q(z|x) and their log-density.

        Args:
            x: ``[B, C, H, W]``.
            k: number of samples per example; ``None`` for one sample without a
                sample dimension.

        Returns:
            ``(z_T, log_q)``: ``[B, D]`` and ``[B]``, or ``[k, B, D]`` and ``[k, B]``.
        """
        h = self.features(x)  # [B, F]
        mu, log_var = self.to_mu(h), self.to_log_var(h)  # [B, D] each
        shape = mu.shape if k is None else (k, *mu.shape)
        eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
        z0 = reparameterize(mu, log_var, eps)  # [(k,) B, D]
        log_q0 = log_normal(z0, mu, log_var)  # [(k,) B]
        z, log_det = self.flow(z0, h)  # h [B, F] broadcasts over the sample dimension
        # $\log q(z_T|x) = \log q(z_0|x) - \sum_t \log|\det \partial z_t/\partial z_{t-1}|$
        return z, log_q0 - log_det

    def elbo(self, x: Tensor) -> ELBO:
        """One-sample ELBO; ``kl`` is the one-sample estimate log q(z_T|x) - log p(z_T), ``[B]``."""
        z, log_q = self.posterior(x)  # [B, D], [B]
        log_px_z = self.log_px_z(x, self.decode(z))  # [B]
        kl = log_q - log_standard_normal(z)  # [B]
        return ELBO(log_px_z - kl, log_px_z, kl)

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z_i) - log q(z_i|x) for k samples z_i ~ q(z|x): ``[k, B]``."""
        k = check_count(k, "k")
        z, log_q = self.posterior(x, k)  # [k, B, D], [k, B]
        return self.log_px_z(x, self.decode(z)) + log_standard_normal(z) - log_q

    @torch.no_grad()
    def posterior_means(self, x: Tensor, k: int = 10) -> list[Tensor]:
        """Monte Carlo E_q[z_T | x] from k posterior samples, as a one-layer list ``[[B, D]]``
        (the flow moves the mean away from the base Gaussian's mu)."""
        z, _ = self.posterior(x, check_count(k, "k"))  # [k, B, D]
        return [z.mean(0)]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at z_T = flow(mu(x)), the image of the base mean, ``[B, C, H, W]``."""
        h = self.features(x)
        z, _ = self.flow(self.to_mu(h), h)
        return self.mean(self.decode(z))
