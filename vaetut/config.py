"""Run settings shared by every chapter: quick or full mode, budgets, device, seed.

The one place where the environment is read:

* ``VAETUT_MODE``: ``full`` (default; what the published book shows) or ``quick``
  (what the tests run: fewer epochs, less data, the same code paths).
* ``VAETUT_SCALE``: a number (default 1) that multiplies the full-mode budgets
  (epochs, steps, evaluation sizes) on a machine faster than the 2-core CPU the
  book was written on, for example ``VAETUT_SCALE=5`` on a GPU.
* ``VAETUT_DATA``: the folder that holds ``MNIST/raw`` (see :mod:`vaetut.data`).
"""

from __future__ import annotations

import os
import platform
import random
import time
from typing import TypeVar

import numpy as np
import torch

__all__ = ["mode", "is_quick", "budget", "get_device", "set_seed", "run_info", "data_root", "ChapterRun"]

T = TypeVar("T", int, float)

_MODES = ("quick", "full")


def mode() -> str:
    """``"quick"`` or ``"full"``, from ``VAETUT_MODE`` (default ``"full"``)."""
    value = os.environ.get("VAETUT_MODE", "full").strip().lower() or "full"
    if value not in _MODES:
        raise ValueError(f"VAETUT_MODE must be 'quick' or 'full', got {value!r}")
    return value


def is_quick() -> bool:
    return mode() == "quick"


def scale() -> float:
    """The full-mode budget multiplier ``VAETUT_SCALE`` (default 1)."""
    raw = os.environ.get("VAETUT_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"VAETUT_SCALE must be a positive number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"VAETUT_SCALE must be a positive number, got {raw!r}")
    return value


def budget(quick: T, full: T, *, cap: T | None = None) -> T:
    """The budget for the current mode.

    In quick mode returns ``quick``; in full mode ``full`` times ``VAETUT_SCALE``
    (rounded for integers), limited to ``cap`` when given (for example the size of
    a data set).
    """
    factor = scale()  # read (and checked) in both modes, so a typo is never silently ignored
    if is_quick():
        return quick
    value = full * factor
    value = type(full)(round(value)) if isinstance(full, int) else value
    return min(value, cap) if cap is not None else value


def get_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks cuda, then mps, then cpu; anything else is passed to torch."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def data_root() -> str:
    """The data folder: ``VAETUT_DATA`` or ``~/.cache/vaetut/data``."""
    return os.path.expanduser(os.environ.get("VAETUT_DATA") or "~/.cache/vaetut/data")


def run_info() -> str:
    """One line that says what produced a chapter's outputs: mode, scale, hardware, torch."""
    device = get_device()
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    sc = scale()
    return (
        f"mode={mode()}" + (f" (scale {sc:g})" if sc != 1 and not is_quick() else "")
        + f", device={device.type} ({hw}), torch {torch.__version__}"
    )


class ChapterRun:
    """Says what produced a chapter's outputs: print at the start, and the time at the end.

    Example (first and last code cells of a chapter)::

        run = ChapterRun()   # prints mode, device and torch version
        ...
        run.finish()         # prints the same line with the elapsed time
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        print(run_info(), flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def finish(self) -> str:
        line = f"outputs produced in {self.elapsed() / 60:.1f} min: {run_info()}"
        print(line, flush=True)
        return line


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
