"""Fast z-buffered triangle rasteriser (numba) and a slow reference.

Hand-written because no installed library rasterises a 53k-vertex mesh with a *new*
geometry every frame quickly on a CPU and returns per-pixel triangle ids and barycentric
coordinates (pyrender needs an OpenGL context, a fresh GPU upload per mesh and a second
pass for ids; kornia/torch have no rasteriser).  The kernel is compiled once and cached on
disk (``cache=True``) so a new process pays only the cache load.

Conventions (docs/INTERFACES.md): pixel (i, j) has centre (j + 0.5, i + 0.5) in (u, v);
a pixel is covered when its centre lies inside or on the edge of the projected triangle;
the larger camera-frame depth wins.  Barycentric coordinates are perspective-correct:
with ``w_k`` the per-vertex homogeneous weight (1 for weak perspective, ``dist - z_k``
for perspective) the screen-space weights ``l_k`` become ``(l_k / w_k) / sum(l / w)``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


# fast-math without the no-NaN/no-Inf assumptions (the z-buffer starts at -inf)
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _raster_kernel(uv, z, invw, tris, tri_buf, bary_buf, zbuf):  # pragma: no cover - jitted
    H, W = zbuf.shape
    for t in range(tris.shape[0]):
        a, b, c = tris[t, 0], tris[t, 1], tris[t, 2]
        x0, y0 = uv[a, 0], uv[a, 1]
        x1, y1 = uv[b, 0], uv[b, 1]
        x2, y2 = uv[c, 0], uv[c, 1]
        # pixels whose centre (j + .5) lies in [min, max]; most triangles of a dense mesh
        # cover no pixel centre and leave here.  Non-finite vertices were rejected upstream.
        jmin = max(int(math.ceil(min(x0, min(x1, x2)) - 0.5)), 0)
        jmax = min(int(math.floor(max(x0, max(x1, x2)) - 0.5)), W - 1)
        if jmin > jmax:
            continue
        imin = max(int(math.ceil(min(y0, min(y1, y2)) - 0.5)), 0)
        imax = min(int(math.floor(max(y0, max(y1, y2)) - 0.5)), H - 1)
        if imin > imax:
            continue
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0.0:
            continue
        inv_area = 1.0 / area
        za, zb, zc = z[a], z[b], z[c]
        qa, qb, qc = invw[a], invw[b], invw[c]
        for i in range(imin, imax + 1):
            py = i + 0.5
            for j in range(jmin, jmax + 1):
                px = j + 0.5
                l0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) * inv_area
                if l0 < 0.0:
                    continue
                l1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) * inv_area
                if l1 < 0.0:
                    continue
                l2 = 1.0 - l0 - l1
                if l2 < 0.0:
                    continue
                p0, p1, p2 = l0 * qa, l1 * qb, l2 * qc
                s = 1.0 / (p0 + p1 + p2)
                p0 *= s
                p1 *= s
                p2 *= s
                d = p0 * za + p1 * zb + p2 * zc
                if d > zbuf[i, j]:
                    zbuf[i, j] = d
                    tri_buf[i, j] = t
                    bary_buf[i, j, 0] = p0
                    bary_buf[i, j, 1] = p1
                    bary_buf[i, j, 2] = p2


@njit(cache=True, nogil=True)
def _all_finite(uv, z):  # pragma: no cover - jitted
    for i in range(z.shape[0]):
        if not (np.isfinite(uv[i, 0]) and np.isfinite(uv[i, 1]) and np.isfinite(z[i])):
            return False
    return True


def rasterize(uv: np.ndarray, z: np.ndarray, w: np.ndarray, triangles: np.ndarray,
              size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer a mesh already projected to pixels.

    Args:
        uv: ``[N, 2]`` pixel coordinates of the vertices.
        z: ``[N]`` camera-frame depth (larger = closer).
        w: ``[N]`` homogeneous weights (ones for weak perspective, ``dist - z`` for perspective).
        triangles: ``[T, 3]`` vertex indices.
        size: ``(H, W)``.
    Returns:
        ``tri int32 [H, W]`` (-1 background), ``bary float32 [H, W, 3]``,
        ``depth float32 [H, W]`` (-inf background).
    """
    H, W = int(size[0]), int(size[1])
    tri_buf = np.full((H, W), -1, dtype=np.int32)
    bary = np.zeros((H, W, 3), dtype=np.float64)
    zbuf = np.full((H, W), -np.inf, dtype=np.float64)
    uv = np.ascontiguousarray(uv, dtype=np.float64)
    z = np.ascontiguousarray(z, dtype=np.float64)
    tris = np.ascontiguousarray(triangles, dtype=np.int64)
    keep = None
    if not _all_finite(uv, z):  # skip triangles touching a non-finite vertex
        finite = np.isfinite(uv).all(1) & np.isfinite(z)
        keep = np.nonzero(finite[tris].all(1))[0]
        tris = np.ascontiguousarray(tris[keep])
        uv = np.where(finite[:, None], uv, 0.0)
        z = np.where(finite, z, 0.0)
    _raster_kernel(uv, z, np.ascontiguousarray(1.0 / np.asarray(w, dtype=np.float64)), tris, tri_buf, bary, zbuf)
    if keep is not None:
        tri_buf = np.where(tri_buf >= 0, keep[np.maximum(tri_buf, 0)], -1).astype(np.int32)
    return tri_buf, bary.astype(np.float32), zbuf.astype(np.float32)


def rasterize_reference(uv, z, w, triangles, size):
    """Slow, obviously-correct reference of :func:`rasterize` (pure Python/numpy loop over
    every pixel and every triangle).  For tests on tiny meshes only."""
    H, W = size
    tri_buf = np.full((H, W), -1, dtype=np.int32)
    bary = np.zeros((H, W, 3), dtype=np.float32)
    zbuf = np.full((H, W), -np.inf, dtype=np.float32)
    uv = np.asarray(uv, float)
    for i in range(H):
        for j in range(W):
            p = np.array([j + 0.5, i + 0.5])
            best = -np.inf
            for t, (a, b, c) in enumerate(triangles):
                A = np.array([[uv[a, 0], uv[b, 0], uv[c, 0]], [uv[a, 1], uv[b, 1], uv[c, 1]], [1, 1, 1]])
                if abs(np.linalg.det(A)) < 1e-12:
                    continue
                lam = np.linalg.solve(A, np.array([p[0], p[1], 1.0]))
                if (lam < -1e-9).any():
                    continue
                q = lam / np.array([w[a], w[b], w[c]])
                q = q / q.sum()
                d = q @ np.array([z[a], z[b], z[c]])
                if d > best:
                    best = d
                    tri_buf[i, j] = t
                    bary[i, j] = q
                    zbuf[i, j] = d
    return tri_buf, bary, zbuf
