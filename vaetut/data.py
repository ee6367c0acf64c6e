"""MNIST as in-memory tensors, grey-level or binarized.

Images come through ``torchvision.datasets.MNIST`` from the folder named by the
environment variable ``VAETUT_DATA`` (default ``~/.cache/vaetut/data``; see
:func:`vaetut.config.data_root`), which must hold ``MNIST/raw`` in torchvision's
layout. The whole split is turned into one float tensor once (no per-item PIL
transforms), so training batches are plain indexing.

Binarized MNIST, as in the likelihood tables of Burda et al. (2016) and later:

* training: keep grey levels and resample binary pixels for every batch
  (``vaetut.train.fit(..., binarize=True)``, *dynamic* binarization);
* test: binarize once with a fixed seed (``load_mnist("test", binarized=True)``),
  so every model is scored on the same binary images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .config import data_root
from .distributions import check_count

__all__ = ["load_mnist", "DataNotFoundError", "MNIST_FILES"]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataNotFoundError(FileNotFoundError):
    """A data set is not on disk and could not be downloaded."""


def load_mnist(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    binarized: bool = False,
    seed: int = 0,
    limit: int | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load an MNIST split as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder holding ``MNIST/raw``; default ``VAETUT_DATA``.
        binarized: if True, pixels are drawn once as Bernoulli(intensity) with
            ``seed`` (the fixed binarization used for test sets).
        seed: seed of that binarization.
        limit: keep the first ``limit`` images (quick runs).
        download: let torchvision download the files when they are missing.

    Returns:
        ``x``: ``[N, 1, 28, 28]`` float32 in [0, 1] (0/1 when binarized);
        ``y``: ``[N]`` int64 digit labels.

    Raises:
        DataNotFoundError: the files are missing and could not be downloaded;
            the message says where to put them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    limit = None if limit is None else check_count(limit, "limit")
    root = Path(root if root is not None else data_root()).expanduser()
    try:
        from torchvision.datasets import MNIST
    except ImportError as err:  # pragma: no cover - torchvision is a dependency
        raise ImportError("load_mnist needs torchvision: pip install torchvision") from err

    try:
        ds = MNIST(str(root), train=(split == "train"), download=False)
    except RuntimeError as missing:
        if not download:
            raise DataNotFoundError(_missing_message(root, missing, tried_download=False)) from None
        try:
            ds = MNIST(str(root), train=(split == "train"), download=True)
        except Exception as err:  # network errors come in many types
            raise DataNotFoundError(_missing_message(root, err, tried_download=True)) from None

    images = ds.data if limit is None else ds.data[:limit]  # [N, 28, 28] uint8
    labels = ds.targets if limit is None else ds.targets[:limit]
    x = images.unsqueeze(1).float().div_(255.0)  # [N, 1, 28, 28]
    if binarized:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x, labels.long()


def _missing_message(root: Path, err: BaseException, tried_download: bool) -> str:
    raw = root / "MNIST" / "raw"
    how = (
        f"the download failed ({type(err).__name__}: {err})"
        if tried_download
        else "download=False was given"
    )
    return (
        f"MNIST was not found in {raw} and {how}.\n"
        f"Put the four files {', '.join(MNIST_FILES)} (uncompressed, or as .gz) into {raw}, "
        "or point the environment variable VAETUT_DATA at a folder that already holds MNIST/raw "
        "(for example: export VAETUT_DATA=/path/to/data). On a machine with internet access, "
        "load_mnist(download=True) fetches them through torchvision."
    )
