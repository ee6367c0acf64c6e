"""Training loop for every vaetut model: maximise a bound on log p(x) with Adam.

Paper: Mittas, *Variational Autoencoders*, §2.3 (stochastic gradient ascent on the
ELBO through the reparameterized sample) and §3.2 (beta); Kingma & Welling (2013),
Algorithm 1. The objectives:

* ``"elbo"`` (default): the KL-weighted ELBO ``log p(x|z) - w * KL`` with
  ``w = kl_weight(step, beta, warmup_steps)``: a linear warm-up from 0
  (Sønderby et al. 2016, §2.2) to ``beta`` (Higgins et al. 2017 for beta > 1);
  optionally with *free bits* (Kingma et al. 2016, eq. 15): each KL group pays at
  least ``free_bits`` nats, averaged over the batch, so the optimiser gains
  nothing by pushing it lower;
* ``"iwae"``: the importance-weighted bound L_k of Burda et al. (2016), eq. 8,
  from the model's ``log_weights(x, k)``;
* any other name: a model method returning a named tuple with ``log_px_z`` (and
  optionally ``kl``), e.g. the ``reconstruction`` of the deterministic autoencoder.

A model may define ``training_loss(terms, kl_weight)`` to turn its ELBO terms into
the loss itself (the NVAE's KL balancing and spectral regularisation do).

The loop is split into parts with one job each; :func:`train_step` is its heart:

* :class:`TrainConfig`: every setting a run depends on (stored in checkpoints,
  compared on resume);
* :class:`Objective`: the loss of one batch;
* :func:`train_step`: one gradient step;
* :class:`NonFiniteGuard`: stops the run when the loss or a gradient is NaN/inf,
  keeping the weights from before that step, without a host synchronisation per
  step on an accelerator;
* :func:`batch_order` and :func:`binarize_batch`: which examples and which binary
  pixels each step sees, pure functions of the seed and the step, so a resumed run
  sees exactly what an uninterrupted one would;
* :func:`save_checkpoint`, :func:`load_checkpoint`, :class:`Checkpoint`: atomic
  writes; everything a run depends on is saved, and resuming at any step continues
  bit-identically on the CPU;
* :func:`fit`: validates, places devices, resumes, and runs the steps, with
  progress, history, checkpoints, callbacks, a time limit and data parallelism
  under ``torchrun`` (:class:`torch.nn.parallel.DistributedDataParallel`).
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from .config import get_device
from .distributions import check_count, check_values

__all__ = [
    "fit",
    "train_step",
    "TrainConfig",
    "Objective",
    "History",
    "NonFiniteGuard",
    "TrainingDiverged",
    "CheckpointError",
    "kl_weight",
    "lr_factor",
    "batch_order",
    "binarize_batch",
    "save_checkpoint",
    "load_checkpoint",
]

OBJECTIVES = ("elbo", "iwae")
SCHEDULES = ("constant", "cosine", "cosine-time", "burda")
CHECKPOINT_FORMAT = "vaetut-checkpoint-2"


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; ``step`` says when."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not belong to the run that wants to resume from it."""


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class TrainConfig:
    """Every setting a training run depends on.

    ``fit(model, data, epochs=10, beta=4.0)`` is short for
    ``fit(model, data, TrainConfig(epochs=10, beta=4.0))``. Checkpoints store these
    fields; resuming with any of them changed is refused, except ``epochs``/``steps``
    (to train longer) and ``log_every``.

    Attributes:
        epochs, steps: how long to train; give exactly one. With ``steps`` the last
            epoch may be partial.
        batch_size: examples per step (over all processes when data-parallel).
        lr: Adam's learning rate, multiplied by the schedule's factor at each step.
        lr_schedule: ``"constant"``; ``"cosine"`` (from ``lr`` to ``lr * lr_min_factor``
            over the run's steps, half a cosine); ``"cosine-time"`` (the same over the
            wall time of ``fit``'s ``time_limit``, so a run for a fixed time anneals fully
            however fast the machine is; not bit-reproducible); ``"burda"`` (Burda et
            al. 2016: 3^i epochs at ``lr * 10^(-i/7)``, i = 0..7, 3,280 epochs in all).
        lr_min_factor: the cosine schedule's final factor.
        adam_eps: Adam's epsilon (Burda et al. use 1e-4).
        beta, warmup_steps: the KL weight ``kl_weight(step, beta, warmup_steps)``.
        free_bits: nats per KL group below which the KL is not penalised (0 = off);
            the groups are the model's ``kl_units``, ``kl_groups`` or ``kl_layers``
            (the first it returns), else the whole KL.
        binarize: draw binary pixels ``x ~ Bernoulli(data)`` afresh for every batch
            (dynamic binarization of grey-level MNIST).
        seed: seeds the data order, the binarization and the model's noise.
        objective: ``"elbo"``, ``"iwae"`` or the name of a model method (above).
        k: importance samples of the ``"iwae"`` objective.
        log_every: steps per entry of ``History.steps`` / ``History.terms``.
    """

    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_min_factor: float = 0.01
    adam_eps: float = 1e-8
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    binarize: bool = False
    seed: int = 0
    objective: str = "elbo"
    k: int = 1
    log_every: int = 50

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs= or steps=")
        for name in ("epochs", "steps"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_count(getattr(self, name), name))
        for name in ("batch_size", "k", "log_every"):
            object.__setattr__(self, name, check_count(getattr(self, name), name))
        object.__setattr__(self, "warmup_steps", check_count(self.warmup_steps, "warmup_steps", minimum=0))
        object.__setattr__(self, "seed", check_count(self.seed, "seed", minimum=0))
        for name, low in (("lr", 0.0), ("adam_eps", 0.0), ("beta", -1.0), ("free_bits", -1.0), ("lr_min_factor", -1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (low < value < math.inf):
                raise ValueError(f"{name} must be a finite number {'> 0' if low == 0 else '>= 0'}, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if not isinstance(self.objective, str) or not self.objective:
            raise ValueError(f"objective must be 'elbo', 'iwae' or the name of a model method, got {self.objective!r}")
        if self.k > 1 and self.objective != "iwae":
            raise ValueError(f"k={self.k} only applies to objective='iwae' (the importance-weighted bound)")
        if self.objective == "iwae" and (self.beta != 1.0 or self.warmup_steps or self.free_bits):
            raise ValueError("the IWAE bound has no separate KL term: beta, warmup_steps and free_bits need objective='elbo'")

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch


def kl_weight(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """The KL weight at optimisation step ``step`` (0-based).

    Linear warm-up: ``beta * min(1, step / warmup_steps)``, so the first step uses
    weight 0 and step ``warmup_steps`` reaches ``beta``; ``warmup_steps=0`` means
    ``beta`` from the start.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if warmup_steps == 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup_steps)


def lr_factor(config: TrainConfig, step: int, total: int, steps_per_epoch: int, time_fraction: float = 0.0) -> float:
    """The factor that multiplies ``config.lr`` at step ``step`` (0-based) of ``total``
    (``time_fraction``: the elapsed share of the time limit, for ``"cosine-time"``)."""
    if config.lr_schedule in ("cosine", "cosine-time"):
        progress = step / max(total - 1, 1) if config.lr_schedule == "cosine" else time_fraction
        # $\eta_t = \eta_{\min} + (\eta_0 - \eta_{\min}) \frac{1 + \cos(\pi t / T)}{2}$
        progress = min(1.0, max(0.0, progress))
        return config.lr_min_factor + (1 - config.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.lr_schedule == "burda":
        # epochs [0, 1) at i = 0, [1, 4) at i = 1, [4, 13) at i = 2, ...: 3^i epochs each
        epoch, i, end = step // steps_per_epoch, 0, 1
        while epoch >= end and i < 7:
            i += 1
            end += 3**i
        return 10 ** (-i / 7)
    return 1.0


# ------------------------------------------------------------ the data side
def batch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The order in which epoch ``epoch`` (0-based) visits the ``n`` examples, ``[n]``.

    A pure function of its arguments, so a resumed run (or every process of a
    data-parallel run) visits the same examples in the same order.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, 0, epoch)))


def binarize_batch(x: Tensor, seed: int, step: int) -> Tensor:
    """Binary pixels ``x ~ Bernoulli(x)`` for step ``step``, reproducible from ``(seed, step)``.

    Drawn on ``x``'s device with a generator of its own, so the model's noise stream
    is untouched.
    """
    generator = torch.Generator(device=x.device).manual_seed(_mix(seed, 1, step))
    # $x_i = [u_i < p_i]$ with $u_i \sim U(0, 1)$ is a Bernoulli(p_i) draw (faster than torch.bernoulli on a CPU)
    return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < x).to(x.dtype)


def _mix(seed: int, stream: int, index: int) -> int:
    """One 63-bit seed per (seed, stream, index): a SplitMix64 hash of the three."""
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


# --------------------------------------------------------------- the loss
class Objective(nn.Module):
    """The training loss of one batch, and the batch means of the terms to log.

    An ``nn.Module`` around the model, so that data parallelism can wrap the whole
    computation (``DistributedDataParallel`` synchronises gradients of what its
    ``forward`` computes).
    """

    def __init__(self, model: nn.Module, config: TrainConfig):
        super().__init__()
        self.model, self.config = model, config
        name = config.objective
        wanted = "log_weights" if name == "iwae" else name
        if not callable(getattr(model, wanted, None)):
            raise ValueError(f"{type(model).__name__} has no method {wanted!r} to train on (objective={name!r})")

    def forward(self, x: Tensor, kl_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, stats)``: a scalar to minimise, and detached batch means of the terms."""
        cfg, model = self.config, self.model
        if cfg.objective == "iwae":
            log_w = model.log_weights(x, cfg.k)  # [k, B]
            # $L_k = \log \frac1k \sum_i w_i$, the IWAE bound; its k-sample mean of log w is an ELBO estimate
            bound = torch.logsumexp(log_w, dim=0) - math.log(cfg.k)  # [B]
            loss = -bound.mean()
            return loss, {"loss": loss.detach(), "iwae": bound.detach().mean(), "elbo": log_w.detach().mean()}
        terms = getattr(model, cfg.objective)(x)
        kl = getattr(terms, "kl", None)
        if hasattr(model, "training_loss"):
            loss = model.training_loss(terms, kl_weight)
        elif kl is None:
            loss = -terms.log_px_z.mean()
        else:
            # $-\frac1B \sum_b [\log p(x_b|z_b) - w\,KL_b]$, the KL with its free bits
            loss = -(terms.log_px_z.mean() - kl_weight * self.penalised_kl(terms))
        stats = {"loss": loss.detach()}
        for key in ("elbo", "log_px_z", "kl"):
            value = getattr(terms, key, None)
            if value is not None:
                stats[key] = value.detach().mean()
        layers = next((g for g in (getattr(terms, n, None) for n in ("kl_groups", "kl_layers")) if g is not None), None)
        if layers is not None:  # the KL of each stochastic layer (group), as kl_1, kl_2, ...
            stats.update({f"kl_{i + 1}": col.mean() for i, col in enumerate(layers.detach().unbind(-1))})
        return loss, stats

    def penalised_kl(self, terms: Any) -> Tensor:
        """The batch-mean KL the loss pays: ``sum_j max(free_bits, mean_b KL_bj)`` over the groups j."""
        if self.config.free_bits == 0:
            return terms.kl.mean()
        groups = next(
            (g for g in (getattr(terms, n, None) for n in ("kl_units", "kl_groups", "kl_layers")) if g is not None),
            terms.kl.unsqueeze(-1),
        )  # [B, J]
        # $\sum_j \max(\lambda, \mathbb{E}_{batch}[KL_j])$ (Kingma et al. 2016, eq. 15)
        return groups.mean(0).clamp(min=self.config.free_bits).sum()


# ------------------------------------------------------------ the step
def train_step(
    objective: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, kl_weight: float, guard: NonFiniteGuard
) -> dict[str, Tensor]:
    """One step of stochastic gradient descent on the loss of batch ``x``.

    Returns the batch means of the terms (detached, on the device: reading them
    would wait for it, so the caller does that only now and then).
    """
    loss, stats = objective(x, kl_weight)  # a scalar, and batch means to log
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # gradients reach the encoder through the reparameterized z
    guard.before_update(loss, optimizer)  # NaN/inf: stop now (CPU) or skip on the device
    optimizer.step()
    guard.after_update(optimizer)
    return stats


class NonFiniteGuard:
    """Stops training when the loss or the gradient norm is NaN or infinite.

    On the CPU (or with an optimizer that cannot skip a step on the device) it checks
    before every update and raises at once, so the model keeps the weights from
    before the bad step. On an accelerator with fused Adam, reading the loss every
    step would make the host wait for the device, so the check happens on the device:
    a sticky flag passed to Adam as ``found_inf`` (the mechanism of
    :class:`torch.amp.GradScaler`) skips this and every later update, and
    :meth:`check` (called every ``log_every`` steps) raises naming the first bad step.
    """

    def __init__(
        self,
        params: list[Tensor],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        steps_per_epoch: int = 1,
        checkpoint: str | os.PathLike | None = None,
        deferred: bool | None = None,
    ):
        self.params, self.steps_per_epoch, self.checkpoint = params, steps_per_epoch, checkpoint
        fused = bool(optimizer.defaults.get("fused"))
        self.deferred = (device.type != "cpu" and fused) if deferred is None else deferred
        if self.deferred and not fused:
            raise ValueError("a deferred check needs an optimizer that can skip a step on the device (fused Adam)")
        self.step = 0
        if self.deferred:
            self.bad = torch.zeros((), device=device)  # 1.0 once a step was not finite
            self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
            self.first_what = torch.zeros((), dtype=torch.long, device=device)  # 0 loss, 1 gradient

    def before_update(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        # the norm only (clip_grad_norm_ with an infinite bound would still rescale every gradient by 1)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        if not self.deferred:
            if not bool(torch.isfinite(loss.detach() + grad_norm)):  # one check for both (a sum of finite values is finite)
                what = "loss" if not torch.isfinite(loss) else "gradient norm"
                value = loss if what == "loss" else grad_norm
                self.raise_at(self.step, what, value.item())
            return
        now_bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        fresh = now_bad & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, self.step, self.first_bad)
        self.first_what = torch.where(fresh, torch.isfinite(loss).long(), self.first_what)
        self.bad = torch.maximum(self.bad, now_bad.float())
        optimizer.found_inf = self.bad  # fused Adam skips the update (and its step count) when this is 1

    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        if self.deferred:
            del optimizer.found_inf
        self.step += 1

    def check(self) -> None:
        """On an accelerator: raise if any step so far was not finite (one synchronisation)."""
        if self.deferred and int(self.first_bad) >= 0:
            self.raise_at(int(self.first_bad), ("loss", "gradient norm")[int(self.first_what)], float("nan"))

    def raise_at(self, step: int, what: str, value: float) -> None:
        where = f" and the last checkpoint is {self.checkpoint}" if self.checkpoint else ""
        shown = f"became {value}" if not math.isnan(value) or what == "loss" else "was not finite"
        raise TrainingDiverged(
            f"training stopped at step {step} (epoch {step // self.steps_per_epoch + 1}): the {what} {shown}. "
            f"The model keeps the weights from before this step{where}. "
            "Try a lower learning rate, a KL warm-up, or check the data for NaN/inf.",
            step,
        )


# ------------------------------------------------------------ history
@dataclass
class History:
    """What happened during training.

    ``steps`` and ``terms`` hold one entry per logged interval (means over the
    steps since the previous entry); ``epochs`` holds one dict per epoch with the
    epoch means of every term plus whatever ``on_epoch_end`` returned.
    ``stopped`` says why a run ended before its last step (``"time limit"``).
    """

    steps: list[int] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for key, value in values.items():
            self.terms.setdefault(key, []).append(value)

    def epoch_values(self, key: str) -> list[float]:
        """One number per epoch for ``key`` (e.g. ``"elbo"``)."""
        return [e[key] for e in self.epochs if key in e]


class _Means:
    """Running sums of per-step batch means, kept on the device until read."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, stats: dict[str, Tensor]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def read(self, dist: _Dist) -> dict[str, float]:
        """The means since the last reset (averaged over processes), as floats; resets."""
        if not self.count:
            return {}
        keys = sorted(self.sums)
        values = dist.mean(torch.stack([self.sums[k].float() for k in keys]) / self.count)
        self.sums, self.count = {}, 0
        return dict(zip(keys, values.tolist()))

    def state(self) -> dict:
        return {"sums": {k: v.detach().cpu() for k, v in self.sums.items()}, "count": self.count}

    def load(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = state["count"]


# ------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain Python values only).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not a checkpoint;
            the message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: check the path, or start a new run without resuming")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, unsafe types: all mean "not readable"
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "It is truncated, corrupt or not a vaetut checkpoint. Checkpoints are written atomically, so "
            "this file was damaged or replaced afterwards: delete it to start afresh, or resume from a copy."
        ) from None


class Checkpoint:
    """What :func:`fit` saves and restores: a run's complete state at a step boundary."""

    def __init__(self, path: str | os.PathLike | None, dist: _Dist):
        self.path = None if path is None else Path(path)
        self.dist = dist

    def save(
        self, model: nn.Module, optimizer, config: TrainConfig, step: int, total: int, history: History, means: dict
    ) -> None:
        if self.path is None:
            return
        rng = self.dist.gather(_rng_state())  # every process's generators, rank order
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.path,
            {
                "format": CHECKPOINT_FORMAT,
                "model_class": type(model).__name__,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": asdict(config),
                "world_size": self.dist.world,
                "total_steps": total,
                "step": step,
                "history": asdict(history),
                "means": means,
                "rng": rng,
            },
        )

    def load(self, model: nn.Module, optimizer, config: TrainConfig, total: int) -> tuple[int, History, dict]:
        """Restore the run saved at ``self.path`` into ``model`` and ``optimizer``."""
        state = load_checkpoint(self.path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{self.path} is not a vaetut training checkpoint of this version (format "
                f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}); start a new run without resuming"
            )
        if state["model_class"] != type(model).__name__:
            raise CheckpointError(
                f"{self.path} holds a model of class {state['model_class']}, not {type(model).__name__}: resume with the model it was trained on"
            )
        changed = [
            f"{name}: {state['config'].get(name)!r} in the checkpoint, {value!r} now"
            for name, value in asdict(config).items()
            if name not in ("epochs", "steps", "log_every") and state["config"].get(name) != value
        ]
        if config.lr_schedule == "cosine" and state["total_steps"] != total:
            changed.append(
                f"length of the cosine schedule: {state['total_steps']} steps in the checkpoint, {total} now"
            )
        if state["world_size"] != self.dist.world:
            changed.append(f"processes: {state['world_size']} in the checkpoint, {self.dist.world} now")
        if changed:
            raise CheckpointError(
                f"cannot resume from {self.path} with other settings ({'; '.join(changed)}). "
                "Resume with the settings it was written with, or start a new run with another checkpoint path."
            )
        if total <= state["step"]:
            raise CheckpointError(
                f"{self.path} is at step {state['step']} and this call asks for {total} steps in all: nothing "
                "to train. Ask for more epochs or steps to continue, or load it with load_checkpoint to use it."
            )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"the weights in {self.path} do not fit this {type(model).__name__} (another configuration?): "
                f"{str(err).splitlines()[0][:300]}"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"][self.dist.rank])
        return state["step"], History(**state["history"]), state["means"]


def _rng_state() -> dict[str, Any]:
    """The global generators the models draw their noise from: the CPU's and every CUDA device's."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())  # generator states are CPU byte tensors, whatever the device
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------ processes
class _Dist:
    """One process, or one of several started by ``torchrun`` (data parallelism)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def device(self, requested: str | torch.device | None) -> torch.device:
        device = get_device(requested)
        if self.world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)

    def shard(self, x: Tensor) -> Tensor:
        """This process's share of a batch (contiguous; sizes differ by at most 1)."""
        return x if self.world == 1 else x.tensor_split(self.world)[self.rank]

    def mean(self, t: Tensor) -> Tensor:
        if self.world > 1:
            import torch.distributed as dist

            t = t.clone()
            dist.all_reduce(t)
            t /= self.world
        return t.cpu()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


# ------------------------------------------------------------ the loop
def fit(
    model: nn.Module,
    data: Tensor,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device | None = "auto",
    optimizer: torch.optim.Optimizer | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    time_limit: float | None = None,
    progress: bool | str = "auto",
    on_epoch_end: Callable[[int, nn.Module], dict | None] | None = None,
    **settings: Any,
) -> History:
    """Train ``model`` on ``data``: ``fit(model, x, epochs=10, binarize=True)``.

    Args:
        model: any vaetut model (``elbo(x)`` returns ``[B]`` terms; ``log_weights``
            for the IWAE objective).
        data: the training set as one tensor ``[N, C, H, W]`` (each batch is moved to
            the device; checked once for NaN/inf and, with ``binarize``, for [0, 1]).
        config: a :class:`TrainConfig`; ``**settings`` are its fields (``epochs``,
            ``steps``, ``batch_size``, ``lr``, ``beta``, ``binarize``, ``seed``, ...),
            given directly or replacing those of ``config``.
        device: ``"auto"`` (cuda, mps, cpu) or a torch device; the model is moved there.
            Under ``torchrun`` each process takes the GPU of its local rank.
        optimizer: an optimizer of your own (default: Adam with ``lr`` and ``adam_eps``,
            fused where this torch supports it). Its settings are not in the checkpoint's
            config, so a resume cannot compare them.
        checkpoint: a file path; the whole run state is written atomically at the end of
            every epoch, every ``checkpoint_every`` steps, when the run ends, and when
            it is interrupted (Ctrl-C or a kernel interrupt).
        resume: continue the run saved at ``checkpoint`` (which must exist) with the
            same settings; it continues exactly as the uninterrupted run would.
        checkpoint_every: also write the checkpoint every this many steps.
        time_limit: stop (with a checkpoint) at the first step boundary after this many
            seconds of training; ``History.stopped`` then says ``"time limit"``.
        progress: ``"auto"`` (a tqdm bar on a terminal, one line per epoch elsewhere,
            e.g. in notebooks), ``"bar"``, ``"lines"`` or ``False``.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after each epoch (model
            in eval mode, no grad); a returned dict of numbers or strings is added to
            that epoch's entry in ``History.epochs``.

    Data parallelism: started by ``torchrun --nproc_per_node N``, every process runs
    ``fit`` on the same data and takes its share of every batch; gradients are
    averaged, so with a batch size divisible by N one step equals a one-process step
    on the whole batch. Process 0 alone prints and writes checkpoints.

    Returns:
        The :class:`History`.

    Raises:
        TrainingDiverged: the loss or a gradient became NaN/inf; the model keeps the
            weights from before that step.
        CheckpointError: ``resume`` with a missing, unreadable or mismatched checkpoint.
        KeyboardInterrupt: after an interrupt, once the checkpoint is written.
    """
    config = replace(config, **settings) if config is not None else TrainConfig(**settings)
    _check_data(data, config, model)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= the file to resume from")
    if checkpoint_every is not None:
        checkpoint_every = check_count(checkpoint_every, "checkpoint_every")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, numbers.Real) or not time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if config.lr_schedule == "cosine-time" and time_limit is None:
        raise ValueError("lr_schedule='cosine-time' anneals over the wall time: give time_limit= (seconds)")
    run = _Run(model, data, config, device, optimizer, checkpoint, checkpoint_every, time_limit, progress, on_epoch_end)
    if resume:
        run.resume()
    return run.train()


class _Run:
    """The state of one call of :func:`fit` and the loop around :func:`train_step`."""

    def __init__(self, model, data, config, device, optimizer, checkpoint, checkpoint_every, time_limit, progress, on_epoch_end):
        self.model, self.data, self.config = model, data, config
        self.objective = Objective(model, config)  # checks the objective before anything moves
        self.mode = _progress_mode(progress)
        self.dist = _Dist()
        self.device = self.dist.device(device)
        model.to(self.device)
        self.optimizer = optimizer if optimizer is not None else _adam(model, config)
        self.per_epoch = math.ceil(len(data) / config.batch_size)
        self.total = config.total_steps(self.per_epoch)
        self.store = Checkpoint(checkpoint, self.dist)
        self.checkpoint_every, self.time_limit, self.on_epoch_end = checkpoint_every, time_limit, on_epoch_end
        torch.manual_seed(config.seed + self.dist.rank)  # the models' noise: one stream per process
        self.step, self.history = 0, History()
        self.epoch_means, self.interval = _Means(), _Means()
        params = [p for p in model.parameters() if p.requires_grad]
        self.guard = NonFiniteGuard(params, self.optimizer, self.device, self.per_epoch, checkpoint)

    def resume(self) -> None:
        self.step, self.history, means = self.store.load(self.model, self.optimizer, self.config, self.total)
        self.history.stopped = None  # this call goes on where that one stopped
        self.epoch_means.load(means["epoch"], self.device)
        self.interval.load(means["interval"], self.device)
        self.guard.step = self.step

    def save(self) -> None:
        self.guard.check()  # never save weights that a skipped, non-finite step left behind
        means = {"epoch": self.epoch_means.state(), "interval": self.interval.state()}
        self.store.save(self.model, self.optimizer, self.config, self.step, self.total, self.history, means)

    def train(self) -> History:
        cfg, dist = self.config, self.dist
        loss_fn = dist.wrap(self.objective, self.device)
        bar = _bar(self.total, self.step) if self.mode == "bar" and dist.is_main else None
        self.started = time.perf_counter() - self.history.seconds
        self.shared_fraction = self.history.seconds / self.time_limit if self.time_limit is not None else 0.0
        self.model.train()
        try:
            with _interrupts_become_flags() as self.interrupted:
                while self.step < self.total and self.history.stopped is None:
                    epoch = self.step // self.per_epoch
                    order = batch_order(cfg.seed, epoch, len(self.data)).to(self.data.device)
                    for b in range(self.step - epoch * self.per_epoch, self.per_epoch):
                        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                        x = self.data.index_select(0, idx).to(self.device, non_blocking=True)  # data[idx], faster on a CPU
                        if cfg.binarize:  # the whole batch, so that the shards match a one-process run
                            x = binarize_batch(x, cfg.seed, self.step)
                        x = dist.shard(x)
                        w = kl_weight(self.step, cfg.beta, cfg.warmup_steps)
                        _set_lr(self.optimizer, cfg, self.step, self.total, self.per_epoch, self.time_fraction())
                        stats = train_step(loss_fn, self.optimizer, x, w, self.guard)
                        self.step += 1
                        self.epoch_means.add(stats)
                        self.interval.add(stats)
                        if bar is not None:
                            bar.update(1)
                        if self.interval.count == cfg.log_every:
                            self.log(bar)
                        if self.step == self.total or self.should_stop():
                            break
                        if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step % self.per_epoch:
                            self.save()
                    if self.step % self.per_epoch == 0:
                        self.end_epoch(epoch)
                        self.save()
                    else:  # inside an epoch: the checkpoint keeps the epoch open, with its running means
                        self.save()
                        if self.step == self.total:  # the last, partial epoch is recorded all the same
                            self.end_epoch(epoch)
            if self.interval.count:  # the steps since the last entry: logged, though the checkpoint keeps them open
                self.log(bar)
        finally:
            if bar is not None:
                bar.close()
        if self.history.stopped == "interrupted":
            where = f"; continue with fit(..., checkpoint={str(self.store.path)!r}, resume=True)" if self.store.path else ""
            raise KeyboardInterrupt(f"training interrupted at step {self.step}, checkpoint written{where}")
        self.model.eval()
        return self.history

    def time_fraction(self) -> float:
        """The elapsed share of the time limit (0 without one). Data-parallel processes use the
        main process's share, read at the last agreed step boundary (see :meth:`should_stop`), so
        that all of them set the same learning rate and their weights stay equal."""
        if self.time_limit is None:
            return 0.0
        if self.dist.world > 1:
            return self.shared_fraction
        return (time.perf_counter() - self.started) / self.time_limit

    def log(self, bar) -> None:
        self.guard.check()
        values = self.interval.read(self.dist)
        values["kl_weight"] = kl_weight(self.step - 1, self.config.beta, self.config.warmup_steps)
        self.history.log(self.step, values)
        if bar is not None:
            bar.set_postfix({k: f"{values[k]:.2f}" for k in ("elbo", "kl", "loss") if k in values}, refresh=False)

    def should_stop(self) -> bool:
        """An interrupt or the time limit, checked at step boundaries (every ``log_every``
        steps when data-parallel, where all processes must agree)."""
        if self.dist.world > 1 and self.step % self.config.log_every:
            return False
        reason = None
        self.history.seconds = time.perf_counter() - self.started
        if self.interrupted.is_set():
            reason = "interrupted"
        elif self.time_limit is not None and self.history.seconds >= self.time_limit:
            reason = "time limit"
        if self.dist.world > 1:
            fraction = self.history.seconds / self.time_limit if self.time_limit is not None else 0.0
            reason, self.shared_fraction = self.dist.gather((reason, fraction))[0]
        self.history.stopped = reason
        return reason is not None

    def end_epoch(self, epoch: int) -> None:
        """Record the epoch's means (and the callback's values) and print its line."""
        cfg = self.config
        self.guard.check()
        record: dict[str, Any] = self.epoch_means.read(self.dist)
        record.update(epoch=epoch + 1, step=self.step, kl_weight=kl_weight(self.step - 1, cfg.beta, cfg.warmup_steps))
        if self.on_epoch_end is not None and self.dist.is_main:
            self.model.eval()
            with torch.no_grad():
                extra = self.on_epoch_end(epoch + 1, self.model)
            self.model.train()
            record.update(_plain_values(extra if extra is not None else {}))
        self.dist.barrier()
        self.history.epochs.append(record)
        self.history.seconds = time.perf_counter() - self.started
        if self.mode == "lines" and self.dist.is_main:
            names = {"elbo": "elbo", "iwae": "iwae", "log_px_z": "log p(x|z)", "kl": "kl"}
            shown = "  ".join(f"{names[k]} {record[k]:9.2f}" for k in names if k in record)
            print(f"epoch {epoch + 1:3d}/{math.ceil(self.total / self.per_epoch)}  step {self.step:6d}  {shown}", flush=True)


def _plain_values(extra: dict) -> dict[str, float | int | str]:
    """The callback's dict as plain Python numbers and strings (what a checkpoint can hold)."""
    if not isinstance(extra, dict):
        raise TypeError(f"on_epoch_end must return a dict of numbers (or None), got {type(extra).__name__}")
    out: dict[str, float | int | str] = {}
    for key, value in extra.items():
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
        else:
            raise TypeError(
                f"on_epoch_end returned {key!r}: {type(value).__name__}; return numbers (Python, NumPy or "
                "one-element tensors) or strings, so the history can be saved in a checkpoint"
            )
    return out


@contextmanager
def _interrupts_become_flags() -> Iterator[threading.Event]:
    """Turn Ctrl-C (SIGINT) into a flag the loop reads at the next step boundary, so an
    interrupted run saves a consistent checkpoint before it stops. A second Ctrl-C
    interrupts at once. Only in the main thread (elsewhere signals cannot be caught)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_data(data: Tensor, config: TrainConfig, model: nn.Module) -> None:
    """Checks of the whole training set, once, before the first step."""
    if not torch.is_tensor(data) or data.dim() < 2 or len(data) == 0:
        got = tuple(data.shape) if torch.is_tensor(data) else type(data).__name__
        raise ValueError(f"data must be a non-empty tensor [N, ...] (e.g. the x of vaetut.data.load_mnist), got {got}")
    if not data.is_floating_point():
        raise ValueError(f"data must hold floating-point pixels, got {data.dtype}; use data.float() / 255 for uint8 images")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != data.dtype:
        raise ValueError(
            f"data is {data.dtype} but the model's parameters are {param.dtype}: convert one to the other, "
            f"e.g. data.to({param.dtype}) or model.to({data.dtype})"
        )
    if config.binarize and (data.min() < 0 or data.max() > 1):
        raise ValueError("binarize=True needs data in [0, 1] (pixel intensities used as Bernoulli probabilities)")
    check_values(data, name="data")


def _progress_mode(progress: bool | str) -> str:
    if progress is False or progress == "off":
        return "off"
    if progress in ("bar", "lines"):
        return progress
    if progress is True or progress == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    raise ValueError(f"progress must be True, False, 'auto', 'bar', 'lines' or 'off', got {progress!r}")


def _bar(total: int, initial: int):
    from tqdm.std import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def _set_lr(
    optimizer: torch.optim.Optimizer, config: TrainConfig, step: int, total: int, per_epoch: int, time_fraction: float
) -> None:
    if config.lr_schedule == "constant":
        return
    factor = lr_factor(config, step, total, per_epoch, time_fraction)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor


def _adam(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where this torch supports it on the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, foreach=True)
