"""The Gaussian VAE: a diagonal-Gaussian encoder, a standard normal prior, and a
Bernoulli or Gaussian decoder, with MLP or convolutional networks.

Paper: Mittas, *Variational Autoencoders*, §2.2–§3.3 (Gaussian VAE, calibrated
decoders; corrected as in the errata page of the book (``book/errata.md``)); Kingma & Welling (2013);
Rybkin et al. (2020) for the shared-sigma Gaussian decoder. Taught in the book
chapters "Gaussian VAE", "beta-VAE" and "sigma-VAE".

Every vaetut model exposes the same four methods, so the training loop and the
bounds in :mod:`vaetut.bounds` work for all of them:

* ``elbo(x)`` -> :class:`~vaetut.distributions.ELBO` of ``[B]`` terms;
* ``log_weights(x, k)`` -> ``[k, B]``: log p(x, z) - log q(z|x) for k samples of q;
* ``sample(n)`` -> ``[n, C, H, W]`` decoder means for z from the prior;
* ``reconstruct(x)`` -> ``[B, C, H, W]`` decoder means at z = E_q[z].

Imports torch and :mod:`vaetut.distributions` only. To use it outside vaetut, copy
this file and ``distributions.py`` into one folder; then, from that folder::

    import torch
    from vae import VAE

    model = VAE(latent_dim=2)                      # 784-400-2 MLP, Bernoulli decoder
    x = torch.rand(8, 1, 28, 28)                   # pixels in [0, 1]
    print(model.elbo(x).elbo.shape)                # torch.Size([8])
    print(model.log_weights(x, k=5).shape)         # torch.Size([5, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

try:  # inside the vaetut package
    from .distributions import (
        ELBO,
        check_batch,
        check_count,
        kl_normal,
        log_bernoulli,
        log_gaussian,
        log_normal,
        log_standard_normal,
        reparameterize,
    )
except ImportError:  # copied into a folder beside distributions.py (see the module docstring)
    from distributions import (  # type: ignore[no-redef]
        ELBO,
        check_batch,
        check_count,
        kl_normal,
        log_bernoulli,
        log_gaussian,
        log_normal,
        log_standard_normal,
        reparameterize,
    )

__all__ = ["VAEConfig", "VAE", "mlp", "ConvEncoder", "ConvDecoder", "softclip"]

LIKELIHOODS = ("bernoulli", "gaussian")
SIGMAS = ("learned", "optimal")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
SIGMA_STAR_MOMENTUM = 0.01  # weight of each training batch in the running sigma*^2 of sigma="optimal"


@dataclass(frozen=True)
class VAEConfig:
    """Shape of a VAE. The defaults are the 784-400-20 MLP of Kingma & Welling.

    Attributes:
        image_shape: ``(C, H, W)`` of one input image.
        latent_dim: size of z.
        arch: ``"mlp"`` or ``"conv"``.
        hidden: MLP hidden widths, encoder order (the decoder mirrors them);
            ``()`` makes encoder and decoder linear (the paper's "linear VAE").
        activation: ``"relu"`` or ``"tanh"`` (Burda et al.'s networks), after
            every hidden layer of the MLP or convolutional networks.
        channels: conv widths, one stride-2 4x4 convolution each; H and W must be
            divisible by ``2 ** len(channels)``.
        likelihood: ``"bernoulli"`` (binary or grey-level pixels in [0, 1]) or
            ``"gaussian"``.
        sigma: Gaussian decoder scale: a positive number (fixed), ``"learned"``
            (one shared trainable log sigma) or ``"optimal"`` (the batch's
            maximum-likelihood sigma* in training, Rybkin et al. 2020; frozen in
            evaluation, see :meth:`VAE.decoder_log_sigma`). Only for
            ``likelihood="gaussian"``.
        min_log_sigma: floor of a learned or optimal log sigma (default -6, as
            Rybkin et al.: sigma >= 0.0025, about the quantisation noise of 8-bit
            pixels). A learned log sigma is soft-clipped (:func:`softclip`, so its
            gradient never vanishes); the analytic log sigma* carries no gradient,
            so it is floored exactly and stays the minimiser above the floor.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 20
    arch: str = "mlp"
    hidden: tuple[int, ...] = (400,)
    channels: tuple[int, ...] = (32, 64)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    sigma: float | str = 1.0
    min_log_sigma: float = -6.0

    def __post_init__(self) -> None:
        # counts may come as NumPy integers: store them as Python ints
        object.__setattr__(self, "latent_dim", check_count(self.latent_dim, "latent_dim"))
        if not isinstance(self.image_shape, (tuple, list)) or len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", tuple(check_count(s, "each image_shape size") for s in self.image_shape))
        if self.arch not in ("mlp", "conv"):
            raise ValueError(f"arch must be 'mlp' or 'conv', got {self.arch!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        object.__setattr__(self, "hidden", tuple(check_count(h, "each hidden width") for h in self.hidden))
        object.__setattr__(self, "channels", tuple(check_count(c, "each conv width") for c in self.channels))
        if self.arch == "conv":
            if not self.channels:
                raise ValueError("arch='conv' needs at least one conv width in channels, e.g. channels=(32, 64)")
            f = 2 ** len(self.channels)
            if self.image_shape[1] % f or self.image_shape[2] % f:
                raise ValueError(
                    f"conv arch with {len(self.channels)} stride-2 layers needs H and W divisible by {f}, "
                    f"got image_shape={self.image_shape}"
                )
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if isinstance(self.sigma, str):
            if self.sigma not in SIGMAS:
                raise ValueError(f"sigma must be a positive number or one of {SIGMAS}, got {self.sigma!r}")
        elif isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (
            0 < self.sigma < math.inf
        ):
            raise ValueError(
                f"sigma must be a positive finite number, 'learned' or 'optimal', got {self.sigma!r}"
            )
        if self.likelihood == "bernoulli" and self.sigma != 1.0:
            raise ValueError(
                f"sigma={self.sigma!r} only applies to a Gaussian decoder; a Bernoulli decoder has no "
                "scale. Pass likelihood='gaussian' to use it, or drop sigma."
            )
        if isinstance(self.min_log_sigma, bool) or not isinstance(self.min_log_sigma, (int, float)) or not (
            math.isfinite(self.min_log_sigma)
        ):
            raise ValueError(
                f"min_log_sigma must be a finite number (the log of the smallest sigma), got {self.min_log_sigma!r}"
            )


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, an activation after all but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions, each followed by ``activation``: ``[B, C, H, W]`` -> features ``[B, F]``."""

    def __init__(
        self, image_shape: tuple[int, int, int], channels: tuple[int, ...], activation: type[nn.Module] = nn.ReLU
    ):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), activation()]
            c, h, w = out, h // 2, w // 2
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = c * h * w

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # [B, F]


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: ``[N, D]`` -> ``[N, C, H, W]`` (no output activation)."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        channels: tuple[int, ...],
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        c, h, w = image_shape
        f = 2 ** len(channels)
        widths = list(channels[::-1]) + [c]  # e.g. [64, 32, 1]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, widths[0] * (h // f) * (w // f)),
            activation(),
            nn.Unflatten(1, (widths[0], h // f, w // f)),  # [N, C_top, H/f, W/f]
        ]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(widths) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def softclip(t: Tensor, min_value: float) -> Tensor:
    """Smooth lower bound on ``t`` (any shape; same shape out), as in Rybkin et al. (2020).

    ``min_value + softplus(t - min_value)``: finite (``min_value``) for ``t = -inf``,
    with a gradient that never vanishes, and always a little above ``t``: by
    ``log(1 + exp(min_value - t))``, which is 0.02 at ``t - min_value = 4``.
    """
    # $\mathrm{softclip}(t) = m + \log(1 + e^{t - m})$
    return min_value + nn.functional.softplus(t - min_value)


class VAE(nn.Module):
    """A VAE with q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I) and a Bernoulli or
    Gaussian p(x|z).

    Example::

        model = VAE(latent_dim=2)            # 784-400-2 MLP, Bernoulli decoder
        terms = model.elbo(x)                # x: [B, 1, 28, 28] in [0, 1]
        loss = -terms.elbo.mean()
    """

    def __init__(self, config: VAEConfig | None = None, **overrides):
        super().__init__()
        self.config = cfg = replace(config or VAEConfig(), **overrides)
        c, h, w = cfg.image_shape
        act = ACTIVATIONS[cfg.activation]
        if cfg.arch == "mlp":
            d = c * h * w
            self.encoder = nn.Sequential(nn.Flatten(), mlp([d, *cfg.hidden], act), *([act()] if cfg.hidden else []))
            features = cfg.hidden[-1] if cfg.hidden else d
            self.decoder = nn.Sequential(
                mlp([cfg.latent_dim, *cfg.hidden[::-1], d], act), nn.Unflatten(1, cfg.image_shape)
            )
        else:
            conv = ConvEncoder(cfg.image_shape, cfg.channels, act)
            self.encoder, features = conv, conv.out_features
            self.decoder = ConvDecoder(cfg.latent_dim, cfg.image_shape, cfg.channels, act)
        self.feature_dim = features
        self.to_mu = nn.Linear(features, cfg.latent_dim)
        self.to_log_var = nn.Linear(features, cfg.latent_dim)
        if cfg.likelihood == "gaussian" and cfg.sigma == "learned":
            self.log_sigma = nn.Parameter(torch.zeros(()))
        if cfg.likelihood == "gaussian" and cfg.sigma == "optimal":
            # sigma*^2 for evaluation: a running average over training batches, or set by calibrate()
            self.register_buffer("sigma_star_sq", torch.ones(()))

    # ----------------------------------------------------------------- networks
    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with a hint when x is not a ``[B, C, H, W]`` batch this model takes."""
        check_batch(
            x, self.config.image_shape, dtype=self.to_mu.weight.dtype, unit_interval=self.config.likelihood == "bernoulli"
        )

    def features(self, x: Tensor) -> Tensor:
        """The encoder's deterministic features h(x), ``[B, F]``."""
        self.check_input(x)
        return self.encoder(x)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) parameters: ``mu, log_var``, each ``[B, D]``."""
        h = self.features(x)
        return self.to_mu(h), self.to_log_var(h)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output (Bernoulli logits or Gaussian means), ``[..., D]`` -> ``[..., C, H, W]``."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, z.shape[-1]))  # [N, C, H, W]
        return out.reshape(*lead, *self.config.image_shape)

    def mean(self, out: Tensor) -> Tensor:
        """E[x | z] from a decoder output: sigmoid of the logits, or the Gaussian mean."""
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out

    # -------------------------------------------------------------- likelihood
    def decoder_log_sigma(self, x: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """log sigma of the Gaussian decoder, one scalar tensor shared by every pixel.

        Args:
            x: data ``[B, C, H, W]`` (needed for ``sigma="optimal"``).
            out: decoder means ``[..., B, C, H, W]`` (e.g. ``[k, B, C, H, W]``).

        Returns:
            ``[]``: for a fixed sigma its log; for ``"learned"`` the soft-clipped
            parameter; for ``"optimal"`` log sigma*, floored at ``min_log_sigma``
            (Rybkin et al. 2020; the paper's §3.3 prints this log sigma* as "sigma*",
            see book/errata.md):

            * in training mode, sigma*^2 is the mean squared error of ``out`` against
              ``x`` over every pixel of every example (and sample): the
              maximum-likelihood value for this batch, computed without gradient. A
              running average of it is kept in the buffer ``sigma_star_sq``;
            * in evaluation mode (``model.eval()``) sigma* is that buffer, frozen: a
              likelihood never refits sigma to the data it scores, so a test
              log-likelihood does not use the test images twice and does not change
              with the batch or chunk sizes it is computed in. :meth:`calibrate` sets
              the buffer to the sigma* of the training set exactly.
        """
        cfg = self.config
        if cfg.sigma == "learned":
            return softclip(self.log_sigma, cfg.min_log_sigma)
        ref = out if out is not None else x
        if cfg.sigma == "optimal":
            if not self.training:
                # evaluation: the sigma* frozen from training data, the same for every example
                return self.sigma_star_sq.log().mul(0.5).clamp(min=cfg.min_log_sigma)
            if x is None or out is None:
                raise ValueError(
                    "sigma='optimal' is fitted to a batch: call decoder_log_sigma(x, out) with the data "
                    "x [B, C, H, W] and the decoder output out [..., B, C, H, W]"
                )
            with torch.no_grad():
                # $\sigma^{*2} = \frac{1}{B d}\sum_{b,i} (x_{b,i} - \hat x_{b,i})^2$, $\log\sigma^* = \frac12\log\sigma^{*2}$
                mse = (x - out).pow(2).mean()
                self.sigma_star_sq.lerp_(mse.to(self.sigma_star_sq), SIGMA_STAR_MOMENTUM)
                # exact floor (no gradient flows, so no need for a smooth clip; a soft clip would
                # shift sigma* up by log(1 + exp(min - log sigma*)) and it would no longer be the minimiser)
                return (0.5 * torch.log(mse)).clamp(min=cfg.min_log_sigma)
        if ref is None:
            return torch.tensor(math.log(cfg.sigma))
        return torch.tensor(math.log(cfg.sigma), dtype=ref.dtype, device=ref.device)

    @torch.no_grad()
    def calibrate(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Freeze the optimal sigma at the sigma* of this model's reconstructions of ``x``.

        sigma*^2 = the mean squared error of ``decode(z)`` against ``x`` with one
        ``z ~ q(z|x)`` per image, over every pixel of ``x`` (the training data): the
        sigma that maximises the model's ELBO on ``x``. Only for ``sigma="optimal"``.

        Returns:
            The new ``sigma_star_sq``, ``[]``.
        """
        if self.config.sigma != "optimal":
            raise ValueError(f"calibrate() sets the optimal sigma; this model has sigma={self.config.sigma!r}")
        batch_size = check_count(batch_size, "batch_size")
        sq, n = torch.zeros((), dtype=torch.float64), 0
        for xb in x.split(batch_size):
            xb = xb.to(self.to_mu.weight.device)
            out = self.decode(reparameterize(*self.encode(xb)))
            sq += (xb - out).double().pow(2).sum().cpu()
            n += xb.numel()
        self.sigma_star_sq.fill_((sq / n).item())
        return self.sigma_star_sq

    def log_px_z(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | z) for decoder outputs ``out`` ``[..., B, C, H, W]`` and data ``x``
        ``[B, C, H, W]`` -> ``[..., B]``.

        Bernoulli: ``out`` are logits. Gaussian: the full density N(x; out, sigma^2 I)
        summed over the d pixels, with the ``d log sigma`` and ``(d/2) log 2 pi`` terms
        (book/errata.md §3.1 and §3.3), so ELBOs of different sigma are comparable in nats.
        """
        if self.config.likelihood == "bernoulli":
            return log_bernoulli(x, out)
        # $\log p(x|z) = -\frac{\lVert x - \hat x\rVert^2}{2\sigma^2} - d\log\sigma - \frac d2 \log 2\pi$
        return log_gaussian(x, out, self.decoder_log_sigma(x, out))

    # ------------------------------------------------------------ the bounds
    def elbo(self, x: Tensor) -> ELBO:
        """One-sample ELBO with the analytic KL: ``[B]`` terms."""
        mu, log_var = self.encode(x)  # [B, D] each
        z = reparameterize(mu, log_var)  # [B, D]
        log_px_z = self.log_px_z(x, self.decode(z))  # [B]
        kl_units = kl_normal(mu, log_var, per_unit=True)  # [B, D]
        kl = kl_units.sum(-1)  # [B]
        return ELBO(log_px_z - kl, log_px_z, kl, kl_units)

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k samples z_i ~ q(z|x): ``[k, B]``.

        Two routes to the same numbers (equal up to float32 rounding, see
        ``tests/test_bounds.py``). With gradients on (training), a conv decoder, a
        Gaussian likelihood, or a subclass with its own ``decode`` or ``log_px_z``:
        ``log_px_z(x, decode(z))``, the formulas of the chapters. With gradients off
        and an MLP with a Bernoulli decoder, the route :func:`vaetut.bounds.log_likelihood`
        takes for its millions of samples, which makes the decoder's elementwise work
        small next to its matrix products (``benchmarks/eval_ll.py``):

        * ``tanh(a) = 2 sigmoid(2a) - 1``: torch.tanh costs about six sigmoids on a CPU;
        * ``sum_i x_i l_i = (W^T x) . h + b . x`` for the logits ``l = W h + b`` of the
          last layer: one ``[B, H]`` product instead of a pass over ``[k, B, d]``;
        * ``sum_i softplus(l_i) = sum_i max(l_i, 0) - log prod_i sigmoid(|l_i|)``, with
          ``max(l, 0) = (l + |l|) / 2`` and the product over groups of 16 pixels. Each
          factor lies in [1/2, 1], so a group's product cannot underflow (it is at least
          2**-16); one sigmoid per pixel and one log per group replace the exp and
          log1p per pixel of softplus (torch's log1p is several times slower than
          its log on a CPU);
        * all of it in place, on the one ``[k, B, d]`` tensor it allocates, the logits:
          fresh tensors of that size can cost page faults on every call.
        """
        k = check_count(k, "k")
        mu, log_var = self.encode(x)  # [B, D]
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = reparameterize(mu, log_var, eps)  # [k, B, D]
        log_pz_qz = log_standard_normal(z) - log_normal(z, mu, log_var)  # [k, B]
        cfg = self.config
        if (
            torch.is_grad_enabled()
            or cfg.arch != "mlp"
            or cfg.likelihood != "bernoulli"
            or type(self).decode is not VAE.decode
            or type(self).log_px_z is not VAE.log_px_z
        ):
            return self.log_px_z(x, self.decode(z)) + log_pz_qz  # [k, B]
        *hidden, last = self.decoder[0]  # the MLP: Linear, activation, ..., Linear
        h = z
        for layer in hidden:
            # $\tanh a = 2\sigma(2a) - 1$, in place on the layer's fresh output
            h = h.mul_(2).sigmoid_().mul_(2).sub_(1) if isinstance(layer, nn.Tanh) else layer(h)  # [k, B, H]
        x_flat = x.flatten(1)  # [B, d]
        # $\sum_i x_i l_i = (W^\top x) \cdot h + b \cdot x$
        x_dot_logits = (h * (x_flat @ last.weight)).sum(-1) + x_flat @ last.bias  # [k, B]
        logits = last(h)  # [k, B, d]
        sum_logits = logits.sum(-1)  # [k, B]
        sum_abs = logits.abs_().sum(-1)  # [k, B]; logits now holds |l|
        # $\log\prod_{i \in g}\sigma(|l_i|)$ for groups g of up to 16 pixels
        group = math.gcd(logits.shape[-1], 16)
        log_prods = logits.sigmoid_().unflatten(-1, (-1, group)).prod(-1).log_()  # [k, B, d / group]
        # $\sum_i \mathrm{softplus}(l_i) = \sum_i \frac{l_i + |l_i|}{2} - \sum_g \log\prod_{i \in g}\sigma(|l_i|)$
        sum_softplus = (sum_logits + sum_abs) / 2 - log_prods.sum(-1)  # [k, B]
        # $\log p(x|z) = \sum_i x_i l_i - \mathrm{softplus}(l_i)$
        return x_dot_logits - sum_softplus + log_pz_qz

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means for n draws from the prior, ``[n, C, H, W]``."""
        n = check_count(n, "n")
        weight = self.to_mu.weight  # the noise takes the parameters' dtype and device
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device=_noise_device(generator, weight))
        return self.mean(self.decode(z.to(weight.device)))

    @torch.no_grad()
    def posterior_means(self, x: Tensor, k: int = 1) -> list[Tensor]:
        """E_q[z | x] as a one-layer list ``[mu]``, ``[B, D]`` (exact; ``k`` is unused).

        Every vaetut model has this method, so the active-units diagnostic treats
        one-layer and hierarchical models alike."""
        return [self.encode(x)[0]]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at z = mu(x), ``[B, C, H, W]``."""
        mu, _ = self.encode(x)
        return self.mean(self.decode(mu))


def _noise_device(generator: torch.Generator | None, weight: Tensor) -> torch.device:
    """Where to draw noise: on the generator's device when one is given (a CPU generator
    makes samples reproducible across devices), else beside the parameters."""
    return generator.device if generator is not None else weight.device
