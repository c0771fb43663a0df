"""The 3DMM core: bases, parameters, instances, I/O, loaders (fitting/model.py)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from fitting.model import ModelError, MorphableModel, orthonormalise
from fitting.model_import import combine, load_landmark_indices, load_linear_model, load_lsfm


def small_model(N=40, K=5, E=4, S=3, seed=0) -> MorphableModel:
    rng = np.random.default_rng(seed)
    U = orthonormalise(rng.normal(size=(3 * N, K + E + S)))
    return MorphableModel(
        mean=rng.normal(size=3 * N), U_id=U[:, :K], ev_id=np.linspace(5, 1, K),
        U_exp=U[:, K:K + E], ev_exp=np.linspace(3, 0.5, E), U_speech=U[:, K + E:],
        ev_speech=np.linspace(2, 1, S), trilist=rng.integers(0, N, (30, 3)),
        landmarks=rng.integers(0, N, 68), texture_mean=rng.uniform(size=(N, 3)),
        exp_names=[f"e{i}" for i in range(E)])


def naive_instance(m: MorphableModel, p_id, p_exp):
    """Per-vertex, per-component loop: S_v = mean_v + sum_k U[v,k] sqrt(ev_k) p_k."""
    N = m.n_vertices
    U = np.concatenate([m.U_exp, m.U_speech], 1) if len(p_exp) > m.n_exp else m.U_exp
    ev = np.concatenate([m.ev_exp, m.ev_speech]) if len(p_exp) > m.n_exp else m.ev_exp
    out = np.zeros((N, 3))
    for v in range(N):
        for c in range(3):
            r = 3 * v + c
            val = float(m.mean[r])
            for k in range(len(p_id)):
                val += m.U_id[r, k] * np.sqrt(m.ev_id[k]) * p_id[k]
            for k in range(len(p_exp)):
                val += U[r, k] * np.sqrt(ev[k]) * p_exp[k]
            out[v, c] = val
    return out


def test_instance_matches_naive_loop_numpy_torch_batched():
    m = small_model()
    rng = np.random.default_rng(1)
    p_id, p_exp = rng.normal(size=5).astype(np.float32), rng.normal(size=7).astype(np.float32)
    ref = naive_instance(m, p_id, p_exp)
    np.testing.assert_allclose(m.instance(p_id, p_exp), ref, atol=1e-4)
    t = m.instance(torch.tensor(p_id), torch.tensor(p_exp))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-4)
    batch = m.instance(np.stack([p_id, 2 * p_id]), np.stack([p_exp, 0 * p_exp]))
    assert batch.shape == (2, m.n_vertices, 3)
    np.testing.assert_allclose(batch[0], ref, atol=1e-4)
    np.testing.assert_allclose(batch[1], naive_instance(m, 2 * p_id, 0 * p_exp), atol=1e-4)
    # torch path is differentiable
    p = torch.tensor(p_exp[:4], requires_grad=True)
    m.instance(None, p).sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_normalise_denormalise_are_inverse_and_scale_by_sqrt_ev():
    m = small_model()
    p = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(m.denormalise(m.normalise(p)), p, rtol=1e-6)
    np.testing.assert_allclose(m.normalise(p), p / np.sqrt(m.ev_exp), rtol=1e-6)
    np.testing.assert_allclose(m.normalise(torch.tensor(p), "exp").numpy(), p / np.sqrt(m.ev_exp), rtol=1e-6)
    q = np.ones(7, np.float32)
    np.testing.assert_allclose(m.denormalise(q, "exp+speech"),
                               np.sqrt(np.concatenate([m.ev_exp, m.ev_speech])), rtol=1e-6)


def test_projection_recovers_expression_parameters_exactly():
    m = small_model()
    p = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(m.project_expression(m.instance(None, p)), p, atol=1e-4)
    p7 = np.random.default_rng(4).normal(size=7).astype(np.float32)
    np.testing.assert_allclose(m.project_expression(m.instance(None, p7), with_speech=True), p7, atol=1e-4)


def test_save_load_roundtrip_and_hash(tmp_path):
    m = small_model()
    path = m.save(tmp_path / "model.h5")
    m2 = MorphableModel.load(path)
    assert m2.hash == m.hash and m2.exp_names == m.exp_names
    for name in ("mean", "U_id", "ev_exp", "U_speech", "trilist", "landmarks", "texture_mean"):
        np.testing.assert_array_equal(getattr(m2, name), getattr(m, name))
    assert small_model(seed=1).hash != m.hash
    with h5py.File(path, "r") as f:
        assert f.attrs["hash"] == m.hash


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.__delitem__("U_exp"), "missing dataset"),
    (lambda f: (f.__delitem__("ev_id"), f.create_dataset("ev_id", data=np.ones(3))), "eigenvalues"),
    (lambda f: f["mean"].__setitem__(0, np.nan), "NaN"),
    (lambda f: (f.__delitem__("landmarks"), f.create_dataset("landmarks", data=np.arange(10))), "68"),
])
def test_bad_model_files_raise_clear_errors(tmp_path, damage, message):
    path = small_model().save(tmp_path / "model.h5")
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(ModelError, match=message):
        MorphableModel.load(path)


def test_edited_model_file_fails_hash_check(tmp_path):
    path = small_model().save(tmp_path / "model.h5")
    with h5py.File(path, "a") as f:
        f["mean"][0] = f["mean"][0] + 1.0
    with pytest.raises(ModelError, match="hash"):
        MorphableModel.load(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="not an HDF5"):
        MorphableModel.load(tmp_path / "junk.h5")


def _lsfm_dict(N=30, K=6, seed=0):
    rng = np.random.default_rng(seed)
    U = orthonormalise(rng.normal(size=(3 * N, K)))
    return {"mean": rng.normal(size=(3 * N, 1)), "components": U, "eigenvalues": np.linspace(4, 1, K)[:, None],
            "trilist": rng.integers(0, N, (20, 3)).astype(np.int32),
            "cumulative_explained_variance": np.linspace(0.5, 1, K), "n_training_samples": np.array([[9663]])}


def test_lsfm_loader_v5_and_v73_and_combine(tmp_path):
    d = _lsfm_dict()
    scipy.io.savemat(tmp_path / "lsfm.mat", d)
    # MATLAB v7.3 is HDF5 with arrays stored transposed (column-major)
    with h5py.File(tmp_path / "lsfm73.mat", "w") as f:
        for k, v in d.items():
            f.create_dataset(k, data=np.asarray(v).T)
    a, b = load_lsfm(tmp_path / "lsfm.mat"), load_lsfm(tmp_path / "lsfm73.mat")
    for lm in (a, b):
        np.testing.assert_allclose(lm.mean, d["mean"].ravel())
        np.testing.assert_allclose(lm.components, d["components"])
        np.testing.assert_array_equal(lm.trilist, d["trilist"])
    rng = np.random.default_rng(5)
    exp_U = orthonormalise(rng.normal(size=(90, 4)))
    np.savez(tmp_path / "exp.npz", mean=np.zeros(90), components=exp_U.T, eigenvalues=[3, 2, 1, 0.5],
             names=np.array(["a", "b", "c", "d"]))
    expr = load_linear_model(tmp_path / "exp.npz")
    np.testing.assert_allclose(expr.components, exp_U)  # [k, 3N] accepted and transposed
    (tmp_path / "lm.txt").write_text("\n".join(str(i % 30) for i in range(68)))
    m = combine(a, expr, landmarks=load_landmark_indices(tmp_path / "lm.txt"))
    assert (m.n_vertices, m.n_id, m.n_exp) == (30, 6, 4) and m.exp_names == ["a", "b", "c", "d"]
    np.testing.assert_allclose(m.U_exp.T @ m.U_exp, np.eye(4), atol=1e-5)


def test_loader_errors_are_clear(tmp_path):
    d = _lsfm_dict()
    del d["eigenvalues"]
    scipy.io.savemat(tmp_path / "noev.mat", d)
    with pytest.raises(ModelError, match="eigenvalues"):
        load_lsfm(tmp_path / "noev.mat")
    d = _lsfm_dict()
    d["components"] = d["components"][:-3]
    scipy.io.savemat(tmp_path / "shape.mat", d)
    with pytest.raises(ModelError, match="do not match"):
        load_lsfm(tmp_path / "shape.mat")
    d = _lsfm_dict()
    d["mean"][4] = np.nan
    scipy.io.savemat(tmp_path / "nan.mat", d)
    with pytest.raises(ModelError, match="NaN"):
        load_lsfm(tmp_path / "nan.mat")
    np.savez(tmp_path / "other.npz", mean=np.zeros(60), components=np.eye(60)[:, :3], eigenvalues=[1, 1, 1])
    with pytest.raises(ModelError, match="topologies differ"):
        combine(load_lsfm(tmp_path / "noev.mat") if False else _ok_lsfm(tmp_path),
                load_linear_model(tmp_path / "other.npz"), landmarks=np.arange(68) % 30)
    with pytest.raises(ModelError, match="unsupported"):
        load_linear_model(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("x") else None


def _ok_lsfm(tmp_path):
    scipy.io.savemat(tmp_path / "ok.mat", _lsfm_dict())
    return load_lsfm(tmp_path / "ok.mat")


def test_vertex_rel_errors_match_meshes_built_by_instance():
    """||S_exp(p_est) - S_exp(p_ref)|| / ||S_exp(p_ref)|| on meshes from instance() (the slow,
    obviously-correct path) equals the closed form, with and without speech columns."""
    m = small_model()
    rng = np.random.default_rng(3)
    for width in (m.n_exp, m.n_exp + m.n_speech):
        p_ref = rng.uniform(-1, 1, (6, width)).astype(np.float32)
        p_est = p_ref + rng.normal(0, 0.5, p_ref.shape).astype(np.float32)
        p_ref[2] = 0.0                       # the neutral face draws no motion: dropped
        want = []
        for a, b in zip(p_ref, p_est):
            s0 = m.instance(p_exp=np.zeros(width, np.float32)).astype(np.float64)
            ra = m.instance(p_exp=a).astype(np.float64) - s0
            rb = m.instance(p_exp=b).astype(np.float64) - s0
            if np.linalg.norm(ra) > 1e-9:
                want.append(np.linalg.norm(rb - ra) / np.linalg.norm(ra))
        got = m.vertex_rel_errors(p_ref, p_est)
        assert len(got) == 5
        np.testing.assert_allclose(got, want, rtol=1e-4)
    # a parameter on a large-eigenvalue component weighs more than one on a small one
    p_ref = np.ones((1, m.n_exp), np.float32)
    big, small = int(np.argmax(m.ev_exp)), int(np.argmin(m.ev_exp))
    e_big, e_small = p_ref.copy(), p_ref.copy()
    e_big[0, big] += 0.5
    e_small[0, small] += 0.5
    assert m.vertex_rel_errors(p_ref, e_big)[0] > m.vertex_rel_errors(p_ref, e_small)[0]
