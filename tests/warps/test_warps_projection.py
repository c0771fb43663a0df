"""fitting.projection against naive numpy references (np.linalg.lstsq on the stacked bases)."""
from types import SimpleNamespace

import numpy as np
import pytest

from fitting.projection import JointProjector, fit_joint, project_expression, relative_error, similarity_align


def _model(n=150, k=8, e=6, seed=0, overlap=0.4):
    """A small 3DMM whose identity and expression bases are each orthonormal but not
    mutually orthogonal (``overlap`` mixes expression directions into identity ones)."""
    rng = np.random.default_rng(seed)
    U_exp, _ = np.linalg.qr(rng.normal(size=(3 * n, e)))
    raw = rng.normal(size=(3 * n, k))
    raw[:, :e] += overlap * np.linalg.norm(raw[:, :e], axis=0) * U_exp
    U_id, _ = np.linalg.qr(raw)
    return SimpleNamespace(mean=rng.normal(size=3 * n).astype(np.float32),
                           U_id=U_id.astype(np.float32), ev_id=np.linspace(4, 1, k).astype(np.float32),
                           U_exp=U_exp.astype(np.float32), ev_exp=np.linspace(2, 0.5, e).astype(np.float32))


def _shape(m, p_id=None, p_exp=None):
    s = m.mean.astype(np.float64).copy()
    if p_id is not None:
        s += m.U_id.astype(np.float64) @ (p_id * np.sqrt(m.ev_id))
    if p_exp is not None:
        s += m.U_exp.astype(np.float64) @ (p_exp * np.sqrt(m.ev_exp))
    return s.reshape(-1, 3)


def test_projection_recovers_expression_only_meshes_exactly():
    m = _model()
    rng = np.random.default_rng(1)
    P = rng.uniform(-1, 1, size=(5, 6))
    S = np.stack([_shape(m, p_exp=p) for p in P])
    got = project_expression(m, S)
    np.testing.assert_allclose(got, P, atol=1e-4)
    np.testing.assert_allclose(project_expression(m, S[0]), P[0], atol=1e-4)  # unbatched


def test_projection_matches_naive_formula():
    m = _model(seed=3)
    S = np.random.default_rng(2).normal(size=(150, 3))
    ref = (m.U_exp.astype(np.float64).T @ (S.reshape(-1) - m.mean)) / np.sqrt(m.ev_exp)
    np.testing.assert_allclose(project_expression(m, S), ref, rtol=1e-4, atol=1e-4)


def test_joint_matches_numpy_lstsq_reference():
    m = _model(seed=4)
    rng = np.random.default_rng(5)
    S = rng.normal(size=(3, 150, 3))
    A = np.hstack([m.U_id * np.sqrt(m.ev_id), m.U_exp * np.sqrt(m.ev_exp)]).astype(np.float64)
    for b in range(3):
        ref, *_ = np.linalg.lstsq(A, S[b].reshape(-1) - m.mean, rcond=None)
        p_id, p_exp = fit_joint(m, S[b])
        np.testing.assert_allclose(np.r_[p_id, p_exp], ref, rtol=1e-3, atol=1e-3)
    p_id_b, p_exp_b = JointProjector(m)(S)
    assert p_id_b.shape == (3, 8) and p_exp_b.shape == (3, 6)


def test_joint_beats_projection_when_identity_varies():
    m = _model(seed=6, overlap=0.6)
    rng = np.random.default_rng(7)
    P_id = rng.normal(size=(20, 8))
    P_exp = rng.uniform(-1, 1, size=(20, 6))
    S = np.stack([_shape(m, a, b) for a, b in zip(P_id, P_exp)])
    err_proj = relative_error(project_expression(m, S), P_exp)
    p_id, p_exp = JointProjector(m)(S)
    err_joint = relative_error(p_exp, P_exp)
    assert err_proj > 0.1          # identity leaks into the plain projection
    assert err_joint < 1e-3        # the joint fit recovers the truth
    np.testing.assert_allclose(p_id, P_id, atol=1e-2)


def test_joint_ridge_shrinks_and_identity_subset():
    m = _model(seed=8)
    S = _shape(m, np.ones(8), np.ones(6))
    _, p0 = fit_joint(m, S)
    _, p1 = fit_joint(m, S, ridge=10.0)
    assert np.linalg.norm(p1) < np.linalg.norm(p0)
    p_id, _ = fit_joint(m, S, n_id=3)
    assert p_id.shape == (3,)


def test_vertex_count_mismatch_is_an_error():
    m = _model()
    with pytest.raises(ValueError, match="vertices"):
        project_expression(m, np.zeros((10, 3)))


def test_similarity_align_undoes_a_similarity():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    Y = 2.5 * X @ q.T + np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(similarity_align(Y, X), X, atol=1e-9)
