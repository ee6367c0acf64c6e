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
* ``amortization_gap`` (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in
  Variational Autoencoders", §3): that gap split in two, per example,

      log p(x) - ELBO(q_phi) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(q_phi)],
                                 approximation gap      amortization gap

  where q* is the best member of the variational family for that x, found by
  optimising its parameters with the decoder fixed (``optimise_q``), and q_phi is
  the member the encoder picks. ``split_gap`` does it for any family given as
  ``log_weights(x, params, k)``; ``encoder_params`` and ``family_log_weights`` give
  the family of a VAE (mu, log_var) and of a FlowVAE (mu, log_var and the flow's
  context h). Taught in the chapter "Inverse autoregressive flow".

Imports torch, :mod:`vaetut.bounds` and :mod:`vaetut.distributions` only.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from .bounds import log_likelihood
from .distributions import check_count, log_normal, log_standard_normal

__all__ = [
    "posterior_stats",
    "kl_per_dimension",
    "activity",
    "active_units",
    "elbo_gap",
    "GapSplit",
    "encoder_params",
    "family_log_weights",
    "optimise_q",
    "split_gap",
    "amortization_gap",
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


# ------------------------------------------------------- the gap, split in two
class GapSplit(NamedTuple):
    """log p(x) - ELBO(x) split in two parts (Cremer, Li & Duvenaud 2018), each ``[N]``.

    * ``approximation = log_px - elbo_optimal``: what the best member q* of the
      variational family loses for this x, KL(q* || p(z|x)); only a richer family
      removes it;
    * ``amortization = elbo_optimal - elbo_encoder``: what the encoder loses by
      predicting q from x in one pass instead of optimising it for this x; a better
      encoder (or per-example optimisation) removes it.

    ``trace`` is the optimisation's objective, the mean over examples of the
    ``k_fit``-sample ELBO estimate at each Adam step, ``[steps]``.
    """

    log_px: Tensor
    elbo_encoder: Tensor
    elbo_optimal: Tensor
    trace: Tensor

    @property
    def gap(self) -> Tensor:
        """log p(x) - ELBO of the encoder's q: the whole gap, ``[N]``."""
        return self.log_px - self.elbo_encoder

    @property
    def approximation(self) -> Tensor:
        """log p(x) - ELBO of q*: the approximation gap, ``[N]``."""
        return self.log_px - self.elbo_optimal

    @property
    def amortization(self) -> Tensor:
        """ELBO of q* - ELBO of the encoder's q: the amortization gap, ``[N]``."""
        return self.elbo_optimal - self.elbo_encoder


#: log importance weights of a q given by explicit parameters: ``(x [B, ...], params, k) -> [k, B]``.
FamilyLogWeights = Callable[[Tensor, Sequence[Tensor], int], Tensor]


def encoder_params(model, x: Tensor) -> tuple[Tensor, ...]:
    """The variational parameters the encoder of ``model`` chooses for ``x``.

    * :class:`~vaetut.vae.VAE`: ``(mu, log_var)``, each ``[B, n]``;
    * :class:`~vaetut.flow_vae.FlowVAE`: ``(mu, log_var, h)``: the base Gaussian's
      ``[B, n]`` parameters and the context ``h`` ``[B, F]`` that conditions every flow
      step (the flow's own network is part of the family, not of its parameters).
    """
    if hasattr(model, "flow"):
        h = model.features(x)  # [B, F]
        return model.to_mu(h), model.to_log_var(h), h
    return tuple(model.encode(x))


def family_log_weights(model, x: Tensor, params: Sequence[Tensor], k: int) -> Tensor:
    """log p(x, z) - log q(z) for k draws from the q with parameters ``params``: ``[k, B]``.

    The q of a VAE is N(mu, diag exp(log_var)); that of a FlowVAE is the same
    Gaussian pushed through the model's flow with context h. With the parameters of
    :func:`encoder_params` this is the model's own ``log_weights``.
    """
    mu, log_var = params[0], params[1]  # [B, n] each
    eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype)
    z = mu + (0.5 * log_var).exp() * eps  # [k, B, n]
    log_q = log_normal(z, mu, log_var)  # [k, B]
    if hasattr(model, "flow"):
        z, log_det = model.flow(z, params[2])  # h [B, F] broadcasts over the k draws
        # $\log q(z_T) = \log q(z_0) - \log|\det \partial z_T / \partial z_0|$
        log_q = log_q - log_det
    return model.log_px_z(x, model.decode(z)) + log_standard_normal(z) - log_q


def _mean_log_w(
    log_weights: FamilyLogWeights, x: Tensor, params: Sequence[Tensor], k: int, chunk: int
) -> tuple[Tensor, Tensor]:
    """ELBO estimate (mean of k log-weights) and log-mean-exp of the same k log-weights, ``[B]`` each."""
    parts = [log_weights(x, params, min(chunk, k - start)).double() for start in range(0, k, chunk)]
    lw = torch.cat(parts)  # [k, B]
    return lw.mean(0), torch.logsumexp(lw, 0) - math.log(k)


def optimise_q(
    log_weights: FamilyLogWeights,
    x: Tensor,
    params: Sequence[Tensor],
    *,
    steps: int = 1000,
    lr: float = 1e-2,
    k: int = 4,
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Gradient ascent on each example's ELBO over its own variational parameters.

    Starts from ``params`` (one row per example) and runs Adam with a cosine-decayed
    learning rate on the ``k``-sample reparameterized ELBO estimate. Adam's update is
    per coordinate, so optimising the sum over the batch is the same as optimising
    every example on its own. Only ``params`` are updated; gradients never reach the
    model (``log_weights``' own parameters).

    Returns:
        ``(params, trace)``: the optimised parameters (detached) and the batch mean of
        the objective at each step, ``[steps]``.
    """
    steps, k = check_count(steps, "steps"), check_count(k, "k")
    params = [p.detach().clone().requires_grad_(True) for p in params]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    trace = torch.empty(steps)
    for step in range(steps):
        elbo = log_weights(x, params, k).mean(0)  # [B]
        grads = torch.autograd.grad(-elbo.sum(), params)  # each example's ELBO depends on its own row only
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        schedule.step()
        trace[step] = elbo.detach().mean()
    return tuple(p.detach() for p in params), trace


def split_gap(
    log_weights: FamilyLogWeights,
    x: Tensor,
    params: Sequence[Tensor],
    *,
    log_px: Tensor | None = None,
    steps: int = 1000,
    lr: float = 1e-2,
    k_fit: int = 4,
    k_elbo: int = 500,
    k_ll: int = 1000,
    batch_size: int = 100,
    chunk: int = 100,
    seed: int = 0,
) -> GapSplit:
    """Split log p(x) - ELBO into approximation and amortization gaps, per example.

    For each example, q* is found by :func:`optimise_q` starting from the encoder's
    ``params``; both ELBOs are estimated with the same ``k_elbo`` draws of the noise
    (so their difference has little Monte Carlo noise). log p(x) is ``log_px`` when
    given (exact), else the importance-sampled estimate with ``k_ll`` draws from q*,
    the better of the two proposals.

    Args:
        log_weights: ``(x, params, k) -> [k, B]`` for the q with parameters ``params``.
        x: data ``[N, ...]``.
        params: the encoder's variational parameters, each ``[N, ...]``.
        log_px: the exact log p(x) ``[N]``, if known.
        steps, lr, k_fit: the per-example optimisation (Adam, cosine decay, k_fit samples).
        k_elbo, k_ll: samples for the ELBO estimates and for log p(x).
        batch_size: examples optimised together; chunk: samples per evaluation call.
        seed: seeds the noise (the global generator is restored afterwards).

    Returns:
        :class:`GapSplit` of ``[N]`` tensors (float64).
    """
    counts = dict(steps=steps, k_fit=k_fit, k_elbo=k_elbo, k_ll=k_ll, batch_size=batch_size, chunk=chunk)
    steps, k_fit, k_elbo, k_ll, batch_size, chunk = (check_count(v, name) for name, v in counts.items())
    if any(len(p) != len(x) for p in params):
        shapes = [tuple(p.shape) for p in params]
        raise ValueError(f"every parameter needs one row per example ({len(x)}), got {shapes}")
    devices = [x.device] if x.device.type == "cuda" else []
    out: dict[str, list[Tensor]] = {"log_px": [], "elbo_encoder": [], "elbo_optimal": [], "trace": []}
    with torch.random.fork_rng(devices=devices):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            pb = [p[start : start + batch_size].detach() for p in params]
            torch.manual_seed(seed + start)
            best, trace = optimise_q(log_weights, xb, pb, steps=steps, lr=lr, k=k_fit)
            with torch.no_grad():
                torch.manual_seed(seed)
                elbo_enc, _ = _mean_log_w(log_weights, xb, pb, k_elbo, chunk)
                torch.manual_seed(seed)  # the same noise for q*: a paired difference
                elbo_opt, _ = _mean_log_w(log_weights, xb, best, k_elbo, chunk)
                if log_px is None:
                    _, ll = _mean_log_w(log_weights, xb, best, k_ll, chunk)
                else:
                    ll = log_px[start : start + batch_size].double()
            out["log_px"].append(ll.cpu())
            out["elbo_encoder"].append(elbo_enc.cpu())
            out["elbo_optimal"].append(elbo_opt.cpu())
            out["trace"].append(trace * len(xb))
    trace = torch.stack(out.pop("trace")).sum(0) / len(x)  # [steps], the mean over all examples
    return GapSplit(**{name: torch.cat(parts) for name, parts in out.items()}, trace=trace)


def amortization_gap(model, x: Tensor, **kwargs) -> GapSplit:
    """:func:`split_gap` for a :class:`~vaetut.vae.VAE` or :class:`~vaetut.flow_vae.FlowVAE`:
    the decoder and (for a FlowVAE) the flow's network stay fixed, the per-example
    parameters of :func:`encoder_params` are optimised. ``kwargs`` go to :func:`split_gap`.

    Example::

        split = amortization_gap(model, x_test[:100], steps=500)
        split.approximation.mean(), split.amortization.mean()
    """
    params = next(iter(model.parameters()))
    x = x.to(params.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            start = encoder_params(model, x)
        return split_gap(lambda xb, p, k: family_log_weights(model, xb, p, k), x, start, **kwargs)
    finally:
        model.train(was_training)
