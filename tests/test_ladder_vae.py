"""Tests for vaetut.ladder_vae: precision weighting, per-layer KL, bounds, reduction to the VAE."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from vaetut.distributions import log_bernoulli, log_normal, reparameterize
from vaetut.ladder_vae import LadderVAE, LadderVAEConfig, precision_weighted
from vaetut.vae import VAE

# (inference, skip): every way to build the model
VARIANTS = [("ladder", False), ("ladder", True), ("bottom_up", False), ("bottom_up", True)]


def binary_images(b: int, seed: int = 0, shape=(1, 28, 28)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((b, *shape), 0.3), generator=g)


def small(latent_dims=(6, 4), hidden=(32, 16), **kw) -> LadderVAE:
    torch.manual_seed(0)
    return LadderVAE(latent_dims=latent_dims, hidden=hidden, **kw)


# ------------------------------------------------------------ precision weighting
def test_precision_weighted_completes_the_square_exactly():
    # N(z; a, A) N(z; b, B) = N(z; mu, var) N(a; b, A + B) for every z: the combined
    # Gaussian is the product of the two, normalised.
    g = torch.Generator().manual_seed(1)
    mu_hat, mu_p = torch.randn(2, 7, generator=g, dtype=torch.float64) * 3
    var_hat, var_p = torch.rand(2, 7, generator=g, dtype=torch.float64) * 4 + 0.05
    mu, var = precision_weighted(mu_hat, var_hat, mu_p, var_p)
    z = torch.randn(50, 7, generator=g, dtype=torch.float64) * 4
    lhs = Normal(mu_hat, var_hat.sqrt()).log_prob(z) + Normal(mu_p, var_p.sqrt()).log_prob(z)
    rhs = Normal(mu, var.sqrt()).log_prob(z) + Normal(mu_p, (var_hat + var_p).sqrt()).log_prob(mu_hat)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-10)


def test_precision_weighted_matches_grid_normalised_product():
    # Brute force: multiply the two densities on a fine grid, normalise numerically.
    mu_hat = torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64)
    var_hat = torch.tensor([0.5, 4.0, 0.01], dtype=torch.float64)
    mu_p = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    var_p = torch.tensor([2.0, 0.25, 1.0], dtype=torch.float64)
    mu, var = precision_weighted(mu_hat, var_hat, mu_p, var_p)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)[:, None]  # [G, 1]
    dz = grid[1, 0] - grid[0, 0]
    prod = (Normal(mu_hat, var_hat.sqrt()).log_prob(grid) + Normal(mu_p, var_p.sqrt()).log_prob(grid)).exp()
    dens = prod / (prod.sum(0) * dz)  # [G, 3]
    grid_mean = (dens * grid).sum(0) * dz
    grid_var = (dens * (grid - grid_mean) ** 2).sum(0) * dz
    torch.testing.assert_close(mu, grid_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(var, grid_var, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(dens, Normal(mu, var.sqrt()).log_prob(grid).exp(), rtol=0, atol=1e-5)
    # The paper's formula read literally (sigma = 1/(precision sum)) is not the product's scale.
    assert not torch.allclose(var.sqrt(), 1 / (1 / var_hat + 1 / var_p), rtol=1e-3)


def test_precision_weighted_limits():
    mu_hat, var_hat = torch.tensor([2.0]), torch.tensor([0.3])
    # A flat prior leaves the bottom-up estimate; two equal estimates average, variance halves.
    mu, var = precision_weighted(mu_hat, var_hat, torch.tensor([-5.0]), torch.tensor([1e12]))
    torch.testing.assert_close((mu, var), (mu_hat, var_hat))
    mu, var = precision_weighted(mu_hat, var_hat, torch.tensor([0.0]), var_hat)
    torch.testing.assert_close((mu, var), (torch.tensor([1.0]), var_hat / 2))


# ------------------------------------------------------------ the posterior and KL
def test_posterior_is_precision_weighted_and_kl_layers_match_torch():
    model = small(latent_dims=(6, 5, 4), hidden=(32, 24, 16))
    x = binary_images(5)
    torch.manual_seed(3)
    terms = model.elbo(x)
    torch.manual_seed(3)
    layers = model.posterior(x)  # the same noise as inside elbo
    estimates = model.bottom_up(x)
    L = model.layers
    assert terms.kl_layers.shape == (5, L)
    torch.testing.assert_close(terms.kl, terms.kl_layers.sum(-1))
    torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl)
    # top layer: q(z_L|x) is the bottom-up estimate, p(z_L) = N(0, I)
    torch.testing.assert_close(layers[-1].mu, estimates[-1][0])
    torch.testing.assert_close(layers[-1].log_var.exp(), estimates[-1][1])
    for i in range(1, L):  # 1-based layer i < L: recompute from z_{i+1}
        mu_p, var_p = model.prior(i, layers[i].z)
        mu, var = precision_weighted(*estimates[i - 1], mu_p, var_p)
        torch.testing.assert_close(layers[i - 1].mu, mu)
        torch.testing.assert_close(layers[i - 1].log_var.exp(), var)
        torch.testing.assert_close(layers[i - 1].log_var_p.exp(), var_p)
    for i, layer in enumerate(layers):
        q = Independent(Normal(layer.mu, (0.5 * layer.log_var).exp()), 1)
        if i == L - 1:
            p = Independent(Normal(torch.zeros_like(layer.mu), torch.ones_like(layer.mu)), 1)
        else:
            p = Independent(Normal(layer.mu_p, (0.5 * layer.log_var_p).exp()), 1)
        torch.testing.assert_close(terms.kl_layers[:, i], kl_divergence(q, p))
    assert (terms.kl_layers > 0).all()


@pytest.mark.parametrize("inference, skip", VARIANTS)
def test_log_weights_mean_equals_elbo_up_to_monte_carlo_error(inference, skip):
    # E_q[log w] = E_q[log p(x|z)] - sum_i E[KL_i]: the sampled-KL bound (log_weights)
    # and the ELBO with analytic (or, under bottom-up inference, partly sampled) KL terms
    # agree in expectation. Batch norm in eval mode, with running statistics that are
    # not the identity. 8x8 images keep log p(x|z) small beside the KL terms.
    shape = (1, 8, 8)
    model = small(
        image_shape=shape, latent_dims=(6, 5, 4), hidden=(32, 24, 16), batch_norm=True, inference=inference, skip=skip
    )
    with torch.no_grad():
        for s in range(5):
            model.elbo(binary_images(64, seed=10 + s, shape=shape))  # train mode: update running stats
    model.eval()
    x = binary_images(3, seed=1, shape=shape)
    n = 4000
    torch.manual_seed(0)
    with torch.no_grad():
        lw = model.log_weights(x, n)  # [n, 3]
        terms = model.elbo(x.repeat(n, 1, 1, 1))  # [n * 3]
    elbo = terms.elbo.view(n, 3)
    se = (lw.var(0) / n + elbo.var(0) / n).sqrt()
    z = (lw.mean(0) - elbo.mean(0)) / se
    assert z.abs().max() < 4, z
    # The test has power: a KL missing its factor 1/2 would be caught.
    wrong = (terms.log_px_z - 0.5 * terms.kl).view(n, 3)
    z_wrong = (lw.mean(0) - wrong.mean(0)) / (lw.var(0) / n + wrong.var(0) / n).sqrt()
    assert z_wrong.abs().min() > 6, z_wrong


def test_batch_norm_eval_mode_makes_examples_independent():
    model = small(batch_norm=True)
    x = binary_images(8)
    with torch.no_grad():
        model.train()
        model.elbo(x)  # one update of the running statistics
        train_alone = model.posterior(x[:2], mean=True)[0].z
        train_batch = model.posterior(x, mean=True)[0].z[:2]
        model.eval()
        eval_alone = model.posterior(x[:2], mean=True)[0].z
        eval_batch = model.posterior(x, mean=True)[0].z[:2]
    assert not torch.allclose(train_alone, train_batch, atol=1e-4)
    torch.testing.assert_close(eval_alone, eval_batch)


# ------------------------------------------------------------ shapes and sampling
@pytest.mark.parametrize("latent_dims", [(5,), (6, 4), (8, 7, 6, 5, 4)])
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("inference, skip", VARIANTS)
def test_shapes_for_one_two_and_five_layers(latent_dims, batch_norm, inference, skip):
    L = len(latent_dims)
    # one deterministic layer below odd layers, two below even ones
    hidden = tuple(w if i % 2 == 0 else (w, w + 4) for i, w in enumerate(range(24, 24 - 2 * L, -2)))
    model = small(latent_dims=latent_dims, hidden=hidden, batch_norm=batch_norm, inference=inference, skip=skip)
    x = binary_images(4)
    terms = model.elbo(x)
    for t in (terms.elbo, terms.log_px_z, terms.kl):
        assert t.shape == (4,) and torch.isfinite(t).all()
    assert terms.kl_layers.shape == (4, L) and torch.isfinite(terms.kl_layers).all()
    # analytic KLs are >= 0: every layer under ladder inference, the top one under bottom-up
    analytic = terms.kl_layers if inference == "ladder" else terms.kl_layers[:, -1]
    assert (analytic >= 0).all()
    assert model.log_weights(x, 3).shape == (3, 4)
    means = model.posterior_means(x, k=5)
    assert [m.shape for m in means] == [(4, d) for d in latent_dims]
    model.eval()
    for images in (model.sample(6), model.sample_layers(6, free=1), model.reconstruct(x)):
        assert images.shape[1:] == (1, 28, 28)
        assert images.min() >= 0 and images.max() <= 1


def test_sample_layers_shares_the_fixed_noise():
    model = small(latent_dims=(6, 5, 4), hidden=(32, 24, 16)).eval()
    g = torch.Generator().manual_seed(0)
    none_free = model.sample_layers(5, free=[], generator=g)
    assert torch.allclose(none_free, none_free[:1].expand_as(none_free))
    for free in (1, 3, range(1, 3)):
        imgs = model.sample_layers(5, free=free, generator=g)
        assert (imgs[1:] - imgs[:1]).abs().flatten(1).amax(1).min() > 1e-4
    # the noise itself, layer by layer: one row shared by all samples unless the layer is free
    seen = []
    generate = model.generate
    model.generate = lambda eps: seen.append(eps) or generate(eps)
    for free, expected in ((1, {1}), (3, {3}), (range(1, 3), {1, 2}), ([2, 3], {2, 3})):
        seen.clear()
        model.sample_layers(5, free=free, generator=g)
        (eps,) = seen
        assert [tuple(e.shape) for e in eps] == [(5, 6), (5, 5), (5, 4)]
        for i, e in enumerate(eps, start=1):
            shared = bool((e == e[:1]).all())
            assert shared != (i in expected), (free, i)
    # posterior_means at the top layer is exact: the bottom-up mean
    x = binary_images(3)
    torch.testing.assert_close(model.posterior_means(x, k=3)[-1], model.bottom_up(x)[-1][0])


# ------------------------------------------------------------ L = 1 is the VAE
class SoftplusVAE(VAE):
    """The one-layer VAE with the Ladder VAE's variance head: var = softplus(linear) + min_var."""

    def __init__(self, min_var: float, **kw):
        super().__init__(**kw)
        self.min_var = min_var

    def encode(self, x):
        h = self.features(x)
        var = torch.nn.functional.softplus(self.to_log_var(h)) + self.min_var
        return self.to_mu(h), var.log()


def test_one_layer_ladder_vae_is_the_vae():
    ladder = small(latent_dims=(7,), hidden=(40,))
    vae = SoftplusVAE(ladder.config.min_var, latent_dim=7, hidden=(40,))
    pairs = [
        (vae.encoder[1][0], ladder.up[0][0]),
        (vae.to_mu, ladder.up_heads[0].to_mu),
        (vae.to_log_var, ladder.up_heads[0].to_var),
        (vae.decoder[0][0], ladder.decoder[0][0]),
        (vae.decoder[0][2], ladder.decoder[1]),
    ]
    with torch.no_grad():
        for dst, src in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    assert sum(p.numel() for p in vae.parameters()) == sum(p.numel() for p in ladder.parameters())
    x = binary_images(6)
    torch.manual_seed(5)
    a = ladder.elbo(x)
    torch.manual_seed(5)
    b = vae.elbo(x)
    torch.testing.assert_close(a.elbo, b.elbo)
    torch.testing.assert_close(a.kl, b.kl)
    torch.testing.assert_close(a.kl_layers[:, 0], b.kl)
    torch.manual_seed(6)
    lw_a = ladder.log_weights(x, 9)
    torch.manual_seed(6)
    torch.testing.assert_close(lw_a, vae.log_weights(x, 9))
    torch.testing.assert_close(ladder.reconstruct(x), vae.reconstruct(x))
    torch.testing.assert_close(
        ladder.sample(4, generator=torch.Generator().manual_seed(2)),
        vae.sample(4, generator=torch.Generator().manual_seed(2)),
    )


# ------------------------------------------------------------ gradients
@pytest.mark.parametrize("inference, skip", [("ladder", False), ("bottom_up", True)])
def test_gradients_reach_every_network_and_match_finite_differences(inference, skip):
    model = small(latent_dims=(5, 4, 3), hidden=(20, (16, 14), 12), inference=inference, skip=skip).double()
    x = binary_images(4).double()

    def loss() -> torch.Tensor:
        torch.manual_seed(11)  # the same noise every call: a deterministic function of the weights
        return -model.elbo(x).elbo.mean()

    model.zero_grad()
    loss().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # the gradient through the reparameterised samples and the precision weighting is right
    g = torch.Generator().manual_seed(0)
    params = [p for p in model.parameters()]
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum((p.grad * v).sum() for p, v in zip(params, direction))
    h = 1e-6
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.add_(h * v)
        up = loss()
        for p, v in zip(params, direction):
            p.sub_(2 * h * v)
        down = loss()
        for p, v in zip(params, direction):
            p.add_(h * v)
    assert math.isclose((up - down).item() / (2 * h), analytic.item(), rel_tol=1e-5)


# ------------------------------------------------------------ bad configurations
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(latent_dims=(), hidden=()), "at least one stochastic layer"),
        (dict(latent_dims=(4, 2), hidden=(16,)), "one deterministic width per stochastic layer"),
        (dict(latent_dims=(4,), hidden=(16, 8)), "one deterministic width per stochastic layer"),
        (dict(latent_dims=(4, 0), hidden=(16, 8)), "each entry of latent_dims must be a positive integer"),
        (dict(latent_dims=(4, 2), hidden=(16, -8)), "each entry of hidden must be a positive integer"),
        (dict(latent_dims=(4.0,), hidden=(16,)), "each entry of latent_dims must be a positive integer"),
        (dict(image_shape=(28, 28)), "image_shape"),
        (dict(min_var=-1.0), "min_var"),
        (dict(min_var=float("nan")), "min_var"),
        (dict(latent_dims=(4, 2), hidden=((16, 8),)), "one deterministic width per stochastic layer"),
        (dict(latent_dims=(4, 2), hidden=((16, 8), ())), r"hidden\[1\] is empty"),
        (dict(latent_dims=(4, 2), hidden=((16, 0), 8)), r"each width in hidden\[0\] must be a positive integer"),
        (dict(latent_dims=(4, 2), hidden=(16, 8.0)), "each entry of hidden must be a positive integer"),
        (dict(latent_dims=(4, 2), hidden=(16, "8")), "each entry of hidden must be a positive integer"),
        (dict(inference="top_down"), r"inference must be one of \('ladder', 'bottom_up'\)"),
        (dict(activation="gelu"), "activation must be one of"),
        (dict(variance="abs"), "variance must be one of"),
        (dict(skip="yes"), "skip must be True or False"),
        (dict(batch_norm=1), "batch_norm must be True or False"),
    ],
)
def test_bad_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        LadderVAEConfig(**kw)
    with pytest.raises(ValueError, match=match):
        LadderVAE(**kw)


def test_bad_inputs_raise_clear_errors():
    model = small()
    with pytest.raises(ValueError, match=r"shape \[B, 1, 28, 28\]"):
        model.elbo(torch.rand(4, 784))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.elbo(torch.rand(2, 1, 28, 28) * 255)
    with pytest.raises(ValueError, match="floating-point"):
        model.elbo(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        model.log_weights(binary_images(2), 0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.sample(0)
    with pytest.raises(ValueError, match=r"free layers must be integers in 1\.\.2"):
        model.sample_layers(3, free=3)
    with pytest.raises(ValueError, match="one noise tensor per layer"):
        model.generate([torch.randn(3, 6)])
    # each inference's own passes refuse the other inference
    with pytest.raises(ValueError, match="posterior_step belongs to inference='bottom_up'"):
        model.posterior_step(1, binary_images(2))
    with pytest.raises(ValueError, match=r"bottom_up\(x\), the deterministic pass, belongs to inference='ladder'"):
        small(inference="bottom_up").bottom_up(binary_images(2))
    with pytest.raises(ValueError, match=r"shape \[B, 1, 28, 28\]"):
        small(inference="bottom_up").elbo(torch.rand(4, 784))
    with pytest.raises(ValueError, match=r"prior takes a layer i in 1\.\.1"):
        model.prior(2, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"posterior_step takes a layer i in 1\.\.2"):
        small(inference="bottom_up").posterior_step(3, torch.randn(3, 4))


# ------------------------------------------------------------ log_weights against the exact likelihood
# A model small enough to integrate: 4x4 images, z_1 in R^2, z_2 in R^1. With
# s ~ N(0, I_3), z_2 = s_2 and z_1 = mu_p(z_2) + std_p(z_2) * s_1 (s_1 in R^2),
#   p(x) = E_s[p(x | z_1, z_2)],
# a smooth 3-D Gaussian expectation that Gauss-Hermite quadrature computes to
# about 1e-4 nats with 64 nodes per axis (each test checks that 48 nodes agree).
TINY = dict(image_shape=(1, 4, 4), latent_dims=(2, 1), hidden=((8, 8), 6), activation="tanh")


def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of E_{s ~ N(0, 1)}[f(s)] ~ sum_j w_j f(s_j), exact for polynomials of
    degree < 2n (Golub-Welsch: the eigenvalues of the probabilists' Hermite Jacobi matrix)."""
    off = torch.arange(1, n, dtype=torch.float64).sqrt()
    nodes, vectors = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return nodes, vectors[0] ** 2


def test_gauss_hermite_moments():
    s, w = gauss_hermite(12)
    moments = [(w * s**j).sum().item() for j in range(9)]
    # E[s^j] of the standard normal: 1, 0, 1, 0, 3, 0, 15, 0, 105
    assert moments == pytest.approx([1, 0, 1, 0, 3, 0, 15, 0, 105], abs=1e-9)


@torch.no_grad()
def log_px_by_quadrature(model: LadderVAE, x: torch.Tensor, n: int = 64) -> torch.Tensor:
    """log p(x) of a TINY model through its generative networks only (prior, decode), ``[B]``."""
    s, w = gauss_hermite(n)
    mu_p, var_p = model.prior(1, s[:, None])  # p(z_1 | z_2 = s_j): [n, 2]
    s1 = torch.cartesian_prod(s, s)  # [n*n, 2]
    log_w = w.log()[:, None] + torch.cartesian_prod(w, w).log().sum(-1)[None, :]  # [n, n*n]
    z1 = mu_p[:, None, :] + var_p.sqrt()[:, None, :] * s1  # [n, n*n, 2]
    z2 = s[:, None, None].expand(n, n * n, 1)
    logits = model.decode(z1, [z2])  # [n, n*n, 1, 4, 4]
    log_px_z = torch.stack([log_bernoulli(xb[None], logits) for xb in x])  # [B, n, n*n]
    return torch.logsumexp(log_px_z + log_w, dim=(1, 2))


def tiny_model(inference: str, skip: bool, x: torch.Tensor) -> LadderVAE:
    """A TINY model (float64) with a fixed generative model and q fitted to its posterior at x.

    The generative networks are drawn from one seed (so the variants with the same
    ``skip`` share one generative model) and scaled so that z_2 moves z_1 and both
    move the pixels; then only the inference networks are trained (100 Adam steps on
    the ELBO of x), so that q is a good importance sampler for the posterior, which
    differs from the prior enough for every term of log w to matter (the mutations
    in the test below show it).
    """
    torch.manual_seed(0)
    model = LadderVAE(**TINY, inference=inference, skip=skip).double()
    generative = [model.down, model.down_heads, model.decoder, model.skips]
    torch.manual_seed(3)
    with torch.no_grad():
        for net in generative:
            for layer in net.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()
        model.down_heads[0].to_mu.weight.mul_(5)
        model.down_heads[0].to_var.weight.mul_(0.3)
        model.down_heads[0].to_var.bias.fill_(math.log(math.expm1(2.0)))  # var_p near 2
        model.decoder[-1].weight.mul_(4)
        for skip_map in model.skips:
            skip_map.weight.mul_(3)
    for p in (p for net in generative for p in net.parameters()):
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([*model.up.parameters(), *model.up_heads.parameters()], lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        (-model.elbo(x.repeat(16, 1, 1, 1)).elbo.mean()).backward()
        optimizer.step()
    return model.eval()


def importance_error(log_w: torch.Tensor, log_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log mean_k w - log p(x) per example, and its standard error (delta method), each ``[B]``."""
    w = (log_w - log_px).exp()  # [k, B], mean 1 when E_q[w] = p(x)
    return w.mean(0).log(), w.std(0) / w.mean(0) / math.sqrt(len(w))


def estimates_log_px(log_w: torch.Tensor, log_px: torch.Tensor) -> bool:
    """Does mean(exp(log_w)) match p(x) within 4 standard errors (+ 0.003 nats for the quadrature)?"""
    error, se = importance_error(log_w, log_px)
    return bool((error.abs() < 4 * se + 0.003).all())


@pytest.mark.parametrize("inference, skip", VARIANTS)
def test_log_weights_are_unbiased_for_the_exact_likelihood(inference, skip):
    # E_q[w] = p(x) exactly, w = exp(log_weights), for any q that covers the posterior:
    # the importance estimate must match the quadrature value, for every inference.
    x = binary_images(1, seed=2, shape=(1, 4, 4)).double()
    model = tiny_model(inference, skip, x)
    log_px = log_px_by_quadrature(model, x)
    assert (log_px - log_px_by_quadrature(model, x, n=48)).abs().max() < 2e-3  # the reference has converged
    k = 100_000
    with torch.no_grad():
        torch.manual_seed(1)
        log_w = model.log_weights(x, k)  # [k, 1]
        torch.manual_seed(1)
        z1, z2 = model.posterior(x, k)  # the same samples, layer by layer
        logits = model.decode(z1.z, [z2.z])
    assert estimates_log_px(log_w, log_px), importance_error(log_w, log_px)

    # log w is exactly log p(x | z) + log p(z_1 | z_2) + log p(z_2) - log q(z_1, z_2 | x)
    log_px_z = log_bernoulli(x, logits)
    terms = {
        "log p(z_1 | z_2)": log_normal(z1.z, z1.mu_p, z1.log_var_p),
        "log p(z_2)": Normal(0.0, 1.0).log_prob(z2.z).sum(-1),
        "log q(z_1 | .)": -log_normal(z1.z, z1.mu, z1.log_var),
        "log q(z_2 | .)": -log_normal(z2.z, z2.mu, z2.log_var),
    }
    torch.testing.assert_close(log_w, log_px_z + sum(terms.values()))

    # The check has power: a log_weights with a term dropped or wrong fails it.
    broken = {f"without {name}": log_w - term for name, term in terms.items()}
    broken["log p(z_1 | z_2) with q's parameters"] = (
        log_w - terms["log p(z_1 | z_2)"] + log_normal(z1.z, z1.mu, z1.log_var)
    )
    broken["decoder at another sample"] = log_w - log_px_z + log_bernoulli(x, logits.roll(1, 0))
    if skip:
        no_skip = model.decode(z1.z, [torch.zeros_like(z2.z)])  # the decoder without z_2's direct path
        broken["decoder without the skip connection"] = log_w - log_px_z + log_bernoulli(x, no_skip)
    for name, log_w_broken in broken.items():
        assert not estimates_log_px(log_w_broken, log_px), (name, importance_error(log_w_broken, log_px))


# ------------------------------------------------------------ bottom-up inference
def test_bottom_up_q2_sees_x_only_through_z1():
    # d mu_2 / dx must equal (d mu_2 / d z_1)(d z_1 / dx): no path from x to q(z_2 | .)
    # other than the sample z_1. Under ladder inference q(z_1 | z_2, x) reads x directly,
    # so the same identity fails there (the check has power).
    x = binary_images(3, shape=(1, 8, 8)).requires_grad_()

    def through_sample_only(model, upper, lower) -> bool:
        torch.manual_seed(4)
        layers = model.posterior(x)
        out = layers[upper].mu.sum() + layers[upper].log_var.sum()
        total = torch.autograd.grad(out, x, retain_graph=True)[0]
        via_z = torch.autograd.grad(out, layers[lower].z, retain_graph=True)[0]
        chain = torch.autograd.grad(layers[lower].z, x, grad_outputs=via_z)[0]
        assert chain.abs().sum() > 0
        return torch.allclose(total, chain, rtol=1e-5, atol=1e-7)

    kw = dict(image_shape=(1, 8, 8), latent_dims=(5, 4, 3), hidden=((24, 20), 16, 12))
    bottom_up = small(inference="bottom_up", **kw)
    assert through_sample_only(bottom_up, upper=1, lower=0)  # q(z_2 | z_1)
    assert through_sample_only(bottom_up, upper=2, lower=1)  # q(z_3 | z_2)
    assert not through_sample_only(small(inference="ladder", **kw), upper=0, lower=1)  # q(z_1 | z_2, x)


def test_bottom_up_kl_layers_hold_what_the_docstring_says():
    model = small(image_shape=(1, 8, 8), latent_dims=(5, 4, 3), hidden=(24, (16, 16), 12), inference="bottom_up")
    x = binary_images(6, shape=(1, 8, 8))
    torch.manual_seed(7)
    terms = model.elbo(x)
    torch.manual_seed(7)
    layers = model.posterior(x)  # the same samples as inside elbo
    torch.testing.assert_close(terms.kl, terms.kl_layers.sum(-1))
    torch.testing.assert_close(terms.elbo, terms.log_px_z - terms.kl)
    # the posterior factors, recomputed from the samples below: z_0 = x
    below = [x] + [layer.z for layer in layers[:-1]]
    q = []
    for i, layer in enumerate(layers, start=1):
        mu, var = model.posterior_step(i, below[i - 1])
        torch.testing.assert_close(layer.mu, mu)
        torch.testing.assert_close(layer.log_var, var.log())
        q.append(Independent(Normal(mu, var.sqrt()), 1))
    # top layer: the analytic KL(q(z_3 | z_2) || N(0, I)) at the sampled z_2
    standard = Independent(Normal(torch.zeros_like(layers[-1].z), torch.ones_like(layers[-1].z)), 1)
    torch.testing.assert_close(terms.kl_layers[:, -1], kl_divergence(q[-1], standard))
    # lower layers: log q(z_i | z_{i-1}) - log p(z_i | z_{i+1}) at the drawn samples
    for i in (1, 2):
        mu_p, var_p = model.prior(i, layers[i].z)
        p = Independent(Normal(mu_p, var_p.sqrt()), 1)
        z = layers[i - 1].z
        torch.testing.assert_close(terms.kl_layers[:, i - 1], q[i - 1].log_prob(z) - p.log_prob(z))
    # which are one-sample estimates: some are negative, unlike a KL
    many = model.elbo(x.repeat(50, 1, 1, 1)).kl_layers
    assert (many[:, :2] < 0).any() and (many[:, -1] >= 0).all()


def test_bottom_up_posterior_means_are_exact_at_the_bottom():
    model = small(image_shape=(1, 8, 8), latent_dims=(5, 3), hidden=(24, 12), inference="bottom_up").eval()
    x = binary_images(4, shape=(1, 8, 8))
    means = model.posterior_means(x, k=7)
    assert [m.shape for m in means] == [(4, 5), (4, 3)]
    torch.testing.assert_close(means[0], model.posterior_step(1, x)[0])
    # the top layer's is a Monte Carlo average of mu_2(z_1) over z_1 ~ q(z_1 | x)
    torch.manual_seed(2)
    layers = model.posterior(x, 7)
    torch.manual_seed(2)
    torch.testing.assert_close(model.posterior_means(x, k=7)[1], model.posterior_step(2, layers[0].z)[0].mean(0))


def test_one_layer_bottom_up_and_ladder_inference_are_the_same_model():
    x = binary_images(5)
    ladder = small(latent_dims=(7,), hidden=(40,))
    bottom_up = small(latent_dims=(7,), hidden=(40,), inference="bottom_up")
    for a, b in zip(ladder.parameters(), bottom_up.parameters()):
        torch.testing.assert_close(a, b)
    torch.manual_seed(1)
    lw = ladder.log_weights(x, 6)
    torch.manual_seed(1)
    torch.testing.assert_close(lw, bottom_up.log_weights(x, 6))
    torch.manual_seed(2)
    terms = ladder.elbo(x)
    torch.manual_seed(2)
    torch.testing.assert_close(terms, bottom_up.elbo(x))


# ------------------------------------------------------------ skip connections
def _prior_params(model: LadderVAE, i: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu_p, log_var_p)`` of p(z_i | z_{i+1})."""
    mu_p, var_p = model.prior(i, z_above)
    return mu_p, var_p.log()


@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_skip_connections_let_every_layer_reach_the_decoder(inference):
    kw = dict(image_shape=(1, 8, 8), latent_dims=(5, 4, 3), hidden=(24, 16, 12), inference=inference)
    z = [torch.randn(6, d, requires_grad=True) for d in kw["latent_dims"]]
    for skip in (False, True):
        model = small(skip=skip, **kw)
        logits = model.decode(z[0], z[1:])  # z_1 held fixed, z_2 and z_3 free
        grads = torch.autograd.grad(logits.sum(), z, allow_unused=True)
        assert grads[0].abs().sum() > 0
        for g in grads[1:]:
            if skip:
                assert g is not None and (g.abs().sum(-1) > 0).all()
            else:
                assert g is None  # without skips the logits are a function of z_1 alone
    # each skip map is one linear map without bias into the decoder's first hidden layer:
    # the logits are those of the decoder with W_1 z_1 + b replaced by W_1 z_1 + b + sum_i W_i z_i
    model = small(skip=True, **kw)
    first = model.decoder[0][0]
    h = first(z[0]) + sum(s(zi) for s, zi in zip(model.skips, z[1:]))
    by_hand = model.decoder[1](model.decoder[0][1:](h)).view(6, 1, 8, 8)
    torch.testing.assert_close(model.decode(z[0], z[1:]), by_hand)
    assert all(s.bias is None for s in model.skips) and [s.in_features for s in model.skips] == [4, 3]
    # sampling reads every layer too
    eps = [torch.randn(6, d) for d in kw["latent_dims"]]
    z2 = reparameterize(*_prior_params(model, 2, eps[2]), eps[1])
    z1 = reparameterize(*_prior_params(model, 1, z2), eps[0])
    torch.testing.assert_close(model.generate(eps), torch.sigmoid(model.decode(z1, [z2, eps[2]])))


def test_skip_with_missing_layers_raises():
    model = small(latent_dims=(5, 4, 3), hidden=(24, 16, 12), skip=True)
    with pytest.raises(ValueError, match="needs 2 tensors in z_above"):
        model.decode(torch.randn(2, 5))


# ------------------------------------------------------------ Burda et al.'s architecture
def test_burda_two_layer_architecture():
    # Burda et al. (2016), Appendix C: q(h1|x) 784-200-200-(100 mu, 100 var),
    # q(h2|h1) 100-100-100-(50, 50), p(h1|h2) 50-100-100-(100, 100), p(x|h1) 100-200-200-784;
    # tanh after every deterministic layer, exp for the variances.
    model = LadderVAE(
        latent_dims=(100, 50), hidden=((200, 200), (100, 100)), activation="tanh", inference="bottom_up", variance="exp"
    )

    def linear(net: nn.Module) -> list[tuple[int, int]]:
        return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]

    assert linear(model.up[0]) + linear(model.up_heads[0]) == [(784, 200), (200, 200), (200, 100), (200, 100)]
    assert linear(model.up[1]) + linear(model.up_heads[1]) == [(100, 100), (100, 100), (100, 50), (100, 50)]
    assert linear(model.down[0]) + linear(model.down_heads[0]) == [(50, 100), (100, 100), (100, 100), (100, 100)]
    assert linear(model.decoder) == [(100, 200), (200, 200), (200, 784)]
    assert len(model.skips) == 0
    sizes = [(784, 200), (200, 200), (200, 100), (200, 100), (100, 100), (100, 100), (100, 50), (100, 50),
             (50, 100), (100, 100), (100, 100), (100, 100), (100, 200), (200, 200), (200, 784)]  # fmt: skip
    n_params = sum((a + 1) * b for a, b in sizes)
    assert n_params == 521_084 == sum(p.numel() for p in model.parameters())
    activations = [type(m) for m in model.modules() if not isinstance(m, (nn.Linear, nn.Sequential, nn.ModuleList))]
    assert set(activations) - {LadderVAE, type(model.up_heads[0])} == {nn.Tanh}
    assert sum(a is nn.Tanh for a in activations) == 8  # two per network: q1, q2, p1, p(x)
    # the variance heads: var = exp(Linear(h)) + min_var
    h = torch.randn(3, 200)
    head = model.up_heads[0]
    torch.testing.assert_close(head(h)[1], head.to_var(h).exp() + model.config.min_var)
    x = binary_images(2)
    assert model.log_weights(x, 4).shape == (4, 2) and torch.isfinite(model.elbo(x).elbo).all()
