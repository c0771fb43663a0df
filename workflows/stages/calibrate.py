"""Landmark calibration (``slidergan calibrate-landmarks``; part of ``make-demo``).

Renders photos of the model itself, like the demo world's photos (random identity, texture,
expression, pose, light, background, JPEG) but from a seed domain of their own, so no
calibration photo is a demo photo.  dlib's 68 points on each render are paired with the
projections of the model's landmark vertices, and :class:`fitting.landmarks.LandmarkCalibration`
is learned on all pairs.  The figures kept in the file's ``meta`` (``nme_raw``,
``nme_calibrated``: RMSE / inter-ocular distance before and after) are those of a map fitted
on 90% of the pairs, measured on the other 10%.

The file lies beside the model (``model.h5`` -> ``model.lmcal.npz``, :func:`calibration_path`),
where ``fit.landmark_calibration: auto`` finds it for images of its ``meta.domain``
(``render``: it is learned on renders; ``fitting.photo`` does not apply it to real photos
unless the file is named).  Its ``meta.params_hash`` covers the model's
hash and every setting, so a re-run with the same inputs does nothing and any change redoes it.
Glue only: rendering is :func:`workflows.demoworld.scene.render_photo`, the regression is in
``fitting/landmarks.py``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

SUFFIX = ".lmcal.npz"
VERSION = "1"
CHUNK = 50                      # renders per Dask task (~5 s of work)
HOLDOUT = 0.1                   # share of the detected pairs kept out of a check fit, for meta's figures


def calibration_path(model_path: str | os.PathLike) -> Path:
    """Where the calibration of ``model_path`` lives: ``<folder>/<stem>.lmcal.npz``."""
    p = Path(model_path)
    return p.with_name(p.stem + SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_calibration(setting, model_path: str, domain: str) -> tuple[str | None, str, str | None]:
    """The landmark calibration a fitting stage uses: ``(path or None, note, sha256 of the file
    or None)`` (fitting.photo.resolve_calibration; the hash goes into the stage's params)."""
    from fitting.photo import resolve_calibration

    path, note = resolve_calibration(setting, model_path, domain)
    return path, note, (file_sha256(path) if path is not None else None)


def render_pairs(model_path: str, params: dict, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibration renders ``start..stop-1`` (a Dask task) -> ``(detected [m, 68, 2], true [m, 68, 2])``
    for the ``m`` renders where dlib found a face."""
    from PIL import Image

    from fitting.images import encode_jpeg
    from fitting.landmarks import get_detector
    from workflows.demoworld.params import WorldParams, load_model
    from workflows.demoworld.scene import render_photo

    model, protos = load_model(model_path)
    P = WorldParams(**{k: v for k, v in params.items() if k != "generator"})
    det = get_detector()
    D, L = [], []
    for i in range(start, stop):
        row, img = render_photo(model, protos, P, i, domain="calib")
        img = np.asarray(Image.open(io.BytesIO(encode_jpeg(img, P.jpeg_quality))).convert("RGB"))
        lm = det.detect(img)
        if lm is not None:
            D.append(lm)
            L.append(row["landmarks"].astype(np.float64))
    empty = np.zeros((0, 68, 2))
    return (np.stack(D) if D else empty), (np.stack(L) if L else empty)


def build_calibration(model_path: str | os.PathLike, P, faces: int = 2000, ridge: float = 1.0,
                      out: str | os.PathLike | None = None, force: bool = False, cluster: str = "local",
                      workers: int | None = None, progress: bool = True, log=print) -> Path | None:
    """Learn the landmark calibration of ``model_path`` from ``faces`` renders drawn with the
    photo settings of ``P`` (a :class:`WorldParams`; its seed and sizes) and write it to
    ``out`` (default :func:`calibration_path`) atomically.  Up to date -> nothing is done.
    Returns the path, or None when ``faces`` is 0."""
    from fitting.fit import landmark_errors
    from fitting.landmarks import CalibrationError, LandmarkCalibration
    from fitting.model import read_model_hash
    from pipeline.atomic import atomic_write_bytes
    from pipeline.config import ConfigError
    from pipeline.tasks import run_tasks

    faces = int(faces)
    if faces == 0:
        return None
    if faces < 20:
        raise ConfigError(f"landmark calibration needs at least 20 renders, got {faces}")
    if ridge <= 0:
        raise ConfigError(f"landmark calibration ridge must be > 0, got {ridge}")
    model_path = str(model_path)
    if not Path(model_path).is_file():
        raise ConfigError(f"model file not found: {model_path}")
    out = Path(out) if out is not None else calibration_path(model_path)
    # every render its own identity; the world's other sizes do not touch the renders: fixed,
    # so that two worlds of one model and photo settings share one calibration
    P = replace(P, faces=faces, identities=faces, identities_4dfab=0, sessions_4dfab=0, frames_4dfab=0,
                lrw_sequences=0, lrw_frames=0, lrw_size=256)
    params = {"version": VERSION, "photos": P.to_dict(), "ridge": float(ridge), "holdout": HOLDOUT,
              "model_hash": read_model_hash(model_path)}
    phash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    if out.is_file() and not force:
        try:
            if LandmarkCalibration.load(out).meta.get("params_hash") == phash:
                log(f"landmark calibration {out} is up to date (params {phash})")
                return out
        except CalibrationError:
            pass                                              # unreadable: redo it
    log(f"landmark calibration: {faces} renders of {Path(model_path).name}, dlib vs the model's landmarks")
    tasks = [(model_path, P.to_dict(), a, min(a + CHUNK, faces)) for a in range(0, faces, CHUNK)]
    # processes locally: rendering and dlib hold the GIL for much of their time; the pool's
    # workers end with this process (pipeline.procs), so a killed make-demo leaves no orphans
    parts = run_tasks(render_pairs, tasks, cluster, workers, progress, local_scheduler="processes",
                      desc="landmark calibration")
    D = np.concatenate([d for d, _ in parts])
    L = np.concatenate([t for _, t in parts])
    n_test = max(1, int(round(HOLDOUT * len(D))))
    if len(D) - n_test < 10:
        raise ConfigError(f"landmark calibration: dlib found only {len(D)} of {faces} faces; render more")

    def nme(a, b):
        return float(np.mean(landmark_errors(a, b)))

    check = LandmarkCalibration.fit(D[:-n_test], L[:-n_test], ridge)          # for the held-out figures
    cal = LandmarkCalibration.fit(D, L, ridge)                                # the map kept: every pair
    cal.meta = {"params_hash": phash, "model_hash": params["model_hash"], "domain": "render", "renders": faces,
                "detected": int(len(D)), "fitted_on": int(len(D)), "held_out": int(n_test),
                "nme_raw": nme(D[-n_test:], L[-n_test:]), "nme_calibrated": nme(check.apply(D[-n_test:]), L[-n_test:]),
                "seed": int(P.seed), "ridge": float(ridge)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, cal.to_bytes())
    log(f"landmark calibration written to {out}: {len(D)} of {faces} renders detected; held-out "
        f"error {cal.meta['nme_raw']:.3f} -> {cal.meta['nme_calibrated']:.3f} of the inter-ocular distance")
    return out
