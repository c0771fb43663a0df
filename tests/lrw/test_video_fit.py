"""fitting/video.py: the video fit (shared identity, smoothed camera) and its helpers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fitting.video import VideoFitOptions, VideoFitter, fill_missing, gaussian_smooth, smooth_cameras


def _slow_smooth(x, sigma):
    """Reference: per frame, the renormalised Gaussian over every frame within 3 sigma."""
    F = len(x)
    r = int(np.ceil(3 * sigma))
    out = np.zeros_like(x, dtype=np.float64)
    for f in range(F):
        wsum = 0.0
        for g in range(F):
            if abs(g - f) <= r:
                w = np.exp(-0.5 * ((g - f) / sigma) ** 2)
                out[f] += w * x[g]
                wsum += w
        out[f] /= wsum
    return out


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_gaussian_smooth_against_slow_reference(sigma):
    x = np.random.default_rng(0).normal(size=(13, 4))
    np.testing.assert_allclose(gaussian_smooth(x, sigma), _slow_smooth(x, sigma), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gaussian_smooth(np.full((9, 2), 3.5), sigma), 3.5)     # constants stay
    assert np.array_equal(gaussian_smooth(x, 0), x)


def test_smooth_cameras_unwraps_angles():
    cam = np.zeros((6, 7))
    cam[:, 2] = [3.1, -3.1, 3.1, -3.1, 3.1, -3.1]             # roll across +-pi: nearly constant
    cam[:, 5] = 100.0
    out = smooth_cameras(cam, 2.0)
    assert np.all(np.abs(np.abs(out[:, 2]) - 3.1) < 0.1)     # not averaged to 0
    np.testing.assert_allclose(out[:, 5], 100.0)


def test_fill_missing_interpolates():
    lm = np.zeros((5, 68, 2))
    lm[:, :, 0] = np.arange(5)[:, None] * 10.0
    valid = np.array([True, False, False, True, True])
    lm_bad = lm.copy()
    lm_bad[1:3] = 1e6
    np.testing.assert_allclose(fill_missing(lm_bad, valid), lm)
    with pytest.raises(ValueError):
        fill_missing(lm, np.zeros(5, bool))


def _video(model, F=10, seed=0, yaw=0.2):
    from render.camera import make_camera, project

    rng = np.random.default_rng(seed)
    p_id = rng.normal(size=model.n_id).clip(-2, 2)
    t = np.arange(F)
    p_exp = np.zeros((F, model.n_exp))
    for k in range(model.n_exp):
        p_exp[:, k] = rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 6))
    cam = np.tile(make_camera(0.05, yaw, 0.02, 100.0, 100.0, 70.0, 0.0), (F, 1))
    lm = np.stack([project(model.landmarks_3d(p_id.astype(np.float32), p_exp[f].astype(np.float32)), cam[f])
                   for f in range(F)])
    return p_id, p_exp, cam, lm


def test_video_fit_shares_identity_and_recovers_expression():
    from fitting.fit import FitOptions, LandmarkFitter
    from tests.fitting.fit_helpers import tiny_model

    model = tiny_model(K=8, E=6)
    p_id, p_exp, cam, lm = _video(model, F=12)
    rel = lambda a, b: float(np.mean(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))  # noqa: E731
    fo = FitOptions(sigma=0.003, contour="fixed", prior_exp=0.3)
    res = VideoFitter(model, fo, VideoFitOptions(smooth_camera=2.0)).fit(lm)             # exact landmarks
    assert res.p_id.shape == (8,) and res.p_exp.shape == (12, 6) and res.camera.shape == (12, 7)
    assert res.p_id_frames.shape == (12, 8)
    assert rel(res.p_exp, p_exp) < 0.1, rel(res.p_exp, p_exp)
    assert np.abs(res.camera[:, 1] - cam[:, 1]).max() < 0.02
    assert float(np.median(res.fit_error)) < 0.005
    # noisy landmarks: one identity for the video beats an identity per frame
    noisy = lm + np.random.default_rng(1).normal(scale=0.15, size=lm.shape)
    res = VideoFitter(model, fo, VideoFitOptions(smooth_camera=2.0)).fit(noisy)
    per_frame = LandmarkFitter(model, fo).fit(noisy)
    e_video, e_frame = rel(res.p_exp, p_exp), rel(per_frame.p_exp, p_exp)
    assert e_video < e_frame - 0.01, (e_video, e_frame)
    assert np.ptp(res.camera[:, 1]) < np.ptp(per_frame.camera[:, 1])          # smoothed camera: steadier yaw


def test_video_fit_with_missing_frames():
    from fitting.fit import FitOptions
    from tests.fitting.fit_helpers import tiny_model

    model = tiny_model(K=8, E=6)
    p_id, p_exp, cam, lm = _video(model, F=10, seed=3)
    valid = np.ones(10, bool)
    valid[[2, 7]] = False
    lm_holes = lm.copy()
    lm_holes[~valid] = 0.0                                      # what a failed detection leaves
    fo = FitOptions(sigma=0.01, contour="fixed")
    res = VideoFitter(model, fo, VideoFitOptions(smooth_camera=1.0)).fit(lm_holes, valid)
    assert np.isfinite(res.p_exp).all()
    assert float(np.max(res.fit_error)) < 0.1                   # the holes took their neighbours' landmarks
    assert np.abs(res.camera[:, 5] - 70.0).max() < 3.0
