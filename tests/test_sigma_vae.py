"""The sigma-VAE decoder (Rybkin et al. 2020; ERRATA.md §3.3): one shared Gaussian
sigma, fixed, learned, or set to the batch's maximum-likelihood value sigma*.

References used here are independent of vaetut's formulas: torch.distributions.Normal,
a golden-section search over log sigma, and gradient descent on log sigma.
"""

import math

import pytest
import torch
from torch.distributions import Normal

from vaetut.distributions import kl_normal, reparameterize
from vaetut.vae import VAE, VAEConfig, softclip

SHAPE = (1, 6, 5)  # small images keep every test fast; d = 30 pixels
D = 30


def gaussian_model(sigma, **kw) -> VAE:
    torch.manual_seed(0)
    return VAE(image_shape=SHAPE, latent_dim=3, hidden=(16,), likelihood="gaussian", sigma=sigma, **kw).double()


def batch(k=None, b=7, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, *SHAPE, generator=g, dtype=torch.float64)
    lead = (k,) if k else ()
    out = x + scale * torch.randn(*lead, b, *SHAPE, generator=g, dtype=torch.float64)
    return x, out


def nll(x, out, log_sigma: float) -> float:
    """Gaussian negative log-likelihood of the whole batch from torch.distributions."""
    return -Normal(out, math.exp(log_sigma)).log_prob(x.expand_as(out)).sum().item()


def golden_section(f, lo, hi, tol=1e-10):
    """Minimiser of a unimodal f on [lo, hi]."""
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    while b - a > tol:
        if f(c) < f(d):
            b, d = d, c
            c = b - r * (b - a)
        else:
            a, c = c, d
            d = a + r * (b - a)
    return (a + b) / 2


# --------------------------------------------------------------- sigma* is the minimiser
@pytest.mark.parametrize("k", [None, 4])
@pytest.mark.parametrize("scale", [0.03, 0.3, 2.0])
def test_optimal_sigma_minimises_the_gaussian_nll(k, scale):
    model = gaussian_model("optimal")
    x, out = batch(k=k, scale=scale)
    log_sigma = model.decoder_log_sigma(x, out).item()
    best = golden_section(lambda s: nll(x, out, s), -8.0, 4.0)
    assert log_sigma == pytest.approx(best, abs=1e-6)
    # and it is a minimum: both neighbours are worse
    assert nll(x, out, log_sigma) < min(nll(x, out, log_sigma - 1e-3), nll(x, out, log_sigma + 1e-3))


def test_optimal_sigma_is_the_root_mean_squared_error_over_the_whole_batch():
    # not per example: examples with different errors share one sigma
    model = gaussian_model("optimal")
    x, out = batch(b=2)
    out = out.clone()
    out[1] = x[1] + 0.5  # example 1 is far worse than example 0
    mse = ((x - out) ** 2).mean()
    assert model.decoder_log_sigma(x, out).item() == pytest.approx(0.5 * math.log(mse.item()), abs=1e-12)
    per_example = ((x - out) ** 2).flatten(1).mean(1)
    assert not torch.allclose(per_example[0], per_example[1])


def test_a_soft_clip_would_have_biased_sigma_star():
    # why sigma* is floored exactly: the soft clip shifts it by log(1 + exp(m - s)),
    # 2 % of sigma at the MSE of a good MNIST model (MSE 0.01, log sigma* = -2.3)
    model = gaussian_model("optimal")
    x, out = batch(scale=0.1)
    s = model.decoder_log_sigma(x, out)
    shift = softclip(s, -6.0) - s
    assert shift.item() == pytest.approx(math.log1p(math.exp(-6.0 - s.item())), rel=1e-9)
    assert shift.item() > 1e-2  # would have failed the 1e-6 check above


def test_learned_sigma_converges_to_sigma_star():
    # the other numerical minimisation: L-BFGS on the learned log sigma alone
    model = gaussian_model("learned")
    x, out = batch(scale=0.2)
    opt = torch.optim.LBFGS([model.log_sigma], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -model.log_px_z(x, out).sum()
        loss.backward()
        return loss

    opt.step(closure)
    star = gaussian_model("optimal").decoder_log_sigma(x, out)
    assert model.decoder_log_sigma().item() == pytest.approx(star.item(), abs=1e-4)


# --------------------------------------------------------------- the soft clip
def test_optimal_sigma_is_finite_when_the_reconstruction_is_perfect():
    model = gaussian_model("optimal", min_log_sigma=-6.0)
    x, _ = batch()
    log_sigma = model.decoder_log_sigma(x, x.clone())
    assert log_sigma.item() == -6.0
    ll = model.log_px_z(x, x.clone())
    assert torch.isfinite(ll).all()
    # at the floor the density is that of sigma = exp(-6)
    ref = Normal(x, math.exp(-6.0)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(ll, ref)


def test_softclip_keeps_log_sigma_and_its_gradient_finite():
    t = torch.tensor([-math.inf, -1e4, -6.0, 0.0, 50.0], dtype=torch.float64, requires_grad=True)
    y = softclip(t, -6.0)
    assert torch.isfinite(y).all()
    assert (y >= -6.0).all()
    assert y[0].item() == -6.0 and y[1].item() == -6.0
    assert y[-1].item() == pytest.approx(50.0, abs=1e-12)  # far above the floor it is the identity
    assert y[2].item() == pytest.approx(-6.0 + math.log(2.0))
    y.sum().backward()
    assert torch.isfinite(t.grad).all()
    # d/dt softclip = sigmoid(t - m)
    torch.testing.assert_close(t.grad, torch.sigmoid(t.detach() + 6.0))


def test_learned_sigma_cannot_collapse_when_the_mse_is_zero():
    # with a perfect reconstruction the NLL pushes log sigma to -inf; the clip stops it
    model = gaussian_model("learned", min_log_sigma=-6.0)
    x, _ = batch()
    with torch.no_grad():
        model.log_sigma.fill_(-1e6)
    ll = model.log_px_z(x, x.clone())
    assert torch.isfinite(ll).all()
    assert model.decoder_log_sigma().item() == pytest.approx(-6.0)


# --------------------------------------------------------------- the full density
@pytest.mark.parametrize("sigma", [0.4, "learned", "optimal"])
@pytest.mark.parametrize("k", [None, 3])
def test_log_px_z_is_the_full_gaussian_density(sigma, k):
    model = gaussian_model(sigma)
    if sigma == "learned":
        with torch.no_grad():
            model.log_sigma.fill_(-1.3)
    x, out = batch(k=k)
    if sigma == "learned":
        std = math.exp(-6.0 + math.log1p(math.exp(-1.3 + 6.0)))
    elif sigma == "optimal":
        std = ((x - out) ** 2).mean().sqrt().item()
    else:
        std = 0.4
    ref = Normal(out, std).log_prob(x.expand_as(out)).flatten(-3).sum(-1)  # [..., B]
    got = model.log_px_z(x, out)
    assert got.shape == ref.shape == ((k, 7) if k else (7,))
    torch.testing.assert_close(got, ref)


def test_nll_at_sigma_star_is_half_a_nat_per_pixel_plus_log_sigma_and_constant():
    # sum_b SSE_b / (2 sigma*^2) = B d / 2 at sigma*, so the batch NLL is
    # B d (1/2 + log sigma* + log(2 pi)/2), and NOT the paper's printed
    # d MSE / (2 exp(sigma*^2)) + d sigma* (ERRATA.md §3.3)
    model = gaussian_model("optimal")
    x, out = batch(b=5)
    s = model.decoder_log_sigma(x, out).item()
    total = -model.log_px_z(x, out).sum().item()
    assert total == pytest.approx(5 * D * (0.5 + s + 0.5 * math.log(2 * math.pi)), rel=1e-12)
    mse_per_example = ((x - out) ** 2).flatten(1).mean(1)
    as_printed = (D * mse_per_example / (2 * math.exp(s**2)) + D * s).sum().item()
    assert abs(as_printed - total) > 10.0


def test_elbo_uses_the_full_density_and_the_analytic_kl():
    model = gaussian_model("optimal")
    x, _ = batch()
    torch.manual_seed(3)
    terms = model.elbo(x)
    torch.manual_seed(3)
    mu, log_var = model.encode(x)
    z = reparameterize(mu, log_var)
    x_hat = model.decode(z)
    std = ((x - x_hat) ** 2).mean().sqrt()
    ref = Normal(x_hat, std).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(terms.log_px_z, ref)
    torch.testing.assert_close(terms.elbo, ref - kl_normal(mu, log_var))


# --------------------------------------------------------------- gradients
def test_no_gradient_flows_through_sigma_star():
    model = gaussian_model("optimal")
    x, out = batch()
    out.requires_grad_(True)
    log_sigma = model.decoder_log_sigma(x, out)
    assert not log_sigma.requires_grad
    # the log-likelihood of example 0 must not depend on the other examples' outputs:
    # through sigma* it would, since sigma* is fitted to the whole batch
    model.log_px_z(x, out)[0].backward()
    assert out.grad[1:].abs().max().item() == 0.0
    # and for example 0 the gradient is that of a Gaussian with sigma held fixed
    sigma2 = math.exp(2 * log_sigma.item())
    torch.testing.assert_close(out.grad[0], (x[0] - out.detach()[0]) / sigma2)


def test_learned_sigma_gets_the_analytic_gradient():
    model = gaussian_model("learned")
    with torch.no_grad():
        model.log_sigma.fill_(-0.7)
    x, out = batch()
    model.log_px_z(x, out).sum().backward()
    s = softclip(torch.tensor(-0.7, dtype=torch.float64), -6.0).item()
    sse = ((x - out) ** 2).sum().item()
    # d/ds [ -SSE e^{-2s} / 2 - n s ] = SSE e^{-2s} - n, times d softclip / d t
    expected = (sse * math.exp(-2 * s) - x.numel()) * torch.sigmoid(torch.tensor(-0.7 + 6.0, dtype=torch.float64)).item()
    assert model.log_sigma.grad.item() == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(likelihood="gaussian", sigma=0.0), "positive finite"),
        (dict(likelihood="gaussian", sigma=-1.0), "positive finite"),
        (dict(likelihood="gaussian", sigma=math.inf), "positive finite"),
        (dict(likelihood="gaussian", sigma=math.nan), "positive finite"),
        (dict(likelihood="gaussian", sigma=True), "positive finite"),
        (dict(likelihood="gaussian", sigma="optimum"), "learned"),
        (dict(likelihood="bernoulli", sigma="optimal"), "Gaussian decoder"),
        (dict(likelihood="gaussian", sigma="learned", min_log_sigma=-math.inf), "min_log_sigma"),
    ],
)
def test_bad_sigma_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_optimal_sigma_without_the_batch_says_what_to_pass():
    with pytest.raises(ValueError, match="decoder_log_sigma\\(x, out\\)"):
        gaussian_model("optimal").decoder_log_sigma()


# ------------------------------------------- evaluation with the optimal sigma frozen
def _optimal_model():
    torch.manual_seed(0)
    return VAE(likelihood="gaussian", sigma="optimal", latent_dim=3, hidden=(32,))


def test_in_evaluation_each_example_is_scored_alone():
    """Training refits sigma* to the batch; evaluation uses the frozen value, so an
    example's log-likelihood no longer depends on the other examples in its batch."""
    model = _optimal_model()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    part_train, whole_train = model.log_px_z(x[:4], out[:4]), model.log_px_z(x, out)[:4]
    assert (part_train - whole_train).abs().max() > 1e-3  # training mode: sigma* of whichever batch
    model.eval()
    torch.testing.assert_close(model.log_px_z(x[:4], out[:4]), model.log_px_z(x, out)[:4])


def test_test_log_likelihood_does_not_depend_on_batch_or_chunk_sizes():
    from vaetut import log_likelihood

    model = _optimal_model()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    model.calibrate(x)
    model.eval()
    estimates = []
    for batch_size, chunk in ((40, 3000), (7, 500), (1, 130)):
        torch.manual_seed(4)
        estimates.append(log_likelihood(model, x, k=3000, batch_size=batch_size, chunk=chunk).mean().item())
    # only Monte Carlo noise is left (refitting sigma to each batch and chunk moved this by about a nat)
    assert max(estimates) - min(estimates) < 0.1, estimates


def test_calibrate_freezes_sigma_star_of_the_training_reconstructions():
    model = _optimal_model()
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(6)
    sq = model.calibrate(x, batch_size=30).item()
    torch.manual_seed(6)
    mu, log_var = model.encode(x)
    expected = (x - model.decode(reparameterize(mu, log_var))).pow(2).mean().item()
    assert sq == pytest.approx(expected, rel=1e-5)
    model.eval()
    assert model.decoder_log_sigma().item() == pytest.approx(0.5 * math.log(expected), rel=1e-5)
    with pytest.raises(ValueError, match="calibrate\\(\\) sets the optimal sigma"):
        VAE(likelihood="gaussian", sigma=0.5).calibrate(x)


def test_calibrate_averages_over_every_pixel_of_every_batch():
    """Batches of 7 for 30 images (the last one of 2): sigma*^2 is the MSE over all 30,
    not the last batch's nor the mean of the batches' MSEs. With q's variance ~ 1e-26 the
    reconstructions are deterministic, so the reference is one pass over the whole set."""
    model = _optimal_model()
    with torch.no_grad():
        model.to_log_var.weight.zero_()
        model.to_log_var.bias.fill_(-60.0)
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    x[28:] = 0.0  # the last batch reconstructs far worse than the others
    with torch.no_grad():
        mse = (x - model.decode(model.encode(x)[0])).pow(2).mean().item()
        last = (x[28:] - model.decode(model.encode(x[28:])[0])).pow(2).mean().item()
    assert abs(last - mse) > 0.05 * mse
    assert model.calibrate(x, batch_size=7).item() == pytest.approx(mse, rel=1e-5)


def test_the_running_sigma_star_follows_training_batches_only():
    model = _optimal_model()
    x, out = torch.zeros(4, 1, 28, 28), torch.full((4, 1, 28, 28), 0.5)  # mse 0.25
    for _ in range(2000):
        model.decoder_log_sigma(x, out)
    assert model.sigma_star_sq.item() == pytest.approx(0.25, rel=1e-2)
    model.eval()
    model.decoder_log_sigma(x, out * 0)
    assert model.sigma_star_sq.item() == pytest.approx(0.25, rel=1e-2)  # evaluation never moves it
