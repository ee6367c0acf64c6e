"""The linear Gaussian latent model: a VAE whose log p(x) and posterior are exact.

Paper: Mittas, *Variational Autoencoders*, §2 and §2.1 (the ELBO, with the slips
listed in the errata page of the book (``book/errata.md``) corrected); the model is probabilistic PCA
(Tipping & Bishop 1999); the importance-weighted bound is Burda et al. (2016),
eq. 8. Taught in the book chapter "The ELBO", where it is the one model on which
every term of

    log p(x) = ELBO(q) + KL(q(z|x) || p(z|x))

can be computed in closed form and checked.

The model, with W ``[d, n]``, b ``[d]`` and one noise scale s::

    z ~ N(0, I_n),        x | z ~ N(W z + b, s^2 I_d).

Everything about it is Gaussian and exact:

* marginal      p(x)   = N(b, W W^T + s^2 I_d);
* posterior     p(z|x) = N(m, S),  S = (I_n + W^T W / s^2)^{-1},  m = S W^T (x - b) / s^2;
* for any Gaussian q = N(m_q, S_q) (full covariance allowed) the ELBO has a
  closed form, :meth:`LinearGaussian.elbo`.

:meth:`LinearGaussian.log_weights` takes q explicitly; :class:`WithQ` pairs the
model with an encoder ``x -> (mean, cov)`` so that it has the ``log_weights(x, k)``
method every vaetut model has and :func:`vaetut.bounds.log_likelihood` and
:func:`vaetut.bounds.iwae_bound` work on it unchanged.

Imports torch and :mod:`vaetut.distributions` only. To use it outside vaetut, copy
this file and ``distributions.py`` into one folder; then, from that folder::

    import torch
    from linear_gaussian import LinearGaussian

    model = LinearGaussian.random(d=5, n=2, generator=torch.Generator().manual_seed(0))
    x = model.sample(4)                            # [4, 5]
    mean, cov = model.posterior(x)                 # the exact q
    print(torch.allclose(model.elbo(x, mean, cov).elbo, model.log_px(x)))   # True: the gap is 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

try:  # inside the vaetut package
    from .distributions import ELBO, check_count, log_gaussian, log_standard_normal
except ImportError:  # copied into a folder beside distributions.py (see the module docstring)
    from distributions import ELBO, check_count, log_gaussian, log_standard_normal  # type: ignore[no-redef]

__all__ = ["LinearGaussian", "WithQ"]

LOG_2PI = math.log(2 * math.pi)

#: An encoder: data ``[B, d]`` -> q(z|x) mean ``[B, n]`` and covariance ``[n, n]`` or ``[B, n, n]``.
Encoder = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class LinearGaussian:
    """z ~ N(0, I_n), x | z ~ N(W z + b, exp(log_s)^2 I_d), with exact p(x) and p(z|x).

    Attributes:
        W: decoder weights ``[d, n]`` (d data dimensions, n latent dimensions).
        b: decoder bias ``[d]``.
        log_s: log of the noise scale s, a float or a 0-d tensor.

    Example::

        model = LinearGaussian.random(d=5, n=2, generator=torch.Generator().manual_seed(0))
        x = model.sample(8)                   # [8, 5]
        mean, cov = model.posterior(x)        # [8, 2], [2, 2]
        model.elbo(x, mean, cov).elbo         # == model.log_px(x): the bound is tight
    """

    W: Tensor
    b: Tensor
    log_s: Tensor | float = 0.0

    def __post_init__(self) -> None:
        W, b = self.W, self.b
        if not torch.is_tensor(W) or W.dim() != 2 or not W.is_floating_point():
            got = tuple(W.shape) if torch.is_tensor(W) else type(W).__name__
            raise ValueError(f"W must be a floating-point matrix [d, n], got {got}")
        if not torch.is_tensor(b) or tuple(b.shape) != (W.shape[0],):
            got = tuple(b.shape) if torch.is_tensor(b) else type(b).__name__
            raise ValueError(f"b must be a vector [d] = [{W.shape[0]}] to match W [d, n], got {got}")
        log_s = torch.as_tensor(self.log_s, dtype=W.dtype, device=W.device)
        if log_s.dim() != 0 or not torch.isfinite(log_s):
            raise ValueError(f"log_s must be one finite number (log of the noise scale s), got {self.log_s!r}")
        object.__setattr__(self, "b", b.to(W.dtype))
        object.__setattr__(self, "log_s", log_s)

    # ---------------------------------------------------------------- shapes
    @property
    def d(self) -> int:
        """Data dimension."""
        return self.W.shape[0]

    @property
    def n(self) -> int:
        """Latent dimension."""
        return self.W.shape[1]

    @classmethod
    def random(
        cls,
        d: int,
        n: int,
        s: float = 0.5,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> "LinearGaussian":
        """A model with W and b drawn from N(0, 1) and noise scale ``s``."""
        d, n = check_count(d, "d"), check_count(n, "n")
        if not s > 0:
            raise ValueError(f"the noise scale s must be positive, got {s!r}")
        W = torch.randn(d, n, generator=generator, dtype=dtype)
        b = torch.randn(d, generator=generator, dtype=dtype)
        return cls(W, b, math.log(s))

    def check_x(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is a floating-point batch ``[B, d]``."""
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.d:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            hint = " (a single point needs a batch dimension: x.unsqueeze(0))" if torch.is_tensor(x) and x.dim() == 1 else ""
            raise ValueError(f"x must be a batch [B, d] = [B, {self.d}], got {got}{hint}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got dtype {x.dtype}")

    # ------------------------------------------------------- the exact answers
    def marginal_cov(self) -> Tensor:
        """Covariance of p(x): ``W W^T + s^2 I_d``, ``[d, d]``."""
        eye = torch.eye(self.d, dtype=self.W.dtype, device=self.W.device)
        return self.W @ self.W.T + torch.exp(2 * self.log_s) * eye

    def log_px(self, x: Tensor) -> Tensor:
        """The exact log-marginal likelihood log p(x) = log N(x; b, W W^T + s^2 I), ``[B]``.

        Args:
            x: ``[B, d]``.
        """
        self.check_x(x)
        L = torch.linalg.cholesky(self.marginal_cov())  # [d, d], C = L L^T
        # $r = L^{-1}(x - b)$, so $(x-b)^T C^{-1} (x-b) = \|r\|^2$
        r = torch.linalg.solve_triangular(L, (x - self.b).T, upper=False).T  # [B, d]
        # $\log p(x) = -\frac12[d \log 2\pi + \log\det C + \|r\|^2]$, $\log\det C = 2\sum_i \log L_{ii}$
        log_det = 2 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (self.d * LOG_2PI + log_det + r.pow(2).sum(-1))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior p(z|x) = N(mean, cov).

        Args:
            x: ``[B, d]``.

        Returns:
            ``mean [B, n]`` and ``cov [n, n]`` (the same for every x).
        """
        self.check_x(x)
        inv_s2 = torch.exp(-2 * self.log_s)
        eye = torch.eye(self.n, dtype=self.W.dtype, device=self.W.device)
        # $S = (I + W^T W / s^2)^{-1}$
        cov = torch.cholesky_inverse(torch.linalg.cholesky(eye + inv_s2 * self.W.T @ self.W))  # [n, n]
        # $m = S W^T (x - b) / s^2$, one row per example (S is symmetric)
        mean = inv_s2 * (x - self.b) @ self.W @ cov  # [B, n]
        return mean, cov

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points x ~ p(x) by ancestral sampling: ``[n, d]``."""
        n = check_count(n, "n", hint="the number of samples")
        opts = dict(generator=generator, dtype=self.W.dtype)
        z = torch.randn(n, self.n, **opts).to(self.W.device)  # [n, n_latent]
        noise = torch.randn(n, self.d, **opts).to(self.W.device)  # [n, d]
        return z @ self.W.T + self.b + torch.exp(self.log_s) * noise

    # ------------------------------------------------------- bounds for any q
    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(x|z) + log p(z) for z ``[..., B, n]`` -> ``[..., B]``."""
        return log_gaussian(x, z @ self.W.T + self.b, self.log_s) + log_standard_normal(z)

    def elbo(self, x: Tensor, q_mean: Tensor, q_cov: Tensor) -> ELBO:
        """The ELBO of q = N(q_mean, q_cov) in closed form, no sampling.

        ``elbo = E_q[log p(x|z)] - KL(q || p(z))`` (eq. 3 with the order of the KL
        corrected, book/errata.md §2.1), where, with r = x - b - W m_q,

        * E_q[log p(x|z)] = -(d/2) log 2 pi - d log s - (||r||^2 + tr(W S_q W^T)) / (2 s^2),
        * KL(q || N(0, I)) = (tr S_q + ||m_q||^2 - n - log det S_q) / 2.

        Args:
            x: ``[B, d]``.
            q_mean: ``[B, n]``.
            q_cov: ``[n, n]`` (shared) or ``[B, n, n]``, symmetric positive definite.

        Returns:
            :class:`~vaetut.distributions.ELBO` of ``[B]`` terms.
        """
        L = self._check_q(x, q_mean, q_cov)  # [n, n] or [B, n, n]
        s2 = torch.exp(2 * self.log_s)
        r = x - self.b - q_mean @ self.W.T  # [B, d]
        WL = self.W @ L  # [..., d, n]
        # $\mathrm{tr}(W S_q W^T) = \|W L_q\|_F^2$ with $S_q = L_q L_q^T$
        tr_wsw = WL.pow(2).sum((-2, -1))  # [] or [B]
        # $E_q[\log p(x|z)] = -\frac d2 \log 2\pi - d\log s - \frac{\|r\|^2 + \mathrm{tr}(W S_q W^T)}{2s^2}$
        log_px_z = -0.5 * self.d * LOG_2PI - self.d * self.log_s - (r.pow(2).sum(-1) + tr_wsw) / (2 * s2)
        # $KL(q\|N(0,I)) = \frac12[\mathrm{tr} S_q + \|m_q\|^2 - n - \log\det S_q]$
        tr_s = L.pow(2).sum((-2, -1))
        log_det = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        kl = 0.5 * (tr_s + q_mean.pow(2).sum(-1) - self.n - log_det)
        return ELBO(log_px_z - kl, log_px_z, kl)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        q_mean: Tensor,
        q_cov: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log w = log p(x, z) - log q(z) for k draws z ~ q = N(q_mean, q_cov): ``[k, B]``.

        The draws are reparameterized, z = m_q + L_q eps with S_q = L_q L_q^T and
        eps ~ N(0, I), so log q(z) = log N(eps; 0, I) - log det L_q exactly.

        Args:
            x: ``[B, d]``; q_mean: ``[B, n]``; q_cov: ``[n, n]`` or ``[B, n, n]``.
            k: number of samples per example (>= 1).
        """
        k = check_count(k, "k", hint="the number of samples")
        L = self._check_q(x, q_mean, q_cov)
        B = x.shape[0]
        eps = torch.randn(k, B, self.n, generator=generator, dtype=x.dtype).to(x.device)  # [k, B, n]
        # $z = m_q + L_q \epsilon$
        z = q_mean + torch.einsum("bij,kbj->kbi", L.expand(B, self.n, self.n), eps)  # [k, B, n]
        # $\log q(z) = \log N(\epsilon; 0, I) - \log\det L_q$
        log_q = log_standard_normal(eps) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        return self.log_joint(x, z) - log_q

    def with_q(self, encoder: Encoder) -> "WithQ":
        """This model paired with an encoder ``x -> (mean, cov)``; see :class:`WithQ`."""
        return WithQ(self, encoder)

    def _check_q(self, x: Tensor, q_mean: Tensor, q_cov: Tensor) -> Tensor:
        """Validate x and q; return the Cholesky factor of q_cov, ``[n, n]`` or ``[B, n, n]``."""
        self.check_x(x)
        B, n = x.shape[0], self.n
        if not torch.is_tensor(q_mean) or tuple(q_mean.shape) != (B, n):
            got = tuple(q_mean.shape) if torch.is_tensor(q_mean) else type(q_mean).__name__
            raise ValueError(f"q_mean must be [B, n] = [{B}, {n}] (one latent mean per example), got {got}")
        if not torch.is_tensor(q_cov) or tuple(q_cov.shape) not in ((n, n), (B, n, n)):
            got = tuple(q_cov.shape) if torch.is_tensor(q_cov) else type(q_cov).__name__
            raise ValueError(
                f"q_cov must be a covariance [n, n] = [{n}, {n}] or one per example [{B}, {n}, {n}], got {got}; "
                "a diagonal q with variances var [B, n] is torch.diag_embed(var)"
            )
        if not torch.allclose(q_cov, q_cov.transpose(-2, -1)):
            raise ValueError("q_cov must be symmetric; symmetrize it with (c + c.transpose(-2, -1)) / 2")
        L, info = torch.linalg.cholesky_ex(q_cov)
        if bool((info != 0).any()):
            raise ValueError("q_cov must be positive definite (its Cholesky factorization failed); "
                             "check for zero or negative variances")
        return L


class WithQ:
    """A :class:`LinearGaussian` model paired with an encoder q(z|x), so it exposes the
    ``log_weights(x, k) -> [k, B]`` and ``elbo(x)`` that every vaetut model has.

    Args:
        model: the linear Gaussian model.
        encoder: ``x [B, d] -> (mean [B, n], cov [n, n] or [B, n, n])``; for example
            ``model.posterior`` (the exact posterior, so every log-weight equals log p(x)).

    Example::

        pair = model.with_q(model.posterior)
        vaetut.bounds.log_likelihood(pair, x, k=100)   # == model.log_px(x)
    """

    def __init__(self, model: LinearGaussian, encoder: Encoder):
        if not callable(encoder):
            raise ValueError(f"encoder must be a function x -> (mean, cov), got {type(encoder).__name__}")
        self.model = model
        self.encoder = encoder

    def elbo(self, x: Tensor) -> ELBO:
        """The closed-form ELBO of this encoder's q, ``[B]`` terms."""
        return self.model.elbo(x, *self.encoder(x))

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """``[k, B]`` log importance weights with k draws from this encoder's q."""
        return self.model.log_weights(x, k, *self.encoder(x))
