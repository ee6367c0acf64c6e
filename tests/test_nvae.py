"""Tests for vaetut.nvae: the residual KL, per-group KL terms, log_weights against an
independent Monte Carlo log p(x), sampling, the spectral regulariser, KL balancing
and the input checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaetut.distributions import log_normal, log_standard_normal
from vaetut.nvae import (
    NVAE,
    NVAEELBO,
    NVAEConfig,
    SRConv2d,
    kl_balance_coefficients,
    residual_kl,
)


def binary_images(b: int, seed: int = 0, shape=(1, 28, 28)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((b, *shape), 0.3), generator=g)


def small(**kw) -> NVAE:
    """28x28 input, one group at 7x7 and two at 14x14, narrow networks."""
    torch.manual_seed(0)
    settings = dict(groups_per_scale=(1, 2), channels=(8, 4), latent_channels=2)
    settings.update(kw)
    return NVAE(**settings)


def tiny(seed: int = 0, **kw) -> NVAE:
    """4x4 images, a 1x1 group and a 2x2 group of one channel: 5 latent units, float64."""
    torch.manual_seed(seed)
    settings = dict(
        image_shape=(1, 4, 4), resolutions=(1, 2), groups_per_scale=(1, 1), channels=(4, 4), latent_channels=1
    )
    settings.update(kw)
    return NVAE(**settings).double()


def group_normals(g):
    """torch.distributions versions of one group's posterior and prior, flattened to [..., D]."""
    q = Normal(g.mu.flatten(-3), (0.5 * g.log_var.flatten(-3)).exp())
    p = Normal(g.mu_p.flatten(-3), (0.5 * g.log_var_p.flatten(-3)).exp())
    return q, p


# ------------------------------------------------------------ the residual KL
def test_residual_kl_matches_torch_kl_divergence():
    g = torch.Generator().manual_seed(0)
    mu_p, delta_mu = torch.randn(2, 5, 9, generator=g, dtype=torch.float64) * 2
    log_var_p, delta_log_var = torch.randn(2, 5, 9, generator=g, dtype=torch.float64) * 1.5
    sigma_p, delta_sigma = (0.5 * log_var_p).exp(), (0.5 * delta_log_var).exp()
    reference = kl_divergence(Normal(mu_p + delta_mu, sigma_p * delta_sigma), Normal(mu_p, sigma_p)).sum(-1)
    kl = residual_kl(delta_mu, delta_log_var, log_var_p)
    assert kl.shape == (5,)
    torch.testing.assert_close(kl, reference, rtol=1e-12, atol=1e-12)
    # no dependence on mu_p: move the prior's mean, the reference does not change either
    moved = kl_divergence(Normal(mu_p + 7 + delta_mu, sigma_p * delta_sigma), Normal(mu_p + 7, sigma_p)).sum(-1)
    torch.testing.assert_close(kl, moved, rtol=1e-10, atol=1e-10)
    # zero when the posterior is the prior
    zero = residual_kl(0 * delta_mu, 0 * delta_log_var, log_var_p)
    torch.testing.assert_close(zero, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("residual", [True, False])
def test_one_kl_term_per_group_matches_torch_and_sums_to_kl(residual):
    model = small(residual_posterior=residual)
    x = binary_images(5)
    torch.manual_seed(3)
    terms = model.elbo(x)
    torch.manual_seed(3)
    groups, logits = model.posterior(x)  # the same noise as inside elbo
    assert isinstance(terms, NVAEELBO)
    assert terms.kl_groups.shape == (5, model.groups) == (5, 3)
    torch.testing.assert_close(terms.kl, terms.kl_groups.sum(-1))
    torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl)
    torch.testing.assert_close(terms.log_px_z, Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1))
    for l, g in enumerate(groups):
        q, p = group_normals(g)
        torch.testing.assert_close(terms.kl_groups[:, l], kl_divergence(q, p).sum(-1))
    # the top group's prior is N(0, I); lower priors depend on the groups above
    assert groups[0].mu_p.abs().max() == 0 and groups[0].log_var_p.abs().max() == 0
    assert groups[1].mu_p.abs().max() > 1e-3
    assert (terms.kl_groups > 0).all()


def test_residual_posterior_is_relative_to_the_prior():
    # with residual_posterior the posterior head predicts (dmu, log dsigma^2): the same
    # head output gives q = N(mu_p + dmu, sigma_p^2 dsigma^2); without it, q = N(dmu, dsigma^2)
    x = binary_images(3)
    residual, plain = small(residual_posterior=True), small(residual_posterior=False)
    plain.load_state_dict(residual.state_dict())
    torch.manual_seed(1)
    g_res = residual.posterior(x, mean=True)[0]
    torch.manual_seed(1)
    g_plain = plain.posterior(x, mean=True)[0]
    # the top group (prior N(0, I)) is the same either way; the same z_1 gives the same h_2
    torch.testing.assert_close(g_res[0].mu, g_plain[0].mu)
    torch.testing.assert_close(g_res[1].mu_p, g_plain[1].mu_p)
    torch.testing.assert_close(g_res[1].mu, g_plain[1].mu + g_res[1].mu_p)
    torch.testing.assert_close(g_res[1].log_var, g_plain[1].log_var + g_res[1].log_var_p)


# ------------------------------------------------------------ the bounds
def test_log_weights_estimate_log_px_of_an_independent_monte_carlo():
    # log p(x) by plain Monte Carlo over the prior: ancestral samples through generate(),
    # log p(x|z) by torch's Bernoulli. Against it, logsumexp(log_weights) - log k, with a
    # decoder whose output depends on z, a conditional prior far from N(0, I)
    # (p(z_2 | z_1) centred near 3) and q pushed away from the prior (means +0.8 sigma_p,
    # scales x1.28), so that every term of log w matters.
    model = tiny().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SRConv2d):
                m.weight.mul_(2.0)
        prior_conv = model.prior_heads[0][1]  # output channels: (mu_p, log sigma_p^2)
        prior_conv.weight.mul_(0.3)
        prior_conv.bias.copy_(torch.tensor([3.0, 0.0]))
        for head in model.post_heads:  # output channels: (dmu, log dsigma^2)
            head.weight.mul_(0.1)
            head.bias.copy_(torch.tensor([0.8, 0.5]))
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(model.sample(3, generator=g), generator=g)  # [3, 1, 4, 4], typical images
    n, k = 200_000, 20_000
    with torch.no_grad():
        _, logits = model.generate(n, generator=torch.Generator().manual_seed(2))  # [n, 1, 4, 4]
        log_px_prior = Bernoulli(logits=logits.unsqueeze(1)).log_prob(x).flatten(2).sum(-1)  # [n, 3]
        reference = torch.logsumexp(log_px_prior, 0) - math.log(n)  # [3]
        torch.manual_seed(3)
        log_px_z, log_pz, log_qz = model.log_weight_terms(x, k)  # [k, 3] each
        torch.manual_seed(3)
        groups, _ = model.posterior(x, k)  # the same samples
        torch.manual_seed(3)
        log_w = model.log_weights(x, k)
    torch.testing.assert_close(log_w, log_px_z + log_pz - log_qz)
    assert log_w.shape == (k, 3)

    def estimate(lw: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(lw, 0) - math.log(k)

    assert (estimate(log_w) - reference).abs().max() < 0.1, (estimate(log_w), reference)
    # q is not the prior: E_q[log p(z) - log q(z|x)] = -KL is far from 0
    assert (log_pz - log_qz).mean(0).max() < -0.5
    # mutation check: each broken log w misses log p(x) of some image by far more than the tolerance
    log_pz_standard = sum(log_standard_normal(g.z.flatten(2)) for g in groups)  # ignores z_<l
    log_qz_no_prior_mean = sum(  # a residual posterior evaluated without mu_p
        log_normal(g.z.flatten(2), (g.mu - g.mu_p).flatten(2), g.log_var.flatten(2)) for g in groups
    )
    broken = {
        "no log p(z)": log_px_z - log_qz,
        "no log q(z|x)": log_px_z + log_pz,
        "no log p(x|z)": log_pz - log_qz,
        "p(z_l | z_<l) = N(0, I)": log_px_z + log_pz_standard - log_qz,
        "q without mu_p": log_px_z + log_pz - log_qz_no_prior_mean,
    }
    for name, lw in broken.items():
        assert (estimate(lw) - reference).abs().max() > 0.5, name


def test_log_weights_mean_equals_elbo_up_to_monte_carlo_error():
    # E_q[log w] = E_q[log p(x|z)] - sum_l E[KL_l]: the sampled-KL bound and the
    # analytic-KL ELBO agree in expectation (batch norm in eval mode, non-trivial stats).
    model = small(batch_norm=True)
    with torch.no_grad():
        for s in range(3):
            model.elbo(binary_images(32, seed=10 + s))  # train mode: update running stats
    model.eval()
    x = binary_images(3, seed=1)
    n = 1500
    torch.manual_seed(0)
    with torch.no_grad():
        lw = model.log_weights(x, n)  # [n, 3]
        terms = model.elbo(x.repeat(n, 1, 1, 1))  # [n * 3], sample i of x_b at row i*3 + b
    elbo = terms.elbo.view(n, 3)
    se = (lw.var(0) / n + elbo.var(0) / n).sqrt()
    z = (lw.mean(0) - elbo.mean(0)) / se
    assert z.abs().max() < 4, z
    # the comparison has power: a KL missing its factor 1/2 would be caught
    wrong = (terms.log_px_z - 0.5 * terms.kl).view(n, 3)
    z_wrong = (lw.mean(0) - wrong.mean(0)) / (lw.var(0) / n + wrong.var(0) / n).sqrt()
    assert z_wrong.abs().min() > 6, z_wrong


def test_batch_norm_eval_mode_makes_examples_independent():
    model = small(batch_norm=True)
    x = binary_images(6)
    with torch.no_grad():
        model.train()
        model.elbo(x)
        train_alone = model.reconstruct(x[:2])
        train_batch = model.reconstruct(x)[:2]
        model.eval()
        eval_alone = model.reconstruct(x[:2])
        eval_batch = model.reconstruct(x)[:2]
    assert not torch.allclose(train_alone, train_batch, atol=1e-5)
    torch.testing.assert_close(eval_alone, eval_batch)


def test_gradients_reach_every_parameter():
    model = small(spectral_reg=0.01)
    x = binary_images(4)
    model.training_loss(model.elbo(x), kl_weight=0.5).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------ shapes and sampling
def test_latent_shapes_at_every_resolution():
    model = NVAE().eval()  # the default: 2 groups at 7x7, 2 at 14x14, for 28x28
    cfg = model.config
    assert cfg.group_resolutions == (7, 7, 14, 14)
    assert cfg.group_sizes == (4 * 49, 4 * 49, 4 * 196, 4 * 196)
    x = binary_images(3)
    groups, logits = model.generate(5)
    assert [tuple(g.z.shape) for g in groups] == [(5, 4, 7, 7)] * 2 + [(5, 4, 14, 14)] * 2
    assert logits.shape == (5, 1, 28, 28)
    groups, logits = model.posterior(x, k=2)
    for g, r in zip(groups, cfg.group_resolutions):
        for t in (g.z, g.mu, g.log_var, g.mu_p, g.log_var_p):
            assert t.shape == (2, 3, 4, r, r)
        assert g.kl.shape == (2, 3)
    assert logits.shape == (2, 3, 1, 28, 28)
    assert model.log_weights(x, 2).shape == (2, 3)
    terms = model.elbo(x)
    assert all(t.shape == (3,) for t in terms[:3]) and terms.kl_groups.shape == (3, 4)
    means = model.posterior_means(x, k=4)
    assert [tuple(m.shape) for m in means] == [(3, 196), (3, 196), (3, 784), (3, 784)]
    for images in (model.sample(4), model.reconstruct(x)):
        assert images.shape[1:] == (1, 28, 28)
        assert images.min() >= 0 and images.max() <= 1
    # three scales, the last at the image's own resolution
    three = NVAE(resolutions=(7, 14, 28), groups_per_scale=(1, 1, 1), channels=(8, 8, 4), latent_channels=1)
    assert [tuple(g.z.shape[2:]) for g in three.generate(2)[0]] == [(7, 7), (14, 14), (28, 28)]


def test_posterior_means_average_the_conditional_means():
    model = small().eval()
    x = binary_images(3)
    torch.manual_seed(4)
    means = model.posterior_means(x, k=6)
    torch.manual_seed(4)
    groups, _ = model.posterior(x, 6)
    for m, g in zip(means, groups):
        torch.testing.assert_close(m, g.mu.mean(0).flatten(1))
    # exact at the top group: it does not depend on any sample
    torch.testing.assert_close(means[0], groups[0].mu[0].flatten(1))


def test_temperature_scales_the_prior_std_and_zero_is_deterministic():
    model = small().eval()
    a = model.sample(3, temperature=0, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, temperature=0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, a[:1].expand_as(a))
    c = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert (c - a).abs().max() > 1e-3
    # the same noise at t = 0.5 and t = 1: every group's standardised deviation from its
    # prior mean halves (z_l = mu_p + t sigma_p eps)
    half, _ = model.generate(2, temperature=0.5, generator=torch.Generator().manual_seed(7))
    full, _ = model.generate(2, temperature=1.0, generator=torch.Generator().manual_seed(7))
    for gh, gf in zip(half, full):
        eps_h = (gh.z - gh.mu_p) * torch.exp(-0.5 * gh.log_var_p)
        eps_f = (gf.z - gf.mu_p) * torch.exp(-0.5 * gf.log_var_p)
        torch.testing.assert_close(eps_h, 0.5 * eps_f)
    assert not torch.allclose(half[1].mu_p, full[1].mu_p)  # lower priors follow z_1


def test_sample_noise_takes_the_parameters_dtype():
    model = small().double().eval()
    out = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model.sample(2, generator=torch.Generator().manual_seed(0)))


# ------------------------------------------------------------ spectral regularisation
def test_power_iteration_converges_to_the_largest_singular_value():
    torch.manual_seed(0)
    conv = SRConv2d(5, 7, 3).double()
    w = conv.weight.detach().reshape(7, -1)  # [out, in*k*k]
    true = torch.linalg.matrix_norm(w, ord=2)
    with torch.no_grad():  # start from vectors far from the answer
        conv.sn_u.copy_(torch.nn.functional.normalize(torch.randn(7, dtype=torch.float64), dim=0))
        conv.sn_v.copy_(torch.nn.functional.normalize(torch.randn(45, dtype=torch.float64), dim=0))
    assert conv.spectral_norm() < 0.9 * true
    conv.power_iteration(300)
    torch.testing.assert_close(conv.spectral_norm(), true, rtol=1e-8, atol=0)
    # its gradient is that of the largest singular value: u1 v1^T
    conv.spectral_norm().backward()
    U, S, Vh = torch.linalg.svd(w)
    torch.testing.assert_close(conv.weight.grad.reshape(7, -1), torch.outer(U[:, 0], Vh[0]), rtol=1e-6, atol=1e-8)


def test_spectral_norms_update_in_training_mode_only():
    model = small(power_iterations=3).double()
    convs = [m for m in model.modules() if isinstance(m, SRConv2d)]
    with torch.no_grad():
        for conv in convs:  # the weights moved since the vectors were estimated
            conv.weight.mul_(torch.rand_like(conv.weight) + 0.5)
    true = torch.stack([torch.linalg.matrix_norm(c.weight.detach().reshape(c.out_channels, -1), ord=2) for c in convs])
    model.eval()
    before = model.spectral_norms().detach()
    torch.testing.assert_close(model.spectral_norms().detach(), before)  # no update in eval mode
    assert not torch.allclose(before, true, rtol=1e-4)
    model.train()
    for _ in range(100):
        estimate = model.spectral_norms()
    assert estimate.shape == (len(convs),)
    torch.testing.assert_close(estimate.detach(), true, rtol=1e-6, atol=0)
    assert "stem.sn_u" in model.state_dict()  # persistent vectors


# ------------------------------------------------------------ the training loss
def test_training_loss_is_the_plain_objective_without_balancing_and_spectral_reg():
    model = small(kl_balance=False, spectral_reg=0.0)
    terms = model.elbo(binary_images(6))
    for w in (0.0, 0.3, 1.0, 2.0):
        torch.testing.assert_close(model.training_loss(terms, w), -(terms.log_px_z - w * terms.kl).mean())
    # balancing is a warm-up device: at kl_weight >= 1 the loss is the plain one again
    balanced = small(kl_balance=True)
    for w in (1.0, 1.5):
        torch.testing.assert_close(balanced.training_loss(terms, w), -(terms.log_px_z - w * terms.kl).mean())
    assert not torch.isclose(balanced.training_loss(terms, 0.5), model.training_loss(terms, 0.5))


def test_kl_balance_coefficients_follow_kl_per_unit():
    sizes = (10, 40, 40)
    # the same KL per unit (0.1 nats/unit, plus NVAE's 0.01 nats) in every group -> roughly 1 each
    kl = torch.tensor([[1.0, 4.0, 4.0], [1.0, 4.0, 4.0]])
    gamma = kl_balance_coefficients(kl, sizes)
    assert gamma.shape == (3,)
    torch.testing.assert_close(gamma.sum(), torch.tensor(3.0))
    a = (kl.mean(0) + 0.01) / torch.tensor(sizes, dtype=torch.float32)
    torch.testing.assert_close(gamma, 3 * a / a.sum())
    torch.testing.assert_close(gamma, torch.ones(3), atol=5e-3, rtol=0)
    # a group carrying little information per unit gets a small coefficient (it is
    # penalised less and so not switched off); the coefficient uses the batch mean
    kl = torch.tensor([[1.0, 0.2, 8.0], [3.0, 0.6, 8.0]])
    gamma = kl_balance_coefficients(kl, sizes)
    a = torch.tensor([2.01 / 10, 0.41 / 40, 8.01 / 40])
    torch.testing.assert_close(gamma, 3 * a / a.sum())
    assert gamma[1] < gamma[2] < gamma[0]


def test_training_loss_weighs_each_group_by_its_balanced_coefficient():
    model = small(kl_balance=True)
    terms = model.elbo(binary_images(4))
    B, L = terms.kl_groups.shape
    kl_groups = terms.kl_groups.detach().clone().requires_grad_(True)
    log_px_z = terms.log_px_z.detach().clone().requires_grad_(True)
    leaf_terms = NVAEELBO(log_px_z - kl_groups.sum(-1), log_px_z, kl_groups.sum(-1), kl_groups)
    w = 0.3
    loss = model.training_loss(leaf_terms, w)
    gamma = kl_balance_coefficients(kl_groups, model.config.group_sizes)
    torch.testing.assert_close(loss, -(log_px_z - w * (kl_groups * gamma).sum(-1)).mean())
    loss.backward()
    # d loss / d KL_{b,l} = w gamma_l / B: the coefficients are constants, not optimised
    torch.testing.assert_close(kl_groups.grad, (w * gamma / B).expand(B, L))
    torch.testing.assert_close(log_px_z.grad, torch.full((B,), -1.0 / B))


def test_training_loss_adds_the_spectral_penalty():
    lam = 0.05
    model = small(kl_balance=False, spectral_reg=lam).eval()  # eval: the vectors stay fixed
    terms = model.elbo(binary_images(4))
    plain = -(terms.log_px_z - 0.7 * terms.kl).mean()
    penalty = model.training_loss(terms, 0.7) - plain
    torch.testing.assert_close(penalty, lam * model.spectral_norms().sum())
    assert penalty > 0


# ------------------------------------------------------------ bad configurations and inputs
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(resolutions=(7, 14), image_shape=(1, 30, 30)), "14 does not divide the image side 30"),
        (dict(resolutions=(5, 14)), "5 does not divide resolution 14"),
        (dict(resolutions=(14, 7)), "14 does not divide resolution 7"),
        (dict(resolutions=(7, 7)), "resolution 7 appears twice"),
        (dict(resolutions=(7, 14, 14), groups_per_scale=(1, 1, 1), channels=(8, 8, 8)), "resolution 14 appears twice"),
        (dict(resolutions=(), groups_per_scale=(), channels=()), "resolutions must be a non-empty tuple"),
        (dict(groups_per_scale=(2, 0)), "each entry of groups_per_scale must be a positive integer"),
        (dict(groups_per_scale=(2,)), "groups_per_scale needs one entry per scale"),
        (dict(groups_per_scale=()), "groups_per_scale must be a non-empty tuple"),
        (dict(channels=(32, 16, 8)), "channels needs one entry per scale"),
        (dict(channels=(32.0, 16)), "each entry of channels must be a positive integer"),
        (dict(resolutions=(7, "14")), "each entry of resolutions must be a positive integer"),
        (dict(latent_channels=2.5), "latent_channels must be a positive integer"),
        (dict(latent_channels=0), "latent_channels must be a positive integer"),
        (dict(cells_per_group=-1), "cells_per_group must be an integer of at least 0"),
        (dict(power_iterations=0), "power_iterations must be a positive integer"),
        (dict(image_shape=(1, 28, 14)), "H = W"),
        (dict(image_shape=(28, 28)), r"image_shape must be \(C, H, W\)"),
        (dict(spectral_reg=-0.1), "spectral_reg must be a finite number >= 0"),
        (dict(spectral_reg=float("nan")), "spectral_reg must be a finite number >= 0"),
        (dict(residual_posterior="no"), "residual_posterior must be True or False"),
        (dict(kl_balance=1), "kl_balance must be True or False"),
    ],
)
def test_bad_configurations_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        NVAEConfig(**kw)


def test_numpy_integers_are_accepted():
    np = pytest.importorskip("numpy")
    cfg = NVAEConfig(groups_per_scale=(np.int64(1), np.int32(2)), latent_channels=np.int64(3))
    assert cfg.groups_per_scale == (1, 2) and type(cfg.groups_per_scale[0]) is int
    assert cfg.groups == 3


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(28, 28), r"expected a batch of images x of shape \[B, 1, 28, 28\]"),
        (torch.zeros(1, 28, 28), r"x.unsqueeze\(0\)"),
        (torch.zeros(0, 1, 28, 28), "empty batch"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), r"x.float\(\) / 255"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.float64), "the model's parameters are torch.float32"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN or infinite"),
        (torch.full((2, 1, 28, 28), 2.0), r"targets in \[0, 1\]"),
    ],
)
def test_bad_inputs_are_refused(x, match):
    model = small()
    for call in (model.elbo, lambda x: model.log_weights(x, 2), model.reconstruct, model.posterior_means):
        with pytest.raises(ValueError, match=match):
            call(x)


def test_bad_counts_and_numbers_are_refused():
    model = small()
    x = binary_images(2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        model.log_weights(x, 0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        model.log_weights(x, 2.5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.sample(0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(2, temperature=-1.0)
    terms = model.elbo(x)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        model.training_loss(terms, -0.1)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        model.training_loss(terms, "0.5")
    np = pytest.importorskip("numpy")  # NumPy scalars are numbers
    torch.testing.assert_close(model.training_loss(terms, np.float32(0.5)), model.training_loss(terms, 0.5))
