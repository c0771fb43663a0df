"""Photometric refinement: exact Jacobian (against forward-mode autodiff), the SH basis
(against the renderer's), and a perturbed fit of a rendered face pulled back to the truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import render
from fitting.demo_model import build_demo_model
from fitting.photometric import PhotometricOptions, PhotometricRefiner
from fitting.photometric_energy import bilinear, sh_basis_torch
from render.camera import camera_rotation, make_camera, project
from render.lighting import sh_basis


@pytest.fixture(scope="module")
def model():
    return build_demo_model(seed=0, n_id=8, n_exp=12, n_speech=0)


def _face(model, seed=0, size=160):
    """A rendered face (no JPEG, plain background): truth dict and uint8 image."""
    rng = np.random.default_rng(seed)
    p_id = rng.normal(size=model.n_id).clip(-2, 2)
    p_exp = rng.uniform(-1, 1, size=model.n_exp)
    p_tex = rng.normal(size=model.U_tex.shape[1]).clip(-2, 2)
    cam = make_camera(0.1, 0.25, -0.05, size / 2, size / 2 + 4, 0.33 * size, 0.0)
    V = model.instance(p_id, p_exp)
    light = render.random_light(rng)
    img = render.render(V, model.trilist, model.texture(p_tex), cam, background=np.full((size, size, 3), 90, np.uint8),
                        light=light).image_uint8()
    lm = project(V[model.landmarks], cam)
    return dict(p_id=p_id, p_exp=p_exp, camera=cam, light=light, lm=lm), img


def test_sh_basis_matches_renderer():
    n = np.random.default_rng(0).normal(size=(50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    np.testing.assert_allclose(sh_basis_torch(torch.as_tensor(n)).numpy(), sh_basis(n), rtol=1e-6, atol=1e-12)


def test_bilinear_matches_scipy_sampling():
    rng = np.random.default_rng(1)
    img = rng.uniform(size=(9, 11, 3))
    uv = rng.uniform(1.0, 8.0, size=(40, 2))
    ref = render.sample_image(img.astype(np.float32), uv)
    np.testing.assert_allclose(bilinear(torch.as_tensor(img), torch.as_tensor(uv)).numpy(), ref, atol=1e-5)


def test_analytic_jacobian_equals_forward_mode_autodiff(model):
    truth, img = _face(model)
    ref = PhotometricRefiner(model, PhotometricOptions(n_samples=300))
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
    x = torch.zeros(6 + model.n_id + model.n_exp, dtype=torch.float64)
    x[6:6 + model.n_id] = t(truth["p_id"])
    x[6 + model.n_id:] = t(truth["p_exp"])
    S = len(ref.samples)
    rng = np.random.default_rng(2)
    args = (t(camera_rotation(truth["camera"])), t(truth["camera"][5]), t(truth["camera"][3:5]),
            t(img / 255.0), t(rng.uniform(0.2, 1.0, S)), t(rng.uniform(0.3, 0.9, (S, 3))),
            t(truth["light"]), t(truth["lm"]), t(np.full(68, 0.05)))
    J = ref._jacobian(x, *args)
    J_ref = torch.func.jacfwd(lambda z: ref._residual(z, *args))(x)
    assert J.shape == J_ref.shape == (3 * S + 136 + model.n_id + model.n_exp, x.numel())
    np.testing.assert_allclose(J.numpy(), J_ref.numpy(), atol=1e-8 * float(J_ref.abs().max()))


def test_refinement_pulls_a_perturbed_fit_back_to_the_truth(model):
    truth, img = _face(model, seed=3)
    rng = np.random.default_rng(4)
    p_exp0 = truth["p_exp"] + rng.normal(scale=0.4, size=model.n_exp)
    cam0 = truth["camera"].copy()
    cam0[:3] += 0.03
    cam0[3:5] += 2.0
    opts = PhotometricOptions(iterations=4, blur=(1.0, 0.0), n_samples=1500, sigma_landmarks=0.1, search_iterations=0)
    # the landmarks are projections of the model's fixed landmark vertices
    p_id, p_exp, cam, info = PhotometricRefiner(model, opts).refine(img, truth["lm"], truth["p_id"], p_exp0, cam0,
                                                                    contour="fixed")
    before = np.linalg.norm(p_exp0 - truth["p_exp"])
    after = np.linalg.norm(p_exp - truth["p_exp"])
    assert after < 0.5 * before, (before, after)
    # rotation and translation trade off in weak perspective: judge the geometry in the image
    rmse = lambda pe, c: np.sqrt(((project(model.instance(p_id if c is cam else truth["p_id"], pe)  # noqa: E731
                                           [model.landmarks], c) - truth["lm"]) ** 2).sum(-1).mean())
    assert rmse(p_exp, cam) < 0.5 * rmse(p_exp0, cam0), (rmse(p_exp0, cam0), rmse(p_exp, cam))
    assert info["energy"][1] < info["energy"][0] and info["samples"] > 500


def test_refinement_is_deterministic_and_rejects_perspective_and_bad_contour(model):
    truth, img = _face(model, seed=5)
    ref = PhotometricRefiner(model, PhotometricOptions(iterations=1, blur=(0.0,), n_samples=400, search_yaw=(-10.0, 10.0),
                                                       search_iterations=1))
    a = ref.refine(img, truth["lm"], truth["p_id"], truth["p_exp"], truth["camera"])
    b = ref.refine(img, truth["lm"], truth["p_id"], truth["p_exp"], truth["camera"])
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)
    cam = truth["camera"].copy()
    cam[6] = 5.0
    with pytest.raises(ValueError, match="weak-perspective"):
        ref.refine(img, truth["lm"], truth["p_id"], truth["p_exp"], cam)
    with pytest.raises(ValueError, match="contour"):
        ref.refine(img, truth["lm"], truth["p_id"], truth["p_exp"], truth["camera"], contour="silhouette")


def test_options_from_config_take_prefixed_keys_and_shared_priors():
    o = PhotometricOptions.from_config({"photometric_iterations": 3, "photometric_blur": [2, 0],
                                        "photometric_search_yaw": [-20, 20], "photometric_search_scale": [1, 0.8],
                                        "prior_exp": 7.0, "sigma": 0.1})
    assert o.search_yaw == (-20.0, 20.0) and o.search_scale == (1.0, 0.8)
    # "sigma" is the landmark fit's own noise level, not the refinement's: the default stays
    assert (o.iterations, o.blur, o.prior_exp, o.sigma_landmarks) == (3, (2.0, 0.0), 7.0, PhotometricOptions().sigma_landmarks)
    assert PhotometricOptions().iterations == 15


def test_render_correction_makes_the_model_term_reproduce_a_render(model):
    """At the true state of a rendered face, model colour + the renderer's offset equals
    the photo's bilinear sample (up to uint8 rounding) on the visible samples, while the
    bare per-vertex model colour does not."""
    from render import visible_vertices

    truth, img = _face(model, seed=6)
    rng = np.random.default_rng(6)
    p_tex = rng.normal(size=model.U_tex.shape[1]).clip(-2, 2)
    light = truth["light"]
    V = model.instance(truth["p_id"], truth["p_exp"])
    img = render.render(V, model.trilist, model.texture(p_tex), truth["camera"], background=np.full((160, 160, 3), 90, np.uint8),
                        light=light).image_uint8()
    ref = PhotometricRefiner(model, PhotometricOptions(n_samples=600))
    t = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
    cam = truth["camera"]
    x = torch.zeros(6 + model.n_id + model.n_exp, dtype=torch.float64)
    x[6:6 + model.n_id], x[6 + model.n_id:] = t(truth["p_id"]), t(truth["p_exp"])
    uv, n, _ = ref._geometry(x, t(camera_rotation(cam)), t(cam[5]), t(cam[3:5]))
    Y = sh_basis_torch(n).numpy()
    photo = img / 255.0
    obs = bilinear(t(photo), uv).numpy()
    off = ref._render_offset(V, cam, p_tex, light, photo, 0.0, uv, Y)
    bare = (ref._tex_mean + ref._tex_basis @ p_tex) * (Y @ light)
    vis = visible_vertices(V, model.trilist, cam, (160, 160))[ref.samples] & (n[:, 2].numpy() > 0.15)
    assert vis.sum() > 200
    corrected = np.abs(obs - bare - off)[vis]
    assert corrected.max() < 3.0 / 255, corrected.max()
    assert np.abs(obs - bare)[vis].mean() > 5 * corrected.mean()


def test_dynamic_contour_moves_the_far_jaw_points_to_the_silhouette(model):
    """Under yaw the jaw points on the far side of the face go to the silhouette: the chosen
    vertex is the outermost one of its candidate line in camera x (checked by brute force),
    and the chin and the inner landmarks keep the model's vertices."""
    ref = PhotometricRefiner(model, PhotometricOptions(n_samples=300))
    p = torch.zeros(model.n_id + model.n_exp, dtype=torch.float64)
    R = torch.as_tensor(camera_rotation(make_camera(0.0, 0.6, 0.0, 0, 0, 1.0, 0.0)))
    idx = ref._contour_landmarks(p, R)
    V = ref._mean                                                     # p = 0: the mean shape
    xcam = V @ R[0]
    for j in range(17):
        cand = ref._cand_local[j]
        side = -1.0 if j < 8 else 1.0
        best = cand[torch.argmax(xcam[cand] * side)]
        assert float(xcam[idx[j]]) == float(xcam[best])
    assert int(idx[8]) == int(ref._lm_local[8])
    assert torch.equal(idx[17:], ref._lm_local[17:])
    assert (idx[:17] != ref._lm_local[:17]).any()
    # the refinement's own key wins over the shared one
    assert PhotometricOptions.from_config({"prior_exp": 7.0, "photometric_prior_exp": 2.0}).prior_exp == 2.0


def test_pose_search_turns_a_start_that_is_off_in_yaw_and_keeps_the_lowest_energy(model, monkeypatch):
    """A landmark fit 30 degrees off in yaw: the search hypothesis that undoes it has the
    lowest energy, is the one kept, and the result is exactly the run from that hypothesis
    alone; without it the refinement stays further off."""
    truth, img = _face(model, seed=7)
    cam0 = truth["camera"].copy()
    cam0[1] -= np.radians(30.0)
    kw = dict(iterations=3, blur=(1.0, 0.0), n_samples=600, search_iterations=3, search_blur=2.0)
    seen = []
    final = PhotometricRefiner._final

    def spy(self, st, img_np, blur, ctx):
        out = final(self, st, img_np, blur, ctx)
        seen.append(out["final_energy"])
        return out

    monkeypatch.setattr(PhotometricRefiner, "_final", spy)
    both = PhotometricRefiner(model, PhotometricOptions(search_yaw=(0.0, 30.0), **kw)).refine(
        img, truth["lm"], truth["p_id"], 0 * truth["p_exp"], cam0)
    assert len(seen) == 3                                      # two hypotheses, then the final state
    assert both[3]["search_yaw"] == 30.0 and seen[1] < seen[0]
    alone = PhotometricRefiner(model, PhotometricOptions(search_yaw=(30.0,), **kw)).refine(
        img, truth["lm"], truth["p_id"], 0 * truth["p_exp"], cam0)
    for u, v in zip(both[:3], alone[:3]):
        np.testing.assert_array_equal(u, v)
    stay = PhotometricRefiner(model, PhotometricOptions(search_yaw=(0.0,), **kw)).refine(
        img, truth["lm"], truth["p_id"], 0 * truth["p_exp"], cam0)
    yaw_err = lambda c: abs(float(c[1]) - float(truth["camera"][1]))  # noqa: E731
    assert yaw_err(both[2]) < np.radians(5.0) < yaw_err(stay[2]), (yaw_err(both[2]), yaw_err(stay[2]))
    assert both[3]["residual"] < stay[3]["residual"]


def test_residual_is_the_median_colour_error_of_the_fit(model):
    """At the true state of a render the residual is the uint8 rounding (render
    correction on); the same face fitted against another face's photo scores far worse."""
    truth, img = _face(model, seed=9)
    other, img2 = _face(model, seed=10)
    ref = PhotometricRefiner(model, PhotometricOptions(iterations=0, search_iterations=0, n_samples=800))
    good = ref.refine(img, truth["lm"], truth["p_id"], truth["p_exp"], truth["camera"])[3]["residual"]
    bad = ref.refine(img2, truth["lm"], truth["p_id"], truth["p_exp"], truth["camera"])[3]["residual"]
    assert good < 2.0 / 255 and bad > 5 * good, (good, bad)


def test_shared_z_buffer_pass_equals_visible_vertices_and_render(model):
    """The step's one z-buffer pass (``_raster``) gives exactly ``render.visible_vertices`` at
    the sample vertices and exactly ``render.render``'s image, for a turned face (occluded
    samples) over a photo background; the vertex cache returns the same tensor values."""
    from render import visible_vertices

    truth, img = _face(model, seed=3)
    cam = make_camera(0.05, 0.6, 0.02, 80, 84, 52.8, 0.0)              # strongly turned: self-occlusion
    V = model.instance(truth["p_id"], truth["p_exp"])
    ref = PhotometricRefiner(model, PhotometricOptions(n_samples=600))
    raster = ref._raster(V, cam, (160, 160))
    want = visible_vertices(V, model.trilist, cam, (160, 160))[ref.samples]
    assert 0 < want.sum() < len(want)
    np.testing.assert_array_equal(ref._visible_samples(raster), want)
    alb = model.texture(np.zeros(model.U_tex.shape[1])).astype(np.float64)
    photo = img / 255.0
    full = render.render(V, model.trilist, alb, cam, background=photo, light=truth["light"]).image
    np.testing.assert_array_equal(ref._render_image(raster, alb, truth["light"], photo), full)
    p = torch.as_tensor(np.concatenate([truth["p_id"], truth["p_exp"]]))
    V1 = ref._vertices(p)
    assert ref._vertices(p.clone()) is V1                                # cached by value
    V2 = ref._vertices(p + 1e-3)
    np.testing.assert_array_equal(V2.numpy(), (ref._mean + torch.einsum("vkp,p->vk", ref._basis, p + 1e-3)).numpy())


def test_blur_window_samples_what_the_whole_image_blur_gives():
    """The render correction blurs only the window its samples read: the sampled values equal
    those of ``gaussian_filter`` over the whole image, samples inside, at and outside the border."""
    from scipy.ndimage import gaussian_filter

    from fitting.photometric_energy import blur_window

    rng = np.random.default_rng(4)
    for (H, W), blur, lo, hi in (((50, 60), 2.0, 10, 25), ((40, 30), 1.0, -5, 45), ((64, 64), 4.0, 20, 30)):
        img = rng.uniform(size=(H, W, 3))
        uv = torch.as_tensor(rng.uniform(lo, hi, size=(40, 2)))
        whole = bilinear(torch.as_tensor(np.stack([gaussian_filter(img[..., c], blur) for c in range(3)], -1)), uv)
        win, uv_w = blur_window(img, blur, uv)
        assert win.shape[0] * win.shape[1] <= H * W
        np.testing.assert_allclose(bilinear(torch.as_tensor(win), uv_w).numpy(), whole.numpy(), rtol=0, atol=1e-12)
    win, _ = blur_window(rng.uniform(size=(64, 64, 3)), 2.0, torch.full((5, 2), 32.0))
    assert win.shape[:2] == (2, 2)                          # the taps of one point: a 2 x 2 window
