"""The VAE model: its bound against an independent computation, gradients, and bad input."""

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaetut import VAE, VAEConfig


def _x(n=6, shape=(1, 28, 28)):
    return torch.rand(n, *shape)


@pytest.mark.parametrize("kw", [{}, {"arch": "conv"}, {"hidden": ()}, {"likelihood": "gaussian", "sigma": 0.5}])
def test_elbo_matches_torch_distributions(kw):
    model = VAE(latent_dim=3, **kw)
    x = torch.bernoulli(_x())
    torch.manual_seed(1)
    terms = model.elbo(x)
    # recompute independently with the same noise
    torch.manual_seed(1)
    mu, log_var = model.encode(x)
    q = Independent(Normal(mu, torch.exp(0.5 * log_var)), 1)
    z = q.rsample()
    out = model.decode(z)
    if model.config.likelihood == "bernoulli":
        log_px_z = Independent(Bernoulli(logits=out), 3).log_prob(x)
    else:
        log_px_z = Independent(Normal(out, model.config.sigma), 3).log_prob(x)
    kl = kl_divergence(q, Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1))
    torch.testing.assert_close(terms.log_px_z, log_px_z, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.elbo, log_px_z - kl, rtol=1e-5, atol=1e-3)


def test_log_weights_average_to_the_elbo():
    model = VAE(latent_dim=4, hidden=(32,))
    x = _x(3)
    with torch.no_grad():
        lw = model.log_weights(x, 20_000)  # [k, B]
        mu, log_var = model.encode(x)
        from vaetut.distributions import kl_normal

        eps_mean = lw.mean(0)
        # E_q[log p(x,z) - log q] = E_q[log p(x|z)] - KL: estimate the first term with the same k
        z = mu + torch.exp(0.5 * log_var) * torch.randn(20_000, *mu.shape)
        rec = model.log_px_z(x, model.decode(z)).mean(0)
        elbo = rec - kl_normal(mu, log_var)
        se = lw.std(0) / 20_000**0.5
    assert lw.shape == (20_000, 3)
    assert torch.all((eps_mean - elbo).abs() < 6 * se + 0.05)


def test_gradients_reach_the_encoder_through_the_sample():
    model = VAE(latent_dim=2, hidden=(16,))
    x = _x(4)
    terms = model.elbo(x)
    # only the reconstruction term: its gradient reaches the encoder only through z
    terms.log_px_z.sum().backward()
    assert model.to_mu.weight.grad is not None and model.to_mu.weight.grad.abs().sum() > 0
    assert model.to_log_var.weight.grad is not None and model.to_log_var.weight.grad.abs().sum() > 0
    assert model.encoder[1][0].weight.grad.abs().sum() > 0


def test_sample_and_reconstruct_shapes_and_ranges():
    model = VAE(latent_dim=2, arch="conv")
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    r = model.reconstruct(_x(3))
    assert s.shape == (5, 1, 28, 28) and r.shape == (3, 1, 28, 28)
    assert 0 <= s.min() and s.max() <= 1
    s2 = model.sample(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, s2)


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
