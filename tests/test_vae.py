"""The VAE model: its bound against an independent computation, gradients, and bad input.

Every reference here is computed from the model's networks (``encoder``, ``to_mu``,
``to_log_var``, ``decoder``) and torch.distributions, never from the methods under
test. The models are moved away from their initialisation first (``_far_from_prior``):
at initialisation q(z|x) is close to N(0, I), its standard deviation close to 1 and
the decoder almost ignores z, so a dropped KL term, a wrong sign or a missing 1/2 in
the standard deviation would change the numbers by less than the tolerances.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaetut import VAE, VAEConfig


def _x(n=6, shape=(1, 28, 28)):
    return torch.rand(n, *shape)


def _far_from_prior(model: VAE) -> VAE:
    """q(z|x) with means near +1.5 and standard deviations near exp(-1/2) = 0.61 (KL about
    1.8 nats per unit instead of about 0), and a decoder that depends strongly on z."""
    with torch.no_grad():
        model.to_mu.bias.add_(1.5)
        model.to_log_var.weight.mul_(0.1)
        model.to_log_var.bias.fill_(-1.0)
        last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
        last.weight.mul_(4.0)
    return model


def _q(model: VAE, x):
    """q(z|x) from the model's networks, as torch.distributions, and the features h(x)."""
    h = model.encoder(x)
    mu, log_var = model.to_mu(h), model.to_log_var(h)
    return Independent(Normal(mu, torch.exp(0.5 * log_var)), 1), h


def _prior(q):
    return Independent(Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean)), 1)


def _log_px_z(model: VAE, x, out):
    """log p(x|z) of binary x from decoder outputs ``out [..., B, C, H, W]``, by torch.distributions."""
    if model.config.likelihood == "bernoulli":
        return Independent(Bernoulli(logits=out), 3).log_prob(x.expand_as(out))
    return Independent(Normal(out, model.config.sigma), 3).log_prob(x.expand_as(out))


@pytest.mark.parametrize("kw", [{}, {"arch": "conv"}, {"hidden": ()}, {"likelihood": "gaussian", "sigma": 0.5}])
def test_elbo_matches_torch_distributions(kw):
    torch.manual_seed(0)
    model = _far_from_prior(VAE(latent_dim=3, **kw))
    x = torch.bernoulli(_x())
    torch.manual_seed(1)
    terms = model.elbo(x)
    # recompute independently with the same noise
    torch.manual_seed(1)
    with torch.no_grad():
        q, _ = _q(model, x)
        z = q.mean + q.stddev * torch.randn_like(q.mean)
        log_px_z = _log_px_z(model, x, model.decoder(z))
        kl = kl_divergence(q, _prior(q))
    assert (kl > 2).all()  # far from the prior: a dropped or halved KL would show
    torch.testing.assert_close(terms.log_px_z, log_px_z, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.kl_units, kl_divergence(q.base_dist, Normal(0.0, 1.0)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.elbo, log_px_z - kl, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("route", ["training (gradients on)", "evaluation (gradients off)"])
def test_log_weights_average_to_the_elbo(route):
    """E_q[log w] = E_q[log p(x|z)] - KL(q || p): on the samples log_weights draws (the
    same seed), log w - log p(x|z) averages to minus torch's analytic KL, on both
    routes of VAE.log_weights. A log_weights without log p(z) - log q(z|x), or with
    either term wrong, misses it by many standard errors."""
    torch.manual_seed(0)
    model = _far_from_prior(VAE(latent_dim=4, hidden=(32,)))
    x = torch.bernoulli(_x(3))
    k = 4000
    torch.manual_seed(2)
    with torch.set_grad_enabled(route.startswith("training")):
        lw = model.log_weights(x, k).detach()  # [k, B]
    with torch.no_grad():
        q, _ = _q(model, x)
        torch.manual_seed(2)
        z = q.mean + q.stddev * torch.randn(k, *q.mean.shape)  # the same samples, [k, B, D]
        log_px_z = _log_px_z(model, x, model.decoder(z.flatten(0, 1)).unflatten(0, (k, len(x))))  # [k, B]
        kl = kl_divergence(q, _prior(q))  # [B]
    assert lw.shape == (k, 3)
    diff = lw - log_px_z  # [k, B]: the one-sample estimate of -KL on each sample
    se = diff.std(0) / math.sqrt(k)
    assert ((diff.mean(0) + kl).abs() < 4 * se).all(), (diff.mean(0), -kl, se)
    assert (kl > 40 * se).all()  # the check has power: dropping the KL term moves the mean by 40 se or more


def test_gradients_reach_the_encoder_through_the_sample():
    """The gradient of log p(x|z) alone reaches the encoder only through z = mu + std * eps,
    so it is the chain rule: dz/dmu = 1, dz/dlog_var = eps * std / 2, times the decoder's
    gradient at z (by autograd on the decoder and torch's Bernoulli, at the same eps)."""
    torch.manual_seed(0)
    model = _far_from_prior(VAE(latent_dim=2, hidden=(16,)))
    x = torch.bernoulli(_x(4))
    torch.manual_seed(1)
    model.elbo(x).log_px_z.sum().backward()
    with torch.no_grad():
        q, h = _q(model, x)
    torch.manual_seed(1)
    eps = torch.randn_like(q.mean)
    z = (q.mean + q.stddev * eps).requires_grad_()
    (g_z,) = torch.autograd.grad(_log_px_z(model, x, model.decoder(z)).sum(), z)  # [B, D]
    assert g_z.abs().min() > 0
    torch.testing.assert_close(model.to_mu.weight.grad, g_z.T @ h)
    torch.testing.assert_close(model.to_mu.bias.grad, g_z.sum(0))
    torch.testing.assert_close(model.to_log_var.weight.grad, (g_z * eps * q.stddev / 2).T @ h)
    assert model.encoder[1][0].weight.grad.abs().sum() > 0


def test_sample_decodes_prior_draws_and_reconstruct_decodes_the_posterior_mean():
    torch.manual_seed(0)
    model = _far_from_prior(VAE(latent_dim=2, arch="conv"))
    x = _x(3)
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    r = model.reconstruct(x)
    assert s.shape == (5, 1, 28, 28) and r.shape == (3, 1, 28, 28)
    assert 0 <= s.min() and s.max() <= 1
    torch.testing.assert_close(s, model.sample(5, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))  # z ~ p(z) = N(0, I)
        torch.testing.assert_close(s, torch.sigmoid(model.decoder(z)))
        q, _ = _q(model, x)
        torch.testing.assert_close(r, torch.sigmoid(model.decoder(q.mean)))  # z = E_q[z|x], not a sample
    torch.testing.assert_close(r, model.reconstruct(x))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_latent_size_is_rejected(bad):
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        VAE(latent_dim=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_non_positive_k_is_rejected(bad):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        VAE().log_weights(_x(2), bad)


def test_wrong_input_shape_says_what_to_do():
    model = VAE()
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\].*view"):
        model.elbo(torch.rand(4, 784))
    with pytest.raises(ValueError, match="unsqueeze"):
        model.elbo(torch.rand(1, 28, 28))


def test_bernoulli_targets_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"targets in \[0, 1\].*255"):
        VAE().elbo(_x(2) * 255)
    VAE(likelihood="gaussian").elbo(_x(2) * 3 - 1)  # a Gaussian decoder takes any real pixels


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible by 8"):
        VAEConfig(arch="conv", channels=(8, 8, 8), image_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="arch"):
        VAEConfig(arch="transformer")
