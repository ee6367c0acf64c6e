"""fit(): learning, warm-up, checkpoints and resume, the NaN guard, bad arguments."""

import os

import pytest
import torch

from vaetut import VAE, TrainingDiverged, fit, kl_weight, load_checkpoint
from vaetut.train import CheckpointError, NonFiniteGuard, Objective, TrainConfig, batch_order, binarize_batch, lr_factor
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


# ---------------------------------------------------------------- exact resume
def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("stop_at", [4, 5, 6])  # inside epoch 2, inside it, at its end (3 steps per epoch)
def test_resume_anywhere_continues_bit_identically(tmp_path, stop_at):
    x = _data()
    settings = dict(batch_size=32, binarize=True, seed=3, log_every=2, progress=False)
    full = _model()
    full_history = fit(full, x, steps=10, **settings)

    ckpt = tmp_path / "run.pt"
    fit(_model(), x, steps=stop_at, checkpoint=ckpt, **settings)
    resumed = _model()
    history = fit(resumed, x, steps=10, checkpoint=ckpt, resume=True, **settings)
    assert _same_weights(full, resumed)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]  # not 1, 2, 2, 3, ...
    strip = lambda h: [{k: v for k, v in e.items()} for e in h.epochs]  # noqa: E731
    assert strip(history) == strip(full_history)
    assert history.steps == full_history.steps and history.terms == full_history.terms


def test_checkpoint_loads_with_weights_only_and_holds_the_run(tmp_path):
    ckpt = tmp_path / "run.pt"
    fit(_model(), _data(), steps=4, batch_size=32, progress=False, checkpoint=ckpt,
        on_epoch_end=lambda epoch, model: {"np_float": __import__("numpy").float32(1.5), "np_int": __import__("numpy").int64(3)})
    state = torch.load(ckpt, weights_only=True)  # no pickled classes: loadable without trusting the file
    assert state["step"] == 4 and state["config"]["batch_size"] == 32
    assert state["history"]["epochs"][0]["np_float"] == 1.5 and type(state["history"]["epochs"][0]["np_int"]) is int
    assert set(state["rng"][0]) >= {"cpu"}


def test_resume_refuses_what_would_not_continue_the_run(tmp_path):
    x, ckpt = _data(), tmp_path / "run.pt"
    fit(_model(), x, steps=4, batch_size=32, progress=False, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="batch_size: 32 in the checkpoint, 16 now"):
        fit(_model(), x, steps=8, batch_size=16, progress=False, checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="at step 4 and this call asks for 4 steps"):
        fit(_model(), x, steps=4, batch_size=32, progress=False, checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fit(_model(), x, steps=8, batch_size=32, progress=False, checkpoint=tmp_path / "none.pt", resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        fit(_model(), x, steps=8, batch_size=32, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="do not fit this VAE"):
        fit(VAE(latent_dim=3, hidden=(32,)), x, steps=8, batch_size=32, progress=False, checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="holds a model of class VAE, not Autoencoder"):
        from vaetut import Autoencoder

        fit(Autoencoder(hidden=(32,)), x, steps=8, batch_size=32, objective="reconstruction", progress=False,
            checkpoint=ckpt, resume=True)


def test_cosine_schedule_cannot_be_stretched_on_resume(tmp_path):
    x, ckpt = _data(), tmp_path / "run.pt"
    fit(_model(), x, steps=4, batch_size=32, lr_schedule="cosine", progress=False, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="cosine schedule: 4 steps in the checkpoint, 8 now"):
        fit(_model(), x, steps=8, batch_size=32, lr_schedule="cosine", progress=False, checkpoint=ckpt, resume=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_checkpoint_gets_an_error_naming_the_file(tmp_path, damage):
    x, ckpt = _data(), tmp_path / "run.pt"
    fit(_model(), x, steps=4, batch_size=32, progress=False, checkpoint=ckpt)
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"cannot read the checkpoint .*run\.pt.*truncated, corrupt") as info:
        fit(_model(), x, steps=8, batch_size=32, progress=False, checkpoint=ckpt, resume=True)
    assert "weights_only=False" not in str(info.value)


def test_on_epoch_end_must_return_plain_values():
    with pytest.raises(TypeError, match="on_epoch_end returned 'bad': list"):
        fit(_model(), _data(32), steps=1, batch_size=32, progress=False, on_epoch_end=lambda e, m: {"bad": [1, 2]})


def test_an_interrupt_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    import signal

    x, ckpt = _data(), tmp_path / "run.pt"
    settings = dict(batch_size=32, seed=1, progress=False)
    full = _model()
    fit(full, x, steps=9, **settings)

    def ctrl_c(epoch, model):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C or a Jupyter kernel interrupt would

    with pytest.raises(KeyboardInterrupt, match="interrupted at step 7"):
        fit(_model(), x, steps=9, checkpoint=ckpt, on_epoch_end=ctrl_c, **settings)  # stops one step later
    assert load_checkpoint(ckpt)["step"] == 7
    resumed = _model()
    fit(resumed, x, steps=9, checkpoint=ckpt, resume=True, **settings)
    assert _same_weights(full, resumed)


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    x, ckpt = _data(), tmp_path / "run.pt"
    history = fit(_model(), x, steps=10_000, batch_size=32, time_limit=0.3, progress=False, checkpoint=ckpt)
    assert history.stopped == "time limit" and 0 < history.epochs[-1]["step"] <= load_checkpoint(ckpt)["step"] < 10_000
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        fit(_model(), x, steps=1, time_limit=0)


# ---------------------------------------------------------------- objectives
def test_iwae_objective_is_the_importance_weighted_bound():
    from vaetut import iwae_bound

    x = _data(16)
    model = _model()
    torch.manual_seed(5)
    expected = -iwae_bound(model, x, 7).mean()
    expected.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(5)
    loss, stats = Objective(model, TrainConfig(steps=1, objective="iwae", k=7))(x, 1.0)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    assert stats["iwae"] >= stats["elbo"]  # L_k >= the mean of log w (Jensen), on the same samples


def test_iwae_training_raises_the_bound_it_trains():
    from vaetut import iwae_bound

    x, model = _data(64), _model()
    torch.manual_seed(0)
    before = iwae_bound(model, x, 5).mean().item()
    history = fit(model, x, steps=40, batch_size=32, lr=3e-3, objective="iwae", k=5, progress=False)
    torch.manual_seed(0)
    assert iwae_bound(model, x, 5).mean().item() > before + 50
    assert "iwae" in history.terms and "kl" not in history.terms


def test_free_bits_floor_each_unit_and_stop_its_gradient():
    model, x = _model(), _data(16)
    config = TrainConfig(steps=1, free_bits=0.5)
    torch.manual_seed(1)
    terms = model.elbo(x)
    torch.testing.assert_close(terms.kl_units.sum(-1), terms.kl)
    per_unit = terms.kl_units.mean(0)
    expected = torch.maximum(per_unit, torch.tensor(0.5)).sum()
    torch.testing.assert_close(Objective(model, config).penalised_kl(terms), expected)
    # a unit below the floor gets no gradient from the KL term
    mu = torch.zeros(4, 2, requires_grad=True)
    log_var = torch.tensor([[0.0, 3.0]]).repeat(4, 1).requires_grad_()
    from vaetut import kl_normal
    from vaetut.distributions import ELBO

    kl_units = kl_normal(mu + torch.tensor([0.1, 0.0]), log_var, per_unit=True)  # unit 0: 0.005 nats, unit 1: ~7.5
    fake = ELBO(-kl_units.sum(-1), torch.zeros(4), kl_units.sum(-1), kl_units)
    Objective(model, config).penalised_kl(fake).backward()
    assert mu.grad[:, 0].abs().max() == 0 and log_var.grad[:, 1].abs().min() > 0


def test_objective_and_config_errors_are_clear():
    with pytest.raises(ValueError, match="k=5 only applies to objective='iwae'"):
        TrainConfig(steps=1, k=5)
    with pytest.raises(ValueError, match="no separate KL term"):
        TrainConfig(steps=1, objective="iwae", k=5, beta=2.0)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(steps=1, lr_schedule="step")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(steps=1, batch_size=0)
    import numpy as np

    assert TrainConfig(epochs=np.int64(2), batch_size=np.int32(8)).epochs == 2  # NumPy integers are integers


def test_lr_schedules():
    burda = TrainConfig(epochs=3280, lr_schedule="burda")
    factors = [lr_factor(burda, epoch * 10, 32800, 10) for epoch in (0, 1, 3, 4, 12, 13, 39, 40, 3279)]
    expected = [10 ** (-i / 7) for i in (0, 1, 1, 2, 2, 3, 3, 4, 7)]
    assert factors == pytest.approx(expected)
    cosine = TrainConfig(steps=11, lr_schedule="cosine", lr_min_factor=0.1)
    assert [lr_factor(cosine, s, 11, 5) for s in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    model, x = _model(), _data(32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    fit(model, x, steps=11, batch_size=32, lr_schedule="cosine", lr_min_factor=0.1, optimizer=opt, progress=False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_data_order_and_binarization_are_pure_functions_of_seed_and_step():
    assert torch.equal(batch_order(3, 5, 100), batch_order(3, 5, 100))
    assert not torch.equal(batch_order(3, 5, 100), batch_order(3, 6, 100))
    x = torch.full((2000, 4), 0.3)
    a, b = binarize_batch(x, 0, 7), binarize_batch(x, 0, 7)
    assert torch.equal(a, b) and not torch.equal(a, binarize_batch(x, 0, 8))
    assert abs(a.mean().item() - 0.3) < 0.02


def test_deferred_guard_skips_on_the_device_and_reports_the_first_bad_step():
    """The accelerator path of the NaN guard, run on the CPU's fused Adam."""
    model = _model()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    guard = NonFiniteGuard(params, opt, torch.device("cpu"), steps_per_epoch=4, deferred=True)
    x = _data(8)
    good = [p.detach().clone() for p in params]
    for step in range(5):
        loss = -model.elbo(x).elbo.mean() * (float("nan") if step == 2 else 1.0)
        opt.zero_grad()
        loss.backward()
        guard.before_update(loss, opt)
        opt.step()
        guard.after_update(opt)
        if step == 1:
            good = [p.detach().clone() for p in params]
    with pytest.raises(TrainingDiverged, match=r"step 2 \(epoch 1\): the loss") as info:
        guard.check()
    assert info.value.step == 2
    assert all(torch.equal(p, g) for p, g in zip(params, good))  # steps 2, 3, 4 were all skipped


def test_cosine_time_anneals_over_the_wall_time():
    config = TrainConfig(steps=10, lr_schedule="cosine-time", lr_min_factor=0.1)
    assert [lr_factor(config, 5, 10, 5, f) for f in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    with pytest.raises(ValueError, match="give time_limit"):
        fit(_model(), _data(8), steps=1, lr_schedule="cosine-time", progress=False)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    history = fit(model, _data(), steps=100_000, batch_size=32, lr_schedule="cosine-time", lr_min_factor=0.1,
                  time_limit=0.5, optimizer=opt, progress=False)
    assert history.stopped == "time limit" and opt.param_groups[0]["lr"] == pytest.approx(0.001, rel=0.05)
