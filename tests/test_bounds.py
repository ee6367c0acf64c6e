"""log_likelihood and iwae_bound: bounds that order correctly, exact cases, and the
estimator's organisation (chunks, batches, inference mode) changing no result."""

import inspect
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaetut import VAE, iwae_bound, log_likelihood
from vaetut.flow_vae import FlowVAE
from vaetut.ladder_vae import LadderVAE
from vaetut.linear_gaussian import LinearGaussian


class ExactPosteriorModel:
    """z ~ N(0,1), x|z ~ N(z, 1): p(x) = N(0, 2) and p(z|x) = N(x/2, 1/2).

    With q = the exact posterior every log weight equals log p(x), so any k gives it
    exactly; with q = the prior the estimate is noisy but consistent.
    """

    def __init__(self, exact_q: bool):
        self.exact_q = exact_q

    def log_weights(self, x, k):
        x = x.reshape(len(x))
        if self.exact_q:
            mean, var = x / 2, torch.full_like(x, 0.5)
        else:
            mean, var = torch.zeros_like(x), torch.ones_like(x)
        z = mean + var.sqrt() * torch.randn(k, len(x))
        normal = lambda v, m, s2: -0.5 * (math.log(2 * math.pi) + torch.log(s2) + (v - m) ** 2 / s2)  # noqa: E731
        return normal(z, 0, torch.ones_like(z)) + normal(x, z, torch.ones_like(z)) - normal(z, mean, var)


def _exact_log_px(x):
    return -0.5 * (math.log(2 * math.pi * 2) + x.reshape(len(x)) ** 2 / 2)


def test_exact_with_the_true_posterior():
    x = torch.randn(7, 1) * 2
    torch.testing.assert_close(log_likelihood(ExactPosteriorModel(True), x, k=3), _exact_log_px(x))


def test_consistent_within_monte_carlo_error_with_the_prior_as_q():
    """q = p(z): the weights are p(x|z), bounded; the estimate, drawn in chunks, converges to log p(x)."""
    x = torch.randn(5, 1)
    est = log_likelihood(ExactPosteriorModel(False), x, k=200_000, chunk=7_000)
    torch.testing.assert_close(est, _exact_log_px(x), atol=0.02, rtol=0)


def _elbo_with_the_prior_as_q(x):
    """E_{z ~ N(0,1)}[log N(x; z, 1)] - KL(p || p) = -(log 2 pi + x^2 + 1) / 2, ``[B]``."""
    return -0.5 * (math.log(2 * math.pi) + x.reshape(len(x)) ** 2 + 1)


def test_bound_rises_with_k_from_the_elbo_toward_log_px():
    """The model with q = p(z), where the ELBO and log p(x) have closed forms 0.15 + x^2/4
    nats apart: L_1 is the ELBO, L_k rises with k and stays below log p(x), L_100 is near it."""
    x = torch.tensor([[1.5], [-2.0], [2.5]])
    n = 4000  # independent draws of each bound, to average
    torch.manual_seed(0)
    bounds = {k: iwae_bound(ExactPosteriorModel(False), x.repeat(n, 1), k).view(n, 3) for k in (1, 10, 100)}
    mean = {k: b.mean(0) for k, b in bounds.items()}
    se = {k: b.std(0) / math.sqrt(n) for k, b in bounds.items()}
    elbo, exact = _elbo_with_the_prior_as_q(x), _exact_log_px(x)
    assert ((mean[1] - elbo).abs() < 4 * se[1]).all(), (mean[1], elbo, se[1])
    for lo, hi in ((1, 10), (10, 100)):
        assert (mean[hi] - mean[lo] > 4 * (se[lo] ** 2 + se[hi] ** 2).sqrt()).all(), (lo, hi, mean)
    assert (mean[100] < exact + 4 * se[100]).all()
    assert ((exact - mean[100]) < 0.1 * (exact - elbo)).all(), (exact - mean[100], exact - elbo)
    # log_likelihood is the same estimator: k = 1 gives the ELBO, large k log p(x)
    torch.manual_seed(1)
    ll_1 = log_likelihood(ExactPosteriorModel(False), x.repeat(n, 1), k=1).view(n, 3)
    assert ((ll_1.mean(0) - elbo).abs() < 4 * ll_1.std(0) / math.sqrt(n)).all()
    est = log_likelihood(ExactPosteriorModel(False), x, k=200_000, chunk=10_000)
    torch.testing.assert_close(est, exact, atol=0.02, rtol=0)


def test_a_vae_s_bound_rises_with_k_and_is_above_its_elbo():
    """The same order on a VAE whose q(z|x) is far from its posterior (encoder means moved
    by +1.5, decoder weights x4: L_1000 is about 180 nats above the ELBO). Averages over
    10 images and 20 draws each; the standard errors are those of these averages."""
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(64,))
    with torch.no_grad():
        model.to_mu.bias.add_(1.5)
        model.decoder[0][-1].weight.mul_(4.0)
    b, n = 10, 20
    x = torch.bernoulli(torch.rand(b, 1, 28, 28))
    with torch.no_grad():
        l1 = log_likelihood(model, x.repeat(n, 1, 1, 1), k=1).view(n, b)  # [n, B]
        l10 = log_likelihood(model, x.repeat(n, 1, 1, 1), k=10).view(n, b)
        l1000 = log_likelihood(model, x, k=1000).mean()
        elbo = torch.stack([model.elbo(x).elbo for _ in range(n)])  # [n, B]
    se = lambda t: (t.var(0).sum() / n).sqrt() / b  # noqa: E731  (of t.mean(), each image's own variance)
    assert (l1.mean() - elbo.mean()).abs() < 4 * (se(l1) ** 2 + se(elbo) ** 2).sqrt()
    assert l10.mean() - l1.mean() > 4 * (se(l1) ** 2 + se(l10) ** 2).sqrt()
    assert l1000 > l10.mean() + 4 * se(l10)


def test_memory_is_bounded_by_chunking():
    calls = []

    class Recorder(ExactPosteriorModel):
        def log_weights(self, x, k):
            calls.append(k)
            return super().log_weights(x, k)

    log_likelihood(Recorder(False), torch.randn(3, 1), k=1000, chunk=64)
    assert max(calls) == 64 and sum(calls) == 1000


def test_iwae_bound_is_log_p_x_for_the_exact_posterior_at_any_k():
    x = torch.randn(7, 1) * 2
    for k in (1, 2, 50):
        torch.testing.assert_close(iwae_bound(ExactPosteriorModel(True), x, k), _exact_log_px(x))


def test_iwae_bound_is_differentiable_and_at_k1_is_the_one_sample_elbo():
    """L_1 = log w_1 = log p(x|z) + log p(z) - log q(z|x) for one sample z of q, here
    recomputed by torch.distributions at the same noise (that L_1 averages to the ELBO is
    checked in closed form above)."""
    model = VAE(latent_dim=2, hidden=(16,))
    x = torch.bernoulli(torch.rand(4, 1, 28, 28))
    torch.manual_seed(3)
    bound = iwae_bound(model, x, 1)
    with torch.no_grad():
        mu, log_var = model.encode(x)
        std = torch.exp(0.5 * log_var)
        torch.manual_seed(3)
        z = mu + std * torch.randn(1, *mu.shape)  # [1, B, D]
        log_px_z = Independent(Bernoulli(logits=model.decoder(z[0])), 3).log_prob(x)
        torch.testing.assert_close(bound.detach(), log_px_z + _log_pz_minus_log_qz(z, mu, std)[0], rtol=1e-5, atol=1e-4)
    iwae_bound(model, x, 5).mean().backward()
    assert model.to_mu.weight.grad.abs().sum() > 0 and model.to_log_var.weight.grad.abs().sum() > 0
    assert model.decoder[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [0, -5, 2.0])
def test_bad_k_is_rejected(k):
    with pytest.raises(ValueError, match="positive integer"):
        log_likelihood(ExactPosteriorModel(True), torch.randn(2, 1), k=k)
    with pytest.raises(ValueError, match="positive integer"):
        iwae_bound(ExactPosteriorModel(True), torch.randn(2, 1), k=k)


# ------------------------------------------- the estimator is the old formula


class Replay:
    """Serves a fixed table of log-weights ``[k, N]`` in order, whatever the chunks and batches.

    The examples are told apart by their value: ``x[i] = i``.
    """

    def __init__(self, table):
        self.table, self.used = table, [0] * table.shape[1]

    def log_weights(self, x, k):
        rows = []
        for i in x.reshape(len(x)).long().tolist():
            rows.append(self.table[self.used[i] : self.used[i] + k, i])
            self.used[i] += k
        return torch.stack(rows, dim=1)  # [k, B]


@pytest.mark.parametrize("chunk", [None, 1, 7, 64, 1000])
@pytest.mark.parametrize("batch_size", [1, 4, 10])
def test_equals_logsumexp_of_the_same_log_weights_for_any_chunk_and_batch(chunk, batch_size):
    """With the noise fixed (a replayed table) every chunk and batch size gives the same
    number, logsumexp(log w) - log k, also for weights far from 0 and of wide range."""
    g = torch.Generator().manual_seed(0)
    k, n = 64, 10
    table = -1000 + 30 * torch.randn(k, n, generator=g, dtype=torch.float64)  # [k, N]
    x = torch.arange(n, dtype=torch.float64).view(n, 1)
    model = Replay(table)
    est = log_likelihood(model, x, k=k, chunk=chunk, batch_size=batch_size)
    assert model.used == [k] * n  # every weight used once
    torch.testing.assert_close(est, torch.logsumexp(table, 0) - math.log(k), rtol=0, atol=1e-9)


class Recorder:
    """Wraps a model and keeps every ``[c, B]`` block of log-weights it returns."""

    def __init__(self, model):
        self.model, self.blocks = model, []

    def parameters(self):
        return self.model.parameters() if hasattr(self.model, "parameters") else iter(())

    def log_weights(self, x, k):
        lw = self.model.log_weights(x, k)  # [k, B]
        self.blocks.append(lw.clone())
        return lw


def _small_models():
    torch.manual_seed(0)
    lg = LinearGaussian.random(6, 3, s=0.7, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    return {
        "vae": (VAE(latent_dim=3, hidden=(16,)), (1, 28, 28)),
        "vae-tanh-2-layers": (VAE(latent_dim=3, hidden=(16, 8), activation="tanh"), (1, 28, 28)),
        "conv vae": (VAE(arch="conv", image_shape=(1, 8, 8), channels=(4, 8), latent_dim=2), (1, 8, 8)),
        "gaussian vae": (VAE(latent_dim=2, hidden=(16,), likelihood="gaussian", sigma="learned"), (1, 28, 28)),
        "ladder vae": (LadderVAE(latent_dims=(4, 2), hidden=(16, 8)), (1, 28, 28)),
        "planar flow vae": (FlowVAE(flow="planar", steps=2, latent_dim=2, hidden=(16,)), (1, 28, 28)),
        "iaf vae": (FlowVAE(flow="iaf", steps=2, latent_dim=2, hidden=(16,), iaf_hidden=(8,)), (1, 28, 28)),
        "linear gaussian with q": (lg.with_q(lg.posterior), (6,)),
    }


@pytest.mark.parametrize("name", list(_small_models()))
def test_every_model_goes_through_the_generic_path(name):
    """log_likelihood of any model with log_weights is logsumexp of the weights it drew, minus log k."""
    model, shape = _small_models()[name]
    if hasattr(model, "eval"):
        model.eval()
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((5, *shape), 0.3))
    rec = Recorder(model)
    est = log_likelihood(rec, x, k=23, chunk=5, batch_size=5)
    assert est.shape == (5,) and est.dtype == x.dtype and torch.isfinite(est).all()
    assert [b.shape[0] for b in rec.blocks] == [5, 5, 5, 5, 3]
    lw = torch.cat(rec.blocks).double()  # [23, 5]
    torch.testing.assert_close(est, (torch.logsumexp(lw, 0) - math.log(23)).to(x.dtype))


@pytest.mark.parametrize("route", ["training (gradients on)", "evaluation (gradients off)"])
@pytest.mark.parametrize(
    "config",
    [
        dict(latent_dim=5, hidden=(32, 16), activation="tanh"),
        dict(latent_dim=5, hidden=(32,), activation="relu"),
        dict(latent_dim=3, hidden=()),  # the linear VAE: the last layer is the only one
        dict(latent_dim=4, hidden=(16,), activation="tanh", image_shape=(1, 5, 5)),  # d = 25: groups of 1 pixel
    ],
    ids=["tanh", "relu", "linear", "odd-d"],
)
@pytest.mark.parametrize("pixels", ["binary", "grey"])
def test_vae_log_weights_are_the_textbook_formula(route, config, pixels):
    """log p(x|z) + log p(z) - log q(z|x) by torch.distributions, at the same noise, on
    both routes of VAE.log_weights."""
    torch.manual_seed(0)
    model = VAE(**config)
    x = torch.rand(4, *model.config.image_shape)
    x = torch.bernoulli(x) if pixels == "binary" else x
    torch.manual_seed(3)
    with torch.set_grad_enabled(route.startswith("training")):
        lw = model.log_weights(x, 6)  # [6, 4]
    assert lw.requires_grad == route.startswith("training")
    with torch.no_grad():
        mu, log_var = model.encode(x)
        torch.manual_seed(3)
        eps = torch.randn(6, *mu.shape)
        std = torch.exp(0.5 * log_var)
        z = mu + std * eps  # [6, 4, D]
        logits = model.decoder(z.reshape(-1, z.shape[-1])).reshape(6, 4, *model.config.image_shape)
        # grey pixels: x log p + (1 - x) log(1 - p), which torch's Bernoulli refuses for x not in {0, 1}
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        log_px_z = -bce.sum((-3, -2, -1))  # [6, 4]
        if pixels == "binary":
            torch.testing.assert_close(log_px_z, Independent(Bernoulli(logits=logits), 3).log_prob(x))
        ref = log_px_z + _log_pz_minus_log_qz(z, mu, std)
    torch.testing.assert_close(lw.detach(), ref, rtol=1e-5, atol=1e-4)


def _log_pz_minus_log_qz(z, mu, std):
    """log N(z; 0, I) - log N(z; mu, diag std^2) by torch.distributions, ``[k, B]``."""
    return Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, std).log_prob(z).sum(-1)


def test_the_evaluation_route_is_exact_for_extreme_logits():
    """Logits of +-1e4: the products of sigmoids neither underflow nor lose the large terms."""
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=(8,), activation="tanh")
    with torch.no_grad():
        model.decoder[0][-1].weight.mul_(3000.0)
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    torch.manual_seed(1)
    plain = model.log_weights(x, 5).detach()
    torch.manual_seed(1)
    with torch.no_grad():
        fast = model.log_weights(x, 5)
    assert plain.abs().max() > 1e5 and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-3)


def test_the_evaluation_route_at_zero_logits_where_every_factor_is_one_half():
    """All logits 0: log p(x|z) = -d log 2 for any x, and each group's product of
    sigmoids is 2**-(group size), its smallest; d = 1024 would allow groups of 1024."""
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=(8,), image_shape=(1, 32, 32))
    with torch.no_grad():
        model.decoder[0][-1].weight.zero_()
        model.decoder[0][-1].bias.zero_()
        x = torch.rand(3, 1, 32, 32)
        torch.manual_seed(1)
        lw = model.log_weights(x, 4)
        torch.manual_seed(1)
        mu, log_var = model.encode(x)
        std = torch.exp(0.5 * log_var)
        z = mu + std * torch.randn(4, *mu.shape)
    torch.testing.assert_close(lw - _log_pz_minus_log_qz(z, mu, std), torch.full((4, 3), -1024 * math.log(2)))


def test_a_subclass_with_its_own_decoder_takes_the_plain_route():
    class Shifted(VAE):
        def decode(self, z):
            return super().decode(z) + 5.0

    torch.manual_seed(0)
    model = Shifted(latent_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    torch.manual_seed(1)
    with torch.no_grad():
        lw = model.log_weights(x, 4)
        torch.manual_seed(1)
        mu, log_var = model.encode(x)
        std = torch.exp(0.5 * log_var)
        z = mu + std * torch.randn(4, *mu.shape)
        ref = model.log_px_z(x, model.decode(z)) + _log_pz_minus_log_qz(z, mu, std)
    torch.testing.assert_close(lw, ref, rtol=1e-5, atol=1e-4)


def _delta_se(lw):
    """Monte Carlo standard error of logsumexp(lw) - log k, by the delta method, ``[B]``."""
    w = torch.exp(lw - lw.max(0).values)  # [k, B]
    return w.std(0) / (w.mean(0) * math.sqrt(len(w)))


def test_chunk_and_batch_sizes_change_only_the_noise():
    """With other random numbers the same estimate, within Monte Carlo error."""
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(32,)).eval()
    x = torch.bernoulli(torch.rand(6, 1, 28, 28))
    k = 3000
    torch.manual_seed(1)
    a = log_likelihood(model, x, k=k, chunk=7, batch_size=4)
    torch.manual_seed(2)
    b = log_likelihood(model, x, k=k, batch_size=100, max_elements=2**25)  # the old default shapes
    torch.manual_seed(3)
    c = log_likelihood(model, x, k=k)
    with torch.no_grad():
        se = _delta_se(model.log_weights(x, k).double()).float()
    assert (se > 0).all()
    for other in (b, c):
        assert ((a - other).abs() < 5 * math.sqrt(2) * se).all(), (a - other, se)


@pytest.mark.parametrize("chunk, batch_size", [(None, 10), (333, 2), (4000, 5)])
def test_agrees_with_the_exact_likelihood(chunk, batch_size):
    """LinearGaussian has an exact log p(x); a q wider than the posterior has bounded weights."""
    g = torch.Generator().manual_seed(0)
    model = LinearGaussian.random(8, 3, s=0.6, generator=g)
    x = model.sample(5, generator=g)
    pair = model.with_q(lambda xb: (model.posterior(xb)[0] + 0.2, 2.0 * model.posterior(xb)[1]))
    torch.manual_seed(0)
    est = log_likelihood(pair, x, k=4000, chunk=chunk, batch_size=batch_size)
    se = _delta_se(pair.log_weights(x, 4000))
    exact = model.log_px(x)
    assert ((est - exact).abs() < 5 * se).all(), (est - exact, se)
    # and the ELBO, the k = 1 end, is clearly further away
    assert ((exact - pair.elbo(x).elbo) > 10 * se).all()


def test_default_chunks_keep_each_call_small_however_large_k():
    calls = []

    class Shapes:
        def log_weights(self, x, k):
            calls.append((k, len(x)))
            return torch.zeros(k, len(x))

    # images: a call holds chunk * batch * 784 <= max_elements numbers
    log_likelihood(Shapes(), torch.zeros(25, 1, 28, 28), k=1000)
    budget = inspect.signature(log_likelihood).parameters["max_elements"].default
    assert max(c * b * 784 for c, b in calls) <= budget
    assert sum(c for c, b in calls) == 3 * 1000  # three batches (10, 10, 5), every sample drawn once
    # k of a million, tiny examples: still bounded, and all k drawn
    calls.clear()
    log_likelihood(Shapes(), torch.zeros(3, 1), k=10**6, max_elements=2**16)
    assert max(c * b for c, b in calls) <= 2**16 and sum(c for c, _ in calls) == 10**6
    # an example larger than the budget still gets one sample per call
    calls.clear()
    log_likelihood(Shapes(), torch.zeros(2, 1), k=5, max_elements=1)
    assert calls == [(1, 2)] * 5


def test_returns_an_ordinary_tensor():
    """No graph and not an inference tensor: the caller may modify it in place."""
    est = log_likelihood(ExactPosteriorModel(True), torch.randn(4, 1), k=8)
    assert not est.is_inference() and not est.requires_grad
    est += 1  # in-place ops on an inference tensor would raise
