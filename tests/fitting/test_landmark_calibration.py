"""fitting.landmarks.LandmarkCalibration against slow references and on a detector with a
known bias (no rendering here; the stage and the CLI are tested in test_fit_stage.py)."""
import numpy as np
import pytest

from fitting.align import similarity_transform
from fitting.landmarks import CalibrationError, LandmarkCalibration, similarity_batch


def _shapes(rng, n, base=None):
    """n random 68-point faces: a base shape, deformed, rotated, scaled and moved."""
    base = rng.normal(size=(68, 2)) if base is None else base
    out = []
    for _ in range(n):
        a = rng.uniform(-0.6, 0.6)
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        s = rng.uniform(20, 120)
        out.append((base + 0.08 * rng.normal(size=(68, 2))) @ R.T * s + rng.uniform(50, 300, 2))
    return np.stack(out)


def test_similarity_batch_equals_umeyama_per_shape():
    rng = np.random.default_rng(0)
    src = _shapes(rng, 6)
    dst = _shapes(rng, 6)
    A, t = similarity_batch(src, dst)
    for i in range(6):
        ref = similarity_transform(src[i], dst[i])
        np.testing.assert_allclose(A[i], ref[:, :2], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(t[i], ref[:, 2], rtol=1e-9, atol=1e-7)


def _reference_fit(D, L, ridge, ref):
    """Slow reference: one Umeyama per shape, the ridge as an augmented least-squares problem."""
    X, Y = [], []
    for d, l in zip(D, L):
        M = similarity_transform(d, ref)
        x = d @ M[:, :2].T + M[:, 2]
        X.append(x.ravel())
        Y.append((l @ M[:, :2].T + M[:, 2]).ravel() - x.ravel())
    X, Y = np.array(X), np.array(Y)
    xm, ym = X.mean(0), Y.mean(0)
    Xa = np.vstack([X - xm, np.sqrt(ridge) * np.eye(X.shape[1])])
    Ya = np.vstack([Y - ym, np.zeros((X.shape[1], Y.shape[1]))])
    W = np.linalg.lstsq(Xa, Ya, rcond=None)[0]
    return xm, ym, W


def test_fit_equals_the_slow_reference():
    rng = np.random.default_rng(1)
    L = _shapes(rng, 40)
    D = L + rng.normal(scale=2.0, size=L.shape)
    cal = LandmarkCalibration.fit(D, L, ridge=0.5)
    xm, ym, W = _reference_fit(D, L, 0.5, cal.reference)
    np.testing.assert_allclose(cal.x_mean, xm, atol=1e-9)
    np.testing.assert_allclose(cal.offset, ym, atol=1e-9)
    np.testing.assert_allclose(cal.weights, W, atol=1e-7)
    # the reference is centred with unit RMS radius
    np.testing.assert_allclose(cal.reference.mean(0), 0, atol=1e-12)
    assert np.sqrt((cal.reference ** 2).sum(1).mean()) == pytest.approx(1.0)


def _biased_detector(L, rng, bias):
    """A detector that moves each point by ``bias`` [68, 2] in the face's own frame (it turns
    and scales with the face) plus noise: the systematic error a calibration can learn."""
    out = []
    for l in L:
        M = similarity_transform(np.asarray(BASE), l)
        out.append(l + bias @ M[:, :2].T + rng.normal(scale=0.3, size=l.shape))
    return np.stack(out)


BASE = np.random.default_rng(7).normal(size=(68, 2))


def _nme(P, L):
    iod = np.linalg.norm(L[:, 36:42].mean(1) - L[:, 42:48].mean(1), axis=1)
    return np.sqrt(((P - L) ** 2).sum(-1).mean(-1)) / iod


def test_learns_a_systematic_detector_bias_on_held_out_faces():
    rng = np.random.default_rng(2)
    bias = 0.25 * rng.normal(size=(68, 2))
    L_train, L_test = _shapes(rng, 300, BASE), _shapes(rng, 50, BASE)
    D_train, D_test = _biased_detector(L_train, rng, bias), _biased_detector(L_test, rng, bias)
    cal = LandmarkCalibration.fit(D_train, L_train, ridge=1.0)
    before, after = _nme(D_test, L_test).mean(), _nme(cal.apply(D_test), L_test).mean()
    assert after < 0.3 * before, (before, after)
    # one face at a time gives the same as the batch
    np.testing.assert_allclose(cal.apply(D_test[3]), cal.apply(D_test)[3], atol=1e-9)


def test_correction_moves_with_the_face():
    """apply(s R d + t) = s R apply(d) + t: the correction lives in the face's frame."""
    rng = np.random.default_rng(3)
    L = _shapes(rng, 60)
    cal = LandmarkCalibration.fit(L + rng.normal(size=L.shape), L)
    d = L[0] + rng.normal(size=(68, 2))
    a = 0.4
    M = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    t = np.array([13.0, -4.0])
    np.testing.assert_allclose(cal.apply(d @ M.T + t), cal.apply(d) @ M.T + t, atol=1e-8)


def test_file_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(4)
    L = _shapes(rng, 30)
    D = L + rng.normal(size=L.shape)
    cal = LandmarkCalibration.fit(D, L, meta={"model_hash": "abc", "renders": 30})
    p = tmp_path / "m.lmcal.npz"
    p.write_bytes(cal.to_bytes())
    back = LandmarkCalibration.load(p)
    np.testing.assert_array_equal(back.apply(D), cal.apply(D))
    assert back.meta == {"model_hash": "abc", "renders": 30} and back.ridge == cal.ridge
    (tmp_path / "text.npz").write_text("not a calibration")
    np.savez(tmp_path / "other.npz", schema=np.array("something-else/1"))
    np.savez(tmp_path / "partial.npz", schema=np.array("slidergan-landmark-calibration/1"))
    for name, match in (("text.npz", "not a landmark calibration"), ("other.npz", "schema"),
                        ("partial.npz", "not a landmark calibration"), ("missing.npz", "not a landmark calibration")):
        with pytest.raises(CalibrationError, match=match):
            LandmarkCalibration.load(tmp_path / name)


def test_bad_training_input_is_refused():
    rng = np.random.default_rng(5)
    L = _shapes(rng, 5)
    with pytest.raises(CalibrationError, match="two"):
        LandmarkCalibration.fit(L[:, :60], L)
    with pytest.raises(CalibrationError, match="at least 2"):
        LandmarkCalibration.fit(L[:1], L[:1])
    bad = L.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="finite"):
        LandmarkCalibration.fit(bad, L)
    cal = LandmarkCalibration.fit(L, L)
    with pytest.raises(CalibrationError, match="68, 2"):
        cal.apply(L[0, :10])
