"""Baseline: menpo3d's Lucas-Kanade "in-the-wild" 3DMM fitter (Booth et al.), as used by the
paper, wrapped for ``--fitter itw`` / ``fit.fitter=itw`` and the fitting benchmark.

Model conversion (menpo3d wants one shape PCA with orthonormal components and diagonal
prior): our shape is ``mean + B p`` with ``B = [U_id sqrt(ev_id), U_exp sqrt(ev_exp)]``
``[3N, P]`` and prior ``|p|^2``.  With the thin SVD ``B = U S V^T`` the same model is
``mean + U w`` with ``w = S V^T p`` and prior ``sum (w_i / S_i)^2``, i.e. components
``U^T`` and eigenvalues ``S^2``; fitted weights map back exactly by ``p = V (w / S)``.
The texture model is our ``texture_mean`` / ``U_tex`` / ``ev_tex`` (per-vertex RGB).

Camera: a distant menpo3d ``PerspectiveCamera`` (eye 20 face widths away, ~weak
perspective; menpo3d's orthographic camera makes the Gauss-Newton system singular through
its unused depth translation).  Our camera maps to it by ``rotation = diag(1, -1, -1) R``
(image y down, depth away from the viewer), ``translation = ((tx - 0.5 - W/2) / s,
(ty - 0.5 - H/2) / s, D)``, ``focal_length = s D`` (menpo puts pixel centres on integers,
we on ``+0.5``).

Initialisation: the mean shape under the closed-form landmark camera (our fitter's first
camera step); then ``max_iters`` Simultaneous Forward Additive iterations on the image
with the landmark term of Booth et al. (``landmarks_prior_weight``), updating the camera.
``fit_from_shape`` / ``fit_from_bb`` are not used (they need OpenCV for the PnP camera).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from fitting.fit import FitResult, interocular


class ITWFitter:
    """Per-face menpo3d LK fitting; ``fit(rgbs list of [H,W,3] uint8, lm [B,68,2]) -> FitResult``."""

    def __init__(self, model, cfg: dict | None = None, landmark_fitter=None):
        import menpo.model
        import menpo.shape
        from menpo.feature import no_op
        from menpo3d.camera import PerspectiveCamera
        from menpo3d.morphablemodel import ColouredMorphableModel, LucasKanadeMMFitter

        cfg = dict(cfg or {})
        if model.texture_mean is None or model.U_tex is None:
            raise ValueError("fit.fitter=itw needs a model with a texture model (texture_mean, U_tex)")
        self.model = model
        self.k = model.n_id if cfg.get("n_id") is None else min(int(cfg["n_id"]), model.n_id)
        self.e = model.n_exp
        self.iters = int(cfg.get("itw_iterations", 20))
        self.lm_weight = float(cfg.get("itw_landmark_weight", 1.0))
        self.n_samples = int(cfg.get("itw_samples", 1000))
        self.landmark_fitter = landmark_fitter
        # distant perspective camera ~ weak perspective (menpo3d's orthographic camera has a
        # depth-translation parameter with zero derivative: singular Gauss-Newton system)
        self.distance = 20.0 * float(np.ptp(model.mean_shape[:, 0]))
        B = np.concatenate([model.U_id[:, : self.k].astype(np.float64) * np.sqrt(model.ev_id[: self.k]),
                            model.U_exp.astype(np.float64) * np.sqrt(model.ev_exp)], 1)      # [3N, P]
        evals, V = np.linalg.eigh(B.T @ B)
        order = np.argsort(-evals)
        evals, V = np.maximum(evals[order], 1e-18), V[:, order]
        S = np.sqrt(evals)
        U = (B @ V) / S                                                                        # [3N, P]
        self._V, self._S = V, S
        mean = model.mean.astype(np.float64)
        template = menpo.shape.TriMesh(mean.reshape(-1, 3), trilist=model.trilist)
        shape_model = menpo.model.PCAModel.init_from_components(U.T, evals, template, n_samples=1000, centred=True)
        tex_model = menpo.model.PCAVectorModel.init_from_components(
            model.U_tex.T.astype(np.float64), model.ev_tex.astype(np.float64),
            model.texture_mean.reshape(-1).astype(np.float64), n_samples=1000, centred=True)
        lms = menpo.shape.PointCloud(model.mean_shape[model.landmarks].astype(np.float64))
        self.mm = ColouredMorphableModel(shape_model, tex_model, lms, holistic_features=no_op, diagonal=None)
        self.fitter = LucasKanadeMMFitter(self.mm, n_scales=1, n_shape=int(B.shape[1]),
                                          n_texture=int(model.U_tex.shape[1]), n_samples=self.n_samples,
                                          camera_cls=PerspectiveCamera)

    def _menpo_camera(self, cam: np.ndarray, H: int, W: int):
        from menpo.transform import Rotation, Translation
        from menpo3d.camera import PerspectiveCamera, PerspectiveProjection

        from render.camera import camera_rotation

        R = camera_rotation(cam)
        s = float(cam[5])
        M = np.diag([1.0, -1.0, -1.0]) @ R
        D = self.distance
        t = np.array([(cam[3] - 0.5 - W / 2) / s, (cam[4] - 0.5 - H / 2) / s, D])
        return PerspectiveCamera(Rotation(M), Translation(t), PerspectiveProjection(s * D, (H, W)))

    def fit_one(self, rgb: np.ndarray, lm: np.ndarray):
        """-> (p [P], lm_fitted [68, 2]) for one photo ``[H, W, 3]`` and landmarks ``[68, 2]``."""
        import menpo.image
        import menpo.shape

        from fitting.fit import FitOptions, LandmarkFitter

        H, W = rgb.shape[:2]
        if self.landmark_fitter is None:
            self.landmark_fitter = LandmarkFitter(self.model, FitOptions(contour="fixed", device="cpu"))
        init = self.landmark_fitter.fit_camera_only(lm[None])[0]                    # mean-shape camera
        camera = self._menpo_camera(init, H, W)
        image = menpo.image.Image(np.moveaxis(rgb.astype(np.float64) / 255.0, -1, 0))
        lms = menpo.shape.PointCloud((lm - 0.5)[:, [1, 0]])
        with contextlib.redirect_stdout(io.StringIO()):          # menpo3d prints per-iteration progress
            res = self._run(image, camera, lms)
        w = np.asarray(res.shape_parameters[-1], np.float64)
        p = self._V @ (w / self._S)
        mesh = res.final_mesh
        cam = res.final_camera_transform
        proj = cam.apply(menpo.shape.PointCloud(mesh.points[self.model.landmarks])).points
        lm_fit = proj[:, [1, 0]] + 0.5
        return p, lm_fit

    def _run(self, image, camera, lms):
        """menpo3d samples pixels with the global numpy RNG: seed it (and restore it) so that
        fits are deterministic."""
        state = np.random.get_state()
        np.random.seed(0)
        try:
            return self.fitter._fit(image, camera, instance=None, max_iters=self.iters, camera_update=True,
                                    focal_length_update=True, reconstruction_weight=1.0,
                                    shape_prior_weight=1.0, texture_prior_weight=1.0,
                                    landmarks_prior_weight=self.lm_weight, landmarks=lms)[-1]
        finally:
            np.random.set_state(state)

    def fit(self, rgbs, lm) -> FitResult:
        import torch

        from fitting.fit import camera_vector, scaled_orthographic_camera

        B = len(rgbs)
        P = self.k + self.e
        ps = np.zeros((B, P))
        fitted = np.zeros((B, 68, 2))
        ok = np.zeros(B, bool)
        for i in range(B):
            try:
                ps[i], fitted[i] = self.fit_one(rgbs[i], np.asarray(lm[i], np.float64))
                ok[i] = np.all(np.isfinite(ps[i])) and np.all(np.isfinite(fitted[i]))
            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                ok[i] = False
        X = self.model.landmarks_3d(ps[:, : self.k].astype(np.float32), ps[:, self.k:].astype(np.float32))
        X = np.nan_to_num(np.asarray(X, np.float64))
        s, R, t = scaled_orthographic_camera(torch.as_tensor(X), torch.as_tensor(np.nan_to_num(fitted)),
                                             torch.ones(B, 68, dtype=torch.float64))
        cam = camera_vector(s, R, t).numpy()
        lm = np.asarray(lm, np.float64)
        err = np.sqrt(((fitted - lm) ** 2).sum(-1).mean(-1)) / np.maximum(interocular(lm), 1e-12)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return FitResult(p_id=f32(ps[:, : self.k]), p_exp=f32(ps[:, self.k:]), camera=f32(cam),
                         lm_fitted=f32(fitted), fit_error=f32(err), converged=ok & np.isfinite(err))
