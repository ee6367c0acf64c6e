"""A deterministic autoencoder: an encoder f: R^d -> R^n and a decoder g: R^n -> R^d
trained to make g(f(x)) close to x.

Paper: Mittas, *Variational Autoencoders*, §1; Hinton & Salakhutdinov (2006).
Taught in the chapter "Autoencoders", which shows why decoding codes that the
encoder never produced gives no digits: nothing in the objective says where in
R^n the codes should lie.

The reconstruction term is the Bernoulli log-likelihood of the input under the
decoder's pixel probabilities (binary cross-entropy, summed over pixels), the
same term a VAE uses, so the two can be compared. Imports torch and
:mod:`vaetut.distributions` only. To use it outside vaetut, copy this file and
``distributions.py`` into one folder; then, from that folder::

    import torch
    from autoencoder import Autoencoder

    model = Autoencoder(latent_dim=2)
    x = torch.rand(8, 1, 28, 28)                   # pixels in [0, 1]
    print(model.reconstruction(x).log_px_z.shape)  # torch.Size([8])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

try:  # inside the vaetut package
    from .distributions import check_batch, check_count, log_bernoulli
except ImportError:  # copied into a folder beside distributions.py (see the module docstring)
    from distributions import check_batch, check_count, log_bernoulli  # type: ignore[no-redef]

__all__ = ["Autoencoder", "Reconstruction"]


class Reconstruction(NamedTuple):
    """The autoencoder's only term: log p(x | z = f(x)), ``[B]`` (no KL, not a bound)."""

    log_px_z: Tensor


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """MLP autoencoder for images ``[B, C, H, W]`` in [0, 1].

    Args:
        image_shape: ``(C, H, W)``.
        latent_dim: size of the code z.
        hidden: hidden widths of the encoder; the decoder mirrors them.
    """

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_dim: int = 2, hidden=(512, 256)):
        super().__init__()
        latent_dim = check_count(latent_dim, "latent_dim")
        hidden = tuple(check_count(h, "each hidden width") for h in hidden)
        self.image_shape = tuple(check_count(s, "each image_shape size") for s in image_shape)
        self.latent_dim = latent_dim
        d = int(torch.tensor(self.image_shape).prod())
        self.encoder = nn.Sequential(nn.Flatten(), _mlp([d, *hidden, latent_dim]))
        self.decoder = nn.Sequential(_mlp([latent_dim, *hidden[::-1], d]), nn.Unflatten(1, self.image_shape))

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with a hint unless x is a ``[B, C, H, W]`` batch of pixels in [0, 1]."""
        check_batch(x, self.image_shape, dtype=self.decoder[0][0].weight.dtype, unit_interval=True)

    def encode(self, x: Tensor) -> Tensor:
        """The code z = f(x), ``[B, n]``."""
        self.check_input(x)
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits g(z), ``[B, C, H, W]``."""
        return self.decoder(z)

    def reconstruction(self, x: Tensor) -> Reconstruction:
        """log p(x | f(x)) under independent Bernoulli pixels, ``[B]``: what training maximises."""
        return Reconstruction(log_bernoulli(x, self.decode(self.encode(x))))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Pixel probabilities sigmoid(g(f(x))), ``[B, C, H, W]``."""
        return torch.sigmoid(self.decode(self.encode(x)))
