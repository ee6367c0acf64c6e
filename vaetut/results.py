"""One protocol for every model: the registry, the protocols, and the results harness.

The book compares models in several chapters. So that a model has one number per
protocol across the whole book, every comparison comes from here:

* :data:`MODELS`, a registry of named models with the architectures of the
  literature, built from vaetut's classes (Burda et al. 2016 for ``vae``, ``vae2``
  and the IWAE entries; Sønderby et al. 2016 for ``lvae``; Rezende & Mohamed 2015
  and Kingma et al. 2016 for ``planar`` and ``iaf``; Vahdat & Kautz 2020 for ``nvae``);
* :data:`PROTOCOLS`: ``cpu`` (sized for a 2-core CPU: every model and seed in at
  most 90 minutes), ``published`` (Burda et al.'s schedule, for a GPU server) and
  ``tiny`` (seconds: what the tests and the book's quick mode run through the same
  code path);
* :func:`run_protocol`: trains and evaluates each (model, seed) pair, writing one JSON
  record per pair as soon as it is done, so an interrupted run continues where it
  stopped (training itself resumes from its checkpoint);
* :func:`summarise`: per model the mean and standard error over seeds, and the paired
  difference to ``vae`` on the same test images with its standard error.

Evaluation, the same for every model: dynamically binarized training images;
test images binarized once (seed 0); the test ELBO on the first ``n_elbo`` test
images; the importance-sampled log-likelihood with ``k`` samples on the first
``n_ll``; active units per stochastic layer (Burda et al.: Cov_x E_q[z_u|x] > 0.01,
on the first ``n_units`` test images) and the KL of each layer.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .bounds import log_likelihood
from .config import get_device, run_info
from .data import load_mnist
from .diagnostics import active_units
from .flow_vae import FlowVAE
from .ladder_vae import LadderVAE
from .train import History, TrainConfig, fit, load_checkpoint
from .vae import VAE

__all__ = [
    "ModelSpec",
    "Protocol",
    "MODELS",
    "PROTOCOLS",
    "build",
    "train_config",
    "evaluate",
    "run_protocol",
    "summarise",
    "load_results",
    "chapter_results",
    "code_version",
]

BURDA_NET = dict(latent_dim=50, hidden=(200, 200), activation="tanh")
# two stochastic layers; Burda et al. predict the variances through exp
BURDA_NET2 = dict(latent_dims=(100, 50), hidden=((200, 200), (100, 100)), activation="tanh", variance="exp")


# ------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it, how it trains, and the published number it echoes.

    Attributes:
        name: the registry key.
        description: one line for tables.
        make: builds a fresh model (call after seeding).
        objective, k: the training objective (``"elbo"`` or ``"iwae"`` with k samples).
        warmup_fraction: KL warm-up over this fraction of training (0 = none).
        data_bias: start the decoder's output bias at the logit of the mean training pixel
            (Burda et al.'s code does this for every model; without it a deep tanh network
            spends its first steps learning the mean image, saturates and can stay there).
        published: the test log-likelihood reported for this architecture and its
            source and protocol, or ``None``.
    """

    name: str
    description: str
    make: Callable[[], nn.Module]
    objective: str = "elbo"
    k: int = 1
    warmup_fraction: float = 0.0
    published: tuple[float, str] | None = None
    data_bias: bool = True


def _nvae(**overrides) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from .nvae import NVAE

        return NVAE(**{"spectral_reg": 0.01, **overrides})

    return make


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "vae",
            "one stochastic layer, 784-200-200-50, tanh (Burda et al.)",
            lambda: VAE(**BURDA_NET),
            published=(-86.76, "Burda et al. 2016, Table 1: 1 stochastic layer, VAE k=1; 3,280 epochs, k=5000 on all test images"),
        ),
        ModelSpec(
            "vae2",
            "two stochastic layers (100, 50), bottom-up inference, 784-200-200-100-100-100-50, tanh, exp variances (Burda et al.)",
            lambda: LadderVAE(inference="bottom_up", **BURDA_NET2),
            published=(-85.33, "Burda et al. 2016, Table 1: 2 stochastic layers, VAE k=1; same protocol"),
        ),
        ModelSpec(
            "iwae5",
            "the vae net trained on the importance-weighted bound, k = 5",
            lambda: VAE(**BURDA_NET),
            objective="iwae",
            k=5,
            published=(-85.54, "Burda et al. 2016, Table 1: 1 stochastic layer, IWAE k=5; same protocol"),
        ),
        ModelSpec(
            "iwae50",
            "the vae net trained on the importance-weighted bound, k = 50",
            lambda: VAE(**BURDA_NET),
            objective="iwae",
            k=50,
            published=(-84.78, "Burda et al. 2016, Table 1: 1 stochastic layer, IWAE k=50; same protocol"),
        ),
        ModelSpec(
            "lvae",
            "the vae2 net with ladder (precision-weighted top-down) inference",
            lambda: LadderVAE(inference="ladder", **BURDA_NET2),
            warmup_fraction=0.2,  # Sønderby et al.'s recipe: without it z1's KL falls to 0 within an epoch
            published=(-81.74, "Sønderby et al. 2016: 5 stochastic layers, batch norm, warm-up, k=5000; a larger model"),
        ),
        ModelSpec(
            "planar",
            "the vae net with 10 planar flow steps in q (parameters from the encoder)",
            lambda: FlowVAE(flow="planar", steps=10, **BURDA_NET),
            published=(-85.10, "Rezende & Mohamed 2015, K=80 planar steps (their own architecture and protocol)"),
        ),
        ModelSpec(
            "iaf",
            "the vae net with 2 IAF steps in q (MADE 100-100, context from the encoder)",
            lambda: FlowVAE(flow="iaf", steps=2, iaf_hidden=(100, 100), **BURDA_NET),
            published=(-79.88, "Kingma et al. 2016: ResNet VAE with IAF, a far larger model"),
        ),
        ModelSpec(
            "conv",
            "convolutional encoder and decoder (8 and 16 channels), 50 latent units",
            lambda: VAE(arch="conv", channels=(8, 16), latent_dim=50),
        ),
        ModelSpec(
            "nvae",
            "NVAE-style: 4 spatial groups at 7x7 and 14x14, residual cells, residual posterior, KL balancing, spectral reg.",
            _nvae(),
            warmup_fraction=0.3,
            data_bias=False,
            published=(-78.01, "Vahdat & Kautz 2020: a far larger model trained for 400 epochs on GPUs"),
        ),
        # the ablation of the state-of-the-art chapter: nvae with one ingredient switched off
        ModelSpec("nvae-plain", "nvae with a plain posterior N(mu_q, sigma_q^2)", _nvae(residual_posterior=False), warmup_fraction=0.3, data_bias=False),
        ModelSpec("nvae-nobal", "nvae without KL balancing", _nvae(kl_balance=False), warmup_fraction=0.3, data_bias=False),
        ModelSpec("nvae-nosr", "nvae without spectral regularisation", _nvae(spectral_reg=0.0), warmup_fraction=0.3, data_bias=False),
    )
}


def build(name: str, seed: int = 0, data: torch.Tensor | None = None) -> nn.Module:
    """A fresh model of registry entry ``name``, initialised from ``seed``; given the training
    images ``data`` ``[N, C, H, W]`` in [0, 1], its output bias starts at their mean pixel
    (see :func:`init_output_bias`) where the entry asks for it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the registry has {', '.join(MODELS)}")
    torch.manual_seed(seed)
    model = MODELS[name].make()
    if data is not None and MODELS[name].data_bias:
        init_output_bias(model, data)
    return model


def init_output_bias(model: nn.Module, data: torch.Tensor, clip: float = 1e-3) -> None:
    """Set the bias of the decoder's output layer to the logit of the mean training pixel, so that
    a Bernoulli decoder starts at the mean image (Burda et al.'s code does this for every model).

    The output layer is the decoder's last ``Linear`` with one output per pixel (its bias gets the
    per-pixel mean) or its last convolution with one output per image channel (the per-channel
    mean over all pixels). Raises ``ValueError`` for a model without such a layer.
    """
    if data.dim() != 4:
        raise ValueError(f"expected training images [N, C, H, W], got shape {list(data.shape)}")
    mean = data.float().mean(0).clamp(clip, 1 - clip)  # [C, H, W]
    last = None
    for name, module in model.named_modules():
        if not name.startswith("decoder"):
            continue
        if isinstance(module, nn.Linear) and module.out_features == mean.numel():
            last = (module, torch.logit(mean).flatten())
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.out_channels == mean.shape[0]:
            last = (module, torch.logit(mean.mean((1, 2))))
    if last is None or last[0].bias is None:
        raise ValueError(f"{type(model).__name__} has no decoder output layer with a bias of one unit per pixel or channel")
    with torch.no_grad():
        last[0].bias.copy_(last[1].to(last[0].bias))


# --------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """How every model is trained and evaluated.

    Attributes:
        name: ``cpu``, ``published`` or ``tiny``.
        epochs: the equal epoch budget of every model.
        seeds: one training run per seed.
        batch_size, lr, lr_schedule, adam_eps: the optimiser (Adam).
        n_train: training images (``None``: all 60,000).
        n_elbo, n_ll, k: test images for the ELBO, and for the log-likelihood with k
            importance samples (the first ones of the fixed binarized test set).
        n_units: test images for the active units.
        log_every: steps per entry of the training history kept in each record
            (default: one per epoch).
        warmup_fraction: linear KL warm-up (Sønderby et al. 2016) over this fraction of
            each ELBO-trained model's steps, unless its recipe sets its own.
        models: the registry entries the protocol runs by default.
    """

    name: str
    epochs: int
    seeds: tuple[int, ...]
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: str = "constant"
    adam_eps: float = 1e-8
    n_train: int | None = None
    n_elbo: int = 10_000
    n_ll: int = 2_000
    k: int = 5_000
    n_units: int = 2_000
    log_every: int | None = None
    warmup_fraction: float = 0.0
    models: tuple[str, ...] = ()
    description: str = ""


CPU_MODELS = ("vae", "vae2", "iwae5", "iwae50", "lvae", "planar", "iaf", "conv")

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "cpu",
            epochs=5,
            seeds=(0, 1, 2),
            batch_size=100,
            lr=2e-3,
            lr_schedule="cosine",
            models=CPU_MODELS,
            description="sized for a 2-core CPU: every model and seed in at most 90 minutes",
        ),
        Protocol(
            "ablation",
            epochs=2,
            seeds=(0, 1, 2),
            lr=1e-3,
            lr_schedule="cosine",
            n_ll=500,
            k=100,
            n_units=500,
            log_every=50,
            models=("vae", "lvae", "nvae", "nvae-plain", "nvae-nobal", "nvae-nosr"),
            description="the NVAE ablation of the state-of-the-art chapter, beside vae and lvae: about 25 minutes "
            "on an idle 2-core CPU (an NVAE sample costs ~50 times an MLP's, so k = 100 importance samples)",
        ),
        Protocol(
            "published",
            epochs=3280,
            seeds=(0, 1, 2),
            batch_size=20,
            lr=1e-3,
            lr_schedule="burda",
            adam_eps=1e-4,
            n_ll=10_000,
            n_units=10_000,
            models=CPU_MODELS + ("nvae",),
            description="Burda et al. 2016: 3^i epochs at lr 1e-3 * 10^(-i/7), i = 0..7; batch 20; all test images",
        ),
        Protocol(
            "tiny",
            epochs=1,
            seeds=(0, 1),
            n_train=1_000,
            n_elbo=200,
            n_ll=50,
            k=50,
            n_units=200,
            models=CPU_MODELS,
            description="seconds: the tests' and the book's quick-mode run of the same code path",
        ),
    )
}


def warmup_fraction(name: str, protocol: Protocol) -> float:
    """The share of training over which model ``name``'s KL weight warms up (0 for the IWAE bound)."""
    spec = MODELS[name]
    if spec.objective != "elbo":
        return 0.0
    return spec.warmup_fraction or protocol.warmup_fraction


def train_config(name: str, protocol: Protocol, seed: int, steps_per_epoch: int) -> TrainConfig:
    """The :class:`~vaetut.train.TrainConfig` of model ``name`` under ``protocol``."""
    spec = MODELS[name]
    total = protocol.epochs * steps_per_epoch
    return TrainConfig(
        epochs=protocol.epochs,
        batch_size=protocol.batch_size,
        lr=protocol.lr,
        lr_schedule=protocol.lr_schedule,
        adam_eps=protocol.adam_eps,
        binarize=True,
        seed=seed,
        objective=spec.objective,
        k=spec.k,
        warmup_steps=round(warmup_fraction(name, protocol) * total),
        log_every=protocol.log_every or max(1, steps_per_epoch),
    )


# --------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module, x_test: torch.Tensor, protocol: Protocol, *, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """The protocol's measurements of a trained model on the binarized test images.

    The Monte Carlo noise is drawn from the generators seeded with ``seed``, so evaluating the
    same weights twice gives the same numbers.

    Returns a dict with ``test_elbo`` (mean over ``n_elbo`` images) and its standard
    error over images, ``test_ll`` (mean over ``n_ll``, with ``k`` samples) and
    ``ll_per_image``, ``elbo_ll_images`` (the ELBO on the same ``n_ll`` images) and
    ``gap``, ``active_units``/``latent_units``/``kl_layers`` (one entry per
    stochastic layer), and ``eval_seconds``.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    model.eval()
    torch.manual_seed(seed)
    elbos, kls = [], []
    x_elbo = x_test[: protocol.n_elbo]
    for xb in x_elbo.split(500):
        terms = model.elbo(xb.to(device))
        elbos.append(terms.elbo.double().cpu())
        layers = next((getattr(terms, n) for n in ("kl_layers", "kl_groups") if getattr(terms, n, None) is not None), None)
        kls.append((layers if layers is not None else terms.kl.unsqueeze(-1)).double().cpu())
    elbo = torch.cat(elbos)  # [n_elbo]
    kl_layers = torch.cat(kls).mean(0)  # [L]
    ll = log_likelihood(model, x_test[: protocol.n_ll], k=protocol.k, progress=progress).double().cpu()
    # E_q[z|x] of each layer; where it is a Monte Carlo mean, 200 samples keep its noise (variance
    # 1/200 for a unit at the prior) below the 0.01 threshold of an active unit
    means = [
        torch.cat(parts)
        for parts in zip(*(model.posterior_means(xb.to(device), 200) for xb in x_test[: protocol.n_units].split(100)))
    ]
    units = [int(active_units(m.cpu()).sum()) for m in means]
    return {
        "test_elbo": elbo.mean().item(),
        "test_elbo_se": (elbo.std() / math.sqrt(len(elbo))).item(),
        "test_ll": ll.mean().item(),
        "ll_per_image": [round(v, 4) for v in ll.tolist()],
        "elbo_ll_images": elbo[: protocol.n_ll].mean().item() if protocol.n_ll <= protocol.n_elbo else None,
        "gap": (ll - elbo[: len(ll)]).mean().item() if protocol.n_ll <= protocol.n_elbo else None,
        "active_units": units,
        "latent_units": [m.shape[1] for m in means],
        "kl_layers": kl_layers.tolist(),
        "eval_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------- the harness
def code_version() -> str:
    """``vaetut <version>`` and, in a git checkout, the commit (and ``+changes`` if the tree is dirty)."""
    from . import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vaetut"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return f"vaetut {__version__}"
    if commit.returncode != 0:
        return f"vaetut {__version__}"
    return f"vaetut {__version__}, git {commit.stdout.strip()}" + (" +changes in vaetut/" if dirty.stdout.strip() else "")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results file written by :func:`run_protocol` (``{"protocol": ..., "records": [...]}``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}: run `vaetut results --protocol cpu --out {path}` first")
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, dict) or "records" not in results:
        raise ValueError(f"{path} is not a vaetut results file (no 'records')")
    return results


RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def file_digest(path: str | os.PathLike) -> str:
    """The first 12 hex digits of a file's SHA-256: which results a chapter showed."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def chapter_results(protocol: str, models: list[str] | None = None, *, quick: str | Protocol = "tiny", log=print) -> dict[str, Any]:
    """The results a chapter shows, through one code path in both modes.

    Full mode: the committed ``results/<protocol>.json`` (written by
    ``vaetut results --protocol <protocol>``), restricted to ``models``. Quick mode
    (the tests): a run of the ``quick`` protocol (seconds) of the same models, so the
    chapter's code runs end to end without the hours of training. Prints which file
    (and its digest, which ``tests/test_project.py`` compares with the file on disk)
    or which quick run it used.
    """
    from .config import is_quick

    if is_quick():
        quick = PROTOCOLS[quick] if isinstance(quick, str) else quick
        out = Path(tempfile.mkdtemp(prefix="vaetut-results-")) / f"{quick.name}.json"
        results = run_protocol(quick, out, models=models, progress=False, log=lambda line: None, command="quick mode")
        log(f"quick mode: a {quick.name} run ({quick.epochs} epoch(s) on {quick.n_train or 60000} images) of {', '.join(models or quick.models)}")
    else:
        path = RESULTS_DIR / f"{protocol}.json"
        results = load_results(path)
        log(f"results/{path.name} sha256 {file_digest(path)}: {len(results['records'])} records, protocol {protocol!r}")
    if models is not None:
        results = {**results, "records": [r for r in results["records"] if r["model"] in models]}
        missing = sorted(set(models) - {r["model"] for r in results["records"]})
        if missing:
            raise ValueError(f"no records of {missing} in the {protocol} results: run `vaetut results --protocol {protocol} --models {' '.join(missing)}`")
    return results


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_protocol(
    protocol: str | Protocol,
    out: str | os.PathLike,
    *,
    models: list[str] | None = None,
    seeds: list[int] | None = None,
    device: str | torch.device | None = "auto",
    runs: str | os.PathLike | None = None,
    command: str | None = None,
    progress: bool | str = "lines",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every (model, seed) pair of a protocol; write the records to ``out``.

    Pairs already in ``out`` (same protocol settings) are kept and skipped, so an
    interrupted run continues where it stopped; a pair interrupted during training
    resumes from its checkpoint in ``runs`` (default: ``<out without suffix>-runs/``).
    Records are written after each pair, atomically.

    Returns:
        The results: ``{"protocol": {...}, "records": [...]}``.
    """
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    models = list(models or protocol.models or MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; the registry has {', '.join(MODELS)}")
    seeds = list(protocol.seeds if seeds is None else seeds)
    out = Path(out)
    runs = Path(runs) if runs is not None else out.with_name(out.stem + "-runs")
    settings = json.loads(json.dumps(asdict(protocol)))  # as it reads back from the file
    results = {"protocol": settings, "records": []}
    if out.exists():
        results = load_results(out)
        # what makes two records comparable (not the default lists of models and seeds, nor the description)
        same = lambda p: {k: v for k, v in p.items() if k not in ("models", "seeds", "description")}  # noqa: E731
        if same(results["protocol"]) != same(settings):
            raise ValueError(
                f"{out} holds results of other protocol settings ({results['protocol']}); write these to another file"
            )
    done = {(r["model"], r["seed"]) for r in results["records"]}
    device = get_device(device)
    x_train, _ = load_mnist("train", limit=protocol.n_train)
    x_test, _ = load_mnist("test", binarized=True)
    steps_per_epoch = math.ceil(len(x_train) / protocol.batch_size)
    command = command or "vaetut results " + " ".join(sys.argv[1:])
    for seed in seeds:
        for name in models:
            if (name, seed) in done:
                log(f"{name} seed {seed}: already in {out}, kept")
                continue
            log(f"== {name} seed {seed} ({protocol.name} protocol, {protocol.epochs} epochs)")
            model = build(name, seed, x_train)
            ckpt = runs / f"{name}-seed{seed}.pt"
            config = train_config(name, protocol, seed, steps_per_epoch)
            history = _finished_training(ckpt, model, config.total_steps(steps_per_epoch))
            if history is None:
                history = fit(model, x_train, config, device=device, checkpoint=ckpt, resume=ckpt.exists(), progress=progress)
            else:
                log(f"   training finished in {ckpt} (an earlier call stopped before evaluating it): evaluating")
                model.to(device)
            metrics = evaluate(model, x_test, protocol, seed=seed)
            record = {
                "model": name,
                "seed": seed,
                "protocol": protocol.name,
                "command": command,
                "code_version": code_version(),
                "hardware": run_info(),
                "device": device.type,
                "train_seconds": history.seconds,
                "epochs": protocol.epochs,
                "steps": config.total_steps(steps_per_epoch),
                "history": {"steps": history.steps, "terms": history.terms, "epochs": history.epochs},
                **metrics,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            results["records"].append(record)
            _write_json(out, results)
            log(
                f"   test ELBO {record['test_elbo']:.2f}, log p(x) {record['test_ll']:.2f} (k={protocol.k}, "
                f"{protocol.n_ll} images), active units {record['active_units']}, "
                f"{record['train_seconds'] / 60:.1f} + {record['eval_seconds'] / 60:.1f} min"
            )
    return results


def _finished_training(ckpt: Path, model: nn.Module, total: int) -> History | None:
    """The history of a run whose checkpoint is already at its last step, with its weights loaded
    into ``model``; None when there is no such checkpoint (then ``fit`` trains or resumes)."""
    if not ckpt.exists():
        return None
    state = load_checkpoint(ckpt)
    if state.get("step") != total or state.get("total_steps") != total:
        return None
    model.load_state_dict(state["model"])
    return History(**state["history"])


# ---------------------------------------------------------------- summaries
@dataclass
class Summary:
    """One model's numbers under one protocol: means and standard errors over seeds."""

    model: str
    seeds: list[int]
    elbo: float
    elbo_se: float
    ll: float
    ll_se: float
    gap: float | None
    gap_se: float | None
    active_units: list[float]
    latent_units: list[int]
    kl_layers: list[float]
    minutes: float
    diff_vae: float | None = None
    diff_vae_se: float | None = None
    published: tuple[float, str] | None = field(default=None)


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def paired_difference(a: list[list[float]], b: list[list[float]]) -> tuple[float, float]:
    """Mean difference of per-image log-likelihoods ``a - b`` over seeds and images, and its standard error.

    ``a[s][i]`` and ``b[s][i]`` are seed s's values on test image i (the same images
    for both models, and seed s pairs the two models' runs). The standard error
    combines the two sources of noise, assumed independent: the training runs
    (the spread over seeds of the per-seed mean difference, divided by S) and the
    test images (the spread over images of the seed-averaged difference, divided by N):

        SE^2 = Var_s(d_s) / S + Var_i(d_i) / N.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same seeds for both models, got {len(a)} and {len(b)}")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)  # [S, N]
    S, N = d.shape
    per_seed, per_image = d.mean(1), d.mean(0)  # [S], [N]
    var = (per_seed.var() / S if S > 1 else 0.0) + per_image.var() / N
    return d.mean().item(), float(math.sqrt(var))


def summarise(results: dict[str, Any], baseline: str = "vae") -> list[Summary]:
    """Per model (registry order): means and standard errors over seeds, and the paired
    difference of log-likelihoods to ``baseline`` on the same test images and seeds."""
    by_model: dict[str, list[dict]] = {}
    for r in results["records"]:
        by_model.setdefault(r["model"], []).append(r)
    base = {r["seed"]: r for r in by_model.get(baseline, [])}
    out = []
    for name in [m for m in MODELS if m in by_model] + [m for m in by_model if m not in MODELS]:
        recs = sorted(by_model[name], key=lambda r: r["seed"])
        elbo, elbo_se = _mean_se([r["test_elbo"] for r in recs])
        ll, ll_se = _mean_se([r["test_ll"] for r in recs])
        gaps = [r["gap"] for r in recs if r.get("gap") is not None]
        gap, gap_se = _mean_se(gaps) if gaps else (None, None)
        layers = len(recs[0]["active_units"])
        summary = Summary(
            model=name,
            seeds=[r["seed"] for r in recs],
            elbo=elbo,
            elbo_se=elbo_se,
            ll=ll,
            ll_se=ll_se,
            gap=gap,
            gap_se=gap_se,
            active_units=[statistics.fmean(r["active_units"][i] for r in recs) for i in range(layers)],
            latent_units=recs[0]["latent_units"],
            kl_layers=[statistics.fmean(r["kl_layers"][i] for r in recs) for i in range(layers)],
            minutes=statistics.fmean(r["train_seconds"] + r["eval_seconds"] for r in recs) / 60,
            published=MODELS[name].published if name in MODELS else None,
        )
        paired = [(r, base[r["seed"]]) for r in recs if r["seed"] in base]
        if name != baseline and paired:
            summary.diff_vae, summary.diff_vae_se = paired_difference(
                [r["ll_per_image"] for r, _ in paired], [b["ll_per_image"] for _, b in paired]
            )
        out.append(summary)
    return out


def format_table(summaries: list[Summary]) -> str:
    """The summaries as a plain-text table (what ``vaetut results`` prints)."""
    head = f"{'model':8} {'seeds':>5} {'test ELBO':>15} {'log p(x)':>15} {'gap':>12} {'vs vae':>15} {'active units':>16} {'min/run':>8}"
    lines = [head, "-" * len(head)]
    for s in summaries:
        diff = f"{s.diff_vae:+.2f} ± {s.diff_vae_se:.2f}" if s.diff_vae is not None else ""
        gap = f"{s.gap:.2f} ± {s.gap_se:.2f}" if s.gap is not None else ""
        units = "/".join(f"{a:.0f}" for a in s.active_units) + " of " + "/".join(map(str, s.latent_units))
        lines.append(
            f"{s.model:8} {len(s.seeds):>5} {s.elbo:>8.2f} ± {s.elbo_se:<4.2f} {s.ll:>8.2f} ± {s.ll_se:<4.2f} "
            f"{gap:>12} {diff:>15} {units:>16} {s.minutes:>8.1f}"
        )
    return "\n".join(lines)
