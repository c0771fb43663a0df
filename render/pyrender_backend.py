"""The conventional backend: pyrender offscreen (OSMesa with ``PYOPENGL_PLATFORM=osmesa``).

Two passes on one cached :class:`pyrender.OffscreenRenderer` per image size:

1. colour: the shaded per-vertex colours, drawn unlit (``RenderFlags.FLAT``) so OpenGL only
   interpolates them (the SH shading is computed per vertex on the CPU, as in the fast path);
2. ids (optional): every triangle drawn in a flat colour encoding its index (24 bit), from
   which the triangle buffer is read back; barycentric coordinates and depth are then
   computed analytically at the pixel centres from the projected vertices.

The camera of docs/INTERFACES.md is given to OpenGL as an explicit projection matrix on
camera-frame vertices, so both backends see exactly the same projection.
"""
from __future__ import annotations

import os
import threading

import numpy as np

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

_LOCK = threading.RLock()  # OSMesa contexts are not thread-safe
_RENDERERS: dict = {}


def _pyrender():
    import pyrender  # imported lazily: needs PYOPENGL_PLATFORM before first import

    return pyrender


def _renderer(H: int, W: int):
    key = (os.getpid(), H, W)
    r = _RENDERERS.get(key)
    if r is None:
        r = _pyrender().OffscreenRenderer(viewport_width=W, viewport_height=H)
        _RENDERERS[key] = r
    return r


def projection_matrix(camera: np.ndarray, size, zmin: float, zmax: float) -> tuple[np.ndarray, float, float]:
    """OpenGL projection ``[4, 4]`` reproducing :func:`render.camera.project` on camera-frame
    points (shifted by ``-dist`` in z for perspective), plus (znear, zfar)."""
    H, W = size
    tx, ty, s, d = (float(camera[i]) for i in (3, 4, 5, 6))
    span = max(zmax - zmin, 1e-6)
    P = np.zeros((4, 4))
    if d > 0:
        f = s * d
        near = max(d - zmax - 0.05 * span, 1e-3 * d)
        far = d - zmin + 0.05 * span
        P[0] = [2 * f / W, 0, 1 - 2 * tx / W, 0]
        P[1] = [0, 2 * f / H, 2 * ty / H - 1, 0]
        P[2] = [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)]
        P[3] = [0, 0, -1, 0]
        return P, near, far
    lo, hi = zmin - 0.05 * span, zmax + 0.05 * span
    P[0] = [2 * s / W, 0, 0, 2 * tx / W - 1]
    P[1] = [0, 2 * s / H, 0, 1 - 2 * ty / H]
    P[2] = [0, 0, -2 / (hi - lo), (hi + lo) / (hi - lo)]
    P[3] = [0, 0, 0, 1]
    return P, 0.05, 100.0


def _camera_class():
    pyrender = _pyrender()

    class MatrixCamera(pyrender.camera.Camera):
        """A pyrender camera with an explicit projection matrix."""

        def __init__(self, P, znear, zfar):
            super().__init__(znear=znear, zfar=zfar)
            self._P = P

        def get_projection_matrix(self, width=None, height=None):
            return self._P

    return MatrixCamera


def _ids_to_rgb(n: int) -> np.ndarray:
    ids = np.arange(1, n + 1, dtype=np.int64)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255, np.full(n, 255)], axis=1).astype(np.uint8)


def rasterize_pyrender(Xc: np.ndarray, triangles: np.ndarray, colours: np.ndarray, camera: np.ndarray,
                       size, ids: bool = True):
    """Render camera-frame vertices ``Xc [N, 3]`` with per-vertex ``colours [N, 3]`` in [0, 1].

    Returns ``(image float32 [H, W, 3], mask bool [H, W], tri int32 [H, W] | None)``.
    """
    pyrender = _pyrender()
    H, W = int(size[0]), int(size[1])
    d = float(camera[6])
    V = np.asarray(Xc, dtype=np.float64).copy()
    zmin, zmax = float(V[:, 2].min()), float(V[:, 2].max())
    if d > 0:
        V[:, 2] -= d
    P, near, far = projection_matrix(camera, (H, W), zmin, zmax)
    cam = _camera_class()(P, near, far)
    flags = pyrender.RenderFlags.FLAT | pyrender.RenderFlags.SKIP_CULL_FACES
    mat = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], doubleSided=True)
    cols = np.concatenate([np.asarray(colours, np.float32), np.ones((len(V), 1), np.float32)], axis=1)
    prim = pyrender.Primitive(positions=V.astype(np.float32), indices=np.asarray(triangles, np.int64),
                              color_0=cols, material=mat, mode=pyrender.constants.GLTF.TRIANGLES)
    with _LOCK:
        r = _renderer(H, W)
        scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[1, 1, 1])
        scene.add(pyrender.Mesh([prim]))
        scene.add(cam, pose=np.eye(4))
        rgb, zbuf = r.render(scene, flags=flags)  # OSMesa reads RGB only: mask from depth
        tri = None
        if ids:
            T = len(triangles)
            Vt = V[np.asarray(triangles).ravel()].astype(np.float32)
            id_cols = np.repeat(_ids_to_rgb(T), 3, axis=0)
            prim2 = pyrender.Primitive(positions=Vt, color_0=id_cols, material=mat,
                                       mode=pyrender.constants.GLTF.TRIANGLES)
            scene2 = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[1, 1, 1])
            scene2.add(pyrender.Mesh([prim2]))
            scene2.add(cam, pose=np.eye(4))
            id_img, _ = r.render(scene2, flags=flags)
            id_img = id_img.astype(np.int64)
            tri = (id_img[..., 0] | (id_img[..., 1] << 8) | (id_img[..., 2] << 16)) - 1
            tri = tri.astype(np.int32)
    image = rgb[..., :3].astype(np.float32) / 255.0
    mask = zbuf > 0
    return image, mask, tri
