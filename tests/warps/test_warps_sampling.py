"""fitting.sampling: deterministic per (seed, key, k), in range, distribution shapes."""
import numpy as np
import pytest

from fitting.sampling import sample_expression, sample_expressions, select_keys


def test_deterministic_per_key_and_index():
    a = sample_expressions(0, "a/b.jpg", 4, 30)
    b = sample_expressions(0, "a/b.jpg", 4, 30)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[2], sample_expression(0, "a/b.jpg", 2, 30))
    assert not np.allclose(a[0], a[1])
    assert not np.allclose(a[0], sample_expression(1, "a/b.jpg", 0, 30))
    assert not np.allclose(a[0], sample_expression(0, "a/c.jpg", 0, 30))
    assert a.dtype == np.float32 and a.shape == (4, 30)


def test_uniform_covers_range():
    P = np.stack([sample_expression(0, f"k{i}", 0, 30) for i in range(200)])
    assert P.min() >= -1 and P.max() <= 1
    assert P.min() < -0.95 and P.max() > 0.95
    assert abs(P.mean()) < 0.05
    assert abs(P.std() - 1 / np.sqrt(3)) < 0.03


def test_normal_is_clipped_and_narrower():
    P = np.stack([sample_expression(0, f"k{i}", 0, 30, "normal", 0.8) for i in range(200)])
    assert P.min() >= np.float32(-0.8) and P.max() <= np.float32(0.8)
    assert abs(P.std() - 0.4) < 0.05


def test_bad_distribution():
    with pytest.raises(ValueError, match="distribution"):
        sample_expression(0, "k", 0, 3, "cauchy")


def test_select_keys_stable_subset():
    keys = [f"img{i:03d}.jpg" for i in range(50)]
    s = select_keys(keys, 10, seed=0)
    assert len(s) == 10 and s == sorted(s) and set(s) <= set(keys)
    assert s == select_keys(list(reversed(keys)), 10, seed=0)
    assert select_keys(keys, 100, 0) == keys
    # adding keys keeps the old chosen ones unless new ones rank earlier
    s2 = select_keys(keys + ["zz_new.jpg"], 11, seed=0)
    assert set(s) <= set(s2)
