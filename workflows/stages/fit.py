"""The ``fit`` shard stage (slidergan fit-emotionet): load, landmark, fit, align each photo.

Glue only; the algorithms live in ``fitting/`` (images, inputs, landmarks, and the fit of a
photo in ``fitting/photo.py``, which the editor and the evaluation's refit use too).
Datasets per row: key group identity label image p_exp p_id camera lm_detected (the landmarks
the fit used) lm_raw (as read or detected, before the landmark calibration) lm_fitted align
fit_error fit_residual (photometric refinement's median colour residual, NaN where none ran)
lm_source (0 sidecar, 1 detected, 2 detected and calibrated) (+ au [60] for EmotioNet lists).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from fitting.photo import (fit_gate, fit_settings, image_domain, load_calibration,  # noqa: F401 (fit_gate: the bench's)
                           validate)
from pipeline.cache import cached
from pipeline.stage import ChunkResult, Stage


def key_group(key: str) -> int:
    """Stable non-negative int64 id of a photo: first 63 bits of sha256(key)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 1


def read_metadata(path: str | os.PathLike) -> dict:
    """``{key: (identity, label)}`` from an HDF5 file with ``key`` and ``identity``/``label``
    datasets (e.g. the demo world's ``emotionet/truth.h5``)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        if "key" not in f:
            return out
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][()]]
        n = len(keys)
        ident = f["identity"][()].astype(np.int64) if "identity" in f else np.full(n, -1, np.int64)
        label = f["label"][()].astype(np.int64) if "label" in f else np.full(n, -1, np.int64)
    for k, i, l in zip(keys, ident, label):
        out[k] = (int(i), int(l))
    return out


def _model_hash(path: str) -> str:
    from fitting.model import read_model_hash

    return read_model_hash(path)


class FitStage(Stage):
    """Fit every input photo; picklable (paths, inputs and options only)."""

    name = "fit"
    version = "6"            # 6: fitting.photo (relative residual gate, detection retry, image domain); 5: calibration
    compression = "lzf"

    def __init__(self, inputs, model_path: str, fit_cfg: dict, metadata: Optional[dict] = None,
                 metadata_source: str = "", seed: int = 0):
        self.inputs = inputs
        self.model_path = str(model_path)
        self.cfg = fit_settings(fit_cfg)
        self.metadata = metadata or {}
        self.metadata_source = metadata_source
        self.seed = int(seed)
        self._model_hash = _model_hash(self.model_path)
        self.image_domain = image_domain(self.cfg["image_domain"], inputs.root)
        from workflows.stages.calibrate import stage_calibration

        self.calibration, self.calibration_note, self._calibration_hash = stage_calibration(
            self.cfg["landmark_calibration"], self.model_path, self.image_domain)

    # ------------------------------------------------------------------ Stage API
    def input_keys(self) -> list[str]:
        return list(self.inputs.keys)

    def params(self) -> dict:
        cfg = {k: v for k, v in self.cfg.items() if k not in ("chunk_size",)}
        meta = hashlib.sha256(repr(sorted(self.metadata.items())).encode()).hexdigest()[:16]
        return {"fit": cfg, "root": os.path.abspath(self.inputs.root), "metadata": meta,
                "has_au": self.inputs.au is not None, "landmark_calibration": self._calibration_hash,
                "image_domain": self.image_domain}

    def model_hash(self) -> str | None:
        return self._model_hash

    def for_chunk(self, keys: list[str]) -> "FitStage":
        """A copy holding only ``keys``' paths, AUs and metadata (what a task carries)."""
        import copy
        from dataclasses import replace

        view = copy.copy(self)
        au = self.inputs.au
        view.inputs = replace(self.inputs, keys=list(keys), paths={k: self.inputs.paths[k] for k in keys},
                              au=None if au is None else {k: au[k] for k in keys if k in au})
        view.metadata = {k: self.metadata[k] for k in keys if k in self.metadata}
        return view

    def attrs(self) -> dict:
        return {"camera_layout": "pitch,yaw,roll,tx,ty,scale,dist", "fitter": str(self.cfg["fitter"]),
                "metadata_source": self.metadata_source, "image_domain": self.image_domain,
                "landmark_calibration": self.calibration or ""}

    # ------------------------------------------------------------------ helpers
    def _model(self):
        from workflows.stages.warps import load_model       # a corrupt model: ConfigError, exit 2

        return cached(("model", self.model_path, self._model_hash), lambda: load_model(self.model_path))

    def _calibration(self):
        """The per-process cached :class:`fitting.landmarks.LandmarkCalibration`, or None."""
        from fitting.landmarks import LandmarkCalibration

        if self.calibration is None:
            return None
        return cached(("calibration", self._calibration_hash), lambda: LandmarkCalibration.load(self.calibration))

    def _photo_fitter(self):
        """The per-process cached :class:`fitting.photo.PhotoFitter` (the editor's and the
        evaluation's fit too)."""
        from fitting.photo import PhotoFitter

        return cached(("photo", self._model_hash, self._calibration_hash, repr(sorted(self.cfg.items()))),
                      lambda: PhotoFitter(self._model(), self.cfg, self._calibration(), domain=self.image_domain))

    def _landmarks(self, key: str, path: str, rgb: np.ndarray):
        """-> (lm [68,2], source, raw [68,2]) (:meth:`fitting.photo.PhotoFitter.landmarks`;
        source 0 sidecar, 1 detected, 2 detected and calibrated); raises Reject."""
        from fitting.landmarks import LandmarkFileError, read_sidecar, sidecar_path
        from fitting.photo import PhotoReject
        from pipeline.stage import Reject

        mode = self.cfg["landmarks"]
        side = sidecar_path(path) if mode in ("sidecar", "auto") else None
        given = None
        if side is not None:
            try:
                given = read_sidecar(side)
            except LandmarkFileError as e:
                if mode == "sidecar":
                    raise Reject("bad landmarks", str(e)) from None
        elif mode == "sidecar":
            raise Reject("no landmarks", "no .pts/.ljson sidecar beside the image (fit.landmarks=sidecar)")
        try:
            return self._photo_fitter().landmarks(rgb, given)
        except PhotoReject as e:
            raise Reject(e.reason, e.detail) from None

    # ------------------------------------------------------------------ chunk
    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        from fitting.align import warp_crop
        from fitting.images import ImageReject, load_image
        from fitting.inputs import N_AU, label_from_au
        from pipeline.stage import Reject

        cfg = self.cfg
        fitter = self._photo_fitter()
        size = int(cfg["crop_size"])
        max_pixels = int(cfg["max_pixels"])
        rejects, items = [], []
        for key in keys:
            path = self.inputs.paths[key]
            try:
                try:
                    rgb = load_image(path, max_pixels=max_pixels, min_side=16)
                except ImageReject as e:
                    raise Reject(e.reason, e.detail) from None
                lm, src, raw = self._landmarks(key, path, rgb)
                A = fitter.align(lm, size)                          # crop now: keep no full photo
                crop = warp_crop(rgb, A, size)
                items.append((key, rgb if fitter.needs_photo(src) else None, lm, src, A, crop, raw))
            except Reject as e:         # declared input errors only; anything else fails the chunk
                rejects.append(e.as_reject(key))

        fits = fitter.fit([it[2] for it in items], [it[1] for it in items], [it[3] for it in items])
        resid = fits.residual if fits.residual is not None else np.full(len(items), np.nan, np.float32)
        gate = fitter.gate(fits, where=f"chunk {chunk}")
        cols = {k: [] for k in ("key", "group", "identity", "label", "image", "p_exp", "p_id", "camera",
                                "lm_detected", "lm_raw", "lm_fitted", "align", "fit_error", "fit_residual",
                                "lm_source")}
        if self.inputs.au is not None:
            cols["au"] = []
        for i, (key, _, lm, src, A, crop, raw) in enumerate(items):
            err = float(fits.fit_error[i])
            why = gate[i]
            if why:
                rejects.append({"key": key, "reason": "fit diverged", "detail": why})
                continue
            ident, label = self.metadata.get(key, (-1, -1))
            au = None
            if self.inputs.au is not None:
                au = self.inputs.au.get(key, np.full(N_AU, np.nan, np.float32))
                if label < 0:
                    label = label_from_au(au)
                cols["au"].append(np.asarray(au, np.float32))
            cols["key"].append(key)
            cols["group"].append(key_group(key))
            cols["identity"].append(ident)
            cols["label"].append(label)
            cols["image"].append(crop)
            cols["p_exp"].append(fits.p_exp[i])
            cols["p_id"].append(fits.p_id[i])
            cols["camera"].append(fits.camera[i])
            cols["lm_detected"].append(lm.astype(np.float32))
            cols["lm_raw"].append(raw.astype(np.float32))
            cols["lm_fitted"].append(fits.lm_fitted[i])
            cols["align"].append(A.astype(np.float32))
            cols["fit_error"].append(np.float32(err))
            cols["fit_residual"].append(np.float32(resid[i]))
            cols["lm_source"].append(src)
        n_id, n_exp = fits.p_id.shape[1], fits.p_exp.shape[1]
        shapes = {"group": ((), np.int64), "identity": ((), np.int64), "label": ((), np.int64),
                  "image": ((size, size, 3), np.uint8), "p_exp": ((n_exp,), np.float32),
                  "p_id": ((n_id,), np.float32), "camera": ((7,), np.float32),
                  "lm_detected": ((68, 2), np.float32), "lm_raw": ((68, 2), np.float32),
                  "lm_fitted": ((68, 2), np.float32),
                  "align": ((2, 3), np.float32), "fit_error": ((), np.float32), "fit_residual": ((), np.float32),
                  "lm_source": ((), np.int8),
                  "au": ((N_AU,), np.float32)}
        rows = {}
        for name, vals in cols.items():
            if name == "key":
                rows[name] = list(vals)
                continue
            shp, dt = shapes[name]
            rows[name] = (np.stack([np.asarray(v, dt) for v in vals]) if vals
                          else np.zeros((0,) + shp, dt))
        rejects.sort(key=lambda r: r["key"])
        return ChunkResult(rows=rows, rejects=rejects)


def build_stage(images: str, model: str, fit_cfg: dict, root: Optional[str] = None,
                metadata: Optional[str] = None, seed: int = 0) -> FitStage:
    """Validate the inputs and options and build the stage (raises ConfigError)."""
    from fitting.inputs import InputError, collect_inputs
    from pipeline.config import ConfigError

    fit_cfg = fit_settings(fit_cfg)
    validate(fit_cfg)
    if not Path(model).is_file():
        raise ConfigError(f"model file not found: {model}")
    try:
        inputs = collect_inputs(images, root)
    except InputError as e:
        raise ConfigError(str(e)) from None
    meta, source = {}, ""
    mpath = metadata
    if mpath is None and Path(images).is_dir() and (Path(images) / "truth.h5").is_file():
        mpath = str(Path(images) / "truth.h5")
    if mpath:
        if not Path(mpath).is_file():
            raise ConfigError(f"metadata file not found: {mpath}")
        try:
            meta = read_metadata(mpath)
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(f"cannot read metadata {mpath}: {e}") from None
        source = os.path.abspath(mpath)
    load_calibration(fit_cfg["landmark_calibration"], model,                  # refuse a bad file now
                     image_domain(fit_cfg["image_domain"], inputs.root))
    try:
        return FitStage(inputs, model, fit_cfg, meta, source, seed)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read model {model}: {e}") from None
