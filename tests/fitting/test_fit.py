"""The batched landmark fitter against exact synthetic data and per-face scipy references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from fitting.fit import (FitOptions, LandmarkFitter, _contour_candidates, interocular,
                         rotation_to_angles, scaled_orthographic_camera)
from render.camera import camera_rotation, project

from tests.fitting.fit_helpers import synthetic_faces, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_rotation_to_angles_inverts_camera_rotation():
    rng = np.random.default_rng(0)
    ang = np.stack([rng.uniform(-1.2, 1.2, 50), rng.uniform(-1.4, 1.4, 50), rng.uniform(-1.2, 1.2, 50)], 1)
    cam = np.concatenate([ang, np.zeros((50, 2)), np.ones((50, 1)), np.zeros((50, 1))], 1)
    R = torch.as_tensor(camera_rotation(cam))
    p, y, r = rotation_to_angles(R)
    np.testing.assert_allclose(np.stack([p, y, r], 1), ang, atol=1e-9)


def test_scaled_orthographic_camera_recovers_exact_camera_and_ignores_zero_weights(model):
    pid, pex, cam, lm = synthetic_faces(model, 20, seed=3)
    X = model.landmarks_3d(pid.astype(np.float32), pex.astype(np.float32)).astype(np.float64)
    lm_bad = lm.copy()
    lm_bad[:, :5] += 40.0                                   # outliers with weight 0
    w = np.ones((20, 68))
    w[:, :5] = 0
    s, R, t = scaled_orthographic_camera(torch.as_tensor(X), torch.as_tensor(lm_bad), torch.as_tensor(w))
    np.testing.assert_allclose(s.numpy(), cam[:, 5], rtol=1e-5)
    np.testing.assert_allclose(R.numpy(), camera_rotation(cam), atol=1e-5)
    np.testing.assert_allclose(t.numpy(), cam[:, 3:5], atol=1e-3)


def test_fit_recovers_noise_free_parameters_with_weak_priors(model):
    pid, pex, cam, lm = synthetic_faces(model, 64, seed=4)
    f = LandmarkFitter(model, FitOptions(prior_id=1e-6, prior_exp=1e-6, sigma=0.01, contour="fixed",
                                         iterations=30, device="cpu"))
    r = f.fit(lm)
    assert r.p_exp.shape == (64, model.n_exp) and r.camera.shape == (64, 7)
    np.testing.assert_allclose(r.p_exp, pex, atol=2e-2)
    np.testing.assert_allclose(r.p_id, pid, atol=2e-2)
    np.testing.assert_allclose(r.camera[:, :6], cam[:, :6], rtol=1e-3, atol=2e-3)
    assert np.all(r.camera[:, 6] == 0)
    np.testing.assert_allclose(r.lm_fitted, lm, atol=0.05)
    assert r.fit_error.max() < 1e-3 and r.converged.all()


def _instance64(model, p_id, p_exp):
    """float64 model instance [N, 3] (model.instance computes in float32)."""
    flat = (model.mean.astype(np.float64)
            + model.U_id.astype(np.float64) @ (np.sqrt(model.ev_id.astype(np.float64)) * p_id)
            + model.U_exp.astype(np.float64) @ (np.sqrt(model.ev_exp.astype(np.float64)) * p_exp))
    return flat.reshape(-1, 3)


def _objective_residuals(model, lm, w, prior, sigma):
    """Residual vector of the fitter's objective E for one face (obviously-correct numpy):
    parameters z = [pitch, yaw, roll, tx, ty, log s, p_id, p_exp]."""
    k, e = model.n_id, model.n_exp
    Lm = model.landmarks
    iod_m = interocular(model.mean_shape[Lm])
    s_ref = interocular(lm) / iod_m

    def res(z):
        cam = np.concatenate([z[:5], [np.exp(z[5])], [0.0]])
        X = _instance64(model, z[6:6 + k], z[6 + k:6 + k + e])[Lm]
        d = (project(X, cam) - lm) * np.sqrt(w)[:, None] / (sigma * iod_m * s_ref)
        return np.concatenate([d.reshape(-1), np.sqrt(prior) * z[6:]])
    return res


def test_fit_matches_scipy_least_squares_reference_on_noisy_landmarks(model):
    pid, pex, cam, lm = synthetic_faces(model, 4, seed=5, max_yaw=0.4)
    lm = lm + np.random.default_rng(9).normal(scale=0.4, size=lm.shape)
    sigma, prior = 0.01, np.concatenate([np.full(model.n_id, 1.0), np.full(model.n_exp, 1.0)])
    f = LandmarkFitter(model, FitOptions(sigma=sigma, prior_id=1.0, prior_exp=1.0, contour="fixed", iterations=40,
                                         device="cpu"))
    r = f.fit(lm)
    w = np.ones(68)
    for i in range(4):
        res = _objective_residuals(model, lm[i], w, prior, sigma)
        z0 = np.concatenate([np.zeros(3), [lm[i, :, 0].mean(), lm[i, :, 1].mean()],
                             [np.log(cam[i, 5])], np.zeros(model.n_id + model.n_exp)])
        ref = least_squares(res, z0, method="lm", xtol=1e-12, ftol=1e-12, max_nfev=20000)
        ours = np.concatenate([r.camera[i, :5], [np.log(r.camera[i, 5])], r.p_id[i], r.p_exp[i]]).astype(np.float64)
        e_ours, e_ref = (res(ours) ** 2).sum(), (ref.fun ** 2).sum()
        # the alternation's camera step is an approximate minimiser: its objective is within 2%
        assert e_ours <= e_ref * 1.02 + 1e-6, (e_ours, e_ref)
        np.testing.assert_allclose(r.p_exp[i], ref.x[6 + model.n_id:], atol=0.05)


def test_shape_step_equals_scipy_regularised_least_squares(model):
    pid, pex, cam, lm = synthetic_faces(model, 3, seed=6)
    lm = lm + np.random.default_rng(2).normal(scale=1.0, size=lm.shape)
    w = np.random.default_rng(3).uniform(0.2, 1.0, size=(3, 68))
    opts = FitOptions(sigma=0.02, prior_id=0.5, prior_exp=2.0, contour="fixed", device="cpu")
    p = LandmarkFitter(model, opts).solve_shape(lm, cam, w)
    prior = np.concatenate([np.full(model.n_id, 0.5), np.full(model.n_exp, 2.0)])
    for i in range(3):
        res = _objective_residuals(model, lm[i], w[i], prior, 0.02)
        fixed = np.concatenate([cam[i, :5], [np.log(cam[i, 5])]])
        ref = least_squares(lambda q: res(np.concatenate([fixed, q])), np.zeros(len(prior)), method="lm",
                            xtol=1e-14, ftol=1e-14)
        np.testing.assert_allclose(p[i], ref.x, atol=1e-4)


def test_shape_step_shared_weights_and_jaw_paths_agree(model):
    """The fast algebra (shared weights: precomputed Gram terms; per-face jaw rows) gives the
    same normal equations as the general per-face path."""
    pid, pex, cam, lm = synthetic_faces(model, 5, seed=8)
    lm = lm + np.random.default_rng(4).normal(scale=1.0, size=lm.shape)
    opts = FitOptions(sigma=0.02, prior_id=0.5, prior_exp=2.0, contour="fixed", device="cpu")
    f = LandmarkFitter(model, opts)
    shared = f.solve_shape(lm, cam)                                  # all-ones weights: fast path
    w = np.ones((5, 68))
    w[0, 0] = 1.0 + 1e-12                                            # not shared: general path
    general = f.solve_shape(lm, cam, w)
    np.testing.assert_allclose(shared, general, atol=1e-8)
    R = torch.as_tensor(camera_rotation(cam))
    y = torch.as_tensor(lm)
    s, t = torch.as_tensor(cam[:, 5]), torch.as_tensor(cam[:, 3:5])
    s_ref = torch.as_tensor(interocular(lm) / f.model_iod)
    ones = torch.ones(5, 68, dtype=torch.float64)
    jaw = (f._mean_lm[:17].expand(5, -1, -1), f._basis_lm[:17].expand(5, -1, -1, -1))
    with_jaw = f._solve_shape(y, ones, s, R, t, jaw, s_ref).numpy()
    np.testing.assert_allclose(with_jaw, shared, atol=1e-8)


def test_fit_is_deterministic_and_batch_independent(model):
    _, _, _, lm = synthetic_faces(model, 10, seed=7)
    f = LandmarkFitter(model, FitOptions(device="cpu"))
    a, b = f.fit(lm), f.fit(lm)
    single = f.fit(lm[3:4])
    assert np.array_equal(a.p_exp, b.p_exp) and np.array_equal(a.camera, b.camera)
    np.testing.assert_allclose(single.p_exp[0], a.p_exp[3], atol=1e-6)
    split = LandmarkFitter(model, FitOptions(device="cpu", max_batch=3)).fit(lm)   # internal batches
    np.testing.assert_allclose(split.p_exp, a.p_exp, atol=1e-6)
    np.testing.assert_allclose(split.lm_fitted, a.lm_fitted, atol=1e-4)


def test_dynamic_contour_candidates_and_silhouette_choice(model):
    cand = _contour_candidates(model.mean, model.landmarks)
    V = model.mean_shape
    assert cand.shape[0] == 17 and np.all(cand[:, 0] == model.landmarks[:17])
    for j in (0, 3, 13, 16):
        c = cand[j]
        assert np.all(V[c, 0] * V[cand[j, 0], 0] > 0)                     # same side
        assert np.all(np.abs(V[c, 0]) <= abs(V[cand[j, 0], 0]) + 1e-9)    # inwards
    f = LandmarkFitter(model, FitOptions(contour="dynamic", device="cpu"))
    p = torch.zeros(1, model.n_id + model.n_exp, dtype=torch.float64)
    R0 = torch.eye(3, dtype=torch.float64)[None]
    X0, _ = f._landmark_geometry(p, R0)
    np.testing.assert_allclose(X0[0, :17].numpy(), V[model.landmarks[:17]], atol=1e-6)  # frontal: landmark vertices
    yaw = 0.7                               # turn the face: its +x side moves away from the viewer
    R = torch.as_tensor(camera_rotation(np.array([0, yaw, 0, 0, 0, 1, 0.0])))[None]
    X, _ = f._landmark_geometry(p, R)
    moved = np.linalg.norm(X[0, 9:17].numpy() - V[model.landmarks[9:17]], axis=1)
    assert moved.max() > 0                  # some right-side jaw points slid towards the silhouette
    xc = X[0, 9:17].numpy() @ R[0, 0].numpy()
    xc_fixed = V[model.landmarks[9:17]] @ R[0, 0].numpy()
    assert np.all(xc >= xc_fixed - 1e-12)   # the chosen point is at least as far out as the fixed vertex


def test_fit_handles_empty_batch_and_rejects_bad_shapes(model):
    f = LandmarkFitter(model, FitOptions(device="cpu"))
    r = f.fit(np.zeros((0, 68, 2)))
    assert r.p_exp.shape == (0, model.n_exp)
    with pytest.raises(ValueError):
        f.fit(np.zeros((2, 60, 2)))


def test_default_fit_reaches_the_scipy_minimum_of_its_objective(model):
    """3 alternations + 6 joint Levenberg-Marquardt steps (the defaults) land on the exact
    minimiser of the MAP objective that a generic LM solver finds from scratch."""
    pid, pex, cam, lm = synthetic_faces(model, 4, seed=7, max_yaw=0.5)
    lm = lm + np.random.default_rng(3).normal(scale=0.3, size=lm.shape)
    sigma = 0.005
    prior = np.concatenate([np.full(model.n_id, 1.0), np.full(model.n_exp, 3.0)])
    f = LandmarkFitter(model, FitOptions(sigma=sigma, prior_exp=3.0, contour="fixed", device="cpu"))
    assert (f.opt.iterations, f.opt.refine_iterations) == (3, 6)
    r = f.fit(lm)
    alt = LandmarkFitter(model, FitOptions(sigma=sigma, prior_exp=3.0, contour="fixed", device="cpu",
                                           refine_iterations=0)).fit(lm)
    for i in range(4):
        res = _objective_residuals(model, lm[i], np.ones(68), prior, sigma)
        z0 = np.concatenate([np.zeros(3), [lm[i, :, 0].mean(), lm[i, :, 1].mean()],
                             [np.log(cam[i, 5])], np.zeros(model.n_id + model.n_exp)])
        ref = least_squares(res, z0, method="lm", xtol=1e-12, ftol=1e-12, max_nfev=20000)
        pack = lambda q: np.concatenate([q.camera[i, :5], [np.log(q.camera[i, 5])], q.p_id[i],  # noqa: E731
                                         q.p_exp[i]]).astype(np.float64)
        e_ours, e_alt, e_ref = (res(pack(r)) ** 2).sum(), (res(pack(alt)) ** 2).sum(), (ref.fun ** 2).sum()
        assert e_ours <= e_ref * 1.001 + 1e-6, (e_ours, e_ref)
        assert e_ours <= e_alt + 1e-9                                 # the LM steps only ever help
        np.testing.assert_allclose(r.p_exp[i], ref.x[6 + model.n_id:], atol=5e-3)
