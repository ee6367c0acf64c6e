"""Inputs checked at the door: every model rejects bad batches with a message that says what to do."""

import numpy as np
import pytest
import torch

from vaetut import VAE, Autoencoder, FlowVAE, LadderVAE, fit, log_likelihood, posterior_stats
from vaetut.distributions import check_batch, check_count

MODELS = {
    "vae": lambda: VAE(latent_dim=2, hidden=(16,)),
    "conv": lambda: VAE(latent_dim=2, arch="conv", channels=(4, 8)),
    "planar": lambda: FlowVAE(flow="planar", steps=2, latent_dim=2, hidden=(16,)),
    "iaf": lambda: FlowVAE(flow="iaf", steps=2, latent_dim=2, hidden=(16,), iaf_hidden=(8,)),
    "ladder": lambda: LadderVAE(latent_dims=(4, 2), hidden=(16, 8)),
}


def _x(n=3):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([1]), True), float("nan")), "NaN or infinite"),
        (lambda x: x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("inf"))), "NaN or infinite"),
        (lambda x: x[:0], "empty batch"),
        (lambda x: x.double(), "float64 but the model's parameters are torch.float32"),
        (lambda x: x.half(), "float16 but the model's parameters are torch.float32"),
        (lambda x: (x * 255).to(torch.uint8), r"floating-point x, got dtype torch.uint8; use x.float\(\) / 255"),
        (lambda x: x.flatten(1), r"shape \[B, 1, 28, 28\].*x.view\(-1, 1, 28, 28\)"),
        (lambda x: x[0], r"x.unsqueeze\(0\)"),
        (lambda x: x * 3, r"targets in \[0, 1\]"),
    ],
    ids=["nan", "inf", "empty", "float64", "float16", "uint8", "flat", "single", "range"],
)
def test_bad_batches_get_clear_errors(name, bad, message):
    model = MODELS[name]()
    with pytest.raises(ValueError, match=message):
        model.elbo(bad(_x()))
    with pytest.raises(ValueError, match=message):
        model.log_weights(bad(_x()), 2)


@pytest.mark.parametrize("name", MODELS)
def test_float64_models_train_sample_and_score(name):
    model = MODELS[name]().double()
    x = _x(8).double()
    assert model.sample(2).dtype == torch.float64  # noise drawn in the parameters' dtype
    assert model.elbo(x).elbo.dtype == torch.float64
    fit(model, x, steps=1, batch_size=4, progress=False, device="cpu")
    assert log_likelihood(model.eval(), x, k=3).dtype == torch.float64


@pytest.mark.parametrize("name", MODELS)
def test_numpy_integers_count_as_integers(name):
    model = MODELS[name]()
    assert model.log_weights(_x(), np.int64(3)).shape == (3, 3)
    assert model.sample(np.int32(2)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "5", None])
def test_bad_counts_are_refused(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        VAE(latent_dim=2).log_weights(_x(), k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        log_likelihood(VAE(latent_dim=2), _x(), k=k)


def test_check_helpers_directly():
    assert check_count(np.int16(4), "n") == 4 and type(check_count(np.int16(4), "n")) is int
    with pytest.raises(ValueError, match=r"n must be an integer of at least 2 \(bins\), got 1"):
        check_count(1, "n", minimum=2, hint="bins")
    check_batch(torch.zeros(2, 3), (3,))  # any event shape
    with pytest.raises(ValueError, match=r"expected a batch z of shape \[B, 3\]"):
        check_batch(torch.zeros(2, 4), (3,), name="z")


def test_fit_checks_the_whole_data_once():
    x = _x(8)
    x[5, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="data holds 1 NaN or infinite value"):
        fit(VAE(latent_dim=2, hidden=(16,)), x, steps=1, progress=False)
    with pytest.raises(ValueError, match="data is torch.float64 but the model's parameters are torch.float32"):
        fit(VAE(latent_dim=2, hidden=(16,)), _x(8).double(), steps=1, progress=False)
    with pytest.raises(ValueError, match="floating-point pixels"):
        fit(VAE(latent_dim=2, hidden=(16,)), (_x(8) * 255).byte(), steps=1, progress=False)


def test_posterior_stats_refuses_a_deterministic_encoder():
    with pytest.raises(ValueError, match=r"Autoencoder.encode\(x\) must return \(mu, log_var\)"):
        posterior_stats(Autoencoder(hidden=(16,)), _x())
