"""Every model's log importance weights against an independent estimate of log p(x).

For a tiny model on 2x2 binary images, log p(x) = log E_{p(z)}[p(x|z)] is estimated
by plain Monte Carlo over ancestral samples of the generative model (``sample``),
a code path that shares nothing with ``log_weights`` but the decoder. The
importance-sampled estimate logmeanexp(log_weights(x, k)) must agree with it, for
all 16 possible images, and the probabilities must sum to one. The encoders are
set so that q(z|x) is far from the prior: then a log_weights that drops or breaks
a term (log p(z), log q(z|x), a log-determinant) is off by much more than the
tolerance, which the mutation checks below show. (The Ladder VAE's and the NVAE's
weights are checked the same way in their own test files.)
"""

import math

import pytest
import torch

from vaetut import VAE, FlowVAE

SHAPE = (1, 2, 2)
ALL_IMAGES = torch.tensor([[(i >> b) & 1 for b in range(4)] for i in range(16)], dtype=torch.float32).view(16, *SHAPE)


def _far_from_prior(model: torch.nn.Module) -> torch.nn.Module:
    """Move q(z|x) away from p(z) (mean +0.7, wider: std about 1.3, so the importance
    weights stay bounded) and make the decoder depend strongly on z."""
    with torch.no_grad():
        model.to_mu.bias.add_(0.7)
        model.to_log_var.weight.mul_(0.1)
        model.to_log_var.bias.fill_(0.5)
        last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(4.0)
    return model.eval()


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(1)
    models = {
        "vae": lambda: VAE(image_shape=SHAPE, latent_dim=2, hidden=(8,)),
        "vae-tanh": lambda: VAE(image_shape=SHAPE, latent_dim=2, hidden=(8, 8), activation="tanh"),
        "planar": lambda: FlowVAE(image_shape=SHAPE, flow="planar", steps=3, latent_dim=2, hidden=(8,)),
        "iaf": lambda: FlowVAE(image_shape=SHAPE, flow="iaf", steps=2, latent_dim=2, hidden=(8,), iaf_hidden=(8,)),
    }
    return _far_from_prior(models[name]())


@torch.no_grad()
def prior_log_px(model, x: torch.Tensor, n: int = 400_000) -> torch.Tensor:
    """log p(x) = log mean_n prod_i Bernoulli(x_i; p_i(z_n)), z_n from the generative model, ``[B]``."""
    torch.manual_seed(2)
    probs = model.sample(n).flatten(1).clamp(1e-7, 1 - 1e-7)  # [n, 4]
    x = x.flatten(1)  # [B, 4]
    log_p = x @ probs.log().T + (1 - x) @ (1 - probs).log().T  # [B, n]
    return torch.logsumexp(log_p.double(), 1) - math.log(n)


@torch.no_grad()
def importance_log_px(model, x: torch.Tensor, k: int = 200_000) -> torch.Tensor:
    torch.manual_seed(3)
    log_w = model.log_weights(x, k).double()  # [k, B]
    return torch.logsumexp(log_w, 0) - math.log(k)


@pytest.mark.parametrize("name", ["vae", "vae-tanh", "planar", "iaf"])
def test_log_weights_estimate_the_likelihood_of_the_generative_model(name):
    model = _build(name)
    reference = prior_log_px(model, ALL_IMAGES)
    estimate = importance_log_px(model, ALL_IMAGES)
    assert reference.exp().sum().item() == pytest.approx(1.0, abs=2e-3)  # the 16 images are all there is
    assert (estimate - reference).abs().max().item() < 0.03
    # and the encoder really is far from the prior: the ELBO's gap is large, so a broken weight would show
    elbo = model.log_weights(ALL_IMAGES, 2000).double().mean(0)
    assert (reference - elbo).mean().item() > 0.3


class _DropPriorAndPosterior(VAE):
    """A VAE whose log_weights keeps only log p(x|z): the bug this file is here to catch."""

    def log_weights(self, x, k):
        mu, log_var = self.encode(x)
        z = mu + (0.5 * log_var).exp() * torch.randn(k, *mu.shape)
        return self.log_px_z(x, self.decode(z))


@pytest.mark.parametrize(
    "broken",
    [
        lambda: _far_from_prior(_seeded(lambda: _DropPriorAndPosterior(image_shape=SHAPE, latent_dim=2, hidden=(8,)))),
    ],
    ids=["vae without log p(z) - log q(z|x)"],
)
def test_the_check_catches_a_broken_log_weights(broken):
    model = broken()
    gap = (importance_log_px(model, ALL_IMAGES) - prior_log_px(model, ALL_IMAGES)).abs().max().item()
    assert gap > 0.3  # ten times the tolerance of the test above


def test_the_check_catches_a_flow_whose_log_determinant_has_the_wrong_sign(monkeypatch):
    model = _build("planar")
    flow = model.flow

    def wrong_sign(z0, context=None):
        z, log_det = type(flow).forward(flow, z0, context)
        return z, -log_det

    monkeypatch.setattr(flow, "forward", wrong_sign)
    gap = (importance_log_px(model, ALL_IMAGES) - prior_log_px(model, ALL_IMAGES)).abs().max().item()
    assert gap > 0.1


def _seeded(make):
    torch.manual_seed(1)
    return make()
