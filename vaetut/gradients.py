"""Two Monte Carlo estimators of the gradient of an expectation under a Gaussian.

For q = N(mu, diag sigma^2) with ``sigma^2 = exp(log_var)`` and a user function f,
both estimate

    grad_{mu, log_var} E_{z ~ q}[f(z)]

from n draws, one gradient per draw, so the caller can take their mean (the
estimate) and their variance (its cost):

* :func:`reparam_grad`, the reparameterization or pathwise estimator (Kingma &
  Welling 2013, §2.3–2.4; paper §2.2): write z = mu + sigma * eps with
  eps ~ N(0, I), so the expectation is over eps and the gradient moves inside,
  ``grad f(mu + sigma * eps)``, computed by autograd through
  :func:`vaetut.distributions.reparameterize`. Needs f differentiable.
* :func:`score_function_grad`, the score-function or REINFORCE estimator
  (Williams 1992): ``(f(z) - baseline) * grad log q(z)``. Needs only values of f.

Both are unbiased; on smooth objectives the first usually has far lower variance,
which is why VAEs are trained with it. Taught in the book chapter
"Reparameterization". Imports torch and :mod:`vaetut.distributions` only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

try:  # inside the vaetut package
    from .distributions import check_count, reparameterize
except ImportError:  # copied into a folder beside distributions.py
    from distributions import check_count, reparameterize  # type: ignore[no-redef]

__all__ = ["Grad", "reparam_grad", "score_function_grad"]

#: A function of a batch of samples, one value each: ``z [n, D] -> [n]``.
Objective = Callable[[Tensor], Tensor]


class Grad(NamedTuple):
    """Per-sample gradient estimates; the estimator's value is their mean over dim 0."""

    mu: Tensor  # [n, D]  estimates of the gradient with respect to mu
    log_var: Tensor  # [n, D]  ... with respect to log sigma^2


def reparam_grad(
    f: Objective,
    mu: Tensor,
    log_var: Tensor,
    n: int,
    *,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Grad:
    """The reparameterization estimator: one gradient of f(mu + sigma * eps_i) per draw.

    Args:
        f: ``z [n, D] -> [n]``, differentiable, acting on each row separately (row i
            of its output depends on row i of z only).
        mu, log_var: ``[D]``, the parameters of q = N(mu, diag exp(log_var)).
        n: number of draws.
        eps: optional standard normal noise ``[n, D]`` (to compare estimators on the
            same draws); drawn with ``generator`` when omitted.

    Returns:
        :class:`Grad` with ``mu`` and ``log_var`` each ``[n, D]``; row i is the
        gradient of f(z_i) with respect to (mu, log_var), so ``.mean(0)`` is the
        n-sample estimate of the gradient of E_q[f(z)].
    """
    eps = _draws(mu, log_var, n, eps, generator)
    # one copy of the parameters per draw, so autograd returns one gradient per draw
    mu_i = mu.detach().expand(n, -1).clone().requires_grad_(True)  # [n, D]
    log_var_i = log_var.detach().expand(n, -1).clone().requires_grad_(True)  # [n, D]
    # $z_i = \mu + \sigma \odot \epsilon_i$: the randomness is in eps, so grad and E commute
    z = reparameterize(mu_i, log_var_i, eps)  # [n, D]
    values = _values(f, z, n)
    if not values.requires_grad:
        raise ValueError(
            "f(z) does not depend differentiably on z (no gradient reaches it), so the "
            "reparameterization estimator cannot be used; score_function_grad needs only "
            "the values of f"
        )
    # rows are independent, so the gradient of the sum is the per-row gradient
    g_mu, g_log_var = torch.autograd.grad(values.sum(), (mu_i, log_var_i), allow_unused=True)
    zeros = torch.zeros_like(mu_i)
    return Grad(
        zeros if g_mu is None else g_mu.detach(),
        zeros if g_log_var is None else g_log_var.detach(),
    )


def score_function_grad(
    f: Objective,
    mu: Tensor,
    log_var: Tensor,
    n: int,
    *,
    baseline: float | Tensor = 0.0,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Grad:
    """The score-function (REINFORCE) estimator: (f(z_i) - baseline) * grad log q(z_i).

    Uses the identity grad E_q[f] = E_q[f(z) grad log q(z)], which needs only the
    values of f (f may be non-differentiable, even a step function). Any baseline
    that does not depend on z_i keeps it unbiased, since E_q[grad log q] = 0.

    Args:
        f: ``z [n, D] -> [n]``, evaluated without gradient.
        mu, log_var: ``[D]``.
        n: number of draws.
        baseline: a number (or a tensor broadcastable to ``[n]``) subtracted from f.
        eps: optional standard normal noise ``[n, D]``; drawn with ``generator`` when omitted.

    Returns:
        :class:`Grad` with ``mu`` and ``log_var`` each ``[n, D]``.
    """
    eps = _draws(mu, log_var, n, eps, generator)
    mu, log_var = mu.detach(), log_var.detach()
    with torch.no_grad():
        z = reparameterize(mu, log_var, eps)  # [n, D]
        weight = (_values(f, z, n) - baseline).unsqueeze(-1)  # [n, 1]
    # with $z = \mu + \sigma\epsilon$ and $\log q(z) = -\frac12\sum_j[\log 2\pi + \log\sigma_j^2 + (z_j-\mu_j)^2/\sigma_j^2]$:
    # $\partial \log q/\partial\mu = (z-\mu)/\sigma^2 = \epsilon/\sigma$
    score_mu = eps * torch.exp(-0.5 * log_var)  # [n, D]
    # $\partial \log q/\partial\log\sigma^2 = \frac12[(z-\mu)^2/\sigma^2 - 1] = \frac12(\epsilon^2 - 1)$
    score_log_var = 0.5 * (eps.pow(2) - 1)  # [n, D]
    return Grad(weight * score_mu, weight * score_log_var)


def _draws(mu: Tensor, log_var: Tensor, n: int, eps: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """Validate the parameters and return the noise eps ``[n, D]``."""
    if not torch.is_tensor(mu) or mu.dim() != 1 or not mu.is_floating_point():
        got = tuple(mu.shape) if torch.is_tensor(mu) else type(mu).__name__
        raise ValueError(f"mu must be a floating-point vector [D], got {got}; for a batch, call once per row")
    if not torch.is_tensor(log_var) or log_var.shape != mu.shape:
        got = tuple(log_var.shape) if torch.is_tensor(log_var) else type(log_var).__name__
        raise ValueError(f"log_var must have the shape of mu, [{mu.shape[0]}], got {got}")
    n = check_count(n, "n", hint="the number of samples")
    if eps is None:
        return torch.randn(n, mu.shape[0], generator=generator, dtype=mu.dtype).to(mu.device)
    if tuple(eps.shape) != (n, mu.shape[0]):
        raise ValueError(f"eps must be standard normal noise [n, D] = [{n}, {mu.shape[0]}], got {tuple(eps.shape)}")
    return eps.to(dtype=mu.dtype, device=mu.device)


def _values(f: Objective, z: Tensor, n: int) -> Tensor:
    """f(z), checked to be one value per sample, ``[n]``."""
    values = f(z)
    if not torch.is_tensor(values) or tuple(values.shape) != (n,):
        got = tuple(values.shape) if torch.is_tensor(values) else type(values).__name__
        raise ValueError(
            f"f must map samples z [n, D] to one value per sample [n] = [{n}], got {got}; "
            "reduce over the last dimension, e.g. lambda z: (z - c).pow(2).sum(-1)"
        )
    return values
