"""Entropy and mutual information against independent references (scipy, scikit-learn), and their properties."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import mutual_info_score

from infoprune.pruning.information import entropy, mutual_information, weighted_mutual_information
from tests.conftest import mi_by_hand


def joint_counts(f: np.ndarray, y: np.ndarray, bins: int, classes: int) -> torch.Tensor:
    """counts[c, b, k] of discretised values f (N x C) and labels y (N,), built with numpy."""
    out = np.zeros((f.shape[1], bins, classes), dtype=np.int64)
    for c in range(f.shape[1]):
        np.add.at(out[c], (f[:, c], y), 1)
    return torch.from_numpy(out)


@pytest.fixture
def discrete_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=3000)
    f = np.stack([rng.integers(0, 8, size=3000),                   # independent of y
                  (y * 3 + rng.integers(0, 2, size=3000)) % 8,     # informative
                  np.minimum(y, 3)], axis=1)                        # deterministic function of y
    return f, y


def test_mi_equals_sklearn_mutual_info_score(discrete_data):
    f, y = discrete_data
    mi = mutual_information(joint_counts(f, y, 8, 5))
    reference = [mutual_info_score(y, f[:, c]) for c in range(f.shape[1])]
    np.testing.assert_allclose(mi.numpy(), reference, atol=1e-9, rtol=0)


def test_entropy_equals_scipy(discrete_data):
    f, _ = discrete_data
    counts = torch.stack([torch.bincount(torch.from_numpy(f[:, c]), minlength=8) for c in range(3)])
    np.testing.assert_allclose(entropy(counts).numpy(), [scipy.stats.entropy(c) for c in counts.numpy()],
                               atol=1e-9, rtol=0)
    assert entropy(torch.tensor([[5, 0, 0]])).item() == 0.0
    assert entropy(torch.zeros(1, 4)).item() == 0.0


def test_mi_bounds(discrete_data):
    f, y = discrete_data
    counts = joint_counts(f, y, 8, 5)
    mi, h_f = mutual_information(counts), entropy(counts.sum(-1))
    assert (mi >= 0).all()
    assert (mi <= torch.minimum(h_f, torch.tensor(np.log(5.0), dtype=torch.float64)) + 1e-12).all()


def test_deterministic_channel_scores_maximum_and_random_channel_near_zero():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 500)
    f = np.stack([y, rng.integers(0, 4, size=y.size)], axis=1)
    mi = mutual_information(joint_counts(f, y, 4, 4))
    assert mi[0].item() == pytest.approx(np.log(4.0), abs=1e-12)  # = H(Y): the maximum possible
    assert mi[1].item() < 0.01
    shuffled = rng.permutation(y)
    assert mutual_information(joint_counts(f, shuffled, 4, 4))[0].item() < 0.01


def test_weighted_mi_with_unit_weights_is_mi_and_downweights_bins(discrete_data):
    f, y = discrete_data
    counts = joint_counts(f, y, 8, 5)
    ones = torch.ones(3, 8, dtype=torch.float64)
    torch.testing.assert_close(weighted_mutual_information(counts, ones), mutual_information(counts))
    half = weighted_mutual_information(counts, 0.5 * ones)
    torch.testing.assert_close(half, 0.5 * mutual_information(counts))
    # one weight per (channel, bin): the sum of w(f) p(f,y) log(p(f,y) / (p(f) p(y))), by hand in numpy
    weights = torch.rand(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = mi_by_hand(counts.double().numpy(), weights.numpy())
    np.testing.assert_allclose(weighted_mutual_information(counts, weights).numpy(), expected, rtol=1e-10)
