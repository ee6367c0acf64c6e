"""log_likelihood and iwae_bound: bounds that order correctly and an exact case."""

import math

import pytest
import torch

from vaetut import VAE, iwae_bound, log_likelihood


class ExactPosteriorModel:
    """z ~ N(0,1), x|z ~ N(z, 1): p(x) = N(0, 2) and p(z|x) = N(x/2, 1/2).

    With q = the exact posterior every log weight equals log p(x), so any k gives it
    exactly; with q = the prior the estimate is noisy but consistent.
    """

    def __init__(self, exact_q: bool):
        self.exact_q = exact_q

    def log_weights(self, x, k):
        x = x.reshape(len(x))
        if self.exact_q:
            mean, var = x / 2, torch.full_like(x, 0.5)
        else:
            mean, var = torch.zeros_like(x), torch.ones_like(x)
        z = mean + var.sqrt() * torch.randn(k, len(x))
        normal = lambda v, m, s2: -0.5 * (math.log(2 * math.pi) + torch.log(s2) + (v - m) ** 2 / s2)  # noqa: E731
        return normal(z, 0, torch.ones_like(z)) + normal(x, z, torch.ones_like(z)) - normal(z, mean, var)


def _exact_log_px(x):
    return -0.5 * (math.log(2 * math.pi * 2) + x.reshape(len(x)) ** 2 / 2)


def test_exact_with_the_true_posterior():
    x = torch.randn(7, 1) * 2
    torch.testing.assert_close(log_likelihood(ExactPosteriorModel(True), x, k=3), _exact_log_px(x))


def test_consistent_within_monte_carlo_error_and_chunk_independent():
    x = torch.randn(5, 1)
    est = log_likelihood(ExactPosteriorModel(False), x, k=200_000, chunk=7_000)
    torch.testing.assert_close(est, _exact_log_px(x), atol=0.02, rtol=0)


def test_bound_rises_with_k_and_is_above_the_elbo():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(64,))
    x = torch.bernoulli(torch.rand(20, 1, 28, 28))
    with torch.no_grad():
        means = [log_likelihood(model, x, k=k).mean().item() for k in (1, 10, 1000)]
        elbo = torch.stack([model.elbo(x).elbo for _ in range(50)]).mean().item()
    assert means == sorted(means), means
    assert means[-1] > elbo
    assert abs(means[0] - elbo) < 0.1 * abs(elbo)


def test_memory_is_bounded_by_chunking():
    calls = []

    class Recorder(ExactPosteriorModel):
        def log_weights(self, x, k):
            calls.append(k)
            return super().log_weights(x, k)

    log_likelihood(Recorder(False), torch.randn(3, 1), k=1000, chunk=64)
    assert max(calls) == 64 and sum(calls) == 1000


def test_iwae_bound_is_differentiable_and_equals_elbo_estimate_for_k1():
    model = VAE(latent_dim=2, hidden=(16,))
    x = torch.rand(4, 1, 28, 28)
    bound = iwae_bound(model, x, 5)
    bound.mean().backward()
    assert model.to_mu.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [0, -5, 2.0])
def test_bad_k_is_rejected(k):
    with pytest.raises(ValueError, match="positive integer"):
        log_likelihood(ExactPosteriorModel(True), torch.randn(2, 1), k=k)
    with pytest.raises(ValueError, match="positive integer"):
        iwae_bound(ExactPosteriorModel(True), torch.randn(2, 1), k=k)
