"""The linear Gaussian model against torch.distributions and the bound identities."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vaetut.bounds import iwae_bound, log_likelihood
from vaetut.linear_gaussian import LinearGaussian, WithQ

D, N, B = 6, 3, 5


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    model = LinearGaussian.random(D, N, s=0.7, generator=g)
    x = model.sample(B, generator=g)
    return model, x, g


def random_q(g, batched):
    """A Gaussian q with a full (not diagonal) covariance, shared or one per example."""
    mean = torch.randn(B, N, generator=g, dtype=torch.float64)
    shape = (B, N, N) if batched else (N, N)
    A = torch.randn(*shape, generator=g, dtype=torch.float64)
    cov = A @ A.transpose(-2, -1) / N + 0.1 * torch.eye(N, dtype=torch.float64)
    return mean, cov


def test_log_px_matches_multivariate_normal(setup):
    model, x, _ = setup
    s2 = math.exp(2 * model.log_s.item())
    ref = MultivariateNormal(model.b, model.W @ model.W.T + s2 * torch.eye(D, dtype=torch.float64))
    torch.testing.assert_close(model.log_px(x), ref.log_prob(x))


def test_posterior_matches_conditioning_the_joint_gaussian(setup):
    """Reference: condition the joint N((0, b), [[I, W^T], [W, C]]) with the Schur complement."""
    model, x, g = setup
    C = model.marginal_cov()
    mean_ref = (model.W.T @ torch.linalg.solve(C, (x - model.b).T)).T
    cov_ref = torch.eye(N, dtype=torch.float64) - model.W.T @ torch.linalg.solve(C, model.W)
    mean, cov = model.posterior(x)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(cov, cov_ref)
    # Bayes' rule at an arbitrary z: log p(x) = log p(x, z) - log p(z | x)
    z = torch.randn(B, N, generator=g, dtype=torch.float64)
    log_post = MultivariateNormal(mean, cov).log_prob(z)
    torch.testing.assert_close(model.log_joint(x, z) - log_post, model.log_px(x))


@pytest.mark.parametrize("batched", [False, True])
def test_log_px_is_elbo_plus_kl_to_posterior(setup, batched):
    """log p(x) = ELBO(q) + KL(q || p(z|x)) for an arbitrary full-covariance Gaussian q."""
    model, x, g = setup
    q_mean, q_cov = random_q(g, batched)
    terms = model.elbo(x, q_mean, q_cov)
    post_mean, post_cov = model.posterior(x)
    q = MultivariateNormal(q_mean, q_cov)
    kl_post = kl_divergence(q, MultivariateNormal(post_mean, post_cov))
    torch.testing.assert_close(terms.elbo + kl_post, model.log_px(x))
    assert (terms.elbo < model.log_px(x)).all()
    # the terms themselves: the KL to the prior, and elbo = log_px_z - kl
    prior = MultivariateNormal(torch.zeros(N, dtype=torch.float64), torch.eye(N, dtype=torch.float64))
    torch.testing.assert_close(terms.kl, kl_divergence(q, prior))
    torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl)


def test_elbo_is_tight_at_the_posterior(setup):
    model, x, _ = setup
    torch.testing.assert_close(model.elbo(x, *model.posterior(x)).elbo, model.log_px(x))


def test_monte_carlo_elbo_matches_closed_form(setup):
    model, x, g = setup
    q_mean, q_cov = random_q(g, batched=True)
    lw = model.log_weights(x, 20000, q_mean, q_cov, generator=g)  # [k, B]
    mc, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    exact = model.elbo(x, q_mean, q_cov).elbo
    assert ((mc - exact).abs() < 4 * se).all(), (mc, exact, se)
    # and E_q[log p(x|z)] separately, from the samples' decoder term
    L = torch.linalg.cholesky(q_cov)
    eps = torch.randn(20000, B, N, generator=g, dtype=torch.float64)
    z = q_mean + torch.einsum("bij,kbj->kbi", L, eps)
    log_px_z = model.log_joint(x, z) - MultivariateNormal(torch.zeros(N, dtype=torch.float64),
                                                          torch.eye(N, dtype=torch.float64)).log_prob(z)
    se = log_px_z.std(0) / math.sqrt(len(z))
    assert ((log_px_z.mean(0) - model.elbo(x, q_mean, q_cov).log_px_z).abs() < 4 * se).all()


def test_log_weights_density_matches_torch(setup):
    """log q(z) computed from eps equals MultivariateNormal.log_prob at the drawn z."""
    model, x, _ = setup
    q_mean, q_cov = random_q(torch.Generator().manual_seed(1), batched=True)
    lw = model.log_weights(x, 7, q_mean, q_cov, generator=torch.Generator().manual_seed(2))
    L = torch.linalg.cholesky(q_cov)
    eps = torch.randn(7, B, N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = q_mean + torch.einsum("bij,kbj->kbi", L, eps)
    ref = model.log_joint(x, z) - MultivariateNormal(q_mean, q_cov).log_prob(z)
    torch.testing.assert_close(lw, ref)


def test_importance_weighted_bound_rises_with_k_toward_log_px(setup):
    model, x, g = setup
    q_mean, q_cov = random_q(g, batched=False)  # a poor q: far from the posterior
    exact = model.log_px(x)
    reps, means = 500, []
    for k in (1, 10, 100):
        lw = model.log_weights(x, reps * k, q_mean, q_cov, generator=g).view(reps, k, B)
        bound = torch.logsumexp(lw, dim=1) - math.log(k)  # [reps, B]
        means.append((bound.mean(0), bound.std(0) / math.sqrt(reps)))
    for (lo, se_lo), (hi, se_hi) in zip(means[:-1], means[1:]):
        assert (hi - lo > 3 * torch.sqrt(se_lo**2 + se_hi**2)).all()
    assert (means[-1][0] < exact).all()
    # and through vaetut.bounds, via the wrapper: the large-k estimate is closer than the ELBO
    pair = model.with_q(lambda xb: (q_mean[: len(xb)], q_cov))
    assert isinstance(pair, WithQ)
    torch.manual_seed(0)
    est = log_likelihood(pair, x, k=5000, batch_size=B)
    assert ((exact - est).abs() < (exact - pair.elbo(x).elbo).abs()).all()
    assert iwae_bound(pair, x, 3).shape == (B,)


def test_true_posterior_gives_zero_variance_weights(setup):
    model, x, _ = setup
    pair = model.with_q(model.posterior)
    lw = pair.log_weights(x, 50)  # [50, B]
    exact = model.log_px(x)
    torch.testing.assert_close(lw, exact.expand(50, B), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_likelihood(pair, x, k=64), exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(iwae_bound(pair, x, 1), exact, rtol=0, atol=1e-10)


def test_float32_agrees_with_float64(setup):
    model, x, _ = setup
    m32 = LinearGaussian(model.W.float(), model.b.float(), model.log_s.item())
    torch.testing.assert_close(m32.log_px(x.float()), model.log_px(x).float(), rtol=1e-4, atol=1e-4)


def test_bad_input_is_explained(setup):
    model, x, g = setup
    q_mean, q_cov = random_q(g, batched=False)
    with pytest.raises(ValueError, match=r"x must be a batch \[B, d\] = \[B, 6\].*unsqueeze"):
        model.log_px(x[0])
    with pytest.raises(ValueError, match=r"x must be a batch"):
        model.posterior(x[:, :4])
    with pytest.raises(ValueError, match="floating point"):
        model.log_px(x.long())
    with pytest.raises(ValueError, match=r"q_mean must be \[B, n\] = \[5, 3\]"):
        model.elbo(x, q_mean[:, :2], q_cov)
    with pytest.raises(ValueError, match=r"q_cov must be a covariance .*diag_embed"):
        model.elbo(x, q_mean, torch.ones(N, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive definite"):
        model.elbo(x, q_mean, -torch.eye(N, dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        model.elbo(x, q_mean, q_cov + torch.triu(torch.ones(N, N, dtype=torch.float64), 1))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        model.log_weights(x, 0, q_mean, q_cov)
    with pytest.raises(ValueError, match=r"W must be a floating-point matrix \[d, n\]"):
        LinearGaussian(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"b must be a vector \[d\] = \[3\]"):
        LinearGaussian(torch.ones(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="log_s must be one finite number"):
        LinearGaussian(torch.ones(3, 2), torch.ones(3), float("inf"))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        LinearGaussian.random(3, 0)
    with pytest.raises(ValueError, match="noise scale s must be positive"):
        LinearGaussian.random(3, 2, s=0.0)
    with pytest.raises(ValueError, match="encoder must be a function"):
        model.with_q((q_mean, q_cov))
