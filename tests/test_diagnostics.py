"""Diagnostics against brute force, torch.distributions and a model with a known posterior."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from vaetut.diagnostics import active_units, activity, elbo_gap, kl_per_dimension, posterior_stats
from vaetut.distributions import kl_normal
from vaetut.vae import VAE


def _vae_with_dead_units(dead, latent_dim=6, seed=0):
    """A small MLP VAE whose to_mu rows (and biases) are zero for the units in ``dead``."""
    torch.manual_seed(seed)
    model = VAE(image_shape=(1, 8, 8), hidden=(32,), latent_dim=latent_dim)
    with torch.no_grad():
        model.to_mu.weight.mul_(20.0)  # make the live units clearly active
        model.to_mu.weight[dead] = 0.0
        model.to_mu.bias[dead] = 0.0
    return model


def test_active_units_finds_the_dead_units():
    dead = [1, 4]
    model = _vae_with_dead_units(dead)
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    mu, log_var = posterior_stats(model, x, batch_size=64)
    act = activity(mu)
    assert torch.all(act[dead] == 0)
    expected = torch.ones(6, dtype=torch.bool)
    expected[dead] = False
    assert torch.equal(active_units(mu), expected)
    assert active_units(mu).dtype == torch.bool


def test_activity_is_the_sample_variance_and_threshold_is_strict():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([0.05, 0.2, 3.0], dtype=torch.float64)
    np.testing.assert_allclose(activity(mu).numpy(), np.var(mu.numpy(), axis=0, ddof=1), rtol=1e-12)
    # variances near 0.0025, 0.04, 9: only the first is under Burda's 0.01
    assert active_units(mu).tolist() == [False, True, True]
    a = activity(mu)
    assert active_units(mu, threshold=float(a[1])).tolist() == [False, False, True]


def test_kl_per_dimension_sums_to_kl_normal_and_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(50, 4, generator=g, dtype=torch.float64)
    log_var = torch.randn(50, 4, generator=g, dtype=torch.float64)
    per_dim = kl_per_dimension(mu, log_var)
    assert per_dim.shape == (4,)
    torch.testing.assert_close(per_dim.sum(), kl_normal(mu, log_var).mean())
    # brute force, one unit at a time
    for u in range(4):
        brute = np.mean(
            [0.5 * (math.exp(lv) + m**2 - 1 - lv) for m, lv in zip(mu[:, u].tolist(), log_var[:, u].tolist())]
        )
        assert abs(per_dim[u].item() - brute) < 1e-12


def test_posterior_stats_matches_one_big_encode_and_restores_mode():
    model = _vae_with_dead_units([0])
    model.train()
    x = torch.rand(130, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    mu, log_var = posterior_stats(model, x, batch_size=50)
    assert model.training
    with torch.no_grad():
        mu_ref, log_var_ref = model.encode(x)
    torch.testing.assert_close(mu, mu_ref)
    torch.testing.assert_close(log_var, log_var_ref)
    assert not mu.requires_grad


class _LinearGaussian(nn.Module):
    """p(z) = N(0, 1), p(x|z) = N(x; z, 1), so p(z|x) = N(x/2, 1/2) and p(x) = N(0, 2).

    q(z|x) = N(x/2 + shift, var_q): exact when shift = 0 and var_q = 1/2.
    """

    def __init__(self, shift=0.0, var_q=0.5):
        super().__init__()
        self.shift = shift
        self.var_q = var_q
        self.dummy = nn.Parameter(torch.zeros(()))

    def log_weights(self, x, k):  # x: [B, 1] -> [k, B]
        m = x[:, 0] / 2 + self.shift  # [B]
        z = m + math.sqrt(self.var_q) * torch.randn(k, len(x), dtype=x.dtype)  # [k, B]
        log_joint = Normal(0.0, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(x[:, 0])
        return log_joint - Normal(m, math.sqrt(self.var_q)).log_prob(z)


def test_elbo_gap_is_zero_for_the_exact_posterior_and_the_kl_otherwise():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 8, dtype=torch.float64).unsqueeze(1)  # [8, 1]
    gap = elbo_gap(_LinearGaussian(), x, k=200, elbo_samples=50)
    torch.testing.assert_close(gap, torch.zeros(8, dtype=torch.float64), atol=1e-10, rtol=0)

    model = _LinearGaussian(shift=0.7, var_q=1.2)
    gap = elbo_gap(model, x, k=20000, elbo_samples=20000, batch_size=4)
    # log p(x) - ELBO = KL(q(z|x) || p(z|x)), here the same for every x
    kl = kl_divergence(Normal(0.7, math.sqrt(1.2)), Normal(0.0, math.sqrt(0.5))).item()
    assert abs(gap.mean().item() - kl) < 0.03


def test_elbo_gap_of_a_vae_is_positive_on_average():
    torch.manual_seed(0)
    model = VAE(image_shape=(1, 8, 8), hidden=(16,), latent_dim=3)
    x = (torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    gap = elbo_gap(model, x, k=500, elbo_samples=100, batch_size=20)
    assert gap.shape == (40,)
    assert gap.mean() > 0.05


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        activity(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        activity(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="shape of mu"):
        kl_per_dimension(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="threshold"):
        active_units(torch.zeros(4, 3), threshold=-1.0)
    with pytest.raises(ValueError, match="encode"):
        posterior_stats(object(), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="batch_size"):
        posterior_stats(VAE(image_shape=(1, 8, 8), hidden=(4,), latent_dim=2), torch.zeros(4, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="elbo_samples"):
        elbo_gap(_LinearGaussian(), torch.zeros(3, 1), k=10, elbo_samples=0)
