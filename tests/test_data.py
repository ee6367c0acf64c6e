"""MNIST loading: the real files, fixed binarization, and clear errors when the data is missing."""

import pytest
import torch

from vaetut import DataNotFoundError, load_mnist


def test_real_mnist_test_split():
    x, y = load_mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() == 1
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # MNIST's known first test labels


def test_train_split_class_counts():
    _, y = load_mnist("train")
    assert torch.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_fixed_binarization_is_reproducible_and_follows_intensities():
    a, _ = load_mnist("test", binarized=True, limit=500)
    b, _ = load_mnist("test", binarized=True, limit=500)
    c, _ = load_mnist("test", binarized=True, limit=500, seed=1)
    grey, _ = load_mnist("test", limit=500)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean() - grey.mean()) < 0.01  # E[Bernoulli(p)] = p


def test_missing_data_offline_says_what_to_put_where(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)MNIST/raw.*train-images-idx3-ubyte.*VAETUT_DATA"):
        load_mnist(root=tmp_path, download=False)


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv

    def offline(self):
        raise ConnectionError("no network")

    monkeypatch.setattr(tv.MNIST, "download", offline)
    with pytest.raises(DataNotFoundError, match="(?s)download failed.*no network"):
        load_mnist(root=tmp_path, download=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="limit"):
        load_mnist("test", limit=0)
