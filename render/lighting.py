"""Vertex normals and spherical-harmonics (SH) Lambertian shading.

Lighting is expressed in the *camera frame* (x right, y up, z towards the viewer), so a
light coefficient vector describes the light as seen from the camera, whatever the pose.
The 9 coefficients weight the real SH basis of bands 0-2 evaluated at the surface normal,
with the Lambertian convolution constants folded in (Ramamoorthi & Hanrahan 2001), so

    shade(n) = sum_k  light[k] * A_k * Y_k(n)

and ``light = [1/(A_0 Y_0), 0, ...]`` = :data:`AMBIENT` is a uniform white light that
leaves colours unchanged.  Colours are multiplied by ``shade`` and clipped to [0, 1].
"""
from __future__ import annotations

import numpy as np
from numba import njit

# Real SH basis constants (bands 0..2) and Lambertian convolution factors A_l.
_C0 = 0.282095
_C1 = 0.488603
_C2 = 1.092548
_C3 = 0.315392
_C4 = 0.546274
_A = np.array([np.pi] + [2 * np.pi / 3] * 3 + [np.pi / 4] * 5)
#: the same constants for other implementations of the basis (fitting.photometric_energy's torch one)
SH_C = (_C0, _C1, _C2, _C3, _C4)
SH_A = tuple(float(a) for a in _A)

#: the uniform unit light: shade(n) == 1 for every normal.
AMBIENT = np.array([1.0 / (np.pi * _C0)] + [0.0] * 8)


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """Lambertian-convolved SH basis ``[..., 9]`` at unit normals ``[..., 3]``."""
    n = np.asarray(normals, dtype=np.float64)
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    b = np.stack([
        np.full_like(x, _C0),
        _C1 * y, _C1 * z, _C1 * x,
        _C2 * x * y, _C2 * y * z, _C3 * (3 * z * z - 1), _C2 * x * z, _C4 * (x * x - y * y),
    ], axis=-1)
    return b * _A


@njit(cache=True, nogil=True)
def _normals_kernel(v, t, out):  # pragma: no cover - jitted
    out[:] = 0.0
    for f in range(t.shape[0]):
        a, b, c = t[f, 0], t[f, 1], t[f, 2]
        e1x, e1y, e1z = v[b, 0] - v[a, 0], v[b, 1] - v[a, 1], v[b, 2] - v[a, 2]
        e2x, e2y, e2z = v[c, 0] - v[a, 0], v[c, 1] - v[a, 1], v[c, 2] - v[a, 2]
        nx = e1y * e2z - e1z * e2y
        ny = e1z * e2x - e1x * e2z
        nz = e1x * e2y - e1y * e2x
        for k in (a, b, c):
            out[k, 0] += nx
            out[k, 1] += ny
            out[k, 2] += nz
    for i in range(out.shape[0]):
        nrm = (out[i, 0] ** 2 + out[i, 1] ** 2 + out[i, 2] ** 2) ** 0.5
        if nrm > 0:
            out[i, 0] /= nrm
            out[i, 1] /= nrm
            out[i, 2] /= nrm


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[N, 3]`` of a mesh ``vertices [N, 3]``,
    ``triangles [T, 3]`` (counter-clockwise faces point outwards).

    Hand-written (numba scatter) rather than trimesh's because it must run on a new
    geometry every frame without building a Trimesh object and its caches; checked against
    :func:`vertex_normals_reference`."""
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    t = np.ascontiguousarray(triangles, dtype=np.int64)
    out = np.empty_like(v)
    _normals_kernel(v, t, out)
    return out


def vertex_normals_reference(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """numpy reference of :func:`vertex_normals` (np.bincount scatter)."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # [T,3], |fn| = 2 * area
    n = np.empty_like(v)
    idx = t.ravel()
    for c in range(3):
        w = np.repeat(fn[:, c], 3)
        n[:, c] = np.bincount(idx, weights=w, minlength=len(v))
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm == 0, 1.0, norm)


def check_light(light) -> np.ndarray | None:
    """Validate a light: None, ``[9]`` (white) or ``[9, 3]`` (RGB) -> float64 ``[9, 3]`` or None."""
    if light is None:
        return None
    L = np.asarray(light, dtype=np.float64)
    if L.shape == (9,):
        L = np.repeat(L[:, None], 3, axis=1)
    if L.shape != (9, 3):
        raise ValueError(f"light must be None, [9] or [9, 3] SH coefficients, got shape {L.shape}")
    return L


def shade(colours: np.ndarray, normals_cam: np.ndarray, light) -> np.ndarray:
    """Lambertian SH shading: ``colours [N, 3]`` in [0, 1], camera-frame unit normals
    ``[N, 3]``, ``light`` None/[9]/[9, 3] -> shaded colours ``[N, 3]`` float32 in [0, 1]."""
    L = check_light(light)
    if L is None:
        return np.clip(np.asarray(colours, dtype=np.float32), 0, 1)
    out = np.empty((len(colours), 3), np.float32)
    c = np.asarray(colours)
    c = np.ascontiguousarray(c if c.dtype in (np.float32, np.float64) else c.astype(np.float64))
    _shade_kernel(c, np.ascontiguousarray(normals_cam, dtype=np.float64),
                  np.ascontiguousarray(L * _A[:, None]), out)
    return out


def shade_reference(colours, normals_cam, light) -> np.ndarray:
    """numpy reference of :func:`shade`."""
    L = check_light(light)
    c = np.asarray(colours, dtype=np.float64)
    if L is None:
        return np.clip(c, 0, 1).astype(np.float32)
    s = sh_basis(normals_cam) @ L  # [N, 3]
    return np.clip(c * s, 0.0, 1.0).astype(np.float32)


@njit(cache=True, nogil=True)
def _shade_kernel(c, n, LA, out):  # pragma: no cover - jitted
    for i in range(c.shape[0]):
        x, y, z = n[i, 0], n[i, 1], n[i, 2]
        b0 = 0.282095
        b1, b2, b3 = 0.488603 * y, 0.488603 * z, 0.488603 * x
        b4, b5 = 1.092548 * x * y, 1.092548 * y * z
        b6 = 0.315392 * (3 * z * z - 1)
        b7, b8 = 1.092548 * x * z, 0.546274 * (x * x - y * y)
        for k in range(3):
            s = (LA[0, k] * b0 + LA[1, k] * b1 + LA[2, k] * b2 + LA[3, k] * b3 + LA[4, k] * b4
                 + LA[5, k] * b5 + LA[6, k] * b6 + LA[7, k] * b7 + LA[8, k] * b8)
            val = c[i, k] * s
            out[i, k] = min(max(val, 0.0), 1.0)


def random_light(rng: np.random.Generator, strength: float = 0.6, colour: float = 0.08) -> np.ndarray:
    """A plausible random SH light ``[9, 3]``: ambient plus a directional key light from the
    front hemisphere, slight colour tint and a little band-2 variation."""
    d = rng.normal(size=3)
    d[2] = abs(d[2]) + 0.8  # from the viewer's side
    d /= np.linalg.norm(d)
    amb = rng.uniform(0.55, 0.85)
    key = rng.uniform(0.3, 1.0) * strength
    # SH projection of a clamped-cosine-ish lobe: band 0 ambient + band 1 along d
    L = np.zeros(9)
    L[0] = amb / (np.pi * _C0)
    L[1:4] = key * np.array([d[1], d[2], d[0]]) / (2 * np.pi / 3 * _C1)
    L[4:] = rng.normal(scale=0.05, size=5)
    tint = 1.0 + rng.normal(scale=colour, size=3)
    return L[:, None] * tint[None, :]
