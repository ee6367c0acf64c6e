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
import time
from typing import Protocol

import torch
from torch import Tensor

try:  # inside the vaetut package
    from .distributions import check_count, check_values
except ImportError:  # copied into a folder beside distributions.py
    from distributions import check_count, check_values  # type: ignore[no-redef]

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
    batch_size: int = 10,
    max_elements: int = 2**21,
    progress: bool = False,
) -> Tensor:
    """Importance-sampled log p(x) in nats, per example.

    ``log p(x) ~= logsumexp_i(log w_i) - log k`` with k samples from the model's
    q(z|x), the estimator of Burda et al. (2016), who use k = 5000.

    How it is organised, and why:

    * The examples go in batches of ``batch_size``; each batch's k samples are
      drawn in chunks of ``chunk`` samples (one call of ``log_weights`` each) and
      folded into a running logsumexp in float64, ``[B]``. Memory is bounded
      for any k, and the result does not depend on the chunk or batch sizes
      beyond which random numbers are drawn.
    * The default shapes keep what one call makes in the CPU's caches: a chunk
      holds about ``max_elements`` numbers of the size of ``x`` (2**21 float32,
      8 MB: for MNIST in batches of 10, 267 samples, so a VAE's decoder makes
      2,670 rows of 784 logits per call). With the earlier default of 2**25
      numbers (128 MB per call) every elementwise step waited for main memory,
      and the same computation took 1.8 times as long.
    * Small batches, so that a chunk holds many samples of each example: a VAE
      runs its encoder once per call, a cost of ``1 / chunk`` of the decoder's
      (0.4% here, 4% with batches of 100).
    * Gradients off. Besides saving autograd's bookkeeping this lets a model
      take a faster route to the same log-weights where it has one (the MLP
      :class:`~vaetut.vae.VAE` does; see its ``log_weights``).
      ``benchmarks/eval_ll.py`` measures the whole against the floor set by the
      matrix products.

    Args:
        model: anything with ``log_weights(x, k) -> [k, B]``.
        x: data ``[N, ...]``, on the model's device or the CPU (moved per batch).
        k: number of importance samples per example (>= 1); 1 gives a one-sample
            ELBO estimate.
        chunk: samples per call of ``log_weights``; by default the largest number
            with ``chunk * batch_size * x[0].numel() <= max_elements`` (at least 1,
            at most k).
        batch_size: examples per batch.
        max_elements: the default chunk's budget, in numbers.
        progress: print how many examples are done, every 10 s and at the end.

    Returns:
        ``[N]`` estimates of log p(x) (float64 accumulation, returned as x's float dtype).
    """
    k = check_count(k, "k", hint="the number of importance samples")
    batch_size = check_count(batch_size, "batch_size")
    if not torch.is_tensor(x) or x.dim() < 2 or len(x) == 0:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch [N, ...], got {got}")
    if x.is_floating_point():
        check_values(x)  # once for the whole set: the model's own check skips values on accelerators
    device = _model_device(model, x)
    if chunk is None:
        per_sample = x[0].numel() * min(batch_size, len(x))  # numbers of x's size per sample of a batch
        chunk = max(1, min(k, check_count(max_elements, "max_elements") // max(1, per_sample)))
    chunk = check_count(chunk, "chunk")
    out, last_print = [], time.monotonic()
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        acc = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=device)  # [B]
        done = 0
        while done < k:
            c = min(chunk, k - done)
            lw = model.log_weights(xb, c).double()  # [c, B]
            # $\log\sum_{i \le n+c} w_i = \mathrm{logaddexp}(\log\sum_{i \le n} w_i, \log\sum_{n < i \le n+c} w_i)$
            acc = torch.logaddexp(acc, torch.logsumexp(lw, dim=0))
            done += c
        out.append(acc - math.log(k))
        finished = min(start + batch_size, len(x))
        if progress and (finished == len(x) or time.monotonic() - last_print > 10):
            print(f"log_likelihood: {finished}/{len(x)} examples", flush=True)
            last_print = time.monotonic()
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
