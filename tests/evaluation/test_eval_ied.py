"""IED against the explicit O((HW)^2) double sum of Wang et al. (2005)."""
import math

import numpy as np
import pytest

import evaluation
from evaluation.image_distance import ied_squared_sum


def ied_reference(x, y, sigma=1.0):
    """Naive d^2 = sum_ij g_ij (x_i - y_i)^T (x_j - y_j) over every pixel pair."""
    h, w, _ = x.shape
    pos = [(r, c) for r in range(h) for c in range(w)]
    d = (x - y).reshape(h * w, 3).astype(np.float64)
    total = 0.0
    for i, (ri, ci) in enumerate(pos):
        for j, (rj, cj) in enumerate(pos):
            dist2 = (ri - rj) ** 2 + (ci - cj) ** 2
            g = math.exp(-dist2 / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
            total += g * float(d[i] @ d[j])
    return total


@pytest.mark.parametrize("sigma", [1.0, 0.7, 2.5])
def test_ied_matches_double_sum(sigma):
    rng = np.random.default_rng(1)
    x, y = rng.random((6, 6, 3)), rng.random((6, 6, 3))
    ref = ied_reference(x, y, sigma)
    assert ied_squared_sum(x, y, sigma) == pytest.approx(ref, rel=1e-9)
    assert evaluation.ied(x, y, sigma) == pytest.approx(ref / 36, rel=1e-9)


def test_ied_non_square_and_batched():
    rng = np.random.default_rng(2)
    x, y = rng.random((3, 5, 7, 3)), rng.random((3, 5, 7, 3))
    got = evaluation.ied(x, y)
    assert got.shape == (3,)
    for b in range(3):
        assert got[b] == pytest.approx(ied_reference(x[b], y[b]) / 35, rel=1e-9)


def test_ied_properties():
    rng = np.random.default_rng(3)
    x = rng.random((16, 16, 3))
    assert evaluation.ied(x, x) == 0.0
    y = rng.random((16, 16, 3))
    assert evaluation.ied(x, y) == pytest.approx(evaluation.ied(y, x))
    # a constant offset c in every channel: d^2 ~ HW * 3 c^2 * (sum of the kernel ~ 1) inside
    v = evaluation.ied(np.zeros((64, 64, 3)), np.full((64, 64, 3), 0.1))
    assert 0.02 < v < 0.03
    assert isinstance(evaluation.ied(x, y), float)


def test_ied_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        evaluation.ied(np.zeros((4, 4, 3)), np.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match="uint8"):
        evaluation.ied(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        evaluation.ied(np.zeros((4, 4)), np.zeros((4, 4)))
