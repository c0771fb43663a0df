"""The energy that :mod:`fitting.photometric` minimises, with its exact Jacobian.

For one face, at a fixed visibility and a fixed light/albedo, the residual vector is

    r = [ (I(uv_i) - a_i * (Y(n_i) L)) / sigma_I        for visible sample vertices i
          sqrt(w_k) (uv_k - y_k) / (sigma_lm * iod)     for the 68 landmarks
          sqrt(prior) * p                                 (identity and expression priors) ]

over ``x = [omega (3), log s, tx, ty, p_id, p_exp]`` (``R <- R exp([omega]_x)``), with the
model's own image formation (the one ``render.render`` uses): per-vertex albedo of the
texture model times Lambertian SH shading of the camera-frame normal.
:meth:`PhotometricEnergy._jacobian` is the analytic Jacobian (checked against
``torch.func.jacfwd``); the light (9 x 3 SH coefficients) and the texture parameters are
solved in closed form (:meth:`PhotometricEnergy._solve_appearance`, each linear given the
other).

**Render correction** (``render_correction``).  A rendered (or photographed) face is not
its per-vertex colours: the rasteriser interpolates them over pixel centres, clips the
shading to [0, 1], mixes in the background at the silhouette, and the coarse levels blur
it.  Sampled at a vertex, the photo of the *true* state therefore differs from
``albedo * shading`` (by 0.01-0.05 on average on the demo photos, much more at sharp
albedo edges), and the optimum moves away from the truth to absorb it.  At every step the current state is rendered
(``render.render``, over the photo as background, blurred like the photo) and the
difference ``render(uv) - albedo * shading`` is added to the model term as a constant of
that step; at the true state of a rendered face the corrected residual is the uint8
rounding only (tested).  This approximates render-and-compare (the offset's own
derivative is left out) at the cost of one render per step, without a differentiable
rasteriser.

Only a fixed, evenly spread subset of the face's vertices is sampled (``n_samples``);
their normals are the exact area-weighted vertex normals of ``render.lighting`` computed
from their incident triangles, so the model term matches the renderer at those vertices.
"""
from __future__ import annotations

import warnings

import numpy as np

from fitting.fit import CHIN, JAW, _contour_candidates, interocular, skew
from render.lighting import SH_A, SH_C

_C = SH_C                                  # real SH constants of bands 0-2 (the renderer's)
_A = (SH_A[0], SH_A[1], SH_A[4])           # Lambertian factors of bands 0, 1, 2


def sh_basis_torch(n):
    """Lambertian-convolved SH basis ``[..., 9]`` at unit normals ``[..., 3]`` (torch; the
    same constants and order as :func:`render.lighting.sh_basis`)."""
    import torch

    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    c0, c1, c2, c3, c4 = _C
    a0, a1, a2 = _A
    return torch.stack([
        torch.full_like(x, c0 * a0),
        a1 * c1 * y, a1 * c1 * z, a1 * c1 * x,
        a2 * c2 * x * y, a2 * c2 * y * z, a2 * c3 * (3 * z * z - 1), a2 * c2 * x * z, a2 * c4 * (x * x - y * y),
    ], -1)


def _bilinear_taps(img, uv):
    """The four taps of a bilinear sample: ``(i0, i1, j0, j1, fx [N,1], fy [N,1])`` for
    ``img [H, W, C]`` at pixel coordinates ``uv [N, 2]`` (pixel centres at ``j + 0.5``,
    borders clamped); ``fx``/``fy`` keep ``uv``'s autodiff graph."""
    import torch

    H, W = img.shape[:2]
    x = (uv[:, 0] - 0.5).clamp(0, W - 1)
    y = (uv[:, 1] - 0.5).clamp(0, H - 1)
    x0 = torch.floor(x.detach()).clamp(0, max(W - 2, 0))
    y0 = torch.floor(y.detach()).clamp(0, max(H - 2, 0))
    i0, j0 = y0.long(), x0.long()
    return i0, (i0 + 1).clamp(max=H - 1), j0, (j0 + 1).clamp(max=W - 1), (x - x0)[:, None], (y - y0)[:, None]


def bilinear(img, uv):
    """Sample ``img [H, W, C]`` (torch, float) at pixel coordinates ``uv [N, 2]`` (pixel
    centres at ``j + 0.5``, borders clamped), differentiable in ``uv`` in both AD modes."""
    i0, i1, j0, j1, fx, fy = _bilinear_taps(img, uv)
    return ((1 - fy) * ((1 - fx) * img[i0, j0] + fx * img[i0, j1])
            + fy * ((1 - fx) * img[i1, j0] + fx * img[i1, j1]))


def _colour_residual(img, uv, n, albedo, light, offset=None):
    """Photo minus model colour at the samples ``[S,3]``: ``img`` sampled at ``uv [S,2]``,
    less the step's render ``offset``, less ``albedo * (Y(n) light)``."""
    obs = bilinear(img, uv) if offset is None else bilinear(img, uv) - offset
    return obs - albedo * (sh_basis_torch(n) @ light)


def blur_window(img: np.ndarray, blur: float, uv):
    """``gaussian_filter(img, blur)`` per channel, computed only over the window that
    :func:`bilinear` reads at ``uv [N, 2]`` (torch) -> ``(window [h, w, C], uv in the window)``.
    The input window reaches ``int(4 * blur + 0.5)`` pixels (the filter's radius) beyond the
    taps, or to the image border, where the filter reflects as it does on the whole image, so
    the sampled values are those of the whole image's blur (tested)."""
    import torch
    from scipy.ndimage import gaussian_filter

    H, W = img.shape[:2]
    i0, i1, j0, j1, _, _ = _bilinear_taps(torch.empty(H, W, 0), uv)       # only the shape is read
    rad = int(4.0 * float(blur) + 0.5)
    a, b = int(i0.min()), int(i1.max()) + 1                       # rows the taps read
    c, d = int(j0.min()), int(j1.max()) + 1
    ya, yb, xa, xb = max(a - rad, 0), min(b + rad, H), max(c - rad, 0), min(d + rad, W)
    win = np.stack([gaussian_filter(img[ya:yb, xa:xb, k], blur) for k in range(img.shape[2])], -1)
    out = win[a - ya:b - ya, c - xa:d - xa]
    return out, uv - torch.tensor([float(c), float(a)], dtype=uv.dtype)


def sample_vertices(model, n: int) -> np.ndarray:
    """An evenly spread, deterministic subset of the face's front vertices ``[<=n]``: inside
    the landmarks' x range and between the chin and a band above the brows, facing the
    viewer in the mean shape."""
    from render.lighting import vertex_normals

    V = model.mean.reshape(-1, 3).astype(np.float64)
    L = V[model.landmarks]
    nrm = vertex_normals(V, model.trilist)
    top = L[17:27, 1].max() + 0.25 * (L[17:27, 1].max() - L[8, 1])
    sel = ((V[:, 0] >= L[:, 0].min()) & (V[:, 0] <= L[:, 0].max()) & (V[:, 1] >= L[8, 1])
           & (V[:, 1] <= top) & (nrm[:, 2] > 0.2))
    idx = np.flatnonzero(sel)
    if len(idx) > n:
        # even spread: order by a coarse 3D grid cell, take every k-th
        cell = np.floor((V[idx] - V[idx].min(0)) / (np.ptp(V[idx], 0).max() / 64)).astype(np.int64)
        order = np.lexsort((cell[:, 2], cell[:, 0], cell[:, 1]))
        idx = np.sort(idx[order][np.linspace(0, len(idx) - 1, n).round().astype(int)])
    return idx


class PhotometricEnergy:
    """The per-face energy of a model (sample vertices, their incident triangles, the bases
    at the vertices a step touches, precomputed once) and its pieces: :meth:`_geometry`,
    :meth:`_residual`, :meth:`_jacobian`, :meth:`_solve_appearance`, :meth:`_render_offset`.
    ``options``: a :class:`fitting.photometric.PhotometricOptions`.  float64, CPU or the
    fitter's device."""

    def __init__(self, model, options, device=None):
        import torch

        self.model = model
        self.opt = opt = options
        if model.U_tex is None or model.texture_mean is None:
            raise ValueError("photometric refinement needs a texture model (model.h5 /texture)")
        self.device = torch.device(device or "cpu")
        self.dtype = torch.float64
        S = sample_vertices(model, int(opt.n_samples))                       # sorted vertex ids
        T = np.asarray(model.trilist, np.int64)
        lm = np.asarray(model.landmarks, np.int64)
        # incident triangles of each sample vertex, in triangle order, padded with a
        # degenerate triangle (all corners on one vertex: zero normal, zero derivative)
        is_s = np.zeros(model.n_vertices, bool)
        is_s[S] = True
        t_inc, corner = np.nonzero(is_s[T])
        v_inc = T[t_inc, corner]
        order = np.lexsort((t_inc, v_inc))
        t_inc, s_pos = t_inc[order], np.searchsorted(S, v_inc[order])
        tris = np.unique(t_inc)
        cand = _contour_candidates(model.mean, lm)                             # [17, C] silhouette lines
        used = np.unique(np.concatenate([S, lm, cand.ravel(), T[tris].ravel()]))   # vertices the step touches
        tri_local = np.concatenate([np.searchsorted(used, T[tris]), np.zeros((1, 3), np.int64)])
        counts = np.bincount(s_pos, minlength=len(S))
        slot = np.arange(len(s_pos)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[s_pos]
        inc_local = np.full((len(S), counts.max()), len(tris), np.int64)
        inc_local[s_pos, slot] = np.searchsorted(tris, t_inc)
        self.samples = S
        self._trilist = np.ascontiguousarray(T)                                # int64 [T,3], for the z-buffer pass
        self.k, self.e = model.n_id, model.n_exp
        rows = (used[:, None] * 3 + np.arange(3)[None]).reshape(-1)
        B = np.concatenate([model.U_id[rows] * np.sqrt(model.ev_id), model.U_exp[rows] * np.sqrt(model.ev_exp)], 1)
        t = lambda a, dt=None: torch.as_tensor(a, dtype=dt or self.dtype, device=self.device)  # noqa: E731
        self._mean = t(model.mean[rows].reshape(-1, 3))
        self._basis = t(B.reshape(len(used), 3, -1))
        self._tri = t(tri_local, torch.long)
        self._inc = t(inc_local, torch.long)
        self._s_local = t(np.searchsorted(used, S), torch.long)
        # d(face normal)/dp of triangle (a, b, c) is dA x (b - c) + dB x (c - a) + dC x (a - b):
        # each corner's basis rows crossed with the edge opposite it.  Summed over a sample's
        # incident triangles, corners on the same vertex merge into one (sample, vertex) pair:
        # dn_s = sum_v B_v x W_sv with W_sv = sum of those edges (about 7 pairs per sample
        # against 18 corners).
        corners = T[t_inc]                                                     # [I,3] global ids
        v_all = corners.reshape(-1)
        nxt, prv = np.roll(corners, -1, 1).reshape(-1), np.roll(corners, 1, 1).reshape(-1)
        s_all = np.repeat(s_pos, 3)
        keys, trip_pair = np.unique(s_all * model.n_vertices + v_all, return_inverse=True)
        self._trip_pair = t(trip_pair.reshape(-1), torch.long)
        self._trip_next = t(np.searchsorted(used, nxt), torch.long)
        self._trip_prev = t(np.searchsorted(used, prv), torch.long)
        self._pair_s = t(keys // model.n_vertices, torch.long)
        # dn_s = sum_v B_v x W_sv as one sparse [3S, 3U] x dense [3U, P] product: row 3s + c,
        # column 3v + c', six entries per pair (the cross product's), a fixed pattern in CSR
        # order; only the values (components of W) change from step to step.
        pair_s, pair_v = keys // model.n_vertices, np.searchsorted(used, keys % model.n_vertices)
        c_row, c_col = np.array([0, 0, 1, 1, 2, 2]), np.array([1, 2, 2, 0, 0, 1])
        rows = (3 * pair_s[:, None] + c_row).reshape(-1)
        cols = (3 * pair_v[:, None] + c_col).reshape(-1)
        order = np.lexsort((cols, rows))
        self._csr_crow = t(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=3 * len(S)))]), torch.long)
        self._csr_col = t(cols[order], torch.long)
        self._csr_order = t(order, torch.long)
        self._csr_comp = t(np.array([2, 1, 0, 2, 1, 0]), torch.long)          # W component of each entry
        self._csr_sign = t(np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
        self._basis_flat = self._basis.reshape(-1, self._basis.shape[-1])     # [3U, P] (a view)
        self._v_cache = None                                                   # (p, V) of the last plain evaluation
        self._lm_local = t(np.searchsorted(used, lm), torch.long)
        self._cand_local = t(np.searchsorted(used, cand), torch.long)          # [17, C]
        self._side = t(np.where(np.arange(17) < CHIN, -1.0, 1.0))             # outward direction in x
        srow = (S[:, None] * 3 + np.arange(3)[None]).reshape(-1)
        self._tex_mean = model.texture_mean.reshape(-1)[srow].reshape(-1, 3).astype(np.float64)
        self._tex_basis = (model.U_tex[srow] * np.sqrt(model.ev_tex)).reshape(len(S), 3, -1).astype(np.float64)
        self.model_iod = float(interocular(model.mean.reshape(-1, 3)[lm]))
        prior = np.concatenate([np.full(self.k, opt.prior_id), np.full(self.e, opt.prior_exp)])
        self._prior_sqrt = t(np.sqrt(prior))

    # ------------------------------------------------------------------ geometry
    def _geometry(self, x, R0, s0, t0, lm_idx=None):
        """State ``x [6 + P]`` relative to ``(R0, s0, t0)`` -> ``(uv_s [S,2], n_cam [S,3],
        uv_lm [68,2])``; ``lm_idx [68]`` the landmark vertices (local ids; default the
        model's)."""
        import torch

        R = R0 @ torch.linalg.matrix_exp(skew(x[:3]))
        s = s0 * torch.exp(x[3])
        V = self._vertices(x[6:])
        Xc = V @ R.T
        uv = torch.stack([s * Xc[:, 0] + t0[0] + x[4], -s * Xc[:, 1] + t0[1] + x[5]], -1)
        a, b, c = Xc[self._tri[:, 0]], Xc[self._tri[:, 1]], Xc[self._tri[:, 2]]
        fn = torch.linalg.cross(b - a, c - a, dim=-1)                         # [T,3], 2 x area
        n = fn[self._inc].sum(1)                                              # [S,3]
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return uv[self._s_local], n, uv[self._lm_local if lm_idx is None else lm_idx]

    def _vertices(self, p):
        """The used vertices ``[U,3]`` of the shape ``p``.  Plain tensors (no autograd, no
        ``torch.func`` transform) are cached by value: a step evaluates the same ``p`` in its
        appearance, residual and Jacobian (the camera is re-based, ``p`` is not), and the
        accepted trial's ``p`` is the next step's; the cached tensor is the same computation's
        result, so nothing changes but the time."""
        import torch

        plain = not p.requires_grad and not torch._C._functorch.is_functorch_wrapped_tensor(p)
        hit = self._v_cache                                                    # one read: safe across threads
        if plain and hit is not None and torch.equal(hit[0], p):
            return hit[1]
        V = self._mean + torch.einsum("vkp,p->vk", self._basis, p)
        if plain:
            self._v_cache = (p.clone(), V)
        return V

    def _jaw(self, x, R, contour):
        """Landmark vertex ids for ``contour``: :meth:`_contour_landmarks` when dynamic, None
        (the model's) when fixed."""
        return self._contour_landmarks(x[6:], R) if contour == "dynamic" else None

    def _contour_landmarks(self, p, R):
        """Local landmark vertex ids ``[68]`` with the 15 non-chin jaw points moved to the
        silhouette of the shape ``p`` under rotation ``R`` (the landmark fitter's dynamic
        contour: the outermost candidate in camera x on each jaw point's line)."""
        import torch

        Vc = self._mean[self._cand_local] + torch.einsum("jckp,p->jck", self._basis[self._cand_local], p)
        pick = torch.argmax((Vc @ R[0]) * self._side[:, None], dim=-1)      # [17]
        idx = self._lm_local.clone()
        idx[JAW] = self._cand_local[torch.arange(17, device=p.device), pick]
        return idx

    def _residual(self, x, R0, s0, t0, img, vis, albedo, light, y, wl, lm_idx=None, offset=None):
        import torch

        uv, n, uv_lm = self._geometry(x, R0, s0, t0, lm_idx)
        r_img = (_colour_residual(img, uv, n, albedo, light, offset) * vis[:, None]).reshape(-1) / self.opt.sigma_image
        r_lm = (wl[:, None] * (uv_lm - y)).reshape(-1)
        r_p = self._prior_sqrt * x[6:]
        return torch.cat([r_img, r_lm, r_p])

    def _jacobian(self, x, R0, s0, t0, img, vis, albedo, light, y, wl, lm_idx=None, offset=None):
        """Analytic Jacobian of :meth:`_residual` at a state with ``x[:6] == 0`` (the
        camera is re-based after every step): ``[M, 6 + P]``.  Checked against
        ``torch.func.jacfwd`` of :meth:`_residual` in the tests.  (``offset`` is a
        constant of the step and does not enter.)"""
        import torch

        P = x.shape[0] - 6
        p = x[6:]
        R, s = R0, s0
        V = self._vertices(p)                                                   # [U,3]
        F = torch.tensor([1.0, -1.0], dtype=x.dtype, device=x.device)
        sR2 = s * R[:2] * F[:, None]                                            # [2,3] (v flipped)

        def d_uv(idx):
            Vi = V[idx]                                                         # [n,3]
            J = torch.zeros(len(idx), 2, 6 + P, dtype=x.dtype, device=x.device)
            J[:, :, :3] = -torch.einsum("ij,njk->nik", sR2, skew(Vi))
            J[:, :, 3] = Vi @ sR2.T
            J[:, 0, 4] = 1.0
            J[:, 1, 5] = 1.0
            J[:, :, 6:] = torch.einsum("ij,njp->nip", sR2, self._basis[idx])
            return J

        J_uv = d_uv(self._s_local)                                              # [S,2,6+P]
        J_lm = d_uv(self._lm_local if lm_idx is None else lm_idx)               # [68,2,6+P]
        # normals (model frame) and their derivatives
        a, b, c = V[self._tri[:, 0]], V[self._tri[:, 1]], V[self._tri[:, 2]]
        e1, e2 = b - a, c - a
        fn = torch.linalg.cross(e1, e2, dim=-1)                                 # [T,3]
        nr = fn[self._inc].sum(1)                                               # [S,3]
        W = torch.zeros(len(self._pair_s), 3, dtype=x.dtype, device=x.device).index_add_(
            0, self._trip_pair, V[self._trip_next] - V[self._trip_prev])       # [Np,3]
        vals = (W[:, self._csr_comp] * self._csr_sign).reshape(-1)[self._csr_order]
        with warnings.catch_warnings():                                         # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            M = torch.sparse_csr_tensor(self._csr_crow, self._csr_col, vals, (3 * len(nr), self._basis_flat.shape[0]),
                                        check_invariants=False)
        dnr = (M @ self._basis_flat).reshape(len(nr), 3, P)                    # sum_v B_v x W_sv [S,3,P]
        norm = nr.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        nm = nr / norm
        dnm = (dnr - nm[..., None] * torch.einsum("sk,skp->sp", nm, dnr)[:, None]) / norm[..., None]
        n = nm @ R.T                                                            # camera frame
        J_n = torch.zeros(len(n), 3, 6 + P, dtype=x.dtype, device=x.device)
        J_n[:, :, :3] = -torch.einsum("ij,njk->nik", R, skew(nm))
        J_n[:, :, 6:] = torch.einsum("ij,njp->nip", R, dnm)
        # shading derivative dY/dn [S,9,3]
        c0, c1, c2, c3, c4 = _C
        a0, a1, a2 = _A
        X, Yy, Z = n[:, 0], n[:, 1], n[:, 2]
        zr = torch.zeros_like(X)
        k1, k4, k6, k8 = a1 * c1, a2 * c2, a2 * c3, a2 * c4
        dY = torch.stack([
            torch.stack([zr, zr, zr, zr + k1, k4 * Yy, zr, zr, k4 * Z, 2 * k8 * X], -1),
            torch.stack([zr, zr + k1, zr, zr, k4 * X, k4 * Z, zr, zr, -2 * k8 * Yy], -1),
            torch.stack([zr, zr, zr + k1, zr, zr, k4 * Yy, 6 * k6 * Z, k4 * X, zr], -1),
        ], -1)                                                                  # [S,9,3]
        dc_dn = albedo[..., None] * torch.einsum("snk,nc->sck", dY, light)     # [S,3(colour),3(n)]
        # image gradient of the bilinear sample
        uv = torch.stack([V[self._s_local] @ sR2[0] + t0[0], V[self._s_local] @ sR2[1] + t0[1]], -1)
        H, W = img.shape[:2]
        i0, i1, j0, j1, fx, fy = _bilinear_taps(img, uv)
        gx = (1 - fy) * (img[i0, j1] - img[i0, j0]) + fy * (img[i1, j1] - img[i1, j0])
        gy = (1 - fx) * (img[i1, j0] - img[i0, j0]) + fx * (img[i1, j1] - img[i0, j1])
        inside_x = ((uv[:, 0] - 0.5 > 0) & (uv[:, 0] - 0.5 < W - 1)).to(x.dtype)[:, None]
        inside_y = ((uv[:, 1] - 0.5 > 0) & (uv[:, 1] - 0.5 < H - 1)).to(x.dtype)[:, None]
        dobs = torch.stack([gx * inside_x, gy * inside_y], -1)                 # [S,3,2]
        J_img = (torch.einsum("sci,sip->scp", dobs, J_uv) - torch.einsum("sck,skp->scp", dc_dn, J_n))
        J_img = J_img * (vis[:, None, None] / self.opt.sigma_image)
        J_l = J_lm * wl[:, None, None]
        J_p = torch.zeros(P, 6 + P, dtype=x.dtype, device=x.device)
        J_p[:, 6:] = torch.diag(self._prior_sqrt)
        return torch.cat([J_img.reshape(-1, 6 + P), J_l.reshape(-1, 6 + P), J_p])

    # ------------------------------------------------------------------ appearance
    def _solve_appearance(self, obs, Y, vis, p_tex, rounds: int = 2):
        """Closed-form light ``[9,3]`` and texture ``[Kt]`` for fixed normals (alternating;
        each is a linear least-squares problem given the other).  numpy float64."""
        m = vis > 0
        sw = np.sqrt(vis[m])[:, None]                                         # IRLS weights
        a_mean, a_basis = self._tex_mean[m], self._tex_basis[m]               # [M,3], [M,3,Kt]
        o, Yv = obs[m] * sw, Y[m]
        kt = a_basis.shape[-1]
        L = np.zeros((9, 3))
        for _ in range(rounds):
            alb = (a_mean + a_basis @ p_tex) * sw                             # [M,3]
            for c in range(3):
                A = alb[:, c:c + 1] * Yv
                L[:, c] = np.linalg.solve(A.T @ A + 1e-6 * np.eye(9), A.T @ o[:, c])
            sh = Yv @ L                                                        # [M,3]
            D = (a_basis * (sh * sw)[..., None]).reshape(-1, kt)              # [3M,Kt]
            rhs = (o - a_mean * sh * sw).reshape(-1)
            lam = self.opt.prior_tex * self.opt.sigma_image ** 2
            p_tex = np.linalg.solve(D.T @ D + lam * np.eye(kt), D.T @ rhs)
        return L, p_tex

    def _raster(self, V, cam, size) -> dict:
        """One z-buffer pass of the whole mesh ``V [N,3]`` under ``cam`` at ``size = (H, W)``,
        shared by the step's visibility (:meth:`_visible_samples`) and its render
        (:meth:`_render_offset`): the same calls, in the same order, as
        ``render.visible_vertices`` and ``render.render`` (fast backend) make, so their
        results are unchanged; the mesh is rasterised once per step instead of twice."""
        from render.core import _float_array, camera_transform
        from render.raster import rasterize

        V = _float_array(V)
        cam = np.asarray(cam, np.float64)
        Xc, uv, w = camera_transform(V, cam)
        tri, bary, depth = rasterize(uv, Xc[:, 2], w, self._trilist, (int(size[0]), int(size[1])))
        return dict(V=V, cam=cam, Xc=Xc, uv=uv, w=w, tri=tri, bary=bary, depth=depth)

    def _visible_samples(self, raster, tolerance: float = 0.01) -> np.ndarray:
        """``render.visible_vertices(V, trilist, cam, size, tolerance)[self.samples]`` from a
        :meth:`_raster` pass: the same test (depth against the min of the covered 3x3
        neighbourhood, tolerance relative to the whole mesh's depth extent), evaluated at
        the sample vertices only."""
        from render.core import depth_test

        zall = raster["Xc"][:, 2]
        eps = tolerance * max(float(zall.max() - zall.min()), 1e-12)
        return depth_test(raster["uv"][self.samples], zall[self.samples], raster["depth"], eps)

    def _render_image(self, raster, albedo, light, background) -> np.ndarray:
        """``render.render(V, trilist, albedo, cam, background=background, light=light).image``
        from a :meth:`_raster` pass (the fast backend's shading and compositing)."""
        from render.core import _background, composite
        from render.lighting import check_light, shade, vertex_normals

        _, bg = _background(background)
        shaded = shade(albedo, vertex_normals(raster["Xc"], self._trilist), check_light(light))
        return composite(raster["tri"], raster["bary"], self._trilist, shaded, bg)

    def _render_offset(self, V, cam, p_tex, light, img_np, blur, uv, Y, raster=None):
        """What the renderer adds to the per-vertex model colour at the sample vertices:
        ``render(state)`` (rasterised, clipped, over the photo as background, blurred like
        the photo) sampled at ``uv [S,2]`` minus ``albedo * shading`` ``[S,3]``.  Held fixed
        through one LM step and recomputed at the next, so that the model term sees the
        same discretisation as a rendered photo.  ``raster``: the step's :meth:`_raster`
        pass of ``V`` under ``cam`` (made here when None)."""
        import torch

        albedo = self.model.texture(p_tex).astype(np.float64)
        if raster is None:
            raster = self._raster(V, cam, img_np.shape[:2])
        img = self._render_image(raster, albedo, light, img_np).astype(np.float64)
        uv = uv.cpu().to(torch.float64)
        if blur > 0:
            img, uv = blur_window(img, blur, uv)
        sampled = bilinear(torch.as_tensor(img), uv).numpy()
        return sampled - (self._tex_mean + self._tex_basis @ p_tex) * (Y @ light)

    def _t(self, a):
        import torch

        return torch.as_tensor(np.asarray(a, np.float64), dtype=self.dtype, device=self.device)
