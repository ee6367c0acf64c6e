"""The Gaussian and Bernoulli pieces of the ELBO, written out by hand.

Paper: Mittas, *Variational Autoencoders*, §2.1–§3.1 and Appendix A.1 (with the
slips listed in the errata page of the book (``book/errata.md``) corrected); Kingma & Welling (2013), §2.4
and Appendix B. Taught in the book chapters "The ELBO" and "Reparameterization";
every function here is checked against ``torch.distributions`` in
``tests/test_distributions.py``.

Conventions (one glossary for the book and the code):

* ``mu``, ``log_var``: mean and log-variance of a diagonal Gaussian, ``[..., D]``;
* ``std = exp(log_var / 2)``, ``eps ~ N(0, I)``;
* every log-density and KL is *summed over the last dimension* (or over all
  non-batch dimensions for images) and returned per example, ``[B]``:
  the caller reduces.

This module imports only torch, so it can be copied alone.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "ELBO",
    "kl_normal",
    "reparameterize",
    "log_normal",
    "log_standard_normal",
    "log_bernoulli",
    "log_gaussian",
    "check_count",
    "check_batch",
    "check_values",
]


class ELBO(NamedTuple):
    """The evidence lower bound of one model on one batch, per example.

    ``elbo = log_px_z - kl``, each ``[B]``. ``kl`` is the analytic
    KL(q(z|x) || p(z)) where the model has one, otherwise a one-sample estimate
    of E_q[log q(z|x) - log p(z)]. ``kl_units`` (``[B, D]``, where the model has
    it) splits the analytic KL of a factorised q over the latent units; its rows
    sum to ``kl`` (free bits penalise each unit separately).
    """

    elbo: Tensor  # [B]
    log_px_z: Tensor  # [B]  E_q[log p(x | z)], one-sample estimate
    kl: Tensor  # [B]
    kl_units: Tensor | None = None  # [B, D]


def kl_normal(
    mu_q: Tensor,
    log_var_q: Tensor,
    mu_p: Tensor | None = None,
    log_var_p: Tensor | None = None,
    *,
    per_unit: bool = False,
) -> Tensor:
    """KL( N(mu_q, diag exp(log_var_q)) || N(mu_p, diag exp(log_var_p)) ).

    Args:
        mu_q, log_var_q: ``[..., D]``.
        mu_p, log_var_p: ``[..., D]`` (broadcastable); ``None`` means the standard
            normal N(0, I).
        per_unit: return the KL of each of the D independent units instead of their sum.

    Returns:
        ``[...]``: the divergence summed over the last dimension (``[..., D]`` with ``per_unit``).
    """
    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
    if log_var_p is None:
        log_var_p = torch.zeros_like(log_var_q)
    # $KL = \frac12 \sum_j [\log\sigma_{p,j}^2 - \log\sigma_{q,j}^2
    #        + (\sigma_{q,j}^2 + (\mu_{q,j}-\mu_{p,j})^2)/\sigma_{p,j}^2 - 1]$
    kl = 0.5 * (
        log_var_p
        - log_var_q
        + (log_var_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-log_var_p)
        - 1.0
    )
    return kl if per_unit else kl.sum(-1)


def reparameterize(mu: Tensor, log_var: Tensor, eps: Tensor | None = None) -> Tensor:
    """Draw z ~ N(mu, diag exp(log_var)) as a differentiable function of mu, log_var.

    Args:
        mu, log_var: ``[..., D]``.
        eps: optional standard normal noise with the shape of ``mu`` (or a shape
            that broadcasts with it, e.g. ``[k, B, D]`` for k samples).

    Returns:
        ``z = mu + std * eps``, shaped like ``mu`` broadcast with ``eps``.
    """
    if eps is None:
        eps = torch.randn_like(mu)
    # $z = \mu + \sigma \odot \epsilon$
    return mu + torch.exp(0.5 * log_var) * eps


def log_normal(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mu, diag exp(log_var)) summed over the last dimension, ``[...]``."""
    # $\log N(z;\mu,\sigma^2) = -\frac12[\log 2\pi + \log\sigma^2 + (z-\mu)^2/\sigma^2]$
    return -0.5 * (LOG_2PI + log_var + (z - mu).pow(2) * torch.exp(-log_var)).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension, ``[...]``."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def check_count(value: object, name: str, minimum: int = 1, hint: str = "") -> int:
    """``value`` as a Python int, or ValueError unless it is an integer >= ``minimum``.

    Accepts Python and NumPy integers (anything with ``__index__``); refuses bools,
    floats and strings, whose meaning as a count is a guess. ``hint`` is added to
    the message (what the number means, or what to use instead).
    """
    wanted = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    hint = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not hasattr(value, "__index__") or (torch.is_tensor(value) and value.numel() != 1):
        raise ValueError(f"{name} must be {wanted}{hint}, got {value!r} ({type(value).__name__})")
    number = operator.index(value)
    if number < minimum:
        raise ValueError(f"{name} must be {wanted}{hint}, got {number}")
    return number


def check_batch(
    x: object,
    event_shape: tuple[int, ...],
    *,
    dtype: torch.dtype | None = None,
    unit_interval: bool = False,
    name: str = "x",
) -> None:
    """Raise ValueError with a hint unless ``x`` is a batch this model takes.

    The checks, in order: a tensor of shape ``[B, *event_shape]`` with B >= 1,
    floating point, of the model's ``dtype`` (when given), and, for tensors on the
    CPU, finite and (``unit_interval``) inside [0, 1]. The value checks read every
    entry, which on an accelerator would make each training step wait for the
    device; there :func:`vaetut.train.fit` and :func:`vaetut.bounds.log_likelihood`
    check the whole data set once, with ``check_values``, before they start.

    Args:
        x: the batch.
        event_shape: the shape of one example, e.g. ``(1, 28, 28)``.
        dtype: the model's parameter dtype.
        unit_interval: pixels are Bernoulli targets and must lie in [0, 1].
        name: what to call ``x`` in the message.
    """
    shape = tuple(int(s) for s in event_shape)
    dims = ", ".join(map(str, shape))
    if not torch.is_tensor(x) or x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        single = f"; a single example needs a batch dimension: {name}.unsqueeze(0)" if torch.is_tensor(x) and tuple(x.shape) == shape else ""
        noun = "a batch of images" if len(shape) == 3 else "a batch"
        raise ValueError(
            f"expected {noun} {name} of shape [B, {dims}], got {got}"
            + (single or f". A flat batch can be reshaped with {name}.view(-1, {dims})")
        )
    if len(x) == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): pass at least one example")
    if not x.is_floating_point():
        hint = f"{name}.float() / 255" if x.dtype == torch.uint8 else f"{name}.float()"
        raise ValueError(f"expected floating-point {name}, got dtype {x.dtype}; use {hint}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"{name} is {x.dtype} but the model's parameters are {dtype}: convert one to the other, "
            f"e.g. {name}.to({dtype}) or model.to({x.dtype})"
        )
    if x.device.type == "cpu":
        check_values(x, unit_interval=unit_interval, name=name)


def check_values(x: Tensor, *, unit_interval: bool = False, name: str = "x") -> None:
    """Raise ValueError if ``x`` holds NaN or infinite entries, or (``unit_interval``)
    entries outside [0, 1]. Reads every entry (one device synchronisation)."""
    # one reduction: any NaN or inf makes the sum NaN or inf (finite values that overflow
    # the sum fall through to the exact count below, which then finds none)
    if not bool(torch.isfinite(x.sum())) and (bad := int((~torch.isfinite(x)).sum())):
        raise ValueError(
            f"{name} holds {bad} NaN or infinite value(s) out of {x.numel()}; clean the data "
            "(e.g. torch.nan_to_num) or find where they come from before training or evaluating"
        )
    if unit_interval and x.numel():
        low, high = x.aminmax()
        if bool((low < 0) | (high > 1)):
            raise ValueError(
                f"a Bernoulli likelihood needs targets in [0, 1], got {name} with values in "
                f"[{low.item():.3g}, {high.item():.3g}]. Scale images to [0, 1] "
                "(divide uint8 pixels by 255) or use likelihood='gaussian'."
            )


def log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over all but the first dimension.

    Numerically stable for any logits: ``x * l - softplus(l)``, which equals
    ``x log p + (1 - x) log(1 - p)`` with ``p = sigmoid(l)``. Targets may be
    grey levels in [0, 1] (the continuous relaxation used with grey-level MNIST).

    Equal to ``-binary_cross_entropy_with_logits(logits, x).sum(event dims)`` up to
    float rounding, with the same gradients, bit for bit; about three times faster on
    a CPU, where torch's ``log1p`` (inside its softplus and BCE) is slow. The forward
    pass uses ``softplus(l) = max(l, 0) - log sigmoid(|l|)``: each factor
    ``sigmoid(|l_i|)`` lies in [1/2, 1], so a product of 16 of them cannot underflow,
    and one log per 16 pixels replaces the log1p per pixel. The backward pass is the
    familiar ``d/dl = x - sigmoid(l)``.

    Args:
        x: targets ``[B, ...]`` in [0, 1].
        logits: ``[B, ...]`` (or broadcastable, e.g. ``[k, B, ...]``).

    Returns:
        ``[B]`` (or ``[k, B]``).
    """
    event_dims = x.dim() - 1
    if event_dims < 1:
        raise ValueError("x must have a batch dimension and at least one event dimension")
    x.expand_as(logits)  # the shapes must agree as they do for the elementwise formula
    return _LogBernoulli.apply(x, logits, event_dims)


class _LogBernoulli(torch.autograd.Function):
    """``sum x * l - softplus(l)`` over the event dimensions, and its gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor, event_dims: int) -> Tensor:
        ctx.save_for_backward(x, logits)
        ctx.event_dims = event_dims
        start = logits.dim() - event_dims
        # $\sum_i \mathrm{softplus}(l_i) = \sum_i \max(l_i, 0) - \sum_g \log\prod_{i \in g}\sigma(|l_i|)$
        sig_abs = logits.abs().sigmoid_().flatten(start)  # [..., B, d], each in [1/2, 1]
        group = math.gcd(sig_abs.shape[-1], 16)
        log_sig = sig_abs.unflatten(-1, (-1, group)).prod(-1).log_().sum(-1)  # [..., B]
        softplus = logits.clamp(min=0).flatten(start).sum(-1) - log_sig
        # $\log p(x|z) = \sum_i x_i l_i - \mathrm{softplus}(l_i)$
        return (x * logits).flatten(start).sum(-1) - softplus

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, logits = ctx.saved_tensors
        grad = grad.reshape(grad.shape + (1,) * ctx.event_dims)  # [..., B, 1, ..., 1]
        grad_x = grad_logits = None
        if ctx.needs_input_grad[1]:
            # $\partial/\partial l_i = x_i - \sigma(l_i)$
            grad_logits = grad * (x - torch.sigmoid(logits))
        if ctx.needs_input_grad[0]:
            grad_x = (grad * logits).sum_to_size(x.shape)
        return grad_x, grad_logits, None


def log_gaussian(x: Tensor, mean: Tensor, log_sigma: Tensor | float = 0.0) -> Tensor:
    """log N(x; mean, sigma^2 I) summed over all but the first dimension.

    ``log_sigma`` is a float or a tensor that broadcasts with ``mean`` (one shared
    sigma, as in the sigma-VAE, is a scalar tensor).

    Corrects the paper's eq. (7)–(10) (book/errata.md, §3.1): the negative
    log-likelihood is *half the sum* of squared errors over the D pixels divided by
    sigma^2, plus D log sigma, plus (D/2) log 2 pi, not half the mean squared error.

    Returns:
        ``[B]`` (or ``[k, B]`` when ``mean`` carries a sample dimension in front).
    """
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    # $\log N(x;\hat x,\sigma^2) = -\frac{(x-\hat x)^2}{2\sigma^2} - \log\sigma - \frac12\log 2\pi$
    ll = -0.5 * (x - mean).pow(2) * torch.exp(-2.0 * log_sigma) - log_sigma - 0.5 * LOG_2PI
    return _sum_event(ll.expand(torch.broadcast_shapes(x.shape, mean.shape)), x.dim() - 1)


def _sum_event(ll: Tensor, event_dims: int) -> Tensor:
    """Sum the trailing ``event_dims`` dimensions: ``[..., B, *event]`` -> ``[..., B]``."""
    if event_dims < 1:
        raise ValueError("x must have a batch dimension and at least one event dimension")
    return ll.flatten(start_dim=ll.dim() - event_dims).sum(-1)
