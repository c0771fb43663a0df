"""The editor's bridge to the fitting stage code: detect 68 landmarks, fit the 3DMM, align.

The editor must see a photo exactly as the trainer saw its training crops, so this module
only *calls* ``fitting/`` (the functions ``fit-emotionet`` uses: dlib detection, the
batched landmark fitter, the similarity alignment to the model's reference landmarks and
the crop warp) and adds nothing of its own beyond turning "no face" into a clear
:class:`ImageInputError`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workflows.editor.imaging import ImageInputError

_FITTERS: dict = {}


def fit_config() -> dict:
    """The ``fit:`` section of the default preset (the settings ``fit-emotionet`` uses)."""
    from pipeline.config import load_config

    return load_config().section("fit")


def fit_options(source: str):
    """FitOptions for landmarks from a ``sidecar``, ``detected`` or ``calibrated`` (detected,
    then corrected by the model's landmark calibration); ``fit.contour=auto`` means fixed jaw
    vertices for sidecars and calibrated detections, the dynamic silhouette for raw
    detections (as the fit stage does)."""
    from fitting.fit import FitOptions

    cfg = fit_config()
    contour = cfg.get("contour", "dynamic")
    if contour == "auto":
        contour = "dynamic" if source == "detected" else "fixed"
    return FitOptions.from_config(cfg, contour=contour, device="cpu")


def _fitter(model, source: str):
    from fitting.fit import LandmarkFitter

    key = (id(model), source)
    if key not in _FITTERS:
        if any(k[0] != id(model) for k in _FITTERS):
            _FITTERS.clear()
        _FITTERS[key] = LandmarkFitter(model, fit_options(source))
    return _FITTERS[key]


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


def load_calibration(model_path):
    """The landmark calibration ``fit.landmark_calibration`` names for ``model_path`` (auto:
    ``<stem>.lmcal.npz`` beside it), as the fit stage loads it: None when there is none, a
    one-line :class:`pipeline.config.ConfigError` for a bad one."""
    from workflows.stages.fit import load_calibration as load

    return load(fit_config().get("landmark_calibration", "auto"), str(model_path))


def detect_landmarks(image: np.ndarray) -> np.ndarray:
    """68 iBUG landmarks [68, 2] (project pixels) of the largest face, by dlib; no face ->
    :class:`ImageInputError`."""
    from fitting.landmarks import get_detector

    lm = get_detector().detect(image)
    if lm is None:
        raise ImageInputError("no face found in the photo (try a larger, frontal, well-lit face)")
    return lm


def align_matrix(model, landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """[2, 3] similarity map from photo pixels to the crop: the landmarks onto the model's
    mean landmarks seen frontally (fitting.align)."""
    from fitting.align import reference_shape, similarity_transform

    ref = reference_shape(model.mean_shape[model.landmarks], crop_size)  # as workflows/stages/fit.py
    return similarity_transform(landmarks, ref)


def fit_photo(image: np.ndarray, model, landmarks: np.ndarray | None = None, crop_size: int | None = None,
              calibration=None) -> dict:
    """Detect (unless given), fit and align one photo; detections go through ``calibration``
    (a :class:`fitting.landmarks.LandmarkCalibration`) when given.

    image uint8 [H, W, 3]; landmarks float [68, 2] or None.  Returns a dict with
    ``crop`` uint8 [S, S, 3], ``align`` float32 [2, 3], ``p_exp`` float32 [E'],
    ``p_id`` float32 [K'], ``camera`` float32 [7], ``landmarks`` float32 [68, 2],
    ``fit_error`` float, ``landmark_source`` ("sidecar" | "detected" | "calibrated").  ``crop_size``
    defaults to ``fit.crop_size`` (the size of the crops in the shards G was trained on).
    """
    from fitting.align import warp_crop
    from fitting.fit import interocular

    cfg = fit_config()
    crop_size = int(crop_size or cfg.get("crop_size", 128))
    source = "sidecar"
    if landmarks is None:
        landmarks = detect_landmarks(image)
        source = "detected"
        if calibration is not None:
            landmarks = calibration.apply(landmarks)
            source = "calibrated"
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ImageInputError(f"landmarks must be [68, 2] finite numbers, got shape {lm.shape}")
    face_px = 2.5 * float(interocular(lm))
    if face_px < float(cfg.get("min_face_px", 40)):
        raise ImageInputError(f"the face is too small ({face_px:.0f} px; at least {cfg.get('min_face_px', 40)} px needed)")
    res = _fitter(model, source).fit(lm[None])
    err = float(res.fit_error[0])
    max_err = float(cfg.get("max_fit_error", 0.25))
    if not np.isfinite(err) or err > max_err or (res.converged is not None and not bool(res.converged[0])):
        raise ImageInputError(f"the 3D face fit failed (landmark error {err:.3f} x inter-ocular > {max_err:g})")
    align = align_matrix(model, lm, crop_size)
    crop = warp_crop(image, align, crop_size)
    return {"crop": crop, "align": align.astype(np.float32), "p_exp": np.asarray(res.p_exp[0], np.float32),
            "p_id": np.asarray(res.p_id[0], np.float32), "camera": np.asarray(res.camera[0], np.float32),
            "landmarks": lm.astype(np.float32), "fit_error": err, "landmark_source": source}
