"""Training loop for every vaetut model: maximise the (beta-weighted) ELBO with Adam.

The objective per batch is ``-(log_px_z - w * kl).mean()`` where ``w`` is the KL
weight: ``beta`` after a linear warm-up from 0 (Sønderby et al. 2016, §2.2; the
beta-VAE of Higgins et al. 2017 is ``beta > 1`` with no warm-up). Any model whose
``elbo(x)`` returns a named tuple with ``elbo``, ``log_px_z`` and ``kl`` fields
(``[B]`` each; extra fields are ignored) can be trained.

What the loop takes care of, so the chapters don't:

* data held as one tensor, shuffled and batched by indexing (no per-item work),
  optionally binarized afresh every batch (dynamic binarization);
* device chosen automatically (cuda, mps, cpu), seed, progress;
* per-term history (means per epoch, and per logged step);
* checkpoints (state dicts, written atomically) and resume;
* a guard that stops with :class:`TrainingDiverged` naming the step when the loss
  or the gradients stop being finite; the model keeps the last good weights.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .config import get_device

__all__ = ["fit", "History", "TrainingDiverged", "kl_weight", "save_checkpoint", "load_checkpoint"]


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; ``step`` says when."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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


@dataclass
class History:
    """What happened during training.

    ``steps`` and ``terms`` hold one entry per logged interval (means over the
    steps since the previous entry); ``epochs`` holds one dict per epoch with the
    epoch means of every term plus whatever ``on_epoch_end`` returned.
    """

    steps: list[int] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def log(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for key, value in values.items():
            self.terms.setdefault(key, []).append(value)

    def epoch_values(self, key: str) -> list[float]:
        """One number per epoch for ``key`` (e.g. ``"elbo"``)."""
        return [e[key] for e in self.epochs if key in e]


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
    """Load a checkpoint written by :func:`save_checkpoint` (state dicts only, ``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _progress_mode(progress: bool | str) -> str:
    if progress is False or progress == "off":
        return "off"
    if progress in ("bar", "lines"):
        return progress
    if progress is True or progress == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    raise ValueError(f"progress must be True, False, 'auto', 'bar', 'lines' or 'off', got {progress!r}")


def fit(
    model: nn.Module,
    data: Tensor,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    beta: float = 1.0,
    warmup_steps: int = 0,
    binarize: bool = False,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | str = "auto",
    log_every: int = 50,
    objective: str = "elbo",
    on_epoch_end: Callable[[int, nn.Module], dict | None] | None = None,
) -> History:
    """Train ``model`` on ``data`` by maximising the KL-weighted ELBO.

    Args:
        model: any vaetut model (``elbo(x)`` returns ``[B]`` terms).
        data: the training set as one tensor ``[N, C, H, W]`` (kept where it is; each
            batch is moved to the device).
        epochs, steps: how long to train; give exactly one. With ``steps`` the
            last epoch may be partial.
        batch_size, lr: Adam's batch size and learning rate (ignored ``lr`` when
            ``optimizer`` is given).
        beta, warmup_steps: the KL weight ``kl_weight(step, beta, warmup_steps)``.
        binarize: resample binary pixels ``x ~ Bernoulli(data)`` for every batch
            (dynamic binarization of grey-level MNIST).
        device: ``"auto"`` (cuda, mps, cpu) or a torch device; the model is moved there.
        seed: seeds the shuffling, the binarization and the model's noise.
        checkpoint: a file path; the state (model, optimizer, step, history) is
            written atomically at the end of every epoch and at the end.
        resume: continue from ``checkpoint`` if it exists (same model and data).
        progress: ``"auto"`` (a tqdm bar on a terminal, one line per epoch
            elsewhere, e.g. in notebooks), ``"bar"``, ``"lines"`` or ``False``.
        log_every: steps per entry of ``history.steps``/``history.terms``.
        objective: the model method that gives the terms, ``"elbo"`` by default.
            It must return a named tuple with ``log_px_z`` and optionally ``kl`` and
            ``elbo`` (``[B]`` each); a missing ``kl`` counts as 0 (e.g. the
            ``reconstruction`` of a deterministic autoencoder).
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after each epoch
            (model in eval mode, no grad); a returned dict is added to that
            epoch's entry in ``history.epochs``.

    Returns:
        The :class:`History`.

    Raises:
        TrainingDiverged: the loss or a gradient became NaN/inf; the model keeps
            the weights from before that step.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not torch.is_tensor(data) or data.dim() < 2 or len(data) == 0:
        raise ValueError("data must be a non-empty tensor [N, ...] (e.g. the x of vaetut.data.load_mnist)")
    if binarize and (data.min() < 0 or data.max() > 1):
        raise ValueError("binarize=True needs data in [0, 1] (pixel intensities used as Bernoulli probabilities)")
    kl_weight(0, beta, warmup_steps)  # validates beta and warmup_steps
    terms_of = getattr(model, objective, None)
    if not callable(terms_of):
        raise ValueError(f"{type(model).__name__} has no method {objective!r} to train on")
    mode = _progress_mode(progress)

    device = get_device(device)
    model.to(device)
    if optimizer is None:
        optimizer = _adam(model, lr, device)
    n = len(data)
    per_epoch = math.ceil(n / batch_size)
    total = steps if steps is not None else epochs * per_epoch
    history = History()
    step = 0
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        history = History(**state["history"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def save() -> None:
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "history": asdict(history),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
            )

    bar = None
    if mode == "bar":
        from tqdm.std import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, Tensor] = {}
    interval: dict[str, Tensor] = {}
    interval_steps = 0
    start_time = time.perf_counter()
    model.train()
    while step < total:
        epoch = step // per_epoch
        order = torch.randperm(n, generator=gen)
        # resuming mid-epoch replays the same permutation from where it stopped
        first = step - epoch * per_epoch
        epoch_steps = 0
        for b in range(first, per_epoch):
            if step >= total:
                break
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = data[idx].to(device, non_blocking=True)
            if binarize:
                x = torch.bernoulli(x, generator=gen if x.device.type == "cpu" else None)
            w = kl_weight(step, beta, warmup_steps)
            terms = terms_of(x)
            kl = getattr(terms, "kl", None)
            # $-\frac{1}{B}\sum_b [\log p(x_b|z_b) - w\,KL_b]$
            loss = -(terms.log_px_z - w * kl).mean() if kl is not None else -terms.log_px_z.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=True)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                if bar is not None:
                    bar.close()
                what = "loss" if not torch.isfinite(loss) else "gradient norm"
                raise TrainingDiverged(
                    f"training stopped at step {step} (epoch {epoch + 1}): the {what} became "
                    f"{(loss if what == 'loss' else grad_norm).item()}. The model keeps the weights from before "
                    "this step" + (f" and the last checkpoint is {checkpoint}" if checkpoint else "") + ". "
                    "Try a lower learning rate, a KL warm-up, or check the data for NaN/inf.",
                    step,
                )
            optimizer.step()
            with torch.no_grad():
                stats = {"loss": loss.detach()}
                for key in ("elbo", "log_px_z", "kl"):
                    value = getattr(terms, key, None)
                    if value is not None:
                        stats[key] = value.detach().mean()
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
                interval[key] = interval.get(key, 0.0) + value
            step += 1
            epoch_steps += 1
            interval_steps += 1
            if bar is not None:
                bar.update(1)
            if interval_steps == log_every or step == total:
                values = {k: float(v) / interval_steps for k, v in interval.items()}
                values["kl_weight"] = w
                history.log(step, values)
                if bar is not None:
                    bar.set_postfix({k: f"{values[k]:.2f}" for k in ("elbo", "kl", "loss") if k in values}, refresh=False)
                interval, interval_steps = {}, 0
        # end of an epoch (or of a partial last epoch)
        record = {k: float(v) / max(epoch_steps, 1) for k, v in sums.items()}
        record.update(epoch=epoch + 1, step=step, kl_weight=kl_weight(step - 1, beta, warmup_steps))
        sums = {}
        if on_epoch_end is not None:
            model.eval()
            with torch.no_grad():
                extra = on_epoch_end(epoch + 1, model)
            model.train()
            if extra:
                record.update({k: (float(v) if torch.is_tensor(v) and v.numel() == 1 else v) for k, v in extra.items()})
        history.epochs.append(record)
        history.seconds += time.perf_counter() - start_time
        start_time = time.perf_counter()
        if mode == "lines":
            names = {"elbo": "elbo", "log_px_z": "log p(x|z)", "kl": "kl"}
            shown = "  ".join(f"{names[k]} {record[k]:9.2f}" for k in names if k in record)
            print(f"epoch {epoch + 1:3d}/{math.ceil(total / per_epoch)}  step {step:6d}  {shown}", flush=True)
        save()
    if bar is not None:
        bar.close()
    model.eval()
    return history


def _adam(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where this torch supports it on the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
