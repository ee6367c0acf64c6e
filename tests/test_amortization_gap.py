"""The approximation/amortization split of the ELBO's gap, against a model whose answer is known.

In the linear Gaussian model the posterior is N(m, S) in closed form. The best diagonal
Gaussian under KL(q || p(z|x)) has mean m and variances 1 / Lambda_ii (Lambda = S^-1),
and its KL to the posterior, the approximation gap, is (log det S + sum_i log Lambda_ii) / 2.
Any other diagonal q (our "encoder") loses ELBO(q*) - ELBO(q) more: the amortization gap.
Every ELBO here has a closed form (LinearGaussian.elbo), and log p(x) is exact.
"""

import math

import pytest
import torch

from vaetut.diagnostics import amortization_gap, encoder_params, family_log_weights, optimise_q, split_gap
from vaetut.distributions import log_normal
from vaetut.flow_vae import FlowVAE
from vaetut.linear_gaussian import LinearGaussian
from vaetut.vae import VAE


def _problem(seed=0, d=6, n=3, batch=8):
    gen = torch.Generator().manual_seed(seed)
    model = LinearGaussian.random(d=d, n=n, s=0.5, generator=gen)
    x = model.sample(batch, generator=gen)  # [B, d]
    m, S = model.posterior(x)  # [B, n], [n, n]
    precision = torch.linalg.inv(S)
    best = (m, -torch.log(torch.diagonal(precision)).expand_as(m))  # q*: mean m, variances 1 / Lambda_ii
    # $KL(q^* \| p(z|x)) = \frac12[\log\det S + \sum_i \log\Lambda_{ii}]$
    approx_gap = 0.5 * (torch.logdet(S) + torch.log(torch.diagonal(precision)).sum())
    return model, x, best, approx_gap


def _diagonal_log_weights(model):
    def log_weights(x, params, k):
        mu, log_var = params
        eps = torch.randn((k, *mu.shape), dtype=mu.dtype)
        z = mu + (0.5 * log_var).exp() * eps  # [k, B, n]
        return model.log_joint(x, z) - log_normal(z, mu, log_var)  # [k, B]

    return log_weights


def _elbo(model, x, params):
    mu, log_var = params
    return model.elbo(x, mu, torch.diag_embed(log_var.exp())).elbo  # closed form, [B]


def test_the_posterior_is_correlated_so_the_approximation_gap_is_not_zero():
    _, _, _, approx_gap = _problem()
    assert approx_gap > 0.05  # otherwise the tests below could not tell the two gaps apart


def test_optimise_q_finds_the_best_diagonal_gaussian():
    model, x, (m, log_var_star), _ = _problem()
    noise = torch.randn(m.shape, generator=torch.Generator().manual_seed(1), dtype=m.dtype)
    start = (m + 0.5 * noise, log_var_star + 1.0)
    torch.manual_seed(0)
    (mu, log_var), trace = optimise_q(_diagonal_log_weights(model), x, start, steps=1500, lr=0.03, k=16)
    assert torch.allclose(mu, m, atol=0.02)
    assert torch.allclose(log_var, log_var_star, atol=0.1)  # the ELBO is flat near its optimum: 0.1 costs < 0.002 nats
    assert trace.shape == (1500,) and trace[-100:].mean() > trace[:10].mean()


def test_split_gap_recovers_the_closed_form_gaps():
    model, x, best, approx_gap = _problem()
    m, log_var_star = best
    encoder = (m + 0.1, log_var_star + 0.5)  # a diagonal q that is not the best one
    split = split_gap(_diagonal_log_weights(model), x, encoder, steps=1500, lr=0.03, k_fit=16,
                      k_elbo=20_000, k_ll=20_000, batch_size=5, seed=3)
    exact_log_px = model.log_px(x)
    assert torch.allclose(split.log_px, exact_log_px, atol=0.02)  # importance sampling from q*
    assert torch.allclose(split.elbo_encoder, _elbo(model, x, encoder), atol=0.1)
    assert torch.allclose(split.elbo_optimal, _elbo(model, x, best), atol=0.02)
    assert torch.allclose(split.approximation, approx_gap.expand(len(x)), atol=0.03)
    assert torch.allclose(split.amortization, _elbo(model, x, best) - _elbo(model, x, encoder), atol=0.05)
    assert torch.allclose(split.gap, split.approximation + split.amortization)


def test_an_optimal_encoder_has_no_amortization_gap_and_exact_log_px_is_used():
    model, x, best, approx_gap = _problem(seed=2)
    exact_log_px = model.log_px(x)
    split = split_gap(_diagonal_log_weights(model), x, best, log_px=exact_log_px, steps=300, lr=0.01,
                      k_fit=16, k_elbo=20_000, seed=0)
    assert torch.equal(split.log_px, exact_log_px)
    assert split.amortization.abs().max() < 0.01
    assert torch.allclose(split.approximation, approx_gap.expand(len(x)), atol=0.02)


@pytest.mark.parametrize("make", [
    lambda: VAE(image_shape=(1, 8, 8), hidden=(16,), latent_dim=3),
    lambda: FlowVAE(flow="iaf", steps=2, image_shape=(1, 8, 8), hidden=(16,), latent_dim=3, iaf_hidden=(8,)),
    lambda: FlowVAE(flow="planar", steps=2, image_shape=(1, 8, 8), hidden=(16,), latent_dim=3),
], ids=["vae", "iaf", "planar"])
def test_the_encoders_parameters_give_the_models_own_log_weights(make):
    torch.manual_seed(0)
    model = make()
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    params = encoder_params(model, x)
    torch.manual_seed(5)
    ours = family_log_weights(model, x, params, 7)
    torch.manual_seed(5)
    theirs = model.log_weights(x, 7)  # gradients on: the route through decode
    assert ours.shape == (7, 4)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_amortization_gap_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = FlowVAE(flow="iaf", steps=2, image_shape=(1, 8, 8), hidden=(16,), latent_dim=3, iaf_hidden=(8,))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    split = amortization_gap(model, x, steps=30, k_elbo=50, k_ll=50, batch_size=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is restored
    assert all(torch.equal(p, before[name]) and p.grad is None for name, p in model.named_parameters())
    assert model.training  # the mode is restored
    assert split.log_px.shape == split.elbo_encoder.shape == split.elbo_optimal.shape == (6,)
    assert split.trace.shape == (30,)
    assert math.isfinite(split.amortization.sum().item())


def test_params_must_have_one_row_per_example():
    model, x, best, _ = _problem()
    with pytest.raises(ValueError, match="one row per example"):
        split_gap(_diagonal_log_weights(model), x, (best[0][:3], best[1]), steps=5)
