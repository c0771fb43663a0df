"""The menpo3d ITW baseline wrapper: exact model/camera conversion and a short fit."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def world_model(tiny_world):
    from fitting.model import MorphableModel

    return MorphableModel.load(tiny_world / "model.h5")


@pytest.fixture(scope="module")
def itw(world_model):
    from fitting.itw import ITWFitter

    return ITWFitter(world_model, {"itw_iterations": 3})


def test_shape_model_conversion_is_exact(world_model, itw):
    rng = np.random.default_rng(0)
    p = rng.normal(size=itw.k + itw.e)
    w = itw._S * (itw._V.T @ p)                                      # our p -> menpo3d weights
    ours = world_model.instance(p[: itw.k].astype(np.float32), p[itw.k:].astype(np.float32))
    theirs = itw.mm.shape_model.instance(w).points
    np.testing.assert_allclose(theirs, ours, atol=2e-4 * np.ptp(ours))
    np.testing.assert_allclose(itw._V @ (w / itw._S), p, atol=1e-8)   # and back


def test_camera_conversion_matches_our_projection(world_model, itw):
    import menpo.shape

    from fitting.fit import interocular
    from render.camera import camera_fitting_view, project

    X = world_model.mean_shape[world_model.landmarks].astype(np.float64)
    cam = camera_fitting_view(world_model.mean_shape, (240, 200), yaw=0.4, pitch=0.1, roll=0.05)
    ours = project(X, cam)
    mc = itw._menpo_camera(cam, 240, 200)
    theirs = mc.apply(menpo.shape.PointCloud(X)).points[:, [1, 0]] + 0.5
    # distant perspective (eye 20 face widths away) vs weak perspective: the depth of the
    # face (~1/40 of the distance) changes the scale by ~2.5%: within 5% of the inter-ocular
    assert np.abs(theirs - ours).max() < 0.05 * interocular(ours)
    assert np.abs((theirs - ours).mean(0)).max() < 0.02 * interocular(ours)  # no systematic shift


def test_short_itw_fit_is_finite_close_and_deterministic(tiny_world, itw):
    with h5py.File(tiny_world / "emotionet" / "truth.h5", "r") as f:
        key = f["key"][0].decode() if isinstance(f["key"][0], bytes) else str(f["key"][0])
        lm = f["landmarks"][0:1].astype(np.float64)
    rgb = np.asarray(Image.open(tiny_world / "emotionet" / key).convert("RGB"))
    a = itw.fit([rgb], lm)
    b = itw.fit([rgb], lm)
    assert a.converged.all() and np.all(np.isfinite(a.p_exp))
    assert a.p_exp.shape == (1, itw.e) and a.camera.shape == (1, 7)
    assert a.fit_error[0] < 0.1                                      # landmark term keeps it on the face
    np.testing.assert_array_equal(a.p_exp, b.p_exp)


def test_fit_emotionet_with_itw_fitter(tiny_world, tmp_path):
    """--fitter itw through the stage on two listed demo photos (root = the photo folder)."""
    from pipeline.shards import ShardSet

    from tests.helpers import slidergan

    with h5py.File(tiny_world / "emotionet" / "truth.h5", "r") as f:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][:2]]
    lst = tmp_path / "two.txt"
    lst.write_text("\n".join(keys) + "\n")
    out = tmp_path / "fits-itw"
    slidergan("fit-emotionet", "--images", lst, "--root", tiny_world / "emotionet", "--model",
              tiny_world / "model.h5", "--out", out, "--fitter", "itw", "--workers", "1", "--no-progress",
              "--set", "fit.itw_iterations=2", timeout=600)
    ds = ShardSet(out)
    assert sorted(ds.read("key").tolist()) == sorted(keys)
    assert ds.attrs["fitter"] == "itw"
    assert np.all(np.isfinite(ds.read("p_exp"))) and np.all(ds.read("fit_error") < 0.1)
