"""The editor's bridge to the fit: the photo is fitted by :class:`fitting.photo.PhotoFitter`,
the very code the fit stage (``fit-emotionet``) runs, with the ``fit:`` section of the
editor's preset (``serve``/``edit --config``): the same landmark options per source,
calibration (for the photo's image domain), photometric refinement and gate.  This module
only turns the fit's rejects into a clear :class:`ImageInputError`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflows.editor.imaging import ImageInputError

_MESSAGES = {
    "no face": "no face found in the photo (try a larger, frontal, well-lit face)",
    "too small": "the face is too small",
    "bad landmarks": "unusable landmarks",
    "fit diverged": "the 3D face fit failed",
}


def fit_config(config=None) -> dict:
    """The complete ``fit:`` section of ``config`` (a :class:`pipeline.config.Config`, a
    dict section, or None for the default preset), as ``fit-emotionet`` uses it."""
    from fitting.photo import fit_settings
    from pipeline.config import Config, load_config

    if config is None:
        config = load_config()
    if isinstance(config, Config):
        return fit_settings(config.section("fit") if "fit" in config else {})
    return fit_settings(config)


def read_landmarks_sidecar(image_path) -> np.ndarray | None:
    """Landmarks [68, 2] from the photo's ``.pts``/``.ljson`` sidecar; None when there is
    none; a malformed one raises :class:`ImageInputError`."""
    from fitting.landmarks import LandmarkFileError, read_sidecar, sidecar_path

    side = sidecar_path(Path(image_path))
    if side is None:
        return None
    try:
        return read_sidecar(side)
    except LandmarkFileError as e:
        raise ImageInputError(str(e)) from None


def image_domain(fit_cfg: dict, where=None) -> str:
    """The image domain of photos from ``where`` (a file or folder; None: an upload) under
    ``fit.image_domain`` (:func:`fitting.photo.image_domain`)."""
    from fitting.photo import image_domain as domain

    return domain(fit_cfg["image_domain"], where)


def load_calibration(model_path, fit_cfg: dict, domain: str):
    """The landmark calibration ``fit.landmark_calibration`` names for ``model_path`` and
    photos of ``domain``, as the fit stage loads it: None when there is none (or it was
    learned on another domain), a one-line :class:`pipeline.config.ConfigError` for a bad one."""
    from fitting.photo import load_calibration as load

    return load(fit_cfg["landmark_calibration"], str(model_path), domain)


def fit_photo(fitter, image: np.ndarray, landmarks: np.ndarray | None = None, crop_size: int | None = None) -> dict:
    """Fit one photo with ``fitter`` (a :class:`fitting.photo.PhotoFitter`): detect (unless
    ``landmarks`` [68, 2] are given), calibrate, fit, refine, gate, align.

    Returns :meth:`fitting.photo.PhotoFitter.fit_photo`'s dict (``crop`` uint8 [S, S, 3],
    ``align`` [2, 3], ``p_exp``, ``p_id``, ``camera``, ``landmarks``, ``fit_error``,
    ``landmark_source``); a reject raises :class:`ImageInputError` (one line).
    """
    from fitting.photo import PhotoReject

    lm = None if landmarks is None else np.asarray(landmarks, np.float64)
    try:
        return fitter.fit_photo(image, lm, crop_size)
    except PhotoReject as e:
        head = _MESSAGES.get(e.reason, e.reason)
        raise ImageInputError(f"{head} ({e.detail})" if e.detail and e.reason != "no face" else head) from None
