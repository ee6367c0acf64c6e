"""Checks that need a CUDA device: skipped without one (this project's CI machines have none).

Run them on a GPU machine with ``scripts/gpu_check.sh``, which also resumes a training run on
CUDA from the command line and runs one chapter in full mode.
"""

import pytest
import torch

from vaetut import VAE, fit, log_likelihood
from vaetut.train import NonFiniteGuard, TrainingDiverged, load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _data(n=256):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_fit_and_estimates_run_on_cuda():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(64,))
    history = fit(model, _data(), steps=20, batch_size=64, binarize=True, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda and history.epochs[-1]["step"] == 20
    ll = log_likelihood(model, (_data(16) > 0.5).float(), k=50)
    assert ll.shape == (16,) and torch.isfinite(ll).all()
    assert model.sample(3).is_cuda


def test_resume_on_cuda_restores_the_cuda_generator(tmp_path):
    """The checkpoint holds the CUDA generator state, loaded back as a CPU tensor (the crash of issue 11)."""
    ckpt = tmp_path / "run.pt"
    settings = dict(batch_size=64, binarize=True, seed=2, device="cuda", progress=False)
    torch.manual_seed(0)
    full = VAE(latent_dim=4, hidden=(64,))
    fit(full, _data(), steps=12, **settings)
    torch.manual_seed(0)
    fit(VAE(latent_dim=4, hidden=(64,)), _data(), steps=5, checkpoint=ckpt, **settings)
    assert "cuda" in load_checkpoint(ckpt)["rng"][0]
    torch.manual_seed(0)
    resumed = VAE(latent_dim=4, hidden=(64,))
    fit(resumed, _data(), steps=12, checkpoint=ckpt, resume=True, **settings)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # cuBLAS may reorder sums: close, not bit-equal


def test_the_nan_guard_checks_on_the_device():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(64,)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard(list(model.parameters()), opt, torch.device("cuda"))
    assert guard.deferred
    x = _data(32).cuda()
    for step in range(3):
        loss = -model.elbo(x).elbo.mean() * (float("nan") if step == 1 else 1.0)
        opt.zero_grad()
        loss.backward()
        guard.before_update(loss, opt)
        opt.step()
        guard.after_update(opt)
    with pytest.raises(TrainingDiverged, match="step 1"):
        guard.check()
