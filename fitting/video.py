"""3DMM fitting of a video: one identity for all frames, a smooth camera, an expression per frame.

The paper took LRW's expression parameters from 3DMM *video* fitting (Booth et al.: the
frames of a video share the identity and are tied in time).  This module builds that from
the per-face fitter :class:`fitting.fit.LandmarkFitter`, unchanged, in four steps:

1. **identity** — every frame (or ``identity_frames`` of them, evenly spaced) is fitted
   on its own; the video's identity is the mean of those frames' ``p_id`` (each frame's
   MAP estimate; the mean averages out what each frame's expression and landmark noise
   leaked into it);
2. **expression and camera** — the same fitter runs on a view of the model whose mean is
   the video's identity and which has no identity components (``n_id = 0``), so every
   frame gets a camera and an expression for that fixed face;
3. **camera smoothing** — the cameras (angles, translation, scale) are smoothed along time
   with a Gaussian of ``smooth_camera`` frames (a talking head's pose moves slowly);
4. **expression** — with ``refit_exp`` each frame's expression is re-solved exactly for its
   smoothed camera (:meth:`LandmarkFitter.solve_shape`; fixed jaw contour), then smoothed
   with ``smooth_exp`` frames.

Frames without landmarks (no face found) take their landmarks by linear interpolation from
the nearest frames that have them before the fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class VideoFitOptions:
    """Options of :class:`VideoFitter` (config section ``lrw``)."""

    identity_frames: int = 0        # frames fitted for the identity (0 = all)
    smooth_camera: float = 2.0      # Gaussian sigma in frames (0 = none)
    smooth_exp: float = 0.0
    refit_exp: bool = True          # re-solve the expression for the smoothed cameras

    @classmethod
    def from_config(cls, cfg: dict) -> "VideoFitOptions":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(cfg).items() if k in names})


@dataclass
class VideoFitResult:
    """``p_id [K]`` (the video's), ``p_exp [F, E]``, ``camera [F, 7]``, ``lm_fitted [F, 68, 2]``,
    ``fit_error [F]`` (landmark RMSE / inter-ocular), ``p_id_frames [F', K]`` (step 1's)."""

    p_id: np.ndarray
    p_exp: np.ndarray
    camera: np.ndarray
    lm_fitted: np.ndarray
    fit_error: np.ndarray
    p_id_frames: np.ndarray


def gaussian_smooth(x, sigma: float) -> np.ndarray:
    """Smooth ``x [F, ...]`` along axis 0 with a normalised Gaussian of ``sigma`` frames
    (truncated at 3 sigma; the kernel is renormalised at the ends, so a constant stays
    constant).  ``sigma <= 0`` returns a copy."""
    x = np.asarray(x, np.float64)
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    F = len(x)
    out = np.empty_like(x)
    for f in range(F):
        lo, hi = max(0, f - r), min(F, f + r + 1)
        w = k[lo - f + r: hi - f + r]
        out[f] = np.tensordot(w / w.sum(), x[lo:hi], axes=(0, 0))
    return out


def smooth_cameras(camera, sigma: float) -> np.ndarray:
    """:func:`gaussian_smooth` of cameras ``[F, 7]`` with the angles unwrapped first."""
    cam = np.asarray(camera, np.float64).copy()
    cam[:, :3] = np.unwrap(cam[:, :3], axis=0)
    out = gaussian_smooth(cam, sigma)
    out[:, :3] = (out[:, :3] + np.pi) % (2 * np.pi) - np.pi
    return out


def fill_missing(lm, valid) -> np.ndarray:
    """Landmarks ``[F, 68, 2]`` with the rows where ``valid`` is False replaced by linear
    interpolation between the nearest valid frames (held constant past the ends)."""
    lm = np.asarray(lm, np.float64).copy()
    valid = np.asarray(valid, bool)
    if valid.all():
        return lm
    if not valid.any():
        raise ValueError("no frame has landmarks")
    t = np.arange(len(lm))
    flat = lm.reshape(len(lm), -1)
    for j in range(flat.shape[1]):
        flat[~valid, j] = np.interp(t[~valid], t[valid], flat[valid, j])
    return flat.reshape(lm.shape)


class _FixedIdentity:
    """A read-only view of a :class:`fitting.model.MorphableModel` whose mean is the face of
    one identity (``mean + U_id sqrt(ev_id) p_id``); everything else is the model's."""

    def __init__(self, model, p_id):
        p = np.asarray(p_id, np.float64)
        k = len(p)
        off = model.U_id[:, :k].astype(np.float64) @ (p * np.sqrt(model.ev_id[:k].astype(np.float64)))
        self._model = model
        self.mean = (model.mean.astype(np.float64) + off).astype(np.float32)

    def __getattr__(self, name):
        return getattr(self._model, name)


class VideoFitter:
    """``VideoFitter(model, fit_options, video_options).fit(lm [F,68,2], valid [F]) ->
    VideoFitResult``.  ``fit_options`` is a :class:`fitting.fit.FitOptions` (the fit stage's
    options: noise level, priors, contour, components)."""

    def __init__(self, model, fit_options, options: Optional[VideoFitOptions] = None, fitter=None):
        from fitting.fit import LandmarkFitter

        self.model = model
        self.fit_options = fit_options
        self.opt = options or VideoFitOptions()
        self.fitter = fitter or LandmarkFitter(model, fit_options)

    def _fixed_fitter(self, p_id):
        from dataclasses import replace

        from fitting.fit import LandmarkFitter

        return LandmarkFitter(_FixedIdentity(self.model, p_id), replace(self.fit_options, n_id=0))

    def fit(self, lm, valid=None) -> VideoFitResult:
        from fitting.fit import landmark_errors
        from render.camera import project

        lm = np.asarray(lm, np.float64)
        if lm.ndim != 3 or lm.shape[1:] != (68, 2) or len(lm) == 0:
            raise ValueError(f"landmarks must be [F, 68, 2] with F >= 1, got {lm.shape}")
        F = len(lm)
        valid = np.ones(F, bool) if valid is None else np.asarray(valid, bool)
        lm = fill_missing(lm, valid)
        # 1. identity from per-frame fits
        idx = np.flatnonzero(valid)
        n = int(self.opt.identity_frames)
        if 0 < n < len(idx):
            idx = idx[np.linspace(0, len(idx) - 1, n).round().astype(int)]
        first = self.fitter.fit(lm[idx])
        ok = first.converged
        if not ok.any():
            raise ValueError("no frame's fit converged")
        p_id = first.p_id[ok].astype(np.float64).mean(0)
        # 2. expression + camera per frame for that identity
        fixed = self._fixed_fitter(p_id)
        res = fixed.fit(lm)
        if not res.converged.all():
            raise ValueError(f"{int((~res.converged).sum())} of {F} frames did not converge")
        # 3. smooth cameras
        cam = smooth_cameras(res.camera, float(self.opt.smooth_camera))
        cam[:, 6] = res.camera[:, 6]
        # 4. expression for the smoothed cameras, then smoothed
        p_exp = res.p_exp.astype(np.float64)
        if self.opt.refit_exp and float(self.opt.smooth_camera) > 0:
            p_exp = fixed.solve_shape(lm, cam)
        p_exp = gaussian_smooth(p_exp, float(self.opt.smooth_exp))
        X = self.model.landmarks_3d(p_id.astype(np.float32), p_exp.astype(np.float32))
        fitted = project(X, cam)
        err = landmark_errors(fitted, lm)
        return VideoFitResult(p_id=p_id.astype(np.float32), p_exp=p_exp.astype(np.float32),
                              camera=cam.astype(np.float32), lm_fitted=fitted.astype(np.float32),
                              fit_error=err.astype(np.float32), p_id_frames=first.p_id)
