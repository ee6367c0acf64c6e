"""Diagnostics for any VAE: KL per latent unit, active units, and the ELBO's gap.

Paper: Mittas, *Variational Autoencoders*, §3.2 and §3.5 (posterior collapse:
a latent unit whose q(z_u | x) stays at the prior for every x carries no
information). The measurements are those of Burda et al. (2016), §5.2 (active
units) and Kingma & Welling (2013) (the ELBO as a lower bound of log p(x)).
Taught in the chapters "beta-VAE" and "Experiments and limitations".

Given the posterior means ``mu`` and log-variances ``log_var`` of a model over a
data set, both ``[N, D]``:

* ``kl_per_dimension``: the analytic KL(q(z_u | x) || N(0, 1)) of each latent unit u,
  averaged over the N examples, ``[D]``. Summed over u it is the mean KL term of the
  ELBO, so it says which units pay for the information the model uses;
* ``activity``: A_u = Cov_x(E_q[z_u | x]), the variance over examples of the
  posterior mean of unit u, ``[D]``; ``active_units``: A_u > 0.01 (Burda et al.).
  A collapsed unit has E_q[z_u | x] = 0 for every x, so A_u = 0;
* ``elbo_gap``: log p(x) (importance-sampled, :func:`vaetut.bounds.log_likelihood`)
  minus the ELBO, per example, ``[N]``: an estimate of KL(q(z|x) || p(z|x)) >= 0.

Imports torch and :mod:`vaetut.bounds` only.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from .bounds import log_likelihood
from .distributions import check_count

__all__ = [
    "posterior_stats",
    "kl_per_dimension",
    "activity",
    "active_units",
    "elbo_gap",
]

BURDA_THRESHOLD = 0.01


def _check_stats(mu: Tensor, log_var: Tensor | None = None, *, min_n: int = 1) -> None:
    if not torch.is_tensor(mu) or mu.dim() != 2:
        got = tuple(mu.shape) if torch.is_tensor(mu) else type(mu).__name__
        raise ValueError(
            f"expected posterior means of shape [N, D] (examples x latent units), got {got}; "
            "collect them over a data set with posterior_stats(model, x)"
        )
    if log_var is not None and (not torch.is_tensor(log_var) or log_var.shape != mu.shape):
        got = tuple(log_var.shape) if torch.is_tensor(log_var) else type(log_var).__name__
        raise ValueError(f"log_var must have the shape of mu {tuple(mu.shape)}, got {got}")
    if len(mu) < min_n:
        raise ValueError(
            f"need at least {min_n} example(s) to measure this, got {len(mu)}; pass the posterior "
            "statistics of a whole data set (a few hundred examples or more)"
        )


@torch.no_grad()
def posterior_stats(model, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Posterior means and log-variances of ``model`` over a data set, in batches.

    Calls ``model.encode(x_batch) -> (mu, log_var)`` without gradient, moving each
    batch to the model's device; the model is put in eval mode for the call and
    restored afterwards.

    Args:
        model: a module with ``encode(x) -> (mu [B, D], log_var [B, D])``.
        x: data ``[N, ...]`` (on any device).
        batch_size: examples per call of ``encode``.

    Returns:
        ``mu, log_var``: each ``[N, D]``, on the CPU.
    """
    batch_size = check_count(batch_size, "batch_size")
    if not torch.is_tensor(x) or x.dim() < 2 or len(x) == 0:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch [N, ...], got {got}")
    if not callable(getattr(model, "encode", None)):
        raise ValueError(f"model must have an encode(x) -> (mu, log_var) method, got {type(model).__name__}")
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else x.device
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        mus, log_vars = [], []
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            mu, log_var = _posterior_pair(model.encode(xb), len(xb), type(model).__name__)  # [B, D] each
            mus.append(mu.cpu())
            log_vars.append(log_var.cpu())
    finally:
        if was_training:
            model.train()
    return torch.cat(mus), torch.cat(log_vars)


def _posterior_pair(out: object, batch: int, name: str) -> tuple[Tensor, Tensor]:
    """Check that ``encode`` gave ``(mu, log_var)``, two ``[B, D]`` tensors."""
    ok = (
        isinstance(out, (tuple, list))
        and len(out) == 2
        and all(torch.is_tensor(t) and t.dim() == 2 and len(t) == batch for t in out)
        and out[0].shape == out[1].shape
    )
    if not ok:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(
            f"{name}.encode(x) must return (mu, log_var), two [B, D] tensors of a Gaussian posterior, got {got}. "
            "A deterministic encoder (such as the Autoencoder's) has no posterior: study its codes "
            "model.encode(x) directly."
        )
    return out[0], out[1]


def kl_per_dimension(mu: Tensor, log_var: Tensor) -> Tensor:
    """Mean over the examples of KL(q(z_u | x) || N(0, 1)) for each latent unit u.

    Args:
        mu, log_var: posterior parameters ``[N, D]``.

    Returns:
        ``[D]``, in nats; its sum equals the mean over x of the full KL term
        ``kl_normal(mu, log_var).mean()``.
    """
    _check_stats(mu, log_var)
    q = Normal(mu, torch.exp(0.5 * log_var))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    # $\frac1N\sum_n KL(N(\mu_{nu}, \sigma^2_{nu}) \| N(0, 1))$ for each unit u
    return kl_divergence(q, p).mean(0)  # [N, D] -> [D]


def activity(mu: Tensor) -> Tensor:
    """A_u = Cov_x(E_q[z_u | x]): the variance over examples of each posterior mean.

    Uses the unbiased sample variance (divides by N - 1).

    Args:
        mu: posterior means ``[N, D]`` with N >= 2.

    Returns:
        ``[D]``.
    """
    _check_stats(mu, min_n=2)
    # $A_u = \mathrm{Var}_x(\mu_u(x))$
    return mu.var(dim=0, correction=1)


def active_units(mu: Tensor, threshold: float = BURDA_THRESHOLD) -> Tensor:
    """Which latent units are active: ``activity(mu) > threshold`` (Burda et al. use 0.01).

    Args:
        mu: posterior means ``[N, D]``.
        threshold: the activity above which a unit counts as active.

    Returns:
        Bool ``[D]``; ``.sum()`` is the number of active units.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
    return activity(mu) > threshold


@torch.no_grad()
def elbo_gap(model, x: Tensor, k: int = 1000, *, elbo_samples: int = 100, batch_size: int = 100) -> Tensor:
    """log p(x) - ELBO(x) per example: how loose the ELBO is, ``[N]``.

    log p(x) is the importance-sampled estimate with k samples
    (:func:`vaetut.bounds.log_likelihood`); the ELBO is E_q[log w] estimated as the
    mean of ``elbo_samples`` log importance weights, so the function works for any
    model with ``log_weights(x, k) -> [k, B]``. The gap estimates
    KL(q(z|x) || p(z|x)) >= 0; for a single example it can come out slightly
    negative through sampling noise when q is close to the posterior, so average it.

    Args:
        model: anything with ``log_weights(x, k) -> [k, B]``.
        x: data ``[N, ...]``.
        k: importance samples for log p(x).
        elbo_samples: samples of log w averaged for the ELBO.
        batch_size: examples per batch.

    Returns:
        ``[N]``, in nats.
    """
    k, elbo_samples, batch_size = (
        check_count(v, name) for v, name in ((k, "k"), (elbo_samples, "elbo_samples"), (batch_size, "batch_size"))
    )
    log_px = log_likelihood(model, x, k, batch_size=batch_size)  # [N]
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else x.device
    elbos = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        # $\mathrm{ELBO}(x) = E_q[\log p(x, z) - \log q(z|x)] \approx \frac1S \sum_s \log w_s$
        elbos.append(model.log_weights(xb, elbo_samples).double().mean(0).cpu())  # [B]
    return log_px.cpu().double().sub(torch.cat(elbos)).to(log_px.dtype)
