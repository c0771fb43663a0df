"""Batched 3DMM fitting to 68 2D landmarks (camera + identity + expression).

The fitter alternates two closed-form steps, vectorised over a batch of B faces with torch
(float64; GPU when one is present):

1. **camera** — for the current 3D landmarks ``X [B,68,3]``, a weighted affine camera
   ``[u, -v] = A X + c`` is solved by linear least squares and projected onto the nearest
   *scaled orthographic* camera (``A = s R[:2]``; SVD ``A = U S V^T``, ``R[:2] = U V^T``,
   ``s = mean(S)``); the translation is re-solved for that ``s R``.  Weak perspective
   (``dist = 0``) in the shared layout ``[pitch, yaw, roll, tx, ty, scale, dist]``.
2. **shape** — for a fixed camera the projected landmarks are linear in the normalised
   parameters ``p = [p_id, p_exp]``, so the MAP estimate under the eigenvalue priors
   ``p ~ N(0, 1/prior)`` is a regularised linear least squares problem, solved exactly
   by its ``P x P`` normal equations (``P = K' + E``, about 70).

Objective (what step 2 minimises exactly and step 1 approximately)::

    E(p, cam) = sum_k w_k ||proj_k(p, cam) - y_k||^2 / (sigma * s_ref)^2
                + prior_id ||p_id||^2 + prior_exp ||p_exp||^2

with ``s_ref`` the pixels-per-model-unit scale of the face (from its inter-ocular distance)
and ``sigma`` the landmark noise as a fraction of the model's inter-ocular distance.

Only the 68 landmark rows of the bases are used, so one iteration is a handful of small
batched matrix products — thousands of faces per second on a CPU.

**Jaw contour.** Annotators and detectors put the 17 jaw points on the face *silhouette*,
which slides over the surface as the head turns.  With ``contour="dynamic"`` each jaw
point (except the chin) has a precomputed horizontal line of candidate vertices (same
height band, same side, from the landmark vertex inwards and towards the front); at every
iteration the candidate that is outermost in the rotated camera frame is used (the
silhouette), as in Zhu et al. (3DDFA) and Booth et al.  ``contour="fixed"`` always uses the
model's landmark vertex (right when the 2D landmarks are projections of those vertices,
as in the demo world's sidecars).  ``contour_weight`` scales the weight of the jaw points.

Hand-written rather than a generic optimiser because the two closed-form steps are exact,
deterministic and need no step sizes; tests compare them against per-face numpy/scipy
references.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

JAW = np.arange(17)
CHIN = 8
LEFT_EYE = np.arange(36, 42)
RIGHT_EYE = np.arange(42, 48)


def interocular(lm) -> np.ndarray:
    """Distance between the eye centres of 68-point shapes ``[..., 68, D] -> [...]``."""
    lm = np.asarray(lm, np.float64)
    return np.linalg.norm(lm[..., LEFT_EYE, :].mean(-2) - lm[..., RIGHT_EYE, :].mean(-2), axis=-1)


def landmark_errors(fitted, target) -> np.ndarray:
    """Landmark RMSE of ``fitted [..., 68, 2]`` against ``target [..., 68, 2]`` over each
    target's inter-ocular distance -> ``[...]``."""
    d = np.asarray(fitted, np.float64) - np.asarray(target, np.float64)
    return np.sqrt((d ** 2).sum(-1).mean(-1)) / np.maximum(interocular(target), 1e-12)


def landmark_error(fitted, target) -> float:
    """:func:`landmark_errors` of one face ``[68, 2]`` (the shards' ``fit_error``)."""
    return float(landmark_errors(fitted, target))


def resolve_contour(contour: str, source: int) -> str:
    """``fit.contour`` for landmarks from ``source`` (0 sidecar, 1 detected, 2 detected and
    calibrated): ``auto`` is fixed for sidecars and calibrated detections (both are the
    model's landmark vertices) and dynamic for raw detections; others are returned as given."""
    return ("dynamic" if int(source) == 1 else "fixed") if contour == "auto" else contour


def _schema(key: str):
    """A ``fit:`` default of the schema (config/demo.yaml), read when an option is left out."""
    from pipeline.config import schema_default

    return schema_default("fit", key)


@dataclass
class FitOptions:
    """Options of :class:`LandmarkFitter` (config section ``fit``).

    The defaults are the schema's (``config/demo.yaml``, read when the object is made) for
    sidecar landmarks: ``sigma`` is ``fit.sigma`` and ``contour`` is ``fit.contour`` resolved
    for sidecars (:func:`resolve_contour`).  ``n_exp``, ``device`` and ``max_batch`` are not
    config keys."""

    iterations: int = field(default_factory=lambda: int(_schema("iterations")))   # closed-form alternations
    refine_iterations: int = field(default_factory=lambda: int(_schema("refine_iterations")))  # joint LM steps
    n_id: Optional[int] = field(default_factory=lambda: _schema("n_id"))   # identity components (None: all)
    n_exp: Optional[int] = None         # expression components used (None: all E)
    prior_id: float = field(default_factory=lambda: float(_schema("prior_id")))
    prior_exp: float = field(default_factory=lambda: float(_schema("prior_exp")))
    sigma: float = field(default_factory=lambda: float(_schema("sigma")))  # landmark noise, fraction of the inter-ocular distance
    contour: str = field(default_factory=lambda: resolve_contour(_schema("contour"), 0))   # dynamic | fixed
    contour_weight: float = field(default_factory=lambda: float(_schema("contour_weight")))
    device: Optional[str] = None        # None: cuda when available, else cpu
    max_batch: int = 256                # faces per internal batch (CPU caches: ~2x faster than 4096)

    @classmethod
    def from_config(cls, fit_cfg: dict, **over) -> "FitOptions":
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in dict(fit_cfg).items() if k in names}
        kw.update(over)
        return cls(**kw)


@dataclass
class FitResult:
    """Per-face results (numpy): ``p_id [B,K']``, ``p_exp [B,E']`` (normalised),
    ``camera [B,7]``, ``lm_fitted [B,68,2]`` (pixels), ``fit_error [B]`` (landmark RMSE /
    inter-ocular distance of the target landmarks), ``converged [B]`` bool, ``residual [B]``
    (median colour residual of a photometric refinement; NaN where none ran)."""

    p_id: np.ndarray
    p_exp: np.ndarray
    camera: np.ndarray
    lm_fitted: np.ndarray
    fit_error: np.ndarray
    converged: np.ndarray = field(default=None)
    residual: np.ndarray = field(default=None)


def rotation_to_angles(R):
    """Inverse of ``R = Rz(roll) Ry(yaw) Rx(pitch)``: ``R [...,3,3] -> (pitch, yaw, roll)``
    (torch tensors ``[...]``)."""
    import torch

    yaw = torch.asin(torch.clamp(-R[..., 2, 0], -1.0, 1.0))
    roll = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    pitch = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    return pitch, yaw, roll


def scaled_orthographic_camera(X, y, w):
    """Closed-form weak-perspective camera for 3D points and their 2D projections.

    Args:
        X: ``[B, L, 3]`` model points; y: ``[B, L, 2]`` pixels (u, v); w: ``[B, L]`` weights.
    Returns:
        ``(s [B], R [B,3,3], t [B,2])`` with ``[u, v] ~ (s X R[0] + tx, -s X R[1] + ty)``.
    """
    import torch

    yf = torch.stack([y[..., 0], -y[..., 1]], -1)                      # [B,L,2], v flipped
    Xh = torch.cat([X, torch.ones_like(X[..., :1])], -1)               # [B,L,4]
    Xw = Xh * w[..., None]
    G = Xw.transpose(1, 2) @ Xh                                        # [B,4,4]
    G = G + 1e-9 * G.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(4, dtype=X.dtype, device=X.device)
    M = torch.linalg.solve(G, Xw.transpose(1, 2) @ yf)                 # [B,4,2]
    A = M[:, :3, :].transpose(1, 2)                                    # [B,2,3]
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)                # U [B,2,2], Vh [B,2,3]
    R2 = U @ Vh
    s = S.mean(-1)
    r3 = torch.linalg.cross(R2[:, 0], R2[:, 1], dim=-1)
    R = torch.cat([R2, r3[:, None]], 1)
    proj = s[:, None, None] * (X @ R2.transpose(1, 2))                 # [B,L,2]
    wsum = w.sum(-1).clamp_min(1e-12)
    t = ((yf - proj) * w[..., None]).sum(1) / wsum[:, None]
    return s, R, torch.stack([t[:, 0], -t[:, 1]], -1)


def _weighted_gram(A, w):
    """``sum_k w_k A_k^T A_k`` for ``A [B,K,2,P]``, ``w [B,K]`` -> ``[B,P,P]``."""
    import torch

    return torch.einsum("bkip,bkiq->bpq", A * w[..., None, None], A)


def skew(v):
    """Cross-product matrices ``[..., 3] -> [..., 3, 3]`` (``skew(a) @ b == a x b``)."""
    import torch

    z = torch.zeros_like(v[..., 0])
    return torch.stack([torch.stack([z, -v[..., 2], v[..., 1]], -1),
                        torch.stack([v[..., 2], z, -v[..., 0]], -1),
                        torch.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def camera_vector(s, R, t):
    """``(s [B], R [B,3,3], t [B,2]) -> camera [B,7]`` (weak perspective, dist = 0)."""
    import torch

    pitch, yaw, roll = rotation_to_angles(R)
    return torch.stack([pitch, yaw, roll, t[:, 0], t[:, 1], s, torch.zeros_like(s)], -1)


def _contour_candidates(mean: np.ndarray, landmarks: np.ndarray, max_candidates: int = 48) -> np.ndarray:
    """Candidate vertex lines for the jaw points: ``[17, C] int64`` (row 8 = chin, fixed).

    For jaw landmark j with vertex (x_j, y_j, z_j): vertices in a horizontal band
    ``|y - y_j| < h_j`` on the same side (``x * x_j > 0``), inwards (``|x| <= |x_j|``) and
    not behind it (``z >= z_j``); the landmark vertex itself is always first.  When more
    than ``max_candidates`` qualify, an even subsample along x is kept.  Rows are padded
    by repeating the landmark vertex.
    """
    V = mean.reshape(-1, 3).astype(np.float64)
    jaw = landmarks[JAW]
    P = V[jaw]
    spacing = np.abs(np.diff(P[:, 1]))
    rows = []
    for j in range(17):
        lv = jaw[j]
        if j == CHIN:
            rows.append([lv])
            continue
        near = [spacing[j - 1] if j > 0 else np.inf, spacing[j] if j < 16 else np.inf]
        h = max(0.5 * min(near), 1e-3 * np.ptp(V[:, 1]))
        x, y, z = P[j]
        sel = ((np.abs(V[:, 1] - y) < h) & (V[:, 0] * x > 0) & (np.abs(V[:, 0]) <= abs(x))
               & (V[:, 2] >= z))
        cand = np.flatnonzero(sel)
        cand = cand[cand != lv]
        if len(cand) > max_candidates - 1:
            order = cand[np.argsort(np.abs(V[cand, 0]), kind="stable")]
            cand = order[np.linspace(0, len(order) - 1, max_candidates - 1).round().astype(int)]
        rows.append([lv] + list(cand))
    C = max(len(r) for r in rows)
    return np.array([r + [r[0]] * (C - len(r)) for r in rows], np.int64)


class LandmarkFitter:
    """Fit camera + identity + expression to batches of 68 2D landmarks.

    ``LandmarkFitter(model, options).fit(lm [B,68,2], weights [B,68] | None) -> FitResult``.
    Deterministic (float64, no randomness); runs on ``options.device``.
    """

    def __init__(self, model, options: FitOptions | None = None):
        import torch

        self.model = model
        self.opt = opt = options or FitOptions()
        if opt.contour not in ("dynamic", "fixed"):
            raise ValueError(f"fit.contour must be 'dynamic' or 'fixed', got {opt.contour!r}")
        self.device = torch.device(opt.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float64
        self.k = model.n_id if opt.n_id is None else max(0, min(int(opt.n_id), model.n_id))
        self.e = model.n_exp if opt.n_exp is None else max(0, min(int(opt.n_exp), model.n_exp + model.n_speech))
        U_e, ev_e = model._exp_basis_np(self.e) if self.e else (np.zeros((model.mean.size, 0)), np.zeros(0))
        lm = np.asarray(model.landmarks, np.int64)
        if opt.contour == "dynamic":
            cand = _contour_candidates(model.mean, lm)                 # [17, C]
        else:
            cand = lm[JAW][:, None]
        self.n_cand = cand.shape[1]
        verts = np.concatenate([lm, cand.reshape(-1)])                 # 68 + 17*C vertex ids
        rows = (verts[:, None] * 3 + np.arange(3)[None]).reshape(-1)
        B_id = model.U_id[rows, : self.k].astype(np.float64) * np.sqrt(model.ev_id[: self.k].astype(np.float64))
        B_ex = U_e[rows].astype(np.float64) * np.sqrt(np.asarray(ev_e, np.float64))
        basis = np.concatenate([B_id, B_ex], 1).reshape(len(verts), 3, self.k + self.e)
        mean = model.mean[rows].astype(np.float64).reshape(len(verts), 3)
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self._mean_lm, self._basis_lm = t(mean[:68]), t(basis[:68])
        self._mean_c = t(mean[68:].reshape(17, self.n_cand, 3))
        self._basis_c = t(basis[68:].reshape(17, self.n_cand, 3, self.k + self.e))
        self._side = t(np.where(np.arange(17) < CHIN, -1.0, 1.0))     # outward direction in x
        self.model_iod = float(interocular(mean[:68]))
        prior = np.concatenate([np.full(self.k, opt.prior_id), np.full(self.e, opt.prior_exp)])
        self._prior = t(prior)
        self._gram, self._gram_key = None, None

    # ---------------------------------------------------------------- pieces
    def _landmark_geometry(self, p, R):
        """3D landmarks for params ``p [B,P]`` and rotations ``R [B,3,3]`` (or None).

        Returns ``(X [B,68,3], jaw)`` where ``jaw`` is None (fixed landmark vertices) or
        ``(jm [B,17,3], jb [B,17,3,P])``: mean rows and basis rows of the silhouette
        candidates chosen for the jaw points when the contour is dynamic.
        """
        import torch

        X = self._mean_lm[None] + torch.einsum("lkp,bp->blk", self._basis_lm, p)
        if self.n_cand > 1 and R is not None:
            Bsz = p.shape[0]
            Xc = self._mean_c[None] + torch.einsum("jckp,bp->bjck", self._basis_c, p)   # [B,17,C,3]
            xcam = torch.einsum("bjck,bk->bjc", Xc, R[:, 0])                           # camera x
            pick = torch.argmax(xcam * self._side[None, :, None], dim=-1)              # [B,17]
            jm = torch.gather(self._mean_c.expand(Bsz, -1, -1, -1), 2,
                              pick[:, :, None, None].expand(-1, -1, 1, 3))[:, :, 0]    # [B,17,3]
            jb = self._basis_c[torch.arange(17, device=p.device)[None], pick]          # [B,17,3,P]
            Xj = torch.gather(Xc, 2, pick[:, :, None, None].expand(-1, -1, 1, 3))[:, :, 0]
            X = torch.cat([Xj, X[:, 17:]], 1)
            return X, (jm, jb)
        return X, None

    def _static_hessian(self, proj, lo, ws, A=None):
        """``sum_k ws_k B_k^T proj^T proj B_k`` over the static landmark points ``k >= lo``
        (``proj [B,2,3]``, ``ws [B,K]``) -> ``[B,P,P]``.

        When all faces share the weights (the usual case), ``sum_k w_k B_k[i]^T B_k[j]`` is
        computed once and cached, and the result is a 9-term combination with ``proj^T proj``
        (P^2 x 9 instead of P^2 x 136 multiply-adds).  Otherwise it is formed per face from
        ``A = proj B`` ``[B,K,2,P]`` (pass it when the caller has it)."""
        import torch

        Bs = self._basis_lm[lo:]
        if bool((ws == ws[:1]).all()):
            key = (lo, ws[0].cpu().numpy().tobytes())
            if self._gram_key != key:                                   # weights rarely change: cache
                self._gram = torch.einsum("kip,kjq->ijpq", Bs * ws[0][:, None, None], Bs)   # [3,3,P,P]
                self._gram_key = key
            return torch.einsum("bij,ijpq->bpq", proj.transpose(1, 2) @ proj, self._gram)
        if A is None:
            A = torch.einsum("bij,kjp->bkip", proj, Bs)
        return _weighted_gram(A, ws)

    def _solve_shape(self, y, w, s, R, t, jaw, s_ref):
        """Exact minimiser of E over p for a fixed camera (batched normal equations).

        For a point k with basis rows ``B_k [3,P]`` the projected residual is
        ``R2 (m_k + B_k p) - b'_k``, so ``H = sum_k w_k B_k^T (R2^T R2) B_k``.  When all faces
        share the weights of the fixed landmark vertices (the usual case), ``H`` comes from a
        cached Gram tensor (:meth:`_static_hessian`); the dynamic jaw points are added per face.
        """
        import torch

        R2 = R[:, :2]                                                   # [B,2,3]
        yf = torch.stack([y[..., 0] - t[:, None, 0], -(y[..., 1] - t[:, None, 1])], -1)   # [B,68,2]
        c = (s / s_ref) ** 2 / (self.opt.sigma * self.model_iod) ** 2   # [B]; ||s (A p - b)||^2 / (sigma s_ref)^2
        lo = 17 if jaw is not None else 0
        Bs, ms = self._basis_lm[lo:], self._mean_lm[lo:]                # static points [K,3,P], [K,3]
        ws = w[:, lo:]
        b = yf[:, lo:] / s[:, None, None] - torch.einsum("bij,kj->bki", R2, ms)           # [B,K,2]
        g = torch.einsum("kjp,bkj->bp", Bs, ws[..., None] * torch.einsum("bij,bki->bkj", R2, b))
        H = self._static_hessian(R2, lo, ws)
        if jaw is not None:
            jm, jb = jaw
            wj = w[:, :17]
            bj = yf[:, :17] / s[:, None, None] - torch.einsum("bij,blj->bli", R2, jm)
            Aj = torch.einsum("bij,bljp->blip", R2, jb)                              # [B,17,2,P]
            H = H + _weighted_gram(Aj, wj)
            g = g + torch.einsum("blip,bli->bp", Aj, wj[..., None] * bj)
        H = c[:, None, None] * H
        H.diagonal(dim1=1, dim2=2).add_(self._prior)
        g = c[:, None] * g
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info == 0).all()):
            return torch.cholesky_solve(g[..., None], L)[..., 0]
        return torch.linalg.solve(H, g[..., None])[..., 0]

    def _residual(self, y, w, p, s, R, t, kappa):
        """Landmark residuals and energy for a full state.

        Returns ``(X [B,68,3], jaw, r [B,68,2], E [B])`` with ``r = s R2 X + t' - y'`` in
        flipped (u, -v) pixel coordinates and ``E = kappa sum_k w_k ||r_k||^2 + prior ||p||^2``.
        """
        import torch

        X, jaw = self._landmark_geometry(p, R)
        yf = torch.stack([y[..., 0], -y[..., 1]], -1)
        tf = torch.stack([t[:, 0], -t[:, 1]], -1)
        r = s[:, None, None] * (X @ R[:, :2].transpose(1, 2)) + tf[:, None] - yf
        E = kappa * (w * (r ** 2).sum(-1)).sum(-1) + (self._prior * p ** 2).sum(-1)
        return X, jaw, r, E

    def _lm_step(self, y, w, p, s, R, t, kappa, lam):
        """One batched Levenberg-Marquardt step over ``[omega (3), log s, t (2), p (P)]``.

        Rotation updates are ``R <- R exp([omega]_x)``, so ``d r_k / d omega = -s R2 [X_k]_x``;
        ``d r_k / d log s = s R2 X_k``; ``d r_k / d t' = I``; ``d r_k / d p = s R2 B_k``.  The
        ``p``-block of ``J^T W J`` reuses the cached Gram tensor of the static points (as in
        :meth:`_solve_shape`); the dynamic jaw points are added per face.  A step is kept per
        face only when it lowers ``E``; the damping ``lam`` [B] adapts per face.
        """
        import torch

        X, jaw, r, E = self._residual(y, w, p, s, R, t, kappa)
        Bsz, P = p.shape
        R2 = R[:, :2]
        sR2 = s[:, None, None] * R2                                                    # [B,2,3]
        J_w = -torch.einsum("bij,bkjl->bkil", sR2, skew(X))                            # [B,68,2,3]
        J_s = torch.einsum("bij,bkj->bki", sR2, X)[..., None]                         # [B,68,2,1]
        J_t = torch.eye(2, dtype=p.dtype, device=p.device).expand(Bsz, 68, 2, 2)
        Jc = torch.cat([J_w, J_s, J_t], -1)                                            # [B,68,2,6]
        lo = 17 if jaw is not None else 0
        Bs = self._basis_lm[lo:]                                                       # [K,3,P]
        ws = w[:, lo:]
        J_p = torch.einsum("bij,kjp->bkip", sR2, Bs)                                   # [B,K,2,P]
        wr = w[..., None] * r                                                          # [B,68,2]
        Hcc = torch.einsum("bkic,bkid->bcd", Jc * w[..., None, None], Jc)              # [B,6,6]
        gc = torch.einsum("bkic,bki->bc", Jc, wr)
        Hcp = torch.einsum("bkic,bkip->bcp", Jc[:, lo:] * ws[..., None, None], J_p)    # [B,6,P]
        gp = torch.einsum("bkip,bki->bp", J_p, wr[:, lo:])
        Hpp = self._static_hessian(sR2, lo, ws, J_p)
        if jaw is not None:
            jm, jb = jaw
            J_j = torch.einsum("bij,bljp->blip", sR2, jb)                              # [B,17,2,P]
            wj = w[:, :17]
            Hcp = Hcp + torch.einsum("blic,blip->bcp", Jc[:, :17] * wj[..., None, None], J_j)
            gp = gp + torch.einsum("blip,bli->bp", J_j, wr[:, :17])
            Hpp = Hpp + _weighted_gram(J_j, wj)
        H = torch.cat([torch.cat([Hcc, Hcp], 2), torch.cat([Hcp.transpose(1, 2), Hpp], 2)], 1)
        H = kappa[:, None, None] * H
        g = kappa[:, None] * torch.cat([gc, gp], 1)
        g[:, 6:] += self._prior * p
        H.diagonal(dim1=1, dim2=2)[:, 6:] += self._prior
        d = H.diagonal(dim1=1, dim2=2)
        Hd = H + torch.diag_embed(lam[:, None] * d.clamp_min(1e-12))
        L, info = torch.linalg.cholesky_ex(Hd)
        if bool((info == 0).all()):
            delta = -torch.cholesky_solve(g[..., None], L)[..., 0]
        else:
            delta = -torch.linalg.solve(Hd, g[..., None])[..., 0]
        delta = torch.nan_to_num(delta)
        R_new = R @ torch.linalg.matrix_exp(skew(delta[:, :3]))
        s_new = s * torch.exp(delta[:, 3].clamp(-1.0, 1.0))
        t_new = t + torch.stack([delta[:, 4], -delta[:, 5]], -1)
        p_new = p + delta[:, 6:]
        _, _, _, E_new = self._residual(y, w, p_new, s_new, R_new, t_new, kappa)
        ok = torch.isfinite(E_new) & (E_new < E)
        sel = lambda a, b: torch.where(ok.reshape(-1, *([1] * (a.ndim - 1))), a, b)  # noqa: E731
        lam = torch.where(ok, lam / 3.0, lam * 4.0).clamp(1e-9, 1e9)
        return sel(p_new, p), sel(s_new, s), sel(R_new, R), sel(t_new, t), lam

    def solve_shape(self, lm2d, camera, weights=None) -> np.ndarray:
        """The shape step alone: MAP ``p = [p_id, p_exp]`` ``[B, P]`` for fixed weak-perspective
        cameras ``[B, 7]`` and landmarks ``[B, 68, 2]`` (fixed landmark vertices)."""
        import torch

        from render.camera import camera_rotation

        y = torch.as_tensor(np.asarray(lm2d, np.float64), dtype=self.dtype, device=self.device)
        cam = np.asarray(camera, np.float64)
        R = torch.as_tensor(camera_rotation(cam), dtype=self.dtype, device=self.device)
        s = torch.as_tensor(cam[:, 5], dtype=self.dtype, device=self.device)
        t = torch.as_tensor(cam[:, 3:5], dtype=self.dtype, device=self.device)
        w = (torch.ones(y.shape[:2], dtype=self.dtype, device=self.device) if weights is None
             else torch.as_tensor(np.asarray(weights, np.float64), dtype=self.dtype, device=self.device))
        s_ref = torch.as_tensor(interocular(np.asarray(lm2d, np.float64)) / self.model_iod,
                                dtype=self.dtype, device=self.device)
        return self._solve_shape(y, w, s, R, t, None, s_ref).cpu().numpy()

    def fit_camera_only(self, lm2d, weights=None) -> np.ndarray:
        """Closed-form weak-perspective camera ``[B, 7]`` of the *mean* shape to landmarks
        ``[B, 68, 2]`` (the initialisation used by the itw baseline)."""
        import torch

        y = torch.as_tensor(np.asarray(lm2d, np.float64), dtype=self.dtype, device=self.device)
        w = (torch.ones(y.shape[:2], dtype=self.dtype, device=self.device) if weights is None
             else torch.as_tensor(np.asarray(weights, np.float64), dtype=self.dtype, device=self.device))
        X = self._mean_lm.expand(y.shape[0], -1, -1)
        s, R, t = scaled_orthographic_camera(X, y, w)
        return camera_vector(s, R, t).cpu().numpy()

    # ---------------------------------------------------------------- main
    def fit(self, lm2d, weights=None) -> FitResult:
        """Fit a batch.

        Args:
            lm2d: ``[B, 68, 2]`` target landmarks, pixels (u, v) (numpy or torch).
            weights: ``[B, 68]`` per-point weights (0 ignores a point); default ones.
        Returns:
            :class:`FitResult` with numpy arrays (float32).
        """
        import torch

        from render.camera import project_torch

        n = len(lm2d)
        mb = max(1, int(self.opt.max_batch)) if self.device.type == "cpu" else n
        if n > mb:
            parts = [self.fit(lm2d[i:i + mb], None if weights is None else weights[i:i + mb])
                     for i in range(0, n, mb)]
            return FitResult(**{k: np.concatenate([getattr(r, k) for r in parts])
                                for k in ("p_id", "p_exp", "camera", "lm_fitted", "fit_error", "converged")})
        y = torch.as_tensor(np.asarray(lm2d, np.float64), dtype=self.dtype, device=self.device)
        if y.ndim != 3 or y.shape[1:] != (68, 2):
            raise ValueError(f"landmarks must be [B, 68, 2], got {tuple(y.shape)}")
        Bsz = y.shape[0]
        P = self.k + self.e
        if Bsz == 0:
            z = np.zeros
            return FitResult(z((0, self.k), np.float32), z((0, self.e), np.float32), z((0, 7), np.float32),
                             z((0, 68, 2), np.float32), z(0, np.float32), z(0, bool))
        w = (torch.ones(Bsz, 68, dtype=self.dtype, device=self.device) if weights is None
             else torch.as_tensor(np.asarray(weights, np.float64), dtype=self.dtype, device=self.device))
        w = w.clone()
        w[:, JAW] *= self.opt.contour_weight
        iod_2d = torch.as_tensor(interocular(np.asarray(lm2d, np.float64)), dtype=self.dtype, device=self.device)
        s_ref = (iod_2d / self.model_iod).clamp_min(1e-12)
        p = torch.zeros(Bsz, P, dtype=self.dtype, device=self.device)
        R = None
        for _ in range(max(1, int(self.opt.iterations))):
            X, jaw = self._landmark_geometry(p, R)
            s, R, t = scaled_orthographic_camera(X, y, w)
            X, jaw = self._landmark_geometry(p, R)
            p = self._solve_shape(y, w, s, R, t, jaw, s_ref)
        X, _ = self._landmark_geometry(p, R)
        s, R, t = scaled_orthographic_camera(X, y, w)
        if int(self.opt.refine_iterations) > 0:
            kappa = 1.0 / (self.opt.sigma * self.model_iod * s_ref) ** 2
            lam = torch.full((Bsz,), 1e-3, dtype=self.dtype, device=self.device)
            for _ in range(int(self.opt.refine_iterations)):
                p, s, R, t, lam = self._lm_step(y, w, p, s, R, t, kappa, lam)
        X, _ = self._landmark_geometry(p, R)
        cam = camera_vector(s, R, t)
        fitted = project_torch(X, cam)
        err = torch.sqrt(((fitted - y) ** 2).sum(-1).mean(-1)) / iod_2d.clamp_min(1e-12)
        ok = torch.isfinite(err) & torch.isfinite(p).all(-1) & torch.isfinite(cam).all(-1)
        f = lambda a: a.detach().cpu().numpy().astype(np.float32)  # noqa: E731
        return FitResult(p_id=f(p[:, : self.k]), p_exp=f(p[:, self.k:]), camera=f(cam),
                         lm_fitted=f(fitted), fit_error=f(err), converged=ok.cpu().numpy())
