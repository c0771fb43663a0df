"""Small helpers for the fitting tests: a tiny face-shaped 3DMM and synthetic landmarks."""
from __future__ import annotations

import functools

import numpy as np

from fitting.model import MorphableModel, orthonormalise


@functools.lru_cache(maxsize=None)
def _template():
    from fitting.demo_model import load_template

    V, T, L = load_template()
    return np.asarray(V, np.float64), np.asarray(L, np.int64)


def tiny_model(n_extra: int = 1500, K: int = 8, E: int = 6, seed: int = 0) -> MorphableModel:
    """A 3DMM on a random subset of the template's vertices (all 68 landmark vertices kept),
    centred and scaled to unit half-width, with random orthonormal bases; [3N, K] / [3N, E]."""
    V, L = _template()
    rng = np.random.default_rng(seed)
    others = rng.choice(len(V), n_extra, replace=False)
    idx = np.unique(np.concatenate([L, others]))
    c = V[L].mean(0)
    Vs = (V[idx] - c) / np.abs(V[:, 0] - c[0]).max()
    lm = np.searchsorted(idx, L)
    N = len(idx)
    U = orthonormalise(rng.normal(size=(3 * N, K + E)))
    iod_scale = 1e-3  # eigenvalues such that a unit parameter moves landmarks by a few % of the face
    return MorphableModel(mean=Vs.reshape(-1), U_id=U[:, :K], ev_id=np.linspace(1, 0.3, K) * iod_scale * 3,
                          U_exp=U[:, K:], ev_exp=np.linspace(1, 0.3, E) * iod_scale * 3,
                          trilist=np.zeros((0, 3), np.int64), landmarks=lm, source="tiny-test")


def random_cameras(B: int, rng, max_yaw: float = 0.6) -> np.ndarray:
    """[B, 7] weak-perspective cameras with faces around (100, 100) px, scale 60-90 px/unit."""
    return np.stack([rng.uniform(-.3, .3, B), rng.uniform(-max_yaw, max_yaw, B), rng.uniform(-.2, .2, B),
                     rng.uniform(80, 120, B), rng.uniform(80, 120, B), rng.uniform(60, 90, B),
                     np.zeros(B)], 1)


def synthetic_faces(model: MorphableModel, B: int, seed: int = 1, max_yaw: float = 0.6):
    """(p_id [B,K], p_exp [B,E], camera [B,7], landmarks [B,68,2]) from the fixed landmark vertices."""
    from render.camera import project

    rng = np.random.default_rng(seed)
    pid = rng.normal(size=(B, model.n_id))
    pex = rng.normal(size=(B, model.n_exp))
    cam = random_cameras(B, rng, max_yaw)
    X = model.landmarks_3d(pid.astype(np.float32), pex.astype(np.float32))
    return pid, pex, cam, project(X, cam)
