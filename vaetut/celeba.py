"""CelebA faces as one in-memory tensor, through ``torchvision.datasets.CelebA``.

Paper: Mittas, *Variational Autoencoders*, §3.4 (Figures 4-10: beta-VAEs with 10,
128 and 256 latents on CelebA, 64x64). Used by the book chapter "Experiments and
limitations", which runs on a machine that has the data (see its CelebA section).

**Which crop.** The aligned-and-cropped CelebA images (``img_align_celeba``) are
178 wide and 218 high, with the eyes at a fixed height. As in the usual 64x64
VAE setting (the 148-pixel centre crop much public beta-VAE code uses on CelebA),
the loader keeps the central 148x148 square, which holds the face from the
forehead to the chin, and resizes it to ``size x size`` (64 by default) with PIL's
antialiased bilinear filter. Nothing is flipped or normalised: pixels are floats in
[0, 1], like :func:`vaetut.data.load_mnist`.

**Where the files go.** ``root/celeba/`` must hold what torchvision's CelebA reads::

    root/celeba/img_align_celeba/000001.jpg ... 202599.jpg   (from img_align_celeba.zip)
    root/celeba/list_eval_partition.txt    (0 train, 1 valid, 2 test)
    root/celeba/list_attr_celeba.txt
    root/celeba/identity_CelebA.txt
    root/celeba/list_bbox_celeba.txt
    root/celeba/list_landmarks_align_celeba.txt

``root`` defaults to ``VAETUT_DATA`` (:func:`vaetut.config.data_root`).
torchvision can download them (``download=True``), but its download goes through
Google Drive, which often refuses with a quota error; fetching the files by hand
from the CelebA web page (or a mirror) and unzipping them there is the reliable path.

**Speed.** The JPEGs of a split are decoded once; the uint8 tensor is then cached in
``root/celeba/vaetut-<split>-<size>px-crop<crop>.pt`` (written atomically), so
later loads take seconds. The training split is 162,770 images: 2 GB as uint8 in
the cache, 8 GB as the float32 tensor returned, so pass ``limit`` on small machines.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torchvision import transforms
from torchvision.datasets import CelebA
from torchvision.datasets.utils import check_integrity

from .config import data_root
from .data import DataNotFoundError
from .distributions import check_count

__all__ = ["load_celeba", "CELEBA_FILES", "CELEBA_SPLITS", "CELEBA_URL"]

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
#: The text files torchvision's CelebA reads, besides the image folder.
CELEBA_FILES = (
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)
IMAGE_FOLDER = "img_align_celeba"
#: Split name -> its code in list_eval_partition.txt, and its size in the full data set.
CELEBA_SPLITS = {"train": (0, 162_770), "valid": (1, 19_867), "test": (2, 19_962)}
ALIGNED_SIZE = (178, 218)  # width, height of an img_align_celeba image


def load_celeba(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    size: int = 64,
    crop: int = 148,
    limit: int | None = None,
    download: bool = False,
    verify: bool = True,
    workers: int | None = None,
) -> Tensor:
    """Load a CelebA split as one float tensor.

    Args:
        split: ``"train"`` (162,770 images), ``"valid"`` (19,867) or ``"test"`` (19,962),
            as listed in ``list_eval_partition.txt``.
        root: folder that holds ``celeba/``; default ``VAETUT_DATA``.
        size: side of the returned square images (64 in the paper).
        crop: side of the central square cut from each 178x218 image before resizing.
        limit: keep the first ``limit`` images of the split (in the partition file's order).
        download: try torchvision's Google Drive download first (often fails; see above).
        verify: check the MD5 sums of the text files, as torchvision does (catches a
            truncated download); turn off only for a hand-made folder.
        workers: processes that decode JPEGs the first time; default: up to 8 for
            large requests, none for small ones.

    Returns:
        ``x``: ``[N, 3, size, size]`` float32 in [0, 1].

    Raises:
        DataNotFoundError: files are missing, truncated or partly extracted; the
            message says which and where to put them.
    """
    if split not in CELEBA_SPLITS:
        raise ValueError(f"split must be one of {tuple(CELEBA_SPLITS)}, got {split!r}")
    size, crop = check_count(size, "size"), check_count(crop, "crop")
    if crop > min(ALIGNED_SIZE):
        raise ValueError(f"crop must be at most {min(ALIGNED_SIZE)} (the aligned images are 178x218), got {crop}")
    limit = None if limit is None else check_count(limit, "limit")
    root = Path(root if root is not None else data_root()).expanduser()
    folder = root / "celeba"

    if download:
        _download(root, split)
    _check_files(folder, verify)
    names = _split_names(folder, split)  # file names of the split, in order
    n = len(names) if limit is None else min(limit, len(names))
    key = hashlib.sha1("\n".join(names).encode()).hexdigest()
    cache = folder / f"vaetut-{split}-{size}px-crop{crop}.pt"

    images = _read_cache(cache, key, n)
    if images is None:
        _check_images(folder, names[:n], split)
        images = _decode(root, split, names[:n], size, crop, workers)
        _write_cache(cache, {"x": images, "names_sha1": key, "split": split, "size": size, "crop": crop})
    return images[:n].float().div_(255.0)  # [N, 3, size, size]


# ------------------------------------------------------------------ checks
def _instructions(folder: Path) -> str:
    listing = "\n".join(
        [f"    {folder / IMAGE_FOLDER}/000001.jpg ... 202599.jpg   (unzip img_align_celeba.zip here)"]
        + [f"    {folder / name}" for name in CELEBA_FILES]
    )
    return (
        f"Place the CelebA files like this:\n{listing}\n"
        "torchvision's download (load_celeba(download=True)) fetches them from Google Drive, which "
        "often fails with a quota error ('too many users have viewed or downloaded this file'); the "
        f"reliable path is to download them by hand from {CELEBA_URL} ('Align&Cropped Images' and the "
        "annotation and evaluation lists) or a mirror, and unzip them there. Or point VAETUT_DATA, or "
        "root=, at a folder that already holds celeba/."
    )


def _check_files(folder: Path, verify: bool) -> None:
    """Raise DataNotFoundError unless the image folder and the five text files are there (and intact)."""
    missing = [name for name in CELEBA_FILES if not (folder / name).is_file()]
    if not (folder / IMAGE_FOLDER).is_dir():
        missing.insert(0, IMAGE_FOLDER + "/")
    if missing:
        what = "CelebA was not found" if len(missing) == len(CELEBA_FILES) + 1 else "CelebA is incomplete"
        raise DataNotFoundError(f"{what} in {folder}: missing {', '.join(missing)}.\n" + _instructions(folder))
    if verify:
        md5 = {filename: digest for _, digest, filename in CelebA.file_list}
        bad = [name for name in CELEBA_FILES if name in md5 and not check_integrity(str(folder / name), md5[name])]
        if bad:
            raise DataNotFoundError(
                f"CelebA in {folder} looks corrupted or partly downloaded: {', '.join(bad)} "
                "failed the MD5 check torchvision uses. Download those files again.\n" + _instructions(folder)
            )


def _split_names(folder: Path, split: str) -> list[str]:
    code, _ = CELEBA_SPLITS[split]
    names = []
    with open(folder / "list_eval_partition.txt") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[1] == str(code):
                names.append(parts[0])
    if not names:
        raise DataNotFoundError(
            f"{folder / 'list_eval_partition.txt'} lists no image for split {split!r} (code {code}); "
            "the file is probably truncated.\n" + _instructions(folder)
        )
    return names


def _check_images(folder: Path, names: list[str], split: str) -> None:
    present = set(os.listdir(folder / IMAGE_FOLDER))
    missing = [name for name in names if name not in present]
    if missing:
        raise DataNotFoundError(
            f"{len(missing)} of the {len(names)} {split!r} images wanted are missing from "
            f"{folder / IMAGE_FOLDER} (for example {missing[0]}): the zip was probably only partly "
            "extracted. Unzip img_align_celeba.zip there again.\n" + _instructions(folder)
        )


def _download(root: Path, split: str) -> None:
    try:
        CelebA(str(root), split=split, target_type=[], download=True)
    except Exception as err:  # quota pages, network errors and a missing gdown come in many types
        raise DataNotFoundError(
            f"torchvision could not download CelebA ({type(err).__name__}: {err}).\n"
            + _instructions(root / "celeba")
        ) from None


# ------------------------------------------------------------------ decoding and cache
def _rgb(image):
    return image.convert("RGB")


def _stack(batch: list) -> Tensor:
    return torch.stack([image for image, _ in batch])  # [b, 3, size, size]


class _CheckedCelebA(CelebA):
    """torchvision's CelebA without its own file check: :func:`_check_files` has done it,
    with clearer errors (and can be told to skip the MD5 sums of a hand-made folder)."""

    def _check_integrity(self) -> bool:
        return True


def _decode(root: Path, split: str, names: list[str], size: int, crop: int, workers: int | None) -> Tensor:
    """Decode, centre-crop and resize ``names`` through torchvision: ``[N, 3, size, size]`` uint8."""
    transform = transforms.Compose(
        [
            transforms.Lambda(_rgb),
            transforms.CenterCrop(crop),  # the central crop x crop square of 178 x 218
            transforms.Resize(size, antialias=True),
            transforms.PILToTensor(),  # [3, size, size] uint8
        ]
    )
    ds = _CheckedCelebA(str(root), split=split, target_type=[], transform=transform)
    if list(ds.filename[: len(names)]) != names:
        raise RuntimeError(
            "torchvision's CelebA listed the split's files in another order than list_eval_partition.txt"
        )
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if len(names) > 2000 else 0
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, range(len(names))), batch_size=256, num_workers=workers, collate_fn=_stack
    )
    return torch.cat(list(loader))  # [N, 3, size, size]


def _read_cache(path: Path, key: str, n: int) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as err:  # a damaged cache is rebuilt, not fatal
        warnings.warn(f"ignoring the unreadable CelebA cache {path} ({err}); decoding the images again", stacklevel=2)
        return None
    if blob.get("names_sha1") != key or len(blob["x"]) < n:
        return None  # other files, or fewer images than wanted: decode again
    return blob["x"]


def _write_cache(path: Path, blob: dict) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written cache."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:  # a read-only data folder: work without the cache
        warnings.warn(f"could not write the CelebA cache {path} ({err}); the next load will decode again", stacklevel=2)
