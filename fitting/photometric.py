"""Dense photometric refinement of a landmark fit (``fit.photometric_iterations > 0``).

Landmarks see only 68 points; several expression components (cheek puff, cheek raise,
nose wrinkle, ...) barely move them, and detected landmarks carry a detector-specific
bias.  This step refines camera + identity + expression of a landmark fit against the
photo itself, as the in-the-wild fitting of Booth et al. does, with the model's own image
formation (the one ``render.render`` uses): per-vertex albedo of the texture model times
Lambertian SH shading of the camera-frame normal.

For one face, at a fixed visibility and a fixed light/albedo, the residual vector is

    r = [ (I(uv_i) - a_i * (Y(n_i) L)) / sigma_I        for visible sample vertices i
          sqrt(w_k) (uv_k - y_k) / (sigma_lm * iod)     for the 68 landmarks
          sqrt(prior) * p                                 (identity and expression priors) ]

over ``x = [omega (3), log s, tx, ty, p_id, p_exp]`` (``R <- R exp([omega]_x)``), and a
Levenberg-Marquardt step uses the exact, analytic Jacobian (checked against
``torch.func.jacfwd``).  Between steps the light
(9 x 3 SH coefficients) and the texture parameters are re-solved in closed form (each is
linear given the other), and the visible sample vertices are recomputed with the
z-buffer of ``render.visible_vertices``.  A coarse-to-fine schedule blurs the photo
(Gaussian, ``blur`` pixels) so that a landmark fit a few pixels off is inside the basin.

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

**Pose search** (``search_yaw``, ``search_scale``, ``search_iterations``).  Detected
landmarks of a turned face often come back squeezed towards a frontal shape, and the
landmark fit then starts tens of degrees off in yaw (and too large).  Before the levels,
each yaw offset (x each scale factor) of the landmark fit's camera, the face kept where its
landmarks were, gets a few steps on a strongly blurred photo; the hypothesis with the lowest
energy goes on.

**Residual.**  ``info["residual"]`` is the median, over the visible samples, of the largest
colour residual at the final state; the fit stage stores it as ``fit_residual`` and can
reject fits above ``fit.max_photometric_residual``.

**Jaw contour.**  Detectors put the jaw points on the silhouette; with
``refine(..., contour="dynamic")`` each jaw point takes, at every step, the outermost
vertex (in camera x) of its candidate line, as the landmark fitter does.

Only a fixed, evenly spread subset of the face's vertices is sampled (``n_samples``);
their normals are the exact area-weighted vertex normals of ``render.lighting`` computed
from their incident triangles, so the model term matches the renderer at those vertices.

Hand-written rather than a generic optimiser: a Gauss-Newton step on ~100 unknowns with an
exact Jacobian converges in a handful of iterations where first-order methods need
hundreds; tests compare the Jacobian with finite differences and check that a perturbed
fit of a rendered face is pulled back to the truth.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from fitting.fit import CHIN, JAW, _contour_candidates, interocular, skew
from render.lighting import SH_A, SH_C

_C = SH_C                                  # real SH constants of bands 0-2 (the renderer's)
_A = (SH_A[0], SH_A[1], SH_A[4])           # Lambertian factors of bands 0, 1, 2


def _schema(name: str):
    """The schema's default (config/demo.yaml) of option ``name``: ``fit.photometric_<name>``,
    or the landmark fit's ``fit.prior_id`` (shared); tuples for the list-valued options."""
    from pipeline.config import schema_default

    v = schema_default("fit", "prior_id" if name == "prior_id" else f"photometric_{name}")
    return tuple(float(x) for x in v) if isinstance(v, list) else v


def _default(name: str):
    return field(default_factory=lambda: _schema(name))


@dataclass
class PhotometricOptions:
    """Options (config section ``fit``, prefix ``photometric_``; ``prior_id`` is shared with
    the landmark fit).  Defaults are the schema's (config/demo.yaml), read when the object
    is made; docs/fitting.md gives the measurements behind them."""

    iterations: int = _default("iterations")            # LM steps per blur level (0 disables the refinement)
    blur: tuple = _default("blur")                      # Gaussian blur of the photo per level, in pixels
    n_samples: int = _default("n_samples")              # sample vertices on the face
    sigma_image: float = _default("sigma_image")        # image noise std (colours in [0, 1])
    sigma_landmarks: float = _default("sigma_landmarks")  # landmark noise, fraction of the inter-ocular distance
    prior_id: float = _default("prior_id")
    prior_exp: float = _default("prior_exp")
    prior_tex: float = _default("prior_tex")
    min_normal_z: float = _default("min_normal_z")      # skip grazing samples (they mix with the background)
    robust: float = _default("robust")                  # Cauchy scale of the image residual (IRLS); 0 = least squares
    render_correction: bool = _default("render_correction")  # add the renderer's discretisation to the model term
    search_yaw: tuple = _default("search_yaw")          # pose search: yaw offsets (degrees) tried from the landmark fit
    search_scale: tuple = _default("search_scale")      # ... times these factors of the landmark fit's scale
    search_iterations: int = _default("search_iterations")  # LM steps per pose hypothesis (0: no search)
    search_samples: int = _default("search_samples")    # sample vertices during the search (0: n_samples)
    search_blur: float = _default("search_blur")        # blur of the photo during the search, in pixels

    @classmethod
    def from_config(cls, cfg: dict, **over) -> "PhotometricOptions":
        kw = {}
        for name in cls.__dataclass_fields__:
            key = "prior_id" if name == "prior_id" else f"photometric_{name}"
            if key in cfg:
                kw[name] = cfg[key]
            elif name == "prior_exp" and "prior_exp" in cfg:    # a partial section: the landmark fit's prior
                kw[name] = float(cfg["prior_exp"])
        for name in ("blur", "search_yaw", "search_scale"):
            if name in kw:
                kw[name] = tuple(float(b) for b in kw[name])
        kw.update(over)
        return cls(**kw)


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


class PhotometricRefiner:
    """``PhotometricRefiner(model, options).refine(image, lm, p_id, p_exp, camera, weights)``.

    Works on one face at a time (float64, CPU or the fitter's device); deterministic.
    Weak-perspective cameras only (the landmark fitter's output).
    """

    def __init__(self, model, options: PhotometricOptions | None = None, device=None):
        import torch

        self.model = model
        self.opt = opt = options or PhotometricOptions()
        self._coarse = None                                                    # the search's refiner (search_samples)
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
        pair_B = self._basis[t(np.searchsorted(used, keys % model.n_vertices), torch.long)]       # [Np,3,P]
        self._pair_B = [pair_B[:, k].contiguous() for k in range(3)]          # x, y, z rows [Np,P]
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
        V = self._mean + torch.einsum("vkp,p->vk", self._basis, x[6:])
        Xc = V @ R.T
        uv = torch.stack([s * Xc[:, 0] + t0[0] + x[4], -s * Xc[:, 1] + t0[1] + x[5]], -1)
        a, b, c = Xc[self._tri[:, 0]], Xc[self._tri[:, 1]], Xc[self._tri[:, 2]]
        fn = torch.linalg.cross(b - a, c - a, dim=-1)                         # [T,3], 2 x area
        n = fn[self._inc].sum(1)                                              # [S,3]
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return uv[self._s_local], n, uv[self._lm_local if lm_idx is None else lm_idx]

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
        V = self._mean + torch.einsum("vkp,p->vk", self._basis, p)             # [U,3]
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
        (bx, by, bz), (wx, wy, wz) = self._pair_B, W.T[:, :, None]
        cross = torch.stack([by * wz - bz * wy, bz * wx - bx * wz, bx * wy - by * wx], 1)   # B_v x W_sv
        dnr = torch.zeros(len(nr), 3, P, dtype=x.dtype, device=x.device).index_add_(0, self._pair_s, cross)
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

    def _render_offset(self, V, cam, p_tex, light, img_np, blur, uv, Y):
        """What the renderer adds to the per-vertex model colour at the sample vertices:
        ``render(state)`` (rasterised, clipped, over the photo as background, blurred like
        the photo) sampled at ``uv [S,2]`` minus ``albedo * shading`` ``[S,3]``.  Held fixed
        through one LM step and recomputed at the next, so that the model term sees the
        same discretisation as a rendered photo."""
        import torch
        from scipy.ndimage import gaussian_filter

        from render import render

        albedo = self.model.texture(p_tex).astype(np.float64)
        img = render(V, self.model.trilist, albedo, cam, background=img_np, light=light).image.astype(np.float64)
        if blur > 0:
            img = np.stack([gaussian_filter(img[..., c], blur) for c in range(3)], -1)
        sampled = bilinear(torch.as_tensor(img), uv.cpu().to(torch.float64)).numpy()
        return sampled - (self._tex_mean + self._tex_basis @ p_tex) * (Y @ light)

    # ------------------------------------------------------------------ main
    def refine(self, image, lm2d, p_id, p_exp, camera, weights=None, contour: str = "dynamic"):
        """Refine one face.

        Args:
            image: ``[H, W, 3]`` uint8 photo; lm2d: ``[68, 2]`` the landmarks of the fit;
            p_id ``[K]``, p_exp ``[E]``, camera ``[7]`` (weak perspective): the landmark fit.
            weights: ``[68]`` landmark weights (default ones).
            contour: ``"dynamic"`` (jaw points on the silhouette, re-chosen at every step:
                detected landmarks) or ``"fixed"`` (the model's jaw vertices: annotations
                made as projections of fixed vertices).
        Returns:
            ``(p_id, p_exp, camera, info)`` numpy float32; ``info`` has ``energy`` (first,
            last), ``samples`` (visible samples at the end), ``lm_fitted`` ``[68, 2]`` (the
            fit's landmarks in the image, jaw points on the silhouette when dynamic),
            ``search_yaw`` / ``search_scale`` (the pose hypothesis kept), ``final_energy`` and
            ``residual`` (see :meth:`_final`).
        """
        from pipeline.threads import one_blas_thread

        with one_blas_thread():                 # small products: BLAS threads only spin (2.6x slower)
            return self._refine(image, lm2d, p_id, p_exp, camera, weights, contour)

    def _refine(self, image, lm2d, p_id, p_exp, camera, weights, contour):
        import torch
        from scipy.ndimage import gaussian_filter

        from render.camera import camera_rotation

        opt = self.opt
        img0 = np.asarray(image, np.float64) / 255.0
        cam = np.asarray(camera, np.float64)
        if contour not in ("dynamic", "fixed"):
            raise ValueError(f"contour must be 'dynamic' or 'fixed', got {contour!r}")
        if abs(cam[6]) > 0:
            raise ValueError("photometric refinement supports weak-perspective cameras (dist = 0) only")
        t = self._t
        x = torch.zeros(6 + self.k + self.e, dtype=self.dtype, device=self.device)
        x[6:6 + len(p_id)] = t(p_id)
        x[6 + self.k:6 + self.k + len(p_exp)] = t(p_exp)
        iod = max(float(interocular(np.asarray(lm2d, np.float64))), 1e-6)
        w = np.ones(68) if weights is None else np.asarray(weights, np.float64)
        ctx = dict(y=t(lm2d), wl=t(np.sqrt(w) / (opt.sigma_landmarks * iod)), contour=contour)
        st = _State(x, t(camera_rotation(cam)), t(cam[5]), t(cam[3:5]), np.zeros(self._tex_basis.shape[-1]))
        blurred = lambda b: img0 if b <= 0 else np.stack([gaussian_filter(img0[..., c], b) for c in range(3)], -1)  # noqa: E731
        energies: list = []
        pick = (0.0, 1.0)
        if opt.search_iterations > 0 and len(opt.search_yaw) > 0:
            st, pick = self._search(st, blurred(opt.search_blur), opt.search_blur, ctx)
        for blur in opt.blur:
            img_np = blurred(blur)
            st, e_ = self._level(st, img_np, blur, ctx)
            energies += e_
        with torch.no_grad():
            R, cam_out = st.camera()
            _, _, uv_lm = self._geometry(st.x, st.R0, st.s0, st.t0, self._jaw(st.x, R, contour))
            last = (img_np, float(opt.blur[-1])) if len(opt.blur) else (img0, 0.0)   # the last level's image
            final = self._final(st, last[0], last[1], ctx)
        xn = st.x.cpu().numpy()
        info = {"energy": (energies[0], energies[-1]) if energies else (np.nan, np.nan), "samples": st.nvis,
                "lm_fitted": uv_lm.cpu().numpy().astype(np.float32), "search_yaw": pick[0], "search_scale": pick[1], **final}
        return (xn[6:6 + self.k].astype(np.float32), xn[6 + self.k:].astype(np.float32),
                cam_out.cpu().numpy().astype(np.float32), info)

    def _t(self, a):
        import torch

        return torch.as_tensor(np.asarray(a, np.float64), dtype=self.dtype, device=self.device)

    def _appearance(self, st, img, img_np, blur, ctx):
        """Visibility, IRLS weights, render offset, light and texture at state ``st`` (updates
        ``st.light``/``st.p_tex``/``st.nvis``) -> the step's constant arguments of
        :meth:`_residual`, or None when fewer than 50 samples are visible."""
        from render import visible_vertices

        opt, t, x = self.opt, self._t, st.x
        H, W = img_np.shape[:2]
        R, cam_now = st.camera()
        cam_now = cam_now.cpu().numpy()
        Vfull = self.model.instance(x[6:6 + self.k].cpu().numpy(), x[6 + self.k:].cpu().numpy())
        vis_full = visible_vertices(Vfull, self.model.trilist, cam_now, (H, W))
        uv, n, _ = self._geometry(x, st.R0, st.s0, st.t0)
        lm_idx = self._jaw(x, R, ctx["contour"])
        obs = bilinear(img, uv).cpu().numpy()
        Y = sh_basis_torch(n).cpu().numpy()
        vis = (vis_full[self.samples] & (n[:, 2].cpu().numpy() > opt.min_normal_z)).astype(np.float64)
        st.nvis = int(vis.sum())
        if st.nvis < 50:
            return None
        offset = np.zeros_like(obs)
        if opt.render_correction:
            if st.light is None:
                st.light, st.p_tex = self._solve_appearance(obs, Y, vis, st.p_tex)
            offset = self._render_offset(Vfull, cam_now, st.p_tex, st.light, img_np, blur, uv, Y)
        st.light, st.p_tex = self._solve_appearance(obs - offset, Y, vis, st.p_tex)
        if opt.robust > 0:                                                     # IRLS weights (Cauchy)
            res = np.abs(obs - offset - (self._tex_mean + self._tex_basis @ st.p_tex) * (Y @ st.light)).max(1)
            vis = vis / np.sqrt(1.0 + (res / opt.robust) ** 2)
            st.light, st.p_tex = self._solve_appearance(obs - offset, Y, vis, st.p_tex)
        albedo = t(self._tex_mean + self._tex_basis @ st.p_tex)
        return (img, t(vis), albedo, t(st.light), ctx["y"], ctx["wl"], lm_idx, t(offset))

    def _final(self, st, img_np, blur, ctx) -> dict:
        """Quality of the final state ``st`` on the last level's image: ``final_energy`` (the
        objective with the appearance re-solved at ``st``) and ``residual``, the median over
        the visible samples of the largest colour residual ``|photo - offset - albedo *
        shading|`` (colours in [0, 1]; NaN when too few samples are visible)."""
        st = st.copy()
        step = self._appearance(st, self._t(img_np), img_np, blur, ctx)
        if step is None:
            return {"final_energy": float("nan"), "residual": float("nan")}
        img, vis, albedo, light, _, _, _, offset = step
        r = self._residual(st.x, st.R0, st.s0, st.t0, *step)
        uv, n, _ = self._geometry(st.x, st.R0, st.s0, st.t0)
        seen = _colour_residual(img, uv, n, albedo, light, offset).abs().amax(1)[vis > 0]
        return {"final_energy": float((r ** 2).sum()), "residual": float(seen.median())}

    def _search(self, st, img_np, blur, ctx):
        """Pose search: from the landmark fit's state ``st``, each yaw offset of
        ``opt.search_yaw`` (the face kept where its landmarks were) gets
        ``opt.search_iterations`` steps on the photo blurred by ``blur``; the hypothesis of
        lowest final energy wins -> ``(state, (yaw offset in degrees, scale factor))``; every
        yaw is tried with every factor of ``opt.search_scale``.  The search samples
        ``opt.search_samples`` vertices (a refiner of its own, built once).
        Detected landmarks of a turned face often come back squeezed towards a frontal shape,
        and the landmark fit then starts the refinement tens of degrees off; no blur level
        recovers from that on its own."""
        import torch

        from fitting.fit import rotation_to_angles
        from render.camera import rotation_matrix

        if self._coarse is None:
            n = int(self.opt.search_samples) or int(self.opt.n_samples)
            self._coarse = self if n == int(self.opt.n_samples) else PhotometricRefiner(
                self.model, replace(self.opt, n_samples=n, search_iterations=0), self.device)
        coarse = self._coarse
        R, _ = st.camera()
        pitch, yaw, roll = (float(a) for a in rotation_to_angles(R))
        _, _, uv0 = self._geometry(st.x, st.R0, st.s0, st.t0)
        best = None
        for dy, fs in itertools.product(self.opt.search_yaw, self.opt.search_scale or (1.0,)):
            R_h = self._t(rotation_matrix(pitch, yaw + np.radians(float(dy)), roll))
            x_h = torch.cat([torch.zeros_like(st.x[:6]), st.x[6:]])
            s_h = st.s0 * torch.exp(st.x[3]) * float(fs)
            _, _, uv_h = self._geometry(x_h, R_h, s_h, st.t0 + st.x[4:6])
            t_h = st.t0 + st.x[4:6] + (uv0 - uv_h).mean(0)                 # same landmark centroid
            run, _ = coarse._level(_State(x_h, R_h, s_h, t_h, st.p_tex), img_np, blur, ctx,
                                    self.opt.search_iterations)
            with torch.no_grad():
                E = coarse._final(run, img_np, blur, ctx)["final_energy"]
            E = E if np.isfinite(E) else np.inf                             # face left the photo
            if best is None or E < best[0]:
                best = (E, run, (float(dy), float(fs)))
        return best[1], best[2]

    def _level(self, st, img_np, blur, ctx, iterations=None):
        """``iterations`` (default ``opt.iterations``) Levenberg-Marquardt steps on one blur
        level -> ``(state, energies)`` (a new state; ``st`` is not modified)."""
        import torch

        st = st.copy()
        img = self._t(img_np)
        energies = []
        for _ in range(int(self.opt.iterations if iterations is None else iterations)):
            with torch.no_grad():
                step = self._appearance(st, img, img_np, blur, ctx)
            if step is None:
                break
            args = (st.R0, st.s0, st.t0) + step
            f = lambda z: self._residual(z, *args)  # noqa: E731
            r = f(st.x)
            E = float((r ** 2).sum())
            J = self._jacobian(st.x, *args)                                    # [M, 6+P]
            Hm = J.T @ J
            g = J.T @ r
            for _try in range(6):
                d = -torch.linalg.solve(Hm + st.lam * torch.diag(Hm.diagonal().clamp_min(1e-9)), g)
                x_new = st.x + d
                E_new = float((f(x_new) ** 2).sum())
                if np.isfinite(E_new) and E_new < E:
                    st.lam = max(st.lam / 3.0, 1e-9)
                    # re-base the camera so the next Jacobian is taken at omega = 0
                    st.R0 = st.R0 @ torch.linalg.matrix_exp(skew(x_new[:3]))
                    st.s0 = st.s0 * torch.exp(x_new[3])
                    st.t0 = st.t0 + x_new[4:6]
                    st.x = torch.cat([torch.zeros_like(x_new[:6]), x_new[6:]])
                    break
                st.lam = min(st.lam * 4.0, 1e9)
            energies.append(E)
        return st, energies


@dataclass
class _State:
    """One refinement's state: ``x`` (relative camera + p), the camera it is relative to
    (``R0``, ``s0``, ``t0``), appearance (``p_tex``, ``light``), LM damping and the visible
    sample count.  Steps replace its tensors and arrays, never write into them, so
    :meth:`copy` may share them."""

    x: object
    R0: object
    s0: object
    t0: object
    p_tex: np.ndarray
    light: np.ndarray | None = None
    lam: float = 1e-3
    nvis: int = 0

    def copy(self) -> "_State":
        return replace(self)

    def camera(self):
        """``(R [3,3], camera [7])`` of the current state (weak perspective)."""
        import torch

        from fitting.fit import camera_vector

        R = self.R0 @ torch.linalg.matrix_exp(skew(self.x[:3]))
        return R, camera_vector((self.s0 * torch.exp(self.x[3]))[None], R[None], (self.t0 + self.x[4:6])[None])[0]
