"""MIG: information measures against brute force, and the score on representations we understand."""

import math
from collections import Counter

import pytest
import torch

from vaetut.disentanglement import discretize, entropy, mig, mutual_information
from vaetut.shapes import FACTOR_SIZES


def _brute_mi(a, b):
    n = len(a)
    pa, pb, pab = Counter(a.tolist()), Counter(b.tolist()), Counter(zip(a.tolist(), b.tolist()))
    return sum(c / n * math.log((c / n) / (pa[i] / n * pb[j] / n)) for (i, j), c in pab.items())


def test_entropy_and_mutual_information_match_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(5, (400,), generator=g)
    b = (a + torch.randint(3, (400,), generator=g)) % 6  # dependent on a
    assert abs(mutual_information(a, b).item() - _brute_mi(a, b)) < 1e-12
    p = torch.bincount(a).double() / 400
    assert abs(entropy(a).item() + (p * p.log()).sum().item()) < 1e-12
    # I(a; a) = H(a), I(a; b) = I(b; a)
    assert abs(mutual_information(a, a).item() - entropy(a).item()) < 1e-12
    assert abs(mutual_information(a, b).item() - mutual_information(b, a).item()) < 1e-12


def test_discretize_uses_equal_width_bins_between_min_and_max():
    z = torch.tensor([[0.0, 5.0], [0.24, 5.0], [0.26, 5.0], [0.99, 5.0], [1.0, 5.0]])
    codes = discretize(z, 4)
    assert codes[:, 0].tolist() == [0, 0, 1, 3, 3]
    assert codes[:, 1].tolist() == [0] * 5  # a constant unit carries no information
    # invariant to shifting and scaling a unit
    w = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(discretize(w, 7), discretize(3.0 * w - 2.0, 7))


@pytest.fixture(scope="module")
def factors():
    # the factor draw of make_shapes (independent, uniform on each grid) without drawing the images
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(k, (8000,), generator=g) for k in FACTOR_SIZES], 1)  # [N, 5]


def test_mig_of_the_ground_truth_is_near_one(factors):
    # with at least as many bins as factor values, each bin holds one value: I(z_k; v_k) = H(v_k)
    result = mig(factors.double(), factors, n_bins=max(FACTOR_SIZES))
    torch.testing.assert_close(result.mi.diagonal(), result.entropy)
    assert result.best.tolist() == [0, 1, 2, 3, 4]
    # the rest is the plug-in bias of I between independent factors, about 39*31/(2N) nats at most
    assert 0.97 < result.score.item() <= 1.0
    # shifting and scaling the units changes nothing
    assert abs(mig(5 * factors.double() - 3, factors, n_bins=40).score.item() - result.score.item()) < 1e-12


def test_mig_of_noise_is_near_zero(factors):
    z = torch.randn(len(factors), 10, generator=torch.Generator().manual_seed(2))
    result = mig(z, factors)
    assert 0.0 <= result.score.item() < 0.02
    assert result.mi.max() < 0.06  # bias of 19*39/(2N) nats at most


def test_mig_ignores_the_order_of_units_and_penalises_duplicates(factors):
    truth = factors.double()
    base = mig(truth, factors, n_bins=40)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = mig(truth[:, perm], factors, n_bins=40)
    assert abs(permuted.score.item() - base.score.item()) < 1e-12
    assert torch.equal(perm[permuted.best], base.best)
    # a factor held by two units leaves no gap for that factor: the score drops by its share
    duplicated = mig(torch.cat([truth, truth[:, :1]], 1), factors, n_bins=40)
    assert duplicated.per_factor[0].abs() < 1e-12
    torch.testing.assert_close(duplicated.per_factor[1:], base.per_factor[1:])
    assert abs(duplicated.score.item() - (base.score.item() - base.per_factor[0].item() / 5)) < 1e-12


def test_mig_drops_when_two_factors_are_mixed(factors):
    # units x + y and x - y each know about both positions: an entangled representation
    truth = factors.double()
    mixed = truth.clone()
    mixed[:, 3], mixed[:, 4] = truth[:, 3] + truth[:, 4], truth[:, 3] - truth[:, 4]
    base, worse = mig(truth, factors), mig(mixed, factors)
    assert worse.per_factor[3:].max() < 0.2 < base.per_factor[3:].min()
    assert worse.score < base.score - 0.2


def test_bad_inputs_say_what_to_do(factors):
    z = torch.randn(len(factors), 3)
    with pytest.raises(ValueError, match="integer indices"):
        mig(z, factors.float())
    with pytest.raises(ValueError, match="D >= 2"):
        mig(z[:, :1], factors)
    with pytest.raises(ValueError, match="same N"):
        mig(z[:10], factors)
    with pytest.raises(ValueError, match="single value"):
        mig(z, torch.cat([factors, torch.zeros(len(factors), 1, dtype=torch.long)], 1))
    with pytest.raises(ValueError, match="n_bins"):
        discretize(z, 1)
    with pytest.raises(ValueError, match="discretize"):
        entropy(torch.rand(10))
