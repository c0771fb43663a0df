"""Dense photometric refinement of a landmark fit (``fit.photometric_iterations > 0``).

Landmarks see only 68 points; several expression components (cheek puff, cheek raise,
nose wrinkle, ...) barely move them, and detected landmarks carry a detector-specific
bias.  This step refines camera + identity + expression of a landmark fit against the
photo itself, as the in-the-wild fitting of Booth et al. does, with the model's own image
formation (the one ``render.render`` uses): per-vertex albedo of the texture model times
Lambertian SH shading of the camera-frame normal.

The residual (photo colours at visible sample vertices, landmarks, priors), its exact
Jacobian and the closed-form light and texture are :mod:`fitting.photometric_energy`; this
module is the optimiser: Levenberg-Marquardt steps on ``x = [omega (3), log s, tx, ty, p_id,
p_exp]`` with the light and texture re-solved between steps and the visible sample vertices
recomputed with the z-buffer of ``render.visible_vertices``.  A coarse-to-fine schedule blurs
the photo (Gaussian, ``blur`` pixels) so that a landmark fit a few pixels off is inside the
basin; at every step the render correction (:mod:`fitting.photometric_energy`) is recomputed.

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

Hand-written rather than a generic optimiser: a Gauss-Newton step on ~100 unknowns with an
exact Jacobian converges in a handful of iterations where first-order methods need
hundreds; tests compare the Jacobian with finite differences and check that a perturbed
fit of a rendered face is pulled back to the truth.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from fitting.fit import interocular, skew
from fitting.photometric_energy import PhotometricEnergy, _colour_residual, bilinear, sh_basis_torch


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


class PhotometricRefiner(PhotometricEnergy):
    """``PhotometricRefiner(model, options).refine(image, lm, p_id, p_exp, camera, weights)``.

    Works on one face at a time (float64, CPU or the fitter's device); deterministic.
    Weak-perspective cameras only (the landmark fitter's output).
    """

    def __init__(self, model, options: PhotometricOptions | None = None, device=None):
        super().__init__(model, options or PhotometricOptions(), device)
        self._coarse = None                                                    # the search's refiner (search_samples)

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

    def _appearance(self, st, img, img_np, blur, ctx):
        """Visibility, IRLS weights, render offset, light and texture at state ``st`` (updates
        ``st.light``/``st.p_tex``/``st.nvis``) -> the step's constant arguments of
        :meth:`_residual`, or None when fewer than 50 samples are visible."""
        opt, t, x = self.opt, self._t, st.x
        H, W = img_np.shape[:2]
        R, cam_now = st.camera()
        cam_now = cam_now.cpu().numpy()
        Vfull = self.model.instance(x[6:6 + self.k].cpu().numpy(), x[6 + self.k:].cpu().numpy())
        raster = self._raster(Vfull, cam_now, (H, W))                      # one z-buffer: visibility + render
        uv, n, _ = self._geometry(x, st.R0, st.s0, st.t0)
        lm_idx = self._jaw(x, R, ctx["contour"])
        obs = bilinear(img, uv).cpu().numpy()
        Y = sh_basis_torch(n).cpu().numpy()
        vis = (self._visible_samples(raster) & (n[:, 2].cpu().numpy() > opt.min_normal_z)).astype(np.float64)
        st.nvis = int(vis.sum())
        if st.nvis < 50:
            return None
        offset = np.zeros_like(obs)
        if opt.render_correction:
            if st.light is None:
                st.light, st.p_tex = self._solve_appearance(obs, Y, vis, st.p_tex)
            offset = self._render_offset(Vfull, cam_now, st.p_tex, st.light, img_np, blur, uv, Y, raster)
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
