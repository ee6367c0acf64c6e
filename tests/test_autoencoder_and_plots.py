"""The deterministic autoencoder and the plotting helpers."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Bernoulli, Independent  # noqa: E402

from vaetut import VAE, Autoencoder  # noqa: E402
from vaetut.plots import (  # noqa: E402
    make_grid,
    plot_history,
    plot_latent_manifold,
    plot_latent_scatter,
    plot_reconstructions,
    plot_traversals,
)


def test_autoencoder_reconstruction_term_matches_torch():
    ae = Autoencoder(latent_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.rand(5, 1, 28, 28))
    logits = ae.decode(ae.encode(x))
    torch.testing.assert_close(
        ae.reconstruction(x).log_px_z, Independent(Bernoulli(logits=logits), 3).log_prob(x), rtol=1e-5, atol=1e-3
    )


def test_autoencoder_rejects_bad_input():
    with pytest.raises(ValueError, match="latent_dim"):
        Autoencoder(latent_dim=0)
    with pytest.raises(ValueError, match=r"view\(-1, 1, 28, 28\)"):
        Autoencoder().encode(torch.rand(2, 784))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Autoencoder().encode(torch.rand(2, 1, 28, 28) * 255)


def test_make_grid_places_each_image():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2) / 10
    grid = make_grid(x, nrow=3, pad=1, pad_value=-1)
    assert grid.shape == (1, 2 * 3 - 1, 3 * 3 - 1)
    for i in range(6):
        r, c = divmod(i, 3)
        assert torch.equal(grid[0, 3 * r : 3 * r + 2, 3 * c : 3 * c + 2], x[i, 0])
    assert grid[0, 2, 0] == -1  # padding between rows


def test_plots_draw_and_reject_bad_shapes():
    import matplotlib.pyplot as plt

    model = VAE(latent_dim=2, hidden=(8,))
    x = torch.rand(4, 1, 28, 28)
    figs = [
        plot_reconstructions(x, model.reconstruct(x), n=4),
        plot_latent_manifold(lambda z: model.mean(model.decode(z)), n=3),
        plot_latent_scatter(torch.randn(10, 2), torch.arange(10) % 3),
        plot_traversals(lambda z: model.mean(model.decode(z)), torch.zeros(2), dims=[1, 0]),
    ]
    assert all(len(f.axes) >= 1 for f in figs)
    with pytest.raises(ValueError, match="2-D codes"):
        plot_latent_scatter(torch.randn(10, 3), torch.zeros(10))
    with pytest.raises(ValueError, match="same shape"):
        plot_reconstructions(x, x[:, :, :10])

    class H:
        steps, terms = [1, 2], {"elbo": [-3.0, -2.0]}

    plot_history(H(), keys=("elbo",))
    with pytest.raises(KeyError, match="no term 'kl'"):
        plot_history(H(), keys=("elbo", "kl"))
    plt.close("all")
