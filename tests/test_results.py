"""The results harness: registry entries, records, resumption, summaries, and the command line."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from vaetut import fit
from vaetut.train import load_checkpoint
from vaetut.cli import main
from vaetut.results import MODELS, PROTOCOLS, Protocol, build, paired_difference, run_protocol, summarise, train_config

SMALL = Protocol("small", epochs=1, seeds=(0, 1), n_train=200, n_elbo=60, n_ll=20, k=10, n_units=60)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registry_entry_builds_and_trains_a_step(name):
    model = build(name, seed=0)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    config = train_config(name, SMALL, seed=0, steps_per_epoch=2)
    history = fit(model, x, config, batch_size=4, progress=False, device="cpu")
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0]["loss"])
    model.eval()
    assert model.log_weights(x[:2], 3).shape == (3, 2)
    assert all(m.shape[0] == 2 for m in model.posterior_means(x[:2], 4))
    assert config.objective == MODELS[name].objective and config.k == MODELS[name].k


def test_registry_architectures_are_the_literature_s():
    vae = build("vae")
    assert [m.out_features for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)] == [200, 200]
    assert vae.latent_dim == 50 and vae.config.activation == "tanh"
    assert sum(p.numel() for p in build("iwae5").parameters()) == sum(p.numel() for p in vae.parameters())
    assert MODELS["iwae5"].k == 5 and MODELS["iwae50"].k == 50 and MODELS["iwae50"].objective == "iwae"
    vae2 = build("vae2")
    assert vae2.config.latent_dims == (100, 50) and vae2.config.inference == "bottom_up"
    assert sum(p.numel() for p in vae2.parameters()) == 521_084  # Burda et al.'s two-layer net
    lvae = build("lvae")
    assert lvae.config.inference == "ladder" and lvae.config.variance == vae2.config.variance == "exp"


def test_protocols_are_as_documented():
    cpu, published = PROTOCOLS["cpu"], PROTOCOLS["published"]
    assert cpu.seeds == (0, 1, 2) and cpu.n_elbo == 10_000 and cpu.n_ll >= 2_000 and cpu.k == 5_000
    assert published.epochs == sum(3**i for i in range(8)) == 3280
    assert published.batch_size == 20 and published.adam_eps == 1e-4 and published.lr_schedule == "burda"
    assert published.n_ll == 10_000
    assert set(cpu.models) == set(MODELS) - {"nvae", "nvae-plain", "nvae-nobal", "nvae-nosr"}
    assert PROTOCOLS["ablation"].models[:2] == ("vae", "lvae") and "nvae" in published.models
    from vaetut.results import warmup_fraction

    warm = Protocol("warm", epochs=1, seeds=(0,), warmup_fraction=0.1)
    assert warmup_fraction("vae", warm) == 0.1 and warmup_fraction("vae", cpu) == 0  # the protocol's, for ELBO models
    assert warmup_fraction("iwae50", warm) == 0 and warmup_fraction("nvae", cpu) == MODELS["nvae"].warmup_fraction


def test_run_protocol_writes_complete_records_and_continues_after_an_interruption(tmp_path):
    out = tmp_path / "small.json"
    logged = []
    run_protocol(SMALL, out, models=["vae", "vae2"], seeds=[0], device="cpu", progress=False, log=logged.append)
    first = json.loads(out.read_text())
    assert [(r["model"], r["seed"]) for r in first["records"]] == [("vae", 0), ("vae2", 0)]
    record = first["records"][0]
    for key in ("protocol", "command", "code_version", "hardware", "device", "train_seconds", "eval_seconds",
                "test_elbo", "test_ll", "ll_per_image", "gap", "active_units", "latent_units", "kl_layers", "steps"):
        assert record[key] is not None, key
    assert len(record["ll_per_image"]) == SMALL.n_ll and record["device"] == "cpu"
    assert record["history"]["epochs"][0]["epoch"] == 1 and "kl" in record["history"]["terms"]
    assert "kl_1" in first["records"][1]["history"]["terms"]  # the KL of each stochastic layer over training
    assert first["records"][1]["latent_units"] == [100, 50] and len(first["records"][1]["kl_layers"]) == 2
    # a second call with more seeds keeps the finished records and adds the rest
    results = run_protocol(SMALL, out, models=["vae", "vae2"], seeds=[0, 1], device="cpu", progress=False, log=logged.append)
    assert [r["finished"] for r in results["records"][:2]] == [r["finished"] for r in first["records"]]
    assert len(results["records"]) == 4 and "vae seed 0: already in" in " ".join(logged)
    table = summarise(results)
    assert [s.model for s in table] == ["vae", "vae2"] and table[0].diff_vae is None and table[1].diff_vae is not None
    with pytest.raises(ValueError, match="other protocol settings"):
        run_protocol(Protocol("small", epochs=2, seeds=(0,)), out, models=["vae"], device="cpu", log=logged.append)


def test_run_protocol_evaluates_a_run_whose_training_finished_before_an_interruption(tmp_path):
    """A call stopped between training and evaluation leaves a checkpoint at its last step; the next
    call evaluates those weights (and keeps their training history) instead of failing or retraining."""
    out = tmp_path / "small.json"
    first = run_protocol(SMALL, out, models=["vae"], seeds=[0], device="cpu", progress=False, log=lambda m: None)
    record = first["records"][0]
    out.write_text(json.dumps({**first, "records": []}))  # the record lost, the checkpoint kept
    logged = []
    again = run_protocol(SMALL, out, models=["vae"], seeds=[0], device="cpu", progress=False, log=logged.append)
    assert "evaluating" in " ".join(logged)
    redo = again["records"][0]
    assert redo["history"] == record["history"] and redo["train_seconds"] == record["train_seconds"]
    assert redo["test_ll"] == pytest.approx(record["test_ll"], abs=1e-4)
    assert redo["ll_per_image"] == pytest.approx(record["ll_per_image"], abs=1e-3)


def test_paired_difference_and_its_standard_error():
    a = [[1.0, 2.0, 4.0], [2.0, 3.0, 3.0]]
    b = [[0.0, 1.0, 1.0], [1.0, 1.0, 2.0]]
    # d = a - b = [[1, 1, 3], [1, 2, 1]]: per seed means 5/3, 4/3 (sample variance 1/18, S = 2);
    # per image means 1, 3/2, 2 (sample variance 1/4, N = 3): SE^2 = (1/18) / 2 + (1/4) / 3 = 1/9
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(1.5)
    assert se == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(a, b[:1])


# ------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "nope"], "invalid choice: 'nope'"),
        (["train", "vae", "--epochs", "0"], "expected a positive integer, got 0"),
        (["train", "vae", "--epochs", "2", "--minutes", "3"], "not allowed with argument"),
        (["train", "vae", "--minutes", "-1"], "expected a positive number"),
        (["results"], "the following arguments are required: --protocol"),
        (["results", "--protocol", "gpu"], "invalid choice: 'gpu'"),
        (["evaluate", "a.pt", "--k", "0"], "expected a positive integer, got 0"),
    ],
)
def test_bad_arguments_get_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_errors_that_argparse_cannot_see_are_clear(tmp_path, capsys):
    assert main(["train", "vae", "--resume", "--out", str(tmp_path / "none")]) == 1
    assert "nothing to resume in" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 1
    assert "evaluate takes the checkpoint of a `vaetut train` run" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["train", "evaluate", "results"])
def test_help_of_every_subcommand(sub):
    done = subprocess.run([sys.executable, "-m", "vaetut", sub, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"usage: vaetut {sub}" in done.stdout


def test_train_then_evaluate_from_the_command_line(tmp_path, capsys, monkeypatch):
    import vaetut.cli as cli

    monkeypatch.setitem(cli.PROTOCOLS, "cpu", Protocol("cpu", epochs=1, seeds=(0,), batch_size=100, n_train=300))
    real_load = cli.load_mnist
    monkeypatch.setattr(cli, "load_mnist", lambda split, **kw: real_load(split, **{**kw, "limit": 300}))
    out = tmp_path / "run"
    assert main(["train", "vae", "--epochs", "2", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("epoch ") == 2 and (out / "checkpoint.pt").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "vae" and run["config"]["epochs"] == 2
    assert main(["train", "vae", "--epochs", "3", "--out", str(out)]) == 1  # a run is there: --resume or another --out
    assert main(["evaluate", str(out), "--k", "5", "--n-test", "20", "--n-elbo", "50", "--device", "cpu"]) == 0
    assert "log p(x)" in capsys.readouterr().out and (out / "eval-k5-n20.json").exists()
    # a run stopped by its time limit inside an epoch reports the steps it took, not the last epoch's
    timed = tmp_path / "timed"
    assert main(["train", "vae", "--minutes", "0.01", "--out", str(timed), "--device", "cpu"]) == 0
    steps = load_checkpoint(timed / "checkpoint.pt")["step"]
    printed = capsys.readouterr().out
    assert f"trained {steps} steps in" in printed
    # the step budget only bounds the run: ten times the probe's estimate, so a probe slowed by
    # another job cannot end the run early with the learning rate still high
    estimate = int(re.search(r"about (\d+) steps", printed).group(1))
    config = json.loads((timed / "run.json").read_text())["config"]
    assert config["steps"] == 10 * estimate
    assert (config["batch_size"], config["lr"]) == (200, 3e-3)  # --minutes's own defaults


def test_the_output_bias_starts_at_the_mean_training_image():
    """build(name, seed, data) starts a Bernoulli decoder at the mean image (Burda et al.'s code):
    with the last layer's weights zeroed, every code decodes to the per-pixel mean."""
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) ** 3
    for name in ("vae", "vae2", "lvae", "planar", "iaf"):
        model = build(name, 0, x)
        last = [m for n, m in model.named_modules() if n.startswith("decoder") and isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.zeros_(last.weight)
        probs = torch.sigmoid(last.bias).view(1, 28, 28)
        torch.testing.assert_close(probs, x.mean(0).clamp(1e-3, 1 - 1e-3), rtol=1e-4, atol=1e-6)
    conv = build("conv", 0, x)
    assert torch.sigmoid(conv.decoder.net[-1].bias).item() == pytest.approx(x.mean().item(), rel=1e-4)
    nvae = build("nvae", 0, x)  # NVAE keeps its own initialisation
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(nvae.state_dict().values(), build("nvae", 0).state_dict().values()))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        build("vae", 0, x.flatten(1))


def test_a_two_layer_net_started_at_the_mean_image_learns_to_reconstruct():
    """Without the bias the tanh two-layer net's first steps learn the mean image and saturate its
    units, and the reconstruction stays at the mean image's likelihood (about -206 nats) for
    hundreds of steps; started at the mean image it reconstructs within 150 steps (beta = 0)."""
    from vaetut import load_mnist

    x, _ = load_mnist("train", limit=3000)
    scores = {}
    for data in (None, x):
        model = build("vae2", 0, data)
        fit(model, x, steps=150, batch_size=100, lr=2e-3, beta=0.0, binarize=True, seed=0, progress=False, device="cpu")
        model.eval()
        torch.manual_seed(0)
        with torch.no_grad():
            scores[data is None] = model.elbo(torch.bernoulli(x[:500], generator=torch.Generator().manual_seed(1))).log_px_z.mean().item()
    assert scores[True] < -190, scores  # the defect this guards against
    assert scores[False] > -170, scores
