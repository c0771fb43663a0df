"""Expression parameters of registered meshes (4DFAB) in the 3DMM's bases.

Two estimators (``project.method``):

* ``projection`` — the paper's ``p = U_exp^T (S - s_bar)``, normalised by ``sqrt(ev_exp)``.
  Exact when ``S`` differs from the mean only by expression.  When the identity varies,
  the part of the identity offset that is not orthogonal to ``U_exp`` *leaks* into the
  expression parameters (the bases are each orthonormal, but not mutually orthogonal).
* ``joint`` — least squares over identity and expression together:
  ``min_{a, b} || U_id a + U_exp b - (S - s_bar) ||^2`` (optionally with a ridge
  ``lambda * (|a / sqrt(ev_id)|^2 + |b / sqrt(ev_exp)|^2)``).  Solved through the small
  normal equations ``G c = A^T d`` with ``G = A^T A`` ``[(K+E), (K+E)]`` factorised once per
  model (the tall ``A = [U_id U_exp]`` ``[3N, K+E]`` is never concatenated), so one mesh
  costs two ``[3N] x [3N, K|E]`` products.

Meshes are ``[N, 3]`` (or batched ``[B, N, 3]``) in the model's vertex order and frame;
``similarity_align`` brings a mesh in another frame onto the mean first (optional).
Models are duck-typed: anything with ``mean [3N]``, ``U_id [3N, K]``, ``ev_id [K]``,
``U_exp [3N, E]``, ``ev_exp [E]`` (``fitting.model.MorphableModel``).
"""
from __future__ import annotations

import numpy as np


def _offsets(model, S) -> tuple[np.ndarray, bool]:
    """``S [N,3] | [B,N,3]`` -> ``d [3N, B]`` float64 (mesh minus mean), batched flag."""
    S = np.asarray(S, dtype=np.float64)
    batched = S.ndim == 3
    if S.ndim not in (2, 3) or S.shape[-1] != 3:
        raise ValueError(f"mesh must be [N, 3] or [B, N, 3], got shape {S.shape}")
    n3 = np.asarray(model.mean).shape[0]
    if S.shape[-2] * 3 != n3:
        raise ValueError(f"mesh has {S.shape[-2]} vertices, model has {n3 // 3}")
    flat = S.reshape(-1, n3) if batched else S.reshape(1, n3)
    d = (flat - np.asarray(model.mean, dtype=np.float64)[None]).T
    return d, batched


def _at(U, d) -> np.ndarray:
    """``U^T d`` in float64: ``U [3N, k]``, ``d [3N, B]`` -> ``[k, B]``.

    Through ``np.einsum`` (numpy's own loops), not BLAS: a multi-threaded BLAS splits the
    3N-long reduction by thread count, so results would differ in the last bits between a
    2-thread process and a 1-thread Dask worker; the stages promise byte-identical output."""
    return np.einsum("ni,nb->ib", np.asarray(U, np.float64), np.asarray(d, np.float64))


def project_expression(model, S) -> np.ndarray:
    """The paper's projection, normalised: ``U_exp^T (S - s_bar) / sqrt(ev_exp)``.

    Args:
        model: 3DMM (see module docstring).
        S: ``[N, 3]`` or ``[B, N, 3]`` mesh(es) in model vertex order.
    Returns:
        ``[E]`` or ``[B, E]`` float32 normalised expression parameters.
    """
    d, batched = _offsets(model, S)
    p = _at(np.asarray(model.U_exp), d)
    p = p / np.sqrt(np.asarray(model.ev_exp, dtype=np.float64))[:, None]
    p = p.T.astype(np.float32)
    return p if batched else p[0]


class JointProjector:
    """Joint least squares over identity and expression bases (see module docstring).

    ``JointProjector(model, n_id=None, ridge=0.0)(S) -> (p_id, p_exp)`` normalised,
    ``[K'] / [E]`` or batched ``[B, K'] / [B, E]`` float32 (``K' = n_id or K``).
    Picklable and cheap to build (one ``[K+E, K+E]`` Gram matrix).
    """

    def __init__(self, model, n_id: int | None = None, ridge: float = 0.0):
        U_id = np.asarray(model.U_id)
        k = U_id.shape[1] if n_id is None else int(min(n_id, U_id.shape[1]))
        self.model = model
        self.n_id = k
        self.ridge = float(ridge)
        U_id = U_id[:, :k]
        U_exp = np.asarray(model.U_exp)
        ev = np.concatenate([np.asarray(model.ev_id, np.float64)[:k], np.asarray(model.ev_exp, np.float64)])
        self.sqrt_ev = np.sqrt(ev)
        G = _at(np.concatenate([U_id, U_exp], 1), np.concatenate([U_id, U_exp], 1))
        if self.ridge > 0:
            G[np.diag_indices_from(G)] += self.ridge / ev
        # pseudo-inverse through the symmetric eigendecomposition: robust to (near) rank
        # deficiency when an identity direction lies inside the expression span.
        w, V = np.linalg.eigh(G)
        keep = w > w.max() * 1e-10
        self.G_pinv = (V[:, keep] / w[keep]) @ V[:, keep].T

    def __call__(self, S) -> tuple[np.ndarray, np.ndarray]:
        d, batched = _offsets(self.model, S)
        k = self.n_id
        U_id = np.asarray(self.model.U_id)[:, :k]
        U_exp = np.asarray(self.model.U_exp)
        rhs = np.concatenate([_at(U_id, d), _at(U_exp, d)])
        c = np.einsum("ij,jb->ib", self.G_pinv, rhs) / self.sqrt_ev[:, None]
        p_id, p_exp = c[:k].T.astype(np.float32), c[k:].T.astype(np.float32)
        return (p_id, p_exp) if batched else (p_id[0], p_exp[0])


def fit_joint(model, S, n_id: int | None = None, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One-shot :class:`JointProjector` call: ``S [N,3] | [B,N,3] -> (p_id, p_exp)`` normalised."""
    return JointProjector(model, n_id=n_id, ridge=ridge)(S)


def similarity_align(S, target) -> np.ndarray:
    """Umeyama/Procrustes: the similarity transform of ``S [N, 3]`` that best matches
    ``target [N, 3]`` (least squares), applied to ``S``.  Returns ``[N, 3]`` float64.

    Used when meshes come in another frame than the model (scanner coordinates);
    hand-written because it is eight lines of SVD and must match the model's vertex order."""
    S = np.asarray(S, np.float64)
    T = np.asarray(target, np.float64)
    ms, mt = S.mean(0), T.mean(0)
    A, B = S - ms, T - mt
    U, sig, Vt = np.linalg.svd(B.T @ A)
    D = np.ones(3)
    if np.linalg.det(U @ Vt) < 0:
        D[-1] = -1
    R = (U * D) @ Vt
    s = (sig * D).sum() / max((A ** 2).sum(), 1e-300)
    return s * A @ R.T + mt


def relative_error(p, p_true) -> float:
    """``||p - p_true|| / ||p_true||`` over all entries (Frobenius for batches)."""
    p, t = np.asarray(p, np.float64), np.asarray(p_true, np.float64)
    return float(np.linalg.norm(p - t) / max(np.linalg.norm(t), 1e-12))
