"""68-point landmarks (iBUG order): sidecar files (menpo conventions) and detection (dlib).

Coordinates everywhere in this project are ``(u, v) = (x, y)`` pixels with the origin at
the top-left pixel's *corner* (pixel (i, j) has centre (j + 0.5, i + 0.5); see
render/camera.py).  The file formats use other conventions, converted here:

- ``.pts`` (iBUG/menpo): ``x y`` per line, **1-based** pixel centres (menpo subtracts 1 on
  import), so ``u = x_pts - 0.5``.
- ``.ljson`` (menpo): ``points`` are ``[y, x]`` with 0-based pixel centres, so
  ``u = x + 0.5``; both the v1 (``landmarks.points``) and v2/v3 (``groups``) layouts are
  read; the first group with 68 points is used.
- dlib: 0-based pixel centres, ``u = x + 0.5``.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np

N_LANDMARKS = 68
SIDECAR_SUFFIXES = (".pts", ".ljson")


class LandmarkFileError(ValueError):
    """A sidecar landmark file is malformed (reported as a reject reason)."""


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read a menpo/iBUG ``.pts`` file -> ``[n, 2]`` float64 (u, v) in project pixels."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise LandmarkFileError(f"cannot read {Path(path).name}: {e.strerror}") from None
    pts, inside = [], False
    for line in lines:
        s = line.strip()
        if s.startswith("{"):
            inside = True
            continue
        if s.startswith("}"):
            break
        if inside and s:
            parts = s.split()
            try:
                pts.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                raise LandmarkFileError(f"{Path(path).name}: bad point line {s[:40]!r}") from None
    if not inside:
        raise LandmarkFileError(f"{Path(path).name}: no '{{' block")
    a = np.asarray(pts, np.float64).reshape(-1, 2)
    return a - 0.5


def format_pts(lm: np.ndarray) -> str:
    """Text of a menpo ``.pts`` file (1-based) for ``[n, 2]`` project-pixel landmarks
    (the caller writes it, atomically, through ``pipeline.atomic``)."""
    lm = np.asarray(lm, np.float64) + 0.5
    body = "\n".join(f"{x:.4f} {y:.4f}" for x, y in lm)
    return f"version: 1\nn_points: {len(lm)}\n{{\n{body}\n}}\n"


def read_ljson(path: str | os.PathLike) -> np.ndarray:
    """Read a menpo ``.ljson`` -> ``[n, 2]`` float64 (u, v) in project pixels."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise LandmarkFileError(f"{Path(path).name}: not a readable JSON landmark file") from None
    cands = []
    if isinstance(d, dict) and isinstance(d.get("landmarks"), dict) and "points" in d["landmarks"]:
        cands.append(d["landmarks"]["points"])
    if isinstance(d, dict) and isinstance(d.get("groups"), dict):
        for g in d["groups"].values():
            if isinstance(g, dict):
                pts = g.get("landmarks", {}).get("points") if isinstance(g.get("landmarks"), dict) else g.get("points")
                if pts is not None:
                    cands.append(pts)
    for pts in cands:
        try:
            a = np.asarray([[np.nan if v is None else v for v in p] for p in pts], np.float64)
        except (TypeError, ValueError):
            continue
        if a.ndim == 2 and a.shape[1] >= 2 and a.shape[0] == N_LANDMARKS:
            return a[:, [1, 0]] + 0.5
    raise LandmarkFileError(f"{Path(path).name}: no group with {N_LANDMARKS} 2D points")


def sidecar_path(image_path: str | os.PathLike) -> Optional[Path]:
    """The landmark sidecar beside an image (``x.pts`` or ``x.ljson`` for ``x.jpg``), if any."""
    p = Path(image_path)
    for suf in SIDECAR_SUFFIXES:
        c = p.with_suffix(suf)
        if c.is_file():
            return c
    return None


def read_sidecar(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.pts``/``.ljson`` file -> ``[68, 2]`` (raises :class:`LandmarkFileError`)."""
    p = Path(path)
    a = read_ljson(p) if p.suffix.lower() == ".ljson" else read_pts(p)
    if a.shape != (N_LANDMARKS, 2):
        raise LandmarkFileError(f"{p.name}: {a.shape[0]} points, expected {N_LANDMARKS}")
    if not np.all(np.isfinite(a)):
        raise LandmarkFileError(f"{p.name}: non-finite coordinates")
    return a


class Detector:
    """Largest-face detection + 68-point landmarks with dlib (HOG frontal detector and the
    iBUG-300W shape predictor shipped by ``face-recognition-models``; both offline).

    Created lazily per process (dlib objects do not pickle).
    ``detect(rgb uint8 [H,W,3]) -> [68, 2] float64 or None``.  The first pass up-samples
    ``upsample`` times below 800 px; when it finds no face, a second pass runs
    ``detector.run(img, retry_upsample, retry_threshold)`` (more up-samplings, a lower score
    threshold: small and side-lit faces of real photos), with the up-sampling capped so the
    enlarged image stays within ``RETRY_MAX_SIDE`` pixels; ``retry_upsample=0`` and
    ``retry_threshold=0`` turn it off.
    """

    RETRY_MAX_SIDE = 3200

    def __init__(self, upsample: int = 1, retry_upsample: int = 0, retry_threshold: float = 0.0):
        import dlib
        import face_recognition_models

        self.upsample = int(upsample)
        self.retry_upsample = int(retry_upsample)
        self.retry_threshold = float(retry_threshold)
        self._det = dlib.get_frontal_face_detector()
        self._pred = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def _retry_upsample(self, side: int) -> int:
        n = max(self.retry_upsample, 0)
        while n > 0 and side * 2 ** n > self.RETRY_MAX_SIDE:
            n -= 1
        return n

    def detect(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        import dlib

        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        side = max(img.shape[:2])
        up = self.upsample if side < 800 else 0
        rects = list(self._det(img, up))
        if not rects and (self.retry_upsample > 0 or self.retry_threshold < 0):
            n = self._retry_upsample(side)
            if n > up or self.retry_threshold < 0:
                rects = list(self._det.run(img, n, self.retry_threshold)[0])
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: (r.width() * r.height(), -r.left(), -r.top()))
        shape = self._pred(img, dlib.rectangle(r.left(), r.top(), r.right(), r.bottom()))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(N_LANDMARKS)], np.float64) + 0.5


_DETECTORS = threading.local()


def get_detector(retry_upsample: int = 0, retry_threshold: float = 0.0) -> Detector:
    """Cached :class:`Detector` with these retry settings, one per thread (Dask's threaded
    scheduler runs tasks side by side in one process; dlib's objects are not documented as
    thread-safe).  The fit (``fitting.photo``) passes ``fit.detect_retry_upsample`` and
    ``fit.detect_retry_threshold``."""
    cache = getattr(_DETECTORS, "detectors", None)
    if cache is None:
        cache = _DETECTORS.detectors = {}
    key = (int(retry_upsample), float(retry_threshold))
    if key not in cache:
        cache[key] = Detector(retry_upsample=key[0], retry_threshold=key[1])
    return cache[key]


# ---------------------------------------------------------------------------- calibration
class CalibrationError(ValueError):
    """A landmark calibration file is unreadable or does not fit the landmarks given."""


def similarity_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) of each
    shape ``src [n, L, 2]`` onto ``dst [n, L, 2]`` (or ``[L, 2]``, broadcast) ->
    ``(A [n, 2, 2], t [n, 2])`` with ``dst ~ src @ A^T + t``.

    Vectorised closed form: in complex numbers ``z_dst - m_dst = c (z_src - m_src)`` with
    ``c = sum(conj(a) b) / sum(|a|^2)``; equal to :func:`fitting.align.similarity_transform`
    for one shape (tested).
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    ms, md = src.mean(1), dst.mean(1)
    a, b = src - ms[:, None], dst - md[:, None]
    za = a[..., 0] + 1j * a[..., 1]
    zb = b[..., 0] + 1j * b[..., 1]
    c = (np.conj(za) * zb).sum(1) / np.maximum((np.abs(za) ** 2).sum(1), 1e-300)
    A = np.stack([np.stack([c.real, -c.imag], -1), np.stack([c.imag, c.real], -1)], -2)
    return A, md - np.einsum("nij,nj->ni", A, ms)


def _transform(A: np.ndarray, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.einsum("nij,nkj->nki", A, pts) + t[:, None]


class LandmarkCalibration:
    """A learned correction from a detector's 68 points to the model's own landmarks.

    dlib's predictor was trained on people's annotations of real photos; the model's 68
    landmark vertices are a different definition of the same points (the jaw, the lips), and
    on renders the detections sit 16% of the inter-ocular distance off them (docs/fitting.md).
    The correction is learned from renders of the model whose true landmarks are known
    (:mod:`workflows.stages.calibrate`): each detected shape is brought by a similarity to a
    reference frame, where a ridge regression predicts the offset of every true point from
    its detection from the whole detected shape (pose and expression included); the
    corrected shape goes back through the inverse similarity.

    ``apply(lm [68, 2] or [n, 68, 2]) -> same shape``.  Fields: ``reference [68, 2]``
    (unit-RMS mean detected shape), ``x_mean [136]``, ``offset [136]`` (mean offset),
    ``weights [136, 136]``, ``ridge``, ``meta`` (a JSON-able dict: counts, errors, model hash).
    """

    def __init__(self, reference, x_mean, offset, weights, ridge: float, meta: Optional[dict] = None):
        self.reference = np.asarray(reference, np.float64).reshape(N_LANDMARKS, 2)
        self.x_mean = np.asarray(x_mean, np.float64).reshape(2 * N_LANDMARKS)
        self.offset = np.asarray(offset, np.float64).reshape(2 * N_LANDMARKS)
        self.weights = np.asarray(weights, np.float64).reshape(2 * N_LANDMARKS, 2 * N_LANDMARKS)
        self.ridge = float(ridge)
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ learning
    @staticmethod
    def _reference(detected: np.ndarray, iters: int = 5) -> np.ndarray:
        """Generalised Procrustes mean of ``detected [n, 68, 2]``, centred, unit RMS radius."""
        def unit(s):
            s = s - s.mean(0)
            return s / np.sqrt((s ** 2).sum(1).mean())

        ref = unit(detected[0])
        for _ in range(iters):
            ref = unit(_transform(*similarity_batch(detected, ref), detected).mean(0))
        return ref

    @classmethod
    def fit(cls, detected: np.ndarray, true: np.ndarray, ridge: float = 1.0,
            meta: Optional[dict] = None) -> "LandmarkCalibration":
        """Learn from pairs ``detected [n, 68, 2]`` / ``true [n, 68, 2]`` (same photos).

        Minimises ``sum_i |y_i - offset - (x_i - x_mean) W|^2 + ridge |W|^2`` where ``x_i`` is
        detection i in the reference frame (flattened) and ``y_i`` the true points' offsets
        from it in the same frame (reference RMS radius 1, so ``ridge`` is in those units).
        """
        D = np.asarray(detected, np.float64)
        L = np.asarray(true, np.float64)
        if D.ndim != 3 or D.shape[1:] != (N_LANDMARKS, 2) or L.shape != D.shape:
            raise CalibrationError(f"calibration needs two [n, {N_LANDMARKS}, 2] arrays, got {D.shape} and {L.shape}")
        if len(D) < 2:
            raise CalibrationError(f"calibration needs at least 2 detected faces, got {len(D)}")
        if not (np.isfinite(D).all() and np.isfinite(L).all()):
            raise CalibrationError("calibration landmarks must be finite")
        ref = cls._reference(D)
        A, t = similarity_batch(D, ref)
        X = _transform(A, t, D).reshape(len(D), -1)
        Y = _transform(A, t, L).reshape(len(D), -1) - X
        x_mean, offset = X.mean(0), Y.mean(0)
        Xc = X - x_mean
        W = np.linalg.solve(Xc.T @ Xc + float(ridge) * np.eye(Xc.shape[1]), Xc.T @ (Y - offset))
        return cls(ref, x_mean, offset, W, ridge, meta)

    # ------------------------------------------------------------------ use
    def apply(self, lm: np.ndarray) -> np.ndarray:
        """Corrected landmarks, same shape as ``lm`` (``[68, 2]`` or ``[n, 68, 2]``)."""
        a = np.asarray(lm, np.float64)
        one = a.ndim == 2
        D = a[None] if one else a
        if D.shape[1:] != (N_LANDMARKS, 2):
            raise CalibrationError(f"landmarks must be [{N_LANDMARKS}, 2] per face, got {a.shape}")
        A, t = similarity_batch(D, self.reference)
        X = _transform(A, t, D).reshape(len(D), -1)
        Y = (X + self.offset + (X - self.x_mean) @ self.weights).reshape(D.shape)
        Ai = np.linalg.inv(A)
        out = _transform(Ai, -np.einsum("nij,nj->ni", Ai, t), Y)
        return out[0] if one else out

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        """``.npz`` bytes (the caller writes them atomically, through ``pipeline.atomic``)."""
        import io

        buf = io.BytesIO()
        np.savez(buf, schema=np.array(CALIBRATION_SCHEMA), reference=self.reference, x_mean=self.x_mean,
                 offset=self.offset, weights=self.weights, ridge=np.float64(self.ridge),
                 meta=np.array(json.dumps(self.meta, sort_keys=True)))
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LandmarkCalibration":
        """Read a file written by :meth:`to_bytes` (raises :class:`CalibrationError`)."""
        name = Path(path).name
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["schema"]) != CALIBRATION_SCHEMA:
                    raise CalibrationError(f"{name}: schema {str(z['schema'])!r}, expected {CALIBRATION_SCHEMA!r}")
                cal = cls(z["reference"], z["x_mean"], z["offset"], z["weights"], float(z["ridge"]),
                          json.loads(str(z["meta"])))
        except CalibrationError:
            raise
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise CalibrationError(f"{name}: not a landmark calibration file ({e.__class__.__name__})") from None
        if not all(np.isfinite(a).all() for a in (cal.reference, cal.x_mean, cal.offset, cal.weights)):
            raise CalibrationError(f"{name}: non-finite values")
        return cal


CALIBRATION_SCHEMA = "slidergan-landmark-calibration/1"
