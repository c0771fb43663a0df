"""The demo 3DMM built from menpo3d's template: bases, names, and blendshapes that do
what their names say (checked geometrically on landmark vertices)."""
from __future__ import annotations

import numpy as np
import pytest

from fitting.demo_model import build_demo_model, expression_prototypes
from fitting.model import EXPRESSION_NAMES


@pytest.fixture(scope="module")
def demo():
    return build_demo_model(seed=0, n_id=12, n_exp=30, n_speech=10, texture=False)


def test_shapes_orthonormality_and_decay(demo):
    assert demo.n_vertices == 53349 and demo.trilist.shape == (106111, 3)
    assert (demo.n_id, demo.n_exp, demo.n_speech) == (12, 30, 10)
    for U in (demo.U_id, demo.U_exp, np.concatenate([demo.U_exp, demo.U_speech], 1)):
        np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-4)
    for ev in (demo.ev_id, demo.ev_exp, demo.ev_speech):
        assert np.all(np.diff(ev) <= 1e-6), "eigenvalues must not increase"
    span = demo.mean_shape[:, 0].max() - demo.mean_shape[:, 0].min()
    assert 1.5 < span < 2.5  # face spans about [-1, 1]


def test_landmarks_are_anatomically_ordered(demo):
    P = demo.mean_shape[demo.landmarks]
    assert P[36:48, 1].mean() > P[30, 1] > P[48:68, 1].mean() > P[8, 1]  # eyes > nose tip > mouth > chin
    assert P[30, 2] == pytest.approx(demo.mean_shape[:, 2].max(), abs=0.1)  # nose tip is frontmost
    assert P[42:48, 0].mean() > 0 > P[36:42, 0].mean()  # subject's left eye at +x


def _delta(m, name, value=1.0):
    p = np.zeros(m.n_exp, np.float32)
    p[m.exp_names.index(name)] = value
    return (m.instance(None, p) - m.mean_shape)[m.landmarks]


def test_named_blendshapes_do_what_their_names_say(demo):
    assert {"jaw_open", "smile", "lip_pucker", "brow_raise", "brow_furrow", "eye_close_left",
            "eye_close_right", "cheek_puff"} <= set(demo.exp_names[:30])
    assert demo.exp_names[0] == "jaw_open"
    d = _delta(demo, "jaw_open")
    assert d[8, 1] < -0.05 and d[57, 1] < -0.03 and abs(d[51, 1]) < 0.3 * abs(d[57, 1])
    d = _delta(demo, "smile")
    assert d[48, 1] > 0.02 and d[54, 1] > 0.02 and d[54, 0] > 0 > d[48, 0]
    d = _delta(demo, "lip_pucker")
    assert d[62, 2] > 0.03 and d[54, 0] < 0 < d[48, 0]
    d = _delta(demo, "brow_raise")
    assert d[17:27, 1].min() > 0.02 and abs(d[8, 1]) < 0.005
    d = _delta(demo, "eye_close_left")
    assert d[43, 1] < -0.02 and abs(d[37, 1]) < 0.2 * abs(d[43, 1])  # left (+x) upper lid
    d = _delta(demo, "eye_close_right")
    assert d[37, 1] < -0.02 and abs(d[43, 1]) < 0.2 * abs(d[37, 1])


def test_expression_prototypes(demo):
    P = expression_prototypes(demo)
    assert P.shape == (7, 30) and EXPRESSION_NAMES[0] == "neutral"
    assert np.all(P[0] == 0) and np.all(np.abs(P[1:]).sum(1) > 0.5)
    happy = P[EXPRESSION_NAMES.index("happiness")]
    assert happy[demo.exp_names.index("smile")] == 1.0


def test_demo_model_is_deterministic(demo):
    again = build_demo_model(seed=0, n_id=12, n_exp=30, n_speech=10, texture=False)
    assert again.hash == demo.hash
