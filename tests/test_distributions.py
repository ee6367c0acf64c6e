"""The hand-written Gaussian and Bernoulli pieces against torch.distributions."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaetut.distributions import (
    kl_normal,
    log_bernoulli,
    log_gaussian,
    log_normal,
    log_standard_normal,
    reparameterize,
)


def _diag(mu, log_var):
    return Independent(Normal(mu, torch.exp(0.5 * log_var)), 1)


def test_kl_normal_standard_prior_matches_torch():
    mu, log_var = torch.randn(64, 7) * 2, torch.randn(64, 7)
    ref = kl_divergence(_diag(mu, log_var), _diag(torch.zeros(7), torch.zeros(7)))
    torch.testing.assert_close(kl_normal(mu, log_var), ref, rtol=1e-5, atol=1e-5)
    # per unit: each unit's own one-dimensional KL (free bits penalise them one by one)
    per_unit = kl_divergence(Normal(mu, torch.exp(0.5 * log_var)), Normal(0.0, 1.0))  # [64, 7]
    torch.testing.assert_close(kl_normal(mu, log_var, per_unit=True), per_unit, rtol=1e-5, atol=1e-5)


def test_kl_normal_general_prior_matches_torch():
    mu_q, lv_q = torch.randn(32, 5), torch.randn(32, 5) * 1.5
    mu_p, lv_p = torch.randn(32, 5), torch.randn(32, 5) * 1.5
    ref = kl_divergence(_diag(mu_q, lv_q), _diag(mu_p, lv_p))
    torch.testing.assert_close(kl_normal(mu_q, lv_q, mu_p, lv_p), ref, rtol=1e-5, atol=1e-5)


def test_kl_normal_broadcasts_prior_and_is_zero_at_equality():
    mu, lv = torch.randn(10, 4), torch.randn(10, 4)
    torch.testing.assert_close(kl_normal(mu, lv, mu, lv), torch.zeros(10), atol=1e-6, rtol=0)
    mu_p, lv_p = torch.randn(4), torch.randn(4)  # one prior for the whole batch
    ref = kl_divergence(_diag(mu, lv), _diag(mu_p.expand(10, 4), lv_p.expand(10, 4)))
    torch.testing.assert_close(kl_normal(mu, lv, mu_p, lv_p), ref, rtol=1e-5, atol=1e-5)


def test_reparameterize_has_the_right_moments_and_gradients():
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    log_var = torch.tensor([0.5, -1.0], requires_grad=True)
    eps = torch.randn(200_000, 2)
    z = reparameterize(mu, log_var, eps)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), log_var.detach().exp(), rtol=0.02, atol=0)
    z.sum().backward()
    # dz/dmu = 1, dz/dlog_var = eps * std / 2
    torch.testing.assert_close(mu.grad, torch.full((2,), 200_000.0))
    expected = (eps * torch.exp(0.5 * log_var.detach()) / 2).sum(0)
    torch.testing.assert_close(log_var.grad, expected, rtol=1e-4, atol=1e-2)


def test_log_normal_matches_torch():
    z, mu, lv = torch.randn(3, 8, 6), torch.randn(8, 6), torch.randn(8, 6)
    torch.testing.assert_close(log_normal(z, mu, lv), _diag(mu, lv).log_prob(z), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        log_standard_normal(z), _diag(torch.zeros(6), torch.zeros(6)).log_prob(z), rtol=1e-5, atol=1e-4
    )


def test_log_bernoulli_matches_torch_and_is_stable():
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.3))
    logits = torch.randn(5, 1, 4, 4) * 3
    ref = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(log_bernoulli(x, logits), ref, rtol=1e-5, atol=1e-5)
    # huge logits stay finite and exact
    big = torch.tensor([[[[80.0, -80.0]]]])
    torch.testing.assert_close(log_bernoulli(torch.tensor([[[[0.0, 1.0]]]]), big), torch.tensor([-160.0]))


def test_log_bernoulli_of_grey_targets_is_the_cross_entropy():
    """Grey-level targets (which torch's Bernoulli refuses): x log p + (1 - x) log(1 - p),
    p = sigmoid(l), in float64 from the definition, also where p rounds to 0 or 1 in float32."""
    x = torch.rand(5, 1, 4, 4)
    logits = torch.randn(5, 1, 4, 4) * 4
    logits[0, 0, 0, :2] = torch.tensor([30.0, -30.0])
    p = torch.sigmoid(logits.double())
    ref = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(log_bernoulli(x, logits).double(), ref, rtol=1e-5, atol=1e-4)


def test_log_bernoulli_broadcasts_over_samples():
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    logits = torch.randn(6, 4, 1, 3, 3)
    out = log_bernoulli(x, logits)
    assert out.shape == (6, 4)
    ref = Independent(Bernoulli(logits=logits), 3).log_prob(x.expand(6, 4, 1, 3, 3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_log_bernoulli_gradients_match_autograd_of_the_cross_entropy():
    """The hand-written backward pass (d/dl = x - sigmoid(l), d/dx = l) against autograd
    through torch's BCE-with-logits, with the sample dimension broadcast over x, and the
    second derivatives by gradgradcheck in float64."""
    x = torch.rand(4, 1, 4, 8, dtype=torch.float64, requires_grad=True)
    logits = (torch.randn(3, 4, 1, 4, 8, dtype=torch.float64) * 5).requires_grad_()
    weights = torch.randn(3, 4, dtype=torch.float64)  # a non-uniform upstream gradient
    ours = torch.autograd.grad((log_bernoulli(x, logits) * weights).sum(), (x, logits))
    bce = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(2).sum(-1)
    ref = torch.autograd.grad((bce * weights).sum(), (x, logits))
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    small_x = torch.rand(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    small_l = torch.randn(2, 2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(log_bernoulli, (small_x, small_l))
    assert torch.autograd.gradgradcheck(log_bernoulli, (small_x, small_l))


def test_log_bernoulli_of_many_pixels_matches_the_float64_cross_entropy():
    """784 pixels (the group-product route with 16 pixels a group) and logits up to +-60,
    where float32 sigmoids round to 0 or 1, against the definition in float64."""
    x = torch.rand(6, 1, 28, 28)
    logits = torch.randn(6, 1, 28, 28) * 20
    ref = -F.binary_cross_entropy_with_logits(logits.double(), x.double(), reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(log_bernoulli(x, logits).double(), ref, rtol=1e-6, atol=1e-3)


def test_log_gaussian_matches_torch_for_fixed_and_shared_sigma():
    x, mean = torch.rand(5, 1, 4, 4), torch.rand(5, 1, 4, 4)
    for log_sigma in (0.0, -1.3, torch.tensor(0.7)):
        sigma = math.exp(float(log_sigma))
        ref = Independent(Normal(mean, sigma), 3).log_prob(x)
        torch.testing.assert_close(log_gaussian(x, mean, log_sigma), ref, rtol=1e-5, atol=1e-4)


def test_log_gaussian_with_unit_sigma_is_half_sse_plus_constant():
    # ERRATA §3.1: -log N(x; x_hat, I) = SSE / 2 + (D / 2) log 2 pi, not MSE / 2
    x, x_hat = torch.rand(3, 1, 2, 5), torch.rand(3, 1, 2, 5)
    d = 10
    sse = (x - x_hat).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(-log_gaussian(x, x_hat), sse / 2 + d / 2 * math.log(2 * math.pi))


def test_log_likelihoods_need_an_event_dimension():
    with pytest.raises(ValueError, match="event dimension"):
        log_bernoulli(torch.rand(5), torch.randn(5))
