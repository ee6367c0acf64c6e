"""Two Monte Carlo estimators of the gradient of an expectation under a Gaussian.

For q = N(mu, diag sigma^2) with ``sigma^2 = exp(log_var)`` and a user function f,
both estimate

    grad_{mu, log_var} E_{z ~ q}[f(z)]

from k draws, one gradient per draw, so the caller can take their mean (the
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

#: A function of a batch of samples, one value each: ``z [k, n] -> [k]``.
Objective = Callable[[Tensor], Tensor]


class Grad(NamedTuple):
    """Per-sample gradient estimates; the estimator's value is their mean over dim 0."""

    mu: Tensor  # [k, n]  estimates of the gradient with respect to mu
    log_var: Tensor  # [k, n]  ... with respect to log sigma^2


def reparam_grad(
    f: Objective,
    mu: Tensor,
    log_var: Tensor,
    k: int,
    *,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Grad:
    """The reparameterization estimator: one gradient of f(mu + sigma * eps_i) per draw.

    Args:
        f: ``z [k, n] -> [k]``, differentiable, acting on each row separately (row i
            of its output depends on row i of z only).
        mu, log_var: ``[n]``, the parameters of q = N(mu, diag exp(log_var)) over n
            latent dimensions.
        k: number of draws.
        eps: optional standard normal noise ``[k, n]`` (to compare estimators on the
            same draws); drawn with ``generator`` when omitted.

    Returns:
        :class:`Grad` with ``mu`` and ``log_var`` each ``[k, n]``; row i is the
        gradient of f(z_i) with respect to (mu, log_var), so ``.mean(0)`` is the
        k-sample estimate of the gradient of E_q[f(z)].
    """
    eps = _draws(mu, log_var, k, eps, generator)
    # one copy of the parameters per draw, so autograd returns one gradient per draw
    mu_i = mu.detach().expand(k, -1).clone().requires_grad_(True)  # [k, n]
    log_var_i = log_var.detach().expand(k, -1).clone().requires_grad_(True)  # [k, n]
    # $z_i = \mu + \sigma \odot \epsilon_i$: the randomness is in eps, so grad and E commute
    z = reparameterize(mu_i, log_var_i, eps)  # [k, n]
    values = _values(f, z, k)
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
    k: int,
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
        f: ``z [k, n] -> [k]``, evaluated without gradient.
        mu, log_var: ``[n]``.
        k: number of draws.
        baseline: a number (or a tensor broadcastable to ``[k]``) subtracted from f.
        eps: optional standard normal noise ``[k, n]``; drawn with ``generator`` when omitted.

    Returns:
        :class:`Grad` with ``mu`` and ``log_var`` each ``[k, n]``.
    """
    eps = _draws(mu, log_var, k, eps, generator)
    mu, log_var = mu.detach(), log_var.detach()
    with torch.no_grad():
        z = reparameterize(mu, log_var, eps)  # [k, n]
        weight = (_values(f, z, k) - baseline).unsqueeze(-1)  # [k, 1]
    # with $z = \mu + \sigma\epsilon$ and $\log q(z) = -\frac12\sum_j[\log 2\pi + \log\sigma_j^2 + (z_j-\mu_j)^2/\sigma_j^2]$:
    # $\partial \log q/\partial\mu = (z-\mu)/\sigma^2 = \epsilon/\sigma$
    score_mu = eps * torch.exp(-0.5 * log_var)  # [k, n]
    # $\partial \log q/\partial\log\sigma^2 = \frac12[(z-\mu)^2/\sigma^2 - 1] = \frac12(\epsilon^2 - 1)$
    score_log_var = 0.5 * (eps.pow(2) - 1)  # [k, n]
    return Grad(weight * score_mu, weight * score_log_var)


def _draws(mu: Tensor, log_var: Tensor, k: int, eps: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """Validate the parameters and return the noise eps ``[k, n]``."""
    if not torch.is_tensor(mu) or mu.dim() != 1 or not mu.is_floating_point():
        got = tuple(mu.shape) if torch.is_tensor(mu) else type(mu).__name__
        raise ValueError(f"mu must be a floating-point vector [n], got {got}; for a batch, call once per row")
    if not torch.is_tensor(log_var) or log_var.shape != mu.shape:
        got = tuple(log_var.shape) if torch.is_tensor(log_var) else type(log_var).__name__
        raise ValueError(f"log_var must have the shape of mu, [{mu.shape[0]}], got {got}")
    k = check_count(k, "k", hint="the number of draws")
    if eps is None:
        return torch.randn(k, mu.shape[0], generator=generator, dtype=mu.dtype).to(mu.device)
    if tuple(eps.shape) != (k, mu.shape[0]):
        raise ValueError(f"eps must be standard normal noise [k, n] = [{k}, {mu.shape[0]}], got {tuple(eps.shape)}")
    return eps.to(dtype=mu.dtype, device=mu.device)


def _values(f: Objective, z: Tensor, k: int) -> Tensor:
    """f(z), checked to be one value per sample, ``[k]``."""
    values = f(z)
    if not torch.is_tensor(values) or tuple(values.shape) != (k,):
        got = tuple(values.shape) if torch.is_tensor(values) else type(values).__name__
        raise ValueError(
            f"f must map samples z [k, n] to one value per sample [k] = [{k}], got {got}; "
            "reduce over the last dimension, e.g. lambda z: (z - c).pow(2).sum(-1)"
        )
    return values
