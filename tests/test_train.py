"""fit(): learning, warm-up, checkpoints and resume, the NaN guard, bad arguments."""

import os

import pytest
import torch

from vaetut import VAE, TrainingDiverged, fit, kl_weight, load_checkpoint
from vaetut.train import save_checkpoint


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    # two prototype images plus noise: learnable in a few steps
    protos = torch.rand(2, 1, 28, 28, generator=g).round()
    return (protos[torch.arange(n) % 2] * 0.9 + 0.05).clamp(0, 1)


def _model():
    torch.manual_seed(0)
    return VAE(latent_dim=2, hidden=(32,))


def test_kl_weight_schedule():
    assert kl_weight(0, 1.0, 0) == 1.0
    assert [kl_weight(s, 2.0, 4) for s in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    with pytest.raises(ValueError, match="warmup_steps"):
        kl_weight(0, 1.0, -1)
    with pytest.raises(ValueError, match="beta"):
        kl_weight(0, -1.0, 0)


def test_fit_improves_the_elbo_and_records_history():
    model, x = _model(), _data()
    before = model.elbo(x).elbo.mean().item()
    history = fit(model, x, steps=60, batch_size=32, lr=3e-3, progress=False, log_every=10, device="cpu")
    after = model.elbo(x).elbo.mean().item()
    assert after > before + 50
    assert history.steps == [10, 20, 30, 40, 50, 60]
    assert set(history.terms) >= {"loss", "elbo", "log_px_z", "kl", "kl_weight"}
    assert len(history.epochs) == 20  # 96 / 32 = 3 steps per epoch


def test_warmup_weights_reach_the_loss():
    model, x = _model(), _data(32)
    history = fit(model, x, steps=8, batch_size=32, beta=2.0, warmup_steps=4, log_every=1, progress=False)
    assert history.terms["kl_weight"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]
    loss, rec, kl = (history.terms[k] for k in ("loss", "log_px_z", "kl"))
    for w, l_, r, k in zip(history.terms["kl_weight"], loss, rec, kl):
        assert abs(l_ - (-(r - w * k))) < 1e-3


def test_checkpoint_resume_reproduces_an_uninterrupted_run(tmp_path):
    x = _data()
    full = _model()
    fit(full, x, steps=12, batch_size=32, progress=False, seed=3)

    ckpt = tmp_path / "run.pt"
    part = _model()
    fit(part, x, steps=6, batch_size=32, progress=False, seed=3, checkpoint=ckpt)
    assert ckpt.exists()
    resumed = _model()  # fresh weights: everything must come from the checkpoint
    history = fit(resumed, x, steps=12, batch_size=32, progress=False, seed=3, checkpoint=ckpt, resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert load_checkpoint(ckpt)["step"] == 12 == history.epochs[-1]["step"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"a": torch.ones(2)})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": torch.zeros(2)})
    monkeypatch.undo()
    torch.testing.assert_close(load_checkpoint(path)["a"], torch.ones(2))  # old file intact
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary left behind


class _PoisonedVAE(VAE):
    """A VAE whose ELBO turns NaN at one chosen call (as a diverging run would)."""

    def __init__(self, poison_at, **kw):
        super().__init__(**kw)
        self.poison_at, self.calls = poison_at, 0

    def elbo(self, x):
        terms = super().elbo(x)
        self.calls += 1
        if self.calls - 1 == self.poison_at:
            return terms._replace(log_px_z=terms.log_px_z * float("nan"))
        return terms


def test_nan_stops_with_the_step_and_keeps_last_good_weights(tmp_path):
    x = _data(64)
    torch.manual_seed(0)
    good = _PoisonedVAE(poison_at=-1, latent_dim=2, hidden=(32,))
    fit(good, x, steps=3, batch_size=16, progress=False, seed=0)

    torch.manual_seed(0)
    model = _PoisonedVAE(poison_at=3, latent_dim=2, hidden=(32,))
    with pytest.raises(TrainingDiverged, match=r"step 3 \(epoch 1\).*loss became nan") as info:
        fit(model, x, steps=10, batch_size=16, progress=False, seed=0)
    assert info.value.step == 3
    for k, v in good.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)  # the weights after the 3 good steps


def test_bad_arguments_are_rejected():
    model, x = _model(), _data(8)
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        fit(model, x)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(model, x, epochs=0)
    with pytest.raises(ValueError, match="non-empty tensor"):
        fit(model, x[:0], epochs=1)
    with pytest.raises(ValueError, match="binarize=True needs data in"):
        fit(model, x * 255, epochs=1, binarize=True)
    with pytest.raises(ValueError, match="no method"):
        fit(model, x, epochs=1, objective="nope")
