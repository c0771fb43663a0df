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
    ``detect(rgb uint8 [H,W,3]) -> [68, 2] float64 or None``.
    """

    def __init__(self, upsample: int = 1):
        import dlib
        import face_recognition_models

        self.upsample = int(upsample)
        self._det = dlib.get_frontal_face_detector()
        self._pred = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def detect(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        import dlib

        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        up = self.upsample if max(img.shape[:2]) < 800 else 0
        rects = self._det(img, up)
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: (r.width() * r.height(), -r.left(), -r.top()))
        shape = self._pred(img, dlib.rectangle(r.left(), r.top(), r.right(), r.bottom()))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(N_LANDMARKS)], np.float64) + 0.5


_DETECTOR: Optional[Detector] = None


def get_detector() -> Detector:
    """Per-process cached :class:`Detector`."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = Detector()
    return _DETECTOR
