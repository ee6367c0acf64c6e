"""Gradient estimators against closed forms, quadrature, autograd and each other."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from vaetut.distributions import reparameterize
from vaetut.gradients import Grad, reparam_grad, score_function_grad

DT = torch.float64
MU = torch.tensor([0.5, -1.0, 2.0], dtype=DT)
LOG_VAR = torch.tensor([0.0, -1.0, 0.7], dtype=DT)
C = torch.tensor([1.0, 0.0, -0.5], dtype=DT)


def quadratic(z):
    return (z - C).pow(2).sum(-1)


def softplus_sum(z):
    return torch.nn.functional.softplus(z).sum(-1)


def within(estimates, reference, sigmas=4.0):
    """Each coordinate of the mean of ``estimates`` [k, n] within ``sigmas`` standard errors."""
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(len(estimates))
    return bool(((mean - reference).abs() < sigmas * se + 1e-12).all())


def quadrature_grad(f_1d, mu, log_var, points=80):
    """Reference: E_q[f] by Gauss-Hermite quadrature per dimension (f separable), grad by autograd."""
    t, w = np.polynomial.hermite_e.hermegauss(points)  # weight exp(-t^2/2)
    t = torch.tensor(t, dtype=DT)
    w = torch.tensor(w / math.sqrt(2 * math.pi), dtype=DT)
    mu = mu.clone().requires_grad_(True)
    log_var = log_var.clone().requires_grad_(True)
    z = mu[:, None] + torch.exp(0.5 * log_var)[:, None] * t  # [n, points]
    expectation = (f_1d(z) * w).sum()
    return torch.autograd.grad(expectation, (mu, log_var))


@pytest.mark.parametrize("estimator", [reparam_grad, score_function_grad])
def test_unbiased_on_quadratic(estimator):
    # E (z - c)^2 = (mu - c)^2 + sigma^2: d/dmu = 2 (mu - c), d/dlog_var = sigma^2
    g = estimator(quadratic, MU, LOG_VAR, 200_000, generator=torch.Generator().manual_seed(0))
    assert isinstance(g, Grad) and g.mu.shape == g.log_var.shape == (200_000, 3)
    assert within(g.mu, 2 * (MU - C))
    assert within(g.log_var, LOG_VAR.exp())


@pytest.mark.parametrize("estimator", [reparam_grad, score_function_grad])
def test_unbiased_on_softplus_against_quadrature(estimator):
    ref_mu, ref_log_var = quadrature_grad(torch.nn.functional.softplus, MU, LOG_VAR)
    g = estimator(softplus_sum, MU, LOG_VAR, 200_000, generator=torch.Generator().manual_seed(1))
    assert within(g.mu, ref_mu)
    assert within(g.log_var, ref_log_var)


def test_quadrature_reference_is_right_on_sin():
    """The reference itself, on a closed form: E sin(z) = sin(mu) exp(-sigma^2 / 2)."""
    ref_mu, ref_log_var = quadrature_grad(torch.sin, MU, LOG_VAR)
    var = LOG_VAR.exp()
    torch.testing.assert_close(ref_mu, torch.cos(MU) * torch.exp(-var / 2))
    torch.testing.assert_close(ref_log_var, -torch.sin(MU) * torch.exp(-var / 2) * var / 2)


def test_reparameterized_has_lower_variance_on_quadratic():
    gen = lambda: torch.Generator().manual_seed(2)  # the same draws for both
    rep = reparam_grad(quadratic, MU, LOG_VAR, 20_000, generator=gen())
    sf = score_function_grad(quadratic, MU, LOG_VAR, 20_000, generator=gen())
    assert (rep.mu.var(0) * 3 < sf.mu.var(0)).all()
    assert (rep.log_var.var(0) * 3 < sf.log_var.var(0)).all()


def test_reparam_rows_are_per_sample_gradients_of_the_mean():
    """The mean of the rows is autograd's gradient of the n-sample average of f."""
    eps = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=DT)
    g = reparam_grad(softplus_sum, MU, LOG_VAR, 64, eps=eps)
    mu, log_var = MU.clone().requires_grad_(True), LOG_VAR.clone().requires_grad_(True)
    ref = torch.autograd.grad(softplus_sum(reparameterize(mu, log_var, eps)).mean(), (mu, log_var))
    torch.testing.assert_close(g.mu.mean(0), ref[0])
    torch.testing.assert_close(g.log_var.mean(0), ref[1])
    # row by row, the chain rule: dz/dmu = 1, dz/dlog_var = sigma * eps / 2
    df_dz = torch.sigmoid(MU + torch.exp(0.5 * LOG_VAR) * eps)
    torch.testing.assert_close(g.mu, df_dz)
    torch.testing.assert_close(g.log_var, df_dz * torch.exp(0.5 * LOG_VAR) * eps / 2)


def test_score_is_autograd_of_log_q():
    eps = torch.randn(16, 3, generator=torch.Generator().manual_seed(4), dtype=DT)
    g = score_function_grad(softplus_sum, MU, LOG_VAR, 16, eps=eps, baseline=0.3)
    z = MU + torch.exp(0.5 * LOG_VAR) * eps
    for i in range(16):
        mu, log_var = MU.clone().requires_grad_(True), LOG_VAR.clone().requires_grad_(True)
        log_q = Normal(mu, torch.exp(0.5 * log_var)).log_prob(z[i]).sum()
        s_mu, s_log_var = torch.autograd.grad(log_q, (mu, log_var))
        w = softplus_sum(z[i : i + 1])[0] - 0.3
        torch.testing.assert_close(g.mu[i], w * s_mu)
        torch.testing.assert_close(g.log_var[i], w * s_log_var)


def test_score_function_handles_a_step_function_and_reparam_refuses():
    """f = number of positive coordinates: E f = sum Phi(mu / sigma), d/dmu = phi(mu / sigma) / sigma."""
    step = lambda z: (z > 0).to(z.dtype).sum(-1)
    sigma = torch.exp(0.5 * LOG_VAR)
    ref = torch.exp(Normal(0.0, 1.0).log_prob(MU / sigma)) / sigma
    g = score_function_grad(step, MU, LOG_VAR, 200_000, baseline=1.5, generator=torch.Generator().manual_seed(5))
    assert within(g.mu, ref)
    with pytest.raises(ValueError, match="score_function_grad needs only"):
        reparam_grad(step, MU, LOG_VAR, 10)


def test_gradient_reaches_an_encoder_through_reparameterize():
    """A linear encoder h -> (mu, log_var): autograd through the sample equals the chain rule."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 6).double()
    h = torch.randn(1, 4, dtype=DT)
    eps = torch.randn(32, 3, generator=torch.Generator().manual_seed(6), dtype=DT)
    mu, log_var = enc(h)[0].chunk(2)  # [3], [3]
    loss = softplus_sum(reparameterize(mu, log_var, eps)).mean()
    loss.backward()
    assert enc.weight.grad.abs().sum() > 0 and enc.bias.grad.abs().sum() > 0
    g = reparam_grad(softplus_sum, mu, log_var, 32, eps=eps)
    dmu_dlv = torch.cat([g.mu.mean(0), g.log_var.mean(0)])  # dL/d(encoder output) [6]
    torch.testing.assert_close(enc.bias.grad, dmu_dlv)
    torch.testing.assert_close(enc.weight.grad, dmu_dlv[:, None] * h)


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"mu must be a floating-point vector \[n\]"):
        reparam_grad(quadratic, MU[None], LOG_VAR[None], 4)
    with pytest.raises(ValueError, match=r"log_var must have the shape of mu, \[3\]"):
        score_function_grad(quadratic, MU, LOG_VAR[:2], 4)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        reparam_grad(quadratic, MU, LOG_VAR, 0)
    with pytest.raises(ValueError, match=r"eps must be standard normal noise \[k, n\] = \[4, 3\]"):
        score_function_grad(quadratic, MU, LOG_VAR, 4, eps=torch.zeros(3, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"one value per sample \[k\] = \[4\], got \(4, 3\)"):
        reparam_grad(lambda z: z.pow(2), MU, LOG_VAR, 4)
    with pytest.raises(ValueError, match=r"one value per sample"):
        score_function_grad(lambda z: z.pow(2).sum(), MU, LOG_VAR, 4)
