"""``render.render``: shade, rasterise and composite a per-vertex-coloured triangle mesh.

Pipeline (both backends): camera-frame vertices ``Xc = X @ R.T`` -> camera-frame vertex
normals -> per-vertex SH Lambertian shading (Gouraud) -> z-buffered rasterisation ->
composite over the background.  The backends differ only in the rasteriser:

* ``"fast"``: :func:`render.raster.rasterize` (numba), returns triangle ids and
  perspective-correct barycentrics directly;
* ``"pyrender"``: OpenGL through pyrender/OSMesa (:mod:`render.pyrender_backend`); the
  triangle buffer comes from an id pass and the barycentrics are recomputed at the pixel
  centres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numba import njit

from render.camera import camera_rotation
from render.lighting import check_light, shade, vertex_normals
from render.raster import rasterize

BACKENDS = ("fast", "pyrender")


@dataclass
class RenderResult:
    """Output of :func:`render`.

    image: float32 [H, W, 3] in [0, 1] (mesh composited over the background)
    mask:  bool [H, W] (pixel covered by the mesh)
    tri:   int32 [H, W] triangle index, -1 = background
    bary:  float32 [H, W, 3] perspective-correct barycentric weights of tri's 3 vertices (0 on background)
    depth: float32 [H, W] camera-frame z of the visible surface (larger = closer), -inf on background
    """

    image: np.ndarray
    mask: np.ndarray
    tri: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    def image_uint8(self) -> np.ndarray:
        """The image as uint8 [H, W, 3]."""
        return np.clip(np.round(self.image * 255.0), 0, 255).astype(np.uint8)


def _background(background) -> tuple[tuple[int, int], np.ndarray]:
    if isinstance(background, (tuple, list)) and len(background) == 2 and all(
            isinstance(x, (int, np.integer)) for x in background):
        H, W = int(background[0]), int(background[1])
        if H <= 0 or W <= 0:
            raise ValueError(f"image size must be positive, got {background}")
        return (H, W), np.zeros((H, W, 3), np.float32)
    bg = np.asarray(background)
    if bg.ndim != 3 or bg.shape[2] != 3:
        raise ValueError(f"background must be (H, W) or an [H, W, 3] image, got shape {bg.shape}")
    if bg.dtype == np.uint8:
        bgf = bg.astype(np.float32) / 255.0
    else:
        bgf = np.clip(bg.astype(np.float32), 0, 1)
    return bg.shape[:2], bgf


# the last few triangle arrays whose index range was checked (a renderer is called with the
# same topology every frame; the check reads 3T ints, ~1 ms for the demo mesh)
_CHECKED: list = []


def _range_checked(T: np.ndarray, n: int) -> bool:
    for ref, shape, nv in _CHECKED:
        if ref() is T and shape == T.shape and nv <= n:
            return True
    return False


def _remember_range(T: np.ndarray, n: int) -> None:
    import weakref

    try:
        _CHECKED.append((weakref.ref(T), T.shape, n))
    except TypeError:  # not weak-referenceable (a view of a temporary): just do not cache
        return
    del _CHECKED[:-4]


def _float_array(x) -> np.ndarray:
    """float32/float64 C-contiguous view of ``x`` without a copy when possible (the kernels
    are compiled for both)."""
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


def _check_mesh(vertices, triangles, colours):
    V = _float_array(vertices)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"vertices must be [N, 3], got shape {V.shape}")
    T = np.asarray(triangles)
    if T.ndim != 2 or T.shape[1] != 3 or not np.issubdtype(T.dtype, np.integer):
        raise ValueError(f"triangles must be integer [T, 3], got {T.dtype} {T.shape}")
    if T.size and not _range_checked(T, len(V)):
        if T.min() < 0 or T.max() >= len(V):
            raise ValueError("triangles index outside the vertex array")
        _remember_range(T, len(V))
    C = _float_array(colours)
    if C.shape != V.shape:
        raise ValueError(f"colours must be [N, 3] like vertices {V.shape}, got {C.shape}")
    return V, np.asarray(T, dtype=np.int64), C


@njit(cache=True, nogil=True)
def _transform_kernel(V, R, tx, ty, s, d, Xc, uv, w):  # pragma: no cover - jitted
    for i in range(V.shape[0]):
        x = R[0, 0] * V[i, 0] + R[0, 1] * V[i, 1] + R[0, 2] * V[i, 2]
        y = R[1, 0] * V[i, 0] + R[1, 1] * V[i, 1] + R[1, 2] * V[i, 2]
        z = R[2, 0] * V[i, 0] + R[2, 1] * V[i, 1] + R[2, 2] * V[i, 2]
        Xc[i, 0], Xc[i, 1], Xc[i, 2] = x, y, z
        if d > 0:
            w[i] = d - z
            k = s * d / w[i]
        else:
            w[i] = 1.0
            k = s
        uv[i, 0] = k * x + tx
        uv[i, 1] = -k * y + ty


@njit(cache=True, nogil=True)
def _composite_kernel(tri, bary, T, shaded, img):  # pragma: no cover - jitted
    for i in range(tri.shape[0]):
        for j in range(tri.shape[1]):
            t = tri[i, j]
            if t >= 0:
                a, b, c = T[t, 0], T[t, 1], T[t, 2]
                for k in range(3):
                    v = bary[i, j, 0] * shaded[a, k] + bary[i, j, 1] * shaded[b, k] + bary[i, j, 2] * shaded[c, k]
                    img[i, j, k] = min(max(v, 0.0), 1.0)


def camera_transform(V: np.ndarray, cam: np.ndarray):
    """Camera-frame vertices ``Xc [N, 3]``, pixels ``uv [N, 2]`` and homogeneous weights
    ``w [N]`` in one pass (the same maths as :func:`render.camera.project`, checked by the
    tests; a fused kernel avoids BLAS threading overhead on ``[N, 3] @ [3, 3]``)."""
    V = _float_array(V)
    R = np.ascontiguousarray(camera_rotation(cam))
    Xc = np.empty((len(V), 3))
    uv = np.empty((len(V), 2))
    w = np.empty(len(V))
    _transform_kernel(V, R, float(cam[3]), float(cam[4]), float(cam[5]), float(cam[6]), Xc, uv, w)
    return Xc, uv, w


def barycentrics_at_pixels(uv: np.ndarray, w: np.ndarray, triangles: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Perspective-correct barycentric coordinates ``[H, W, 3]`` of each pixel centre in its
    triangle ``tri [H, W]`` (-1 -> 0), for projected vertices ``uv [N, 2]`` and homogeneous
    weights ``w [N]``."""
    H, W = tri.shape
    out = np.zeros((H, W, 3), np.float32)
    ii, jj = np.nonzero(tri >= 0)
    if len(ii) == 0:
        return out
    t = triangles[tri[ii, jj]]
    p = np.stack([jj + 0.5, ii + 0.5], axis=1)
    a, b, c = uv[t[:, 0]], uv[t[:, 1]], uv[t[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    area = np.where(area == 0, 1e-12, area)
    l0 = ((b[:, 0] - p[:, 0]) * (c[:, 1] - p[:, 1]) - (c[:, 0] - p[:, 0]) * (b[:, 1] - p[:, 1])) / area
    l1 = ((c[:, 0] - p[:, 0]) * (a[:, 1] - p[:, 1]) - (a[:, 0] - p[:, 0]) * (c[:, 1] - p[:, 1])) / area
    lam = np.stack([l0, l1, 1 - l0 - l1], axis=1)
    lam = np.clip(lam, 0, None)  # OpenGL may cover a centre a hair outside our edge test
    q = lam / w[t]
    q /= np.maximum(q.sum(1, keepdims=True), 1e-30)
    out[ii, jj] = q
    return out


def composite(tri, bary, triangles, shaded, background) -> np.ndarray:
    """The fast backend's compositing: the vertex colours ``shaded [N,3]`` interpolated with
    ``bary [H,W,3]`` over the covered pixels (``tri [H,W]`` >= 0) of a float32 copy of
    ``background [H,W,3]`` -> image [H,W,3]."""
    img = np.array(background, dtype=np.float32, copy=True)
    _composite_kernel(tri, bary, triangles, np.ascontiguousarray(shaded, dtype=np.float32), img)
    return img


def render(vertices, triangles, colours, camera, background=(128, 128), light=None,
           backend: str = "fast", buffers: bool = True) -> RenderResult:
    """Render a per-vertex-coloured mesh.

    Args:
        vertices: ``[N, 3]`` model-space vertices.
        triangles: ``[T, 3]`` int vertex indices (counter-clockwise = outward normal).
        colours: ``[N, 3]`` albedo in [0, 1].
        camera: ``[7]`` ``[pitch, yaw, roll, tx, ty, scale, dist]`` (render.camera).
        background: ``(H, W)`` (black) or an ``[H, W, 3]`` image (uint8 or float in [0, 1]).
        light: None (colours unshaded), ``[9]`` or ``[9, 3]`` SH coefficients in the camera
            frame (render.lighting).
        backend: ``"fast"`` (numba) or ``"pyrender"`` (OpenGL/OSMesa).
        buffers: pyrender only: False skips the triangle-id pass (``tri`` all -1, ``bary`` 0,
            ``depth`` -inf); image and mask are unaffected.
    Returns:
        :class:`RenderResult`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r} (choose from {', '.join(BACKENDS)})")
    cam = np.asarray(camera, dtype=np.float64)
    if cam.shape != (7,):
        raise ValueError(f"camera must be [7] [pitch, yaw, roll, tx, ty, scale, dist], got shape {cam.shape}")
    V, T, C = _check_mesh(vertices, triangles, colours)
    size, bg = _background(background)
    L = check_light(light)

    Xc, uv, w = camera_transform(V, cam)
    shaded = shade(C, vertex_normals(Xc, T), L) if L is not None else np.clip(C, 0, 1).astype(np.float32)

    if backend == "fast":
        tri, bary, depth = rasterize(uv, Xc[:, 2], w, T, size)
        return RenderResult(composite(tri, bary, T, shaded, bg), tri >= 0, tri, bary, depth)

    from render.pyrender_backend import rasterize_pyrender

    image, mask, tri = rasterize_pyrender(Xc, T, shaded, cam, size, ids=buffers)
    img = np.where(mask[..., None], image, bg).astype(np.float32)
    H, W = size
    if tri is None:
        return RenderResult(img, mask, np.full((H, W), -1, np.int32), np.zeros((H, W, 3), np.float32),
                            np.full((H, W), -np.inf, np.float32))
    tri = np.where(mask, tri, -1).astype(np.int32)
    bary = barycentrics_at_pixels(uv, w, T, tri)
    depth = np.full((H, W), -np.inf, np.float32)
    ii, jj = np.nonzero(tri >= 0)
    depth[ii, jj] = np.einsum("pk,pk->p", bary[ii, jj], Xc[T[tri[ii, jj]], 2])
    return RenderResult(img, mask, tri, bary, depth)


def visible_vertices(vertices, triangles, camera, size, tolerance: float = 0.01) -> np.ndarray:
    """Which vertices the camera sees: ``bool [N]``.

    A vertex is visible when it projects inside the ``size = (H, W)`` image and its
    camera-frame depth is not behind the z-buffer at its pixel by more than
    ``tolerance`` times the mesh's depth extent (so a vertex on the visible surface passes
    even though the pixel centre samples a neighbouring triangle).
    """
    V = np.asarray(vertices, dtype=np.float64)
    T = np.asarray(triangles, dtype=np.int64)
    cam = np.asarray(camera, dtype=np.float64)
    H, W = int(size[0]), int(size[1])
    Xc, uv, w = camera_transform(V, cam)
    _, _, depth = rasterize(uv, Xc[:, 2], w, T, (H, W))
    z = Xc[:, 2]
    return depth_test(uv, z, depth, tolerance * max(float(z.max() - z.min()), 1e-12))


def depth_test(uv: np.ndarray, z: np.ndarray, depth: np.ndarray, eps: float) -> np.ndarray:
    """Visible points: ``uv [n,2]`` pixel positions with depths ``z [n]`` against the z-buffer
    ``depth [H,W]`` (inf where empty), up to ``eps`` -> bool [n] (False outside the image)."""
    H, W = depth.shape
    j = np.floor(uv[:, 0]).astype(np.int64)
    i = np.floor(uv[:, 1]).astype(np.int64)
    inside = (j >= 0) & (j < W) & (i >= 0) & (i < H) & np.isfinite(uv).all(1)
    vis = np.zeros(len(uv), bool)
    ii, jj = i[inside], j[inside]
    # the z-buffer around the vertex: the max over its pixel's 3x3 neighbourhood would hide
    # silhouette vertices; take the min of the covered neighbours instead.
    zb = depth.astype(np.float64)
    zpad = np.pad(np.where(np.isfinite(zb), zb, np.inf), 1, constant_values=np.inf)
    neigh = np.min(np.stack([zpad[ii + di, jj + dj] for di in range(3) for dj in range(3)]), axis=0)
    vis[inside] = z[inside] >= np.minimum(zb[ii, jj], neigh) - eps
    return vis


def sample_image(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``image [H, W, C]`` (uint8 -> [0, 1], or float) at pixel coordinates
    ``uv [N, 2]`` (pixel centres at ``j + 0.5``; positions outside clamp to the border).
    Returns float32 ``[N, C]``."""
    from scipy.ndimage import map_coordinates

    img = np.asarray(image)
    imgf = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if imgf.ndim == 2:
        imgf = imgf[..., None]
    uv = np.asarray(uv, dtype=np.float64)
    coords = np.stack([uv[:, 1] - 0.5, uv[:, 0] - 0.5])
    out = [map_coordinates(imgf[..., c], coords, order=1, mode="nearest") for c in range(imgf.shape[2])]
    return np.stack(out, axis=1).astype(np.float32)


def sample_vertex_colours(image, vertices, triangles, camera, visibility: bool = True):
    """Per-vertex colours from a photo: project ``vertices [N, 3]`` with ``camera [7]``,
    sample ``image [H, W, 3]`` bilinearly.  Returns ``(colours float32 [N, 3], visible bool [N])``;
    colours of invisible vertices are the sampled values too (callers decide what to do)."""
    from render.camera import project

    img = np.asarray(image)
    uv = project(vertices, camera)
    cols = sample_image(img, uv)
    vis = visible_vertices(vertices, triangles, camera, img.shape[:2]) if visibility else np.ones(len(uv), bool)
    return cols, vis
