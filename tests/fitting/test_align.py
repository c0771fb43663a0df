"""Similarity alignment against a scipy least-squares reference; crops map points as stored."""
from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from fitting.align import (apply_affine, invert_affine, reference_shape, similarity_transform,
                           warp_crop)

from tests.fitting.fit_helpers import tiny_model


def test_similarity_transform_matches_least_squares_reference():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, size=(68, 2))
    th, s, t = 0.4, 0.37, np.array([12.0, -5.0])
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    dst = s * src @ R.T + t + rng.normal(scale=2.0, size=src.shape)
    A = similarity_transform(src, dst)

    def res(z):
        a, b, tx, ty = z
        M = np.array([[a, -b, tx], [b, a, ty]])
        return (apply_affine(M, src) - dst).reshape(-1)
    ref = least_squares(res, np.array([1.0, 0, 0, 0])).x
    np.testing.assert_allclose(A, [[ref[0], -ref[1], ref[2]], [ref[1], ref[0], ref[3]]], atol=1e-6)
    np.testing.assert_allclose(apply_affine(invert_affine(A), apply_affine(A, src)), src, atol=1e-9)


def test_similarity_transform_never_reflects():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 1, size=(20, 2))
    A = similarity_transform(src, src * np.array([-1.0, 1.0]))
    assert np.linalg.det(A[:, :2]) > 0


def test_reference_shape_fits_the_crop():
    m = tiny_model()
    ref = reference_shape(m.mean_shape[m.landmarks], 128)
    assert ref.min() > 0 and ref.max() < 128
    assert ref[36:42, 1].mean() < ref[48:68, 1].mean()          # eyes above the mouth (v down)
    assert ref[36:42, 0].mean() < ref[42:48, 0].mean()          # iBUG left-eye points on image left


def test_warp_crop_moves_a_bright_dot_where_align_maps_it():
    for size_in, scale in ((400, 0.3), (100, 1.5), (1000, 0.1)):
        img = np.zeros((size_in, size_in, 3), np.uint8)
        pt = np.array([0.61 * size_in, 0.37 * size_in])
        r = max(2, int(3 / scale))
        i, j = int(pt[1]), int(pt[0])
        img[i - r:i + r, j - r:j + r] = 255
        centre = np.array([j, i], float)                       # corner-origin centre of the square
        A = similarity_transform(np.array([[0, 0], [1, 0.2]]) * size_in,
                                 np.array([[0, 0], [1, 0.2]]) * size_in * scale)
        A[:, 2] += 5.0
        crop = warp_crop(img, A, 128).astype(float)[..., 0]
        vv, uu = np.mgrid[0:128, 0:128] + 0.5
        got = np.array([(uu * crop).sum(), (vv * crop).sum()]) / crop.sum()
        np.testing.assert_allclose(got, apply_affine(A, centre), atol=0.6)
