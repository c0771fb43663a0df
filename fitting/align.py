"""Similarity alignment of a face to a reference landmark shape and the aligned crop.

``align`` (stored per photo, ``[2, 3]``) maps original image pixels to crop pixels:
``[u', v'] = align @ [u, v, 1]`` (both in the project's corner-origin pixel convention).
Its inverse maps crop points back to the photo.

The reference shape is the model's mean landmarks seen frontally (x right, y up ->
image v down), scaled so that the landmarks' bounding box is ``fill`` of the crop width
and placed with its centre at ``(0.5, centre_y)`` of the crop (a little below the middle
so the forehead fits).
"""
from __future__ import annotations

import numpy as np

FILL = 0.62
CENTRE_Y = 0.56


def reference_shape(mean_landmarks_3d: np.ndarray, size: int, fill: float = FILL,
                    centre_y: float = CENTRE_Y) -> np.ndarray:
    """``[68, 3]`` model landmarks -> ``[68, 2]`` reference positions in a ``size`` crop."""
    P = np.asarray(mean_landmarks_3d, np.float64)[:, :2] * np.array([1.0, -1.0])
    lo, hi = P.min(0), P.max(0)
    s = fill * size / max(hi[0] - lo[0], 1e-12)
    c = (lo + hi) / 2
    return (P - c) * s + np.array([0.5 * size, centre_y * size])


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection)
    mapping ``src [L, 2]`` onto ``dst [L, 2]`` (Umeyama 1991) -> ``[2, 3]``.

    Closed form, hand-written (10 lines) rather than pulling scikit-image in.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    cov = (b * w[:, None]).T @ a                      # [2, 2]
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt)) or 1.0
    D = np.diag([1.0, d])
    R = U @ D @ Vt
    var = (w * (a ** 2).sum(1)).sum()
    scale = (S * np.diag(D)).sum() / max(var, 1e-300)
    t = md - scale * R @ ms
    return np.concatenate([scale * R, t[:, None]], 1)


def invert_affine(A: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine map."""
    A = np.asarray(A, np.float64)
    M = np.linalg.inv(A[:, :2])
    return np.concatenate([M, -M @ A[:, 2:]], 1)


def apply_affine(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``[2, 3]`` affine applied to ``[..., 2]`` points."""
    A = np.asarray(A, np.float64)
    return np.asarray(pts, np.float64) @ A[:, :2].T + A[:, 2]


def warp_crop(rgb: np.ndarray, align: np.ndarray, size: int) -> np.ndarray:
    """Aligned crop ``[size, size, 3] uint8`` of ``rgb [H, W, 3] uint8`` under ``align``.

    PIL's affine transform samples output pixel centres through the inverse map in the same
    corner-origin convention (bilinear).  When the crop shrinks the photo by more than 2x,
    the photo is first box-reduced by an integer factor (anti-aliasing) and the map adjusted.
    """
    from PIL import Image

    A = np.asarray(align, np.float64)
    scale = np.sqrt(abs(np.linalg.det(A[:, :2])))
    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    f = int(np.floor(1.0 / (2.0 * scale))) if scale > 0 else 1
    if f >= 2:
        im = im.reduce(f)
        A = A @ np.diag([f, f, 1.0])                  # reduced pixel x maps to original f*x
    inv = invert_affine(A)
    out = im.transform((size, size), Image.AFFINE, data=tuple(inv.reshape(-1)), resample=Image.BILINEAR,
                       fillcolor=(0, 0, 0))
    return np.asarray(out, np.uint8)
