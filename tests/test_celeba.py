"""load_celeba on a tiny folder in CelebA's layout, built here (the real data set
cannot be downloaded on the test machines). The reference for the pixels is PIL
itself: open, crop the central 148x148 square, resize with its bilinear filter."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaetut.celeba import CELEBA_FILES, load_celeba
from vaetut.data import DataNotFoundError

# split code of each fake image: interleaved, so the loader must really select
PARTITION = [0, 0, 1, 0, 2, 0, 1, 0, 2, 0]


def build_celeba(root: Path, partition=PARTITION) -> Path:
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    for i, name in enumerate(names):
        # smooth random colours plus a bright square whose place differs per image
        pixels = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        pixels[40 + 10 * i : 80 + 10 * i, 30:90] = 255
        Image.fromarray(pixels).save(images / name, quality=95)
    rows = lambda values: "".join(f"{n} {' '.join(map(str, v))}\n" for n, v in zip(names, values))  # noqa: E731
    n = len(names)
    (folder / "list_eval_partition.txt").write_text(rows([[p] for p in partition]))
    (folder / "identity_CelebA.txt").write_text(rows([[i % 3 + 1] for i in range(n)]))
    (folder / "list_attr_celeba.txt").write_text(
        f"{n}\n5_o_Clock_Shadow Smiling\n" + rows([[1, -1] if i % 2 else [-1, 1] for i in range(n)])
    )
    (folder / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + rows([[10, 20, 100, 120]] * n)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n" + rows([[69, 109, 106, 113, 77, 142, 73, 152, 108, 154]] * n)
    )
    return folder


def reference(folder: Path, name: str, size: int = 64, crop: int = 148) -> torch.Tensor:
    """PIL's own centre crop and bilinear resize, [3, size, size] in [0, 1]."""
    image = Image.open(folder / "img_align_celeba" / name).convert("RGB")
    left, top = round((178 - crop) / 2), round((218 - crop) / 2)
    image = image.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture
def celeba_root(tmp_path):
    build_celeba(tmp_path)
    return tmp_path


@pytest.mark.parametrize("split, codes", [("train", 0), ("valid", 1), ("test", 2)])
def test_loads_the_split_centre_cropped_in_partition_order(celeba_root, split, codes):
    x = load_celeba(split, root=celeba_root, verify=False)
    names = [f"{i + 1:06d}.jpg" for i, p in enumerate(PARTITION) if p == codes]
    assert x.shape == (len(names), 3, 64, 64) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    expected = torch.stack([reference(celeba_root / "celeba", name) for name in names])
    torch.testing.assert_close(x, expected, atol=0.5 / 255, rtol=0)  # the uint8 grid, exactly


def test_size_crop_and_limit(celeba_root):
    x = load_celeba("train", root=celeba_root, size=32, crop=120, limit=2, verify=False)
    assert x.shape == (2, 3, 32, 32)
    folder = celeba_root / "celeba"
    torch.testing.assert_close(x[1], reference(folder, "000002.jpg", size=32, crop=120), atol=0.5 / 255, rtol=0)
    # the bright square sits in different places: the images are not all the same
    assert (x[0] - x[1]).abs().max() > 0.5


def test_worker_processes_decode_the_same_pixels(tmp_path):
    build_celeba(tmp_path)
    x = load_celeba("train", root=tmp_path, verify=False, workers=2)
    expected = torch.stack([reference(tmp_path / "celeba", f"{i + 1:06d}.jpg") for i, p in enumerate(PARTITION) if p == 0])
    torch.testing.assert_close(x, expected, atol=0.5 / 255, rtol=0)


def test_second_load_comes_from_the_cache_written_atomically(celeba_root, monkeypatch):
    folder = celeba_root / "celeba"
    first = load_celeba("train", root=celeba_root, verify=False)
    caches = sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".tmp"))
    assert caches == ["vaetut-train-64px-crop148.pt"]  # no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("the images were decoded again")

    monkeypatch.setattr("PIL.Image.open", no_decoding)
    torch.testing.assert_close(load_celeba("train", root=celeba_root, verify=False), first)
    torch.testing.assert_close(load_celeba("train", root=celeba_root, limit=3, verify=False), first[:3])


def test_cache_is_rebuilt_when_too_small_or_for_other_files(celeba_root):
    folder = celeba_root / "celeba"
    small = load_celeba("train", root=celeba_root, limit=2, verify=False)
    full = load_celeba("train", root=celeba_root, verify=False)  # the cache had only 2 images
    assert len(small) == 2 and len(full) == PARTITION.count(0)
    torch.testing.assert_close(full[:2], small)
    # a different partition file means different images: the cache must not be reused
    lines = (folder / "list_eval_partition.txt").read_text().splitlines()
    lines[2] = lines[2].replace(" 1", " 0")  # 000003.jpg moves from valid to train
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    again = load_celeba("train", root=celeba_root, verify=False)
    assert len(again) == PARTITION.count(0) + 1
    torch.testing.assert_close(again[2], reference(folder, "000003.jpg"), atol=0.5 / 255, rtol=0)


# ------------------------------------------------------------------ errors
def test_missing_data_says_what_to_place_where_and_warns_about_google_drive(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_celeba(root=tmp_path)
    message = str(info.value)
    assert "CelebA was not found" in message
    for name in ("img_align_celeba", *CELEBA_FILES):
        assert str(tmp_path / "celeba" / name) in message
    assert "Google Drive" in message and "quota" in message and "by hand" in message
    assert isinstance(info.value, FileNotFoundError)


def test_one_missing_text_file_is_named(celeba_root):
    (celeba_root / "celeba" / "list_bbox_celeba.txt").unlink()
    with pytest.raises(DataNotFoundError, match="incomplete in .*: missing list_bbox_celeba.txt\\."):
        load_celeba(root=celeba_root, verify=False)


def test_partly_extracted_images_are_reported(celeba_root):
    (celeba_root / "celeba" / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(DataNotFoundError, match="1 of the 6 'train' images .* 000004.jpg.*partly"):
        load_celeba("train", root=celeba_root, verify=False)
    # the other splits do not need that image
    assert len(load_celeba("test", root=celeba_root, verify=False)) == 2


def test_truncated_text_files_fail_the_md5_check(celeba_root):
    # our hand-made files cannot match the real checksums, exactly like a truncated download
    with pytest.raises(DataNotFoundError, match="corrupted or partly downloaded: list_eval_partition.txt"):
        load_celeba(root=celeba_root)


def test_md5_check_passes_for_the_real_files(celeba_root, monkeypatch):
    # the check compares with torchvision's table: give it our files' sums and it passes
    from torchvision.datasets import CelebA

    folder = celeba_root / "celeba"
    table = [
        (fid, hashlib.md5((folder / name).read_bytes()).hexdigest() if name in CELEBA_FILES else md5, name)
        for fid, md5, name in CelebA.file_list
    ]
    monkeypatch.setattr(CelebA, "file_list", table)
    assert load_celeba("valid", root=celeba_root).shape == (2, 3, 64, 64)


def test_failed_download_falls_back_to_the_manual_instructions(tmp_path, monkeypatch):
    def quota(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr("torchvision.datasets.celeba.download_file_from_google_drive", quota)
    with pytest.raises(DataNotFoundError, match="(?s)could not download CelebA.*Too many users.*by hand"):
        load_celeba(root=tmp_path, download=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="validation"), "split must be one of"),
        (dict(size=0), "size must be a positive integer"),
        (dict(crop=200), "crop must be at most 178"),
        (dict(limit=0), "limit must be a positive integer"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_celeba(root=tmp_path, **kwargs)


def test_read_only_folder_still_loads(celeba_root, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.warns(UserWarning, match="could not write the CelebA cache"):
        x = load_celeba("test", root=celeba_root, verify=False)
    assert x.shape == (2, 3, 64, 64)
    assert not list((celeba_root / "celeba").glob("*.pt"))
