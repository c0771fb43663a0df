"""Camera model shared by every part (layout fixed in docs/INTERFACES.md).

``camera = [pitch, yaw, roll, tx, ty, scale, dist]`` (angles in radians).

* ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``; camera-frame points ``Xc = X @ R.T``
  (model y up, z towards the viewer).
* weak perspective (``dist == 0``): ``u = scale * Xc_x + tx``, ``v = -scale * Xc_y + ty``.
* perspective (``dist > 0``): the eye sits at ``z = dist`` looking down -z,
  ``k = scale * dist / (dist - Xc_z)``, ``u = k * Xc_x + tx``, ``v = -k * Xc_y + ty``.
* ``(u, v)`` are pixel coordinates with the origin at the top-left pixel's corner; pixel
  ``(i, j)`` has centre ``(j + 0.5, i + 0.5)``.  Larger ``Xc_z`` is closer to the viewer.

Both :func:`project` (numpy) and :func:`project_torch` (torch, differentiable) are
batched over leading dimensions: ``X [..., N, 3]``, ``camera [..., 7] -> [..., N, 2]``.
"""
from __future__ import annotations

import numpy as np

CAMERA_SIZE = 7
PITCH, YAW, ROLL, TX, TY, SCALE, DIST = range(7)


def make_camera(pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0, tx: float = 0.0,
                ty: float = 0.0, scale: float = 1.0, dist: float = 0.0) -> np.ndarray:
    """Build a camera vector ``[7] float32`` from named fields."""
    return np.array([pitch, yaw, roll, tx, ty, scale, dist], dtype=np.float32)


def _check_camera(camera) -> np.ndarray:
    cam = np.asarray(camera, dtype=np.float64)
    if cam.shape[-1:] != (CAMERA_SIZE,):
        raise ValueError(f"camera must have last dimension 7 [pitch, yaw, roll, tx, ty, scale, dist], "
                         f"got shape {cam.shape}")
    return cam


def _rotation(xp, p, y, r):
    """``Rz(r) @ Ry(y) @ Rx(p)`` with the array module ``xp`` (numpy or torch: both have
    ``cos sin stack ones_like zeros_like`` and ``@``)."""
    cp, sp, cy, sy, cr, sr = xp.cos(p), xp.sin(p), xp.cos(y), xp.sin(y), xp.cos(r), xp.sin(r)
    one, zero = xp.ones_like(p), xp.zeros_like(p)
    rx = xp.stack([xp.stack([one, zero, zero], -1),
                   xp.stack([zero, cp, -sp], -1),
                   xp.stack([zero, sp, cp], -1)], -2)
    ry = xp.stack([xp.stack([cy, zero, sy], -1),
                   xp.stack([zero, one, zero], -1),
                   xp.stack([-sy, zero, cy], -1)], -2)
    rz = xp.stack([xp.stack([cr, -sr, zero], -1),
                   xp.stack([sr, cr, zero], -1),
                   xp.stack([zero, zero, one], -1)], -2)
    return rz @ ry @ rx


def rotation_matrix(pitch, yaw, roll) -> np.ndarray:
    """``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``; angles broadcast, result ``[..., 3, 3]``."""
    p, y, r = (np.asarray(a, dtype=np.float64) for a in (pitch, yaw, roll))
    return _rotation(np, *np.broadcast_arrays(p, y, r))


def camera_rotation(camera) -> np.ndarray:
    """Rotation ``[..., 3, 3]`` of a camera ``[..., 7]``."""
    cam = _check_camera(camera)
    return rotation_matrix(cam[..., PITCH], cam[..., YAW], cam[..., ROLL])


def to_camera_frame(X, camera) -> np.ndarray:
    """``Xc = X @ R.T``: ``X [..., N, 3]``, ``camera [..., 7] -> [..., N, 3]`` (float64)."""
    X = np.asarray(X, dtype=np.float64)
    R = camera_rotation(camera)
    return X @ np.swapaxes(R, -1, -2)


def project_camera_frame(Xc, camera) -> np.ndarray:
    """Project camera-frame points ``Xc [..., N, 3]`` to pixels ``[..., N, 2]`` (float64)."""
    cam = _check_camera(camera)
    tx, ty, s, d = (cam[..., i, None] for i in (TX, TY, SCALE, DIST))
    x, y, z = Xc[..., 0], Xc[..., 1], Xc[..., 2]
    persp = d > 0
    denom = np.where(persp, d - z, 1.0)
    k = np.where(persp, s * d / np.where(denom == 0, 1e-12, denom), s)
    return np.stack([k * x + tx, -k * y + ty], axis=-1)


def project(X, camera) -> np.ndarray:
    """Project model points to pixel coordinates.

    Args:
        X: ``[..., N, 3]`` model-space points.
        camera: ``[..., 7]`` camera vectors (leading dims broadcast with X's).
    Returns:
        ``[..., N, 2]`` float64 pixel coordinates ``(u, v)``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.shape[-1:] != (3,):
        raise ValueError(f"X must have last dimension 3, got shape {X.shape}")
    return project_camera_frame(to_camera_frame(X, camera), camera)


def rotation_matrix_torch(pitch, yaw, roll):
    """Torch version of :func:`rotation_matrix` (differentiable), ``[..., 3, 3]``."""
    import torch

    return _rotation(torch, pitch, yaw, roll)


def project_torch(X, camera):
    """Differentiable torch version of :func:`project`.

    Args:
        X: tensor ``[..., N, 3]``.
        camera: tensor ``[..., 7]`` (same dtype/device as X; leading dims broadcast).
    Returns:
        tensor ``[..., N, 2]``.
    """
    import torch

    if X.shape[-1] != 3:
        raise ValueError(f"X must have last dimension 3, got shape {tuple(X.shape)}")
    if camera.shape[-1] != CAMERA_SIZE:
        raise ValueError(f"camera must have last dimension 7, got shape {tuple(camera.shape)}")
    camera = camera.to(X.dtype)
    R = rotation_matrix_torch(camera[..., PITCH], camera[..., YAW], camera[..., ROLL])
    Xc = X @ R.transpose(-1, -2)
    tx, ty, s, d = (camera[..., i, None] for i in (TX, TY, SCALE, DIST))
    x, y, z = Xc[..., 0], Xc[..., 1], Xc[..., 2]
    persp = d > 0
    denom = torch.where(persp, d - z, torch.ones_like(z))
    k = torch.where(persp, s * d / denom, s.expand_as(z))
    return torch.stack([k * x + tx, -k * y + ty], dim=-1)


def camera_fitting_view(X, size, yaw=0.0, pitch=0.0, roll=0.0, fill=0.75, dist=0.0) -> np.ndarray:
    """A camera ``[7]`` that centres the points ``X [N, 3]`` in a ``size = (H, W)`` image
    with the rotated x/y extent covering ``fill`` of the shorter side."""
    H, W = size
    cam = make_camera(pitch, yaw, roll, 0.0, 0.0, 1.0, 0.0)
    Xc = to_camera_frame(X, cam)
    lo, hi = Xc[:, :2].min(0), Xc[:, :2].max(0)
    ext = float(max(hi - lo))
    scale = fill * min(H, W) / max(ext, 1e-12)
    cx, cy = (lo + hi) / 2
    tx = W / 2 - scale * cx
    ty = H / 2 + scale * cy
    return make_camera(pitch, yaw, roll, tx, ty, scale, dist)
