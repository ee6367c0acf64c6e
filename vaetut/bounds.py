"""Bounds and estimates of log p(x) built on one estimator: the log importance weights.

Every model in vaetut exposes ``log_weights(x, k)`` -> ``[k, B]``, the values
``log w_i = log p(x, z_i) - log q(z_i | x)`` for k samples ``z_i ~ q(z | x)``. On top
of that one method this module writes, once for every model:

* the importance-weighted bound (Burda et al. 2016, eq. 8)
  ``L_k = E[log (1/k) sum_i w_i]``, which is the ELBO for k = 1, never decreases
  with k and tends to log p(x) as k grows;
* ``log_likelihood``: the same estimator with a large k (5000 in Burda et al.),
  the standard way to report test log-likelihoods of VAEs, in nats.

Taught in the chapters "The ELBO" and "Gaussian VAE". Imports torch and
:mod:`vaetut.distributions` only.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

try:  # inside the vaetut package
    from .distributions import check_count
except ImportError:  # copied into a folder beside distributions.py
    from distributions import check_count  # type: ignore[no-redef]

__all__ = ["HasLogWeights", "iwae_bound", "log_likelihood"]


class HasLogWeights(Protocol):
    def log_weights(self, x: Tensor, k: int) -> Tensor:  # [k, B]
        ...


@torch.no_grad()
def log_likelihood(
    model: HasLogWeights,
    x: Tensor,
    k: int = 5000,
    *,
    chunk: int | None = None,
    batch_size: int = 100,
    max_elements: int = 2**25,
    progress: bool = False,
) -> Tensor:
    """Importance-sampled log p(x) in nats, per example.

    ``log p(x) ~= logsumexp_i(log w_i) - log k`` with k samples from the model's
    q(z|x). The k samples are drawn in chunks and folded into a running
    logsumexp, so memory stays bounded however large k is.

    Args:
        model: anything with ``log_weights(x, k) -> [k, B]``.
        x: data ``[N, ...]``, on the model's device or the CPU (moved per batch).
        k: number of importance samples per example (>= 1); 1 gives a one-sample
            ELBO estimate.
        chunk: samples per call of ``log_weights``; by default chosen so a chunk
            holds about ``max_elements`` numbers of size ``x[0]``.
        batch_size: examples per batch.
        progress: print one line per batch of examples.

    Returns:
        ``[N]`` estimates of log p(x) (float64 accumulation, returned as x's float dtype).
    """
    k = check_count(k, "k", hint="the number of importance samples")
    batch_size = check_count(batch_size, "batch_size")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch [N, ...], got shape {tuple(x.shape)}")
    device = _model_device(model, x)
    per_example = max(1, x[0].numel())
    if chunk is None:
        chunk = max(1, min(k, max_elements // (per_example * min(batch_size, len(x)))))
    chunk = check_count(chunk, "chunk")
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        acc = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=device)
        done = 0
        while done < k:
            c = min(chunk, k - done)
            lw = model.log_weights(xb, c).double()  # [c, B]
            acc = torch.logaddexp(acc, torch.logsumexp(lw, dim=0))
            done += c
        out.append(acc - math.log(k))
        if progress:
            print(f"log_likelihood: {min(start + batch_size, len(x))}/{len(x)} examples", flush=True)
    return torch.cat(out).to(x.dtype if x.is_floating_point() else torch.float32)


def iwae_bound(model: HasLogWeights, x: Tensor, k: int) -> Tensor:
    """The importance-weighted bound L_k on one batch, differentiable, ``[B]``.

    ``L_k = logsumexp_i(log w_i) - log k`` for one draw of k samples; L_1 is the
    one-sample ELBO. Unlike :func:`log_likelihood` this keeps the graph, so it can
    be trained on (the IWAE objective).
    """
    k = check_count(k, "k", hint="the number of importance samples")
    lw = model.log_weights(x, k)  # [k, B]
    return torch.logsumexp(lw, dim=0) - math.log(k)


def _model_device(model: object, x: Tensor) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return x.device
