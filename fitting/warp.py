"""3D warps of a fitted photo (paper Sec. 4.1, "3D warped images").

For one fitted photo (identity ``p_id``, expression ``p_fit``, camera, 2x3 alignment):

1. **Texture** (once per photo): project the fitted shape with the fit camera, sample the
   full-resolution photo bilinearly at every vertex (:func:`render.sample_vertex_colours`).
   Vertices the camera does not see (z-buffer test, facing away: normal . view <
   ``grazing``, or a bilinear sample touching a pixel off the face) take *no* colour from
   the photo; they are filled by :func:`fill_occluded` (visible neighbours just beyond the
   silhouette, then the mirrored vertex, then nearest resolved vertices); vertices turned
   well away (normal . view < -0.3) can never show with the photo's camera and just take
   the mean colour; the hidden inside of the mouth is dark.
2. **Background** (once per photo): the photo resampled into the 128x128 crop with the
   fit's ``align``; the footprint of the *original* fitted face (its render mask, holes
   such as the mouth filled, dilated by ``dilate`` px) is inpainted from its surroundings
   (:func:`inpaint`, push-pull), so a face that shrinks leaves no stale face pixels.
3. **Renders** (``per_face`` times): the new shape ``instance(p_id, p_k)`` with the sampled
   colours, plus a **mouth cavity** (:class:`MouthCavity`: the mouth hole of the mesh is
   closed by a dark, recessed cap, so an opening jaw shows a dark mouth, not background),
   rendered with the z-buffered rasteriser over the inpainted background.

Render space (``space``): ``"crop"`` (default) folds the similarity ``align`` into the
camera (:func:`fold_align`: image-plane rotation -> roll, scale, shift; exact for weak
and full perspective) and renders directly at 128x128; ``"full"`` renders at the photo's
resolution and then resamples with ``align``, as the paper describes.  Both give the same
image up to resampling (tests/warps/test_warp.py checks the bound); ``crop`` is ~10x
cheaper on large photos and resamples the photo only once.  A non-similarity ``align``
(reflection or shear) falls back to ``full``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACES = ("crop", "full")


# ----------------------------------------------------------------------------- geometry
def is_similarity(align, tol: float = 1e-4) -> bool:
    """Whether a 2x3 affine ``align`` is a rotation + uniform scale + shift (no reflection)."""
    A = np.asarray(align, np.float64)
    a, b = A[0, 0], A[1, 0]
    s = max(np.hypot(a, b), 1e-12)
    return bool(abs(A[1, 1] - a) <= tol * s and abs(A[0, 1] + b) <= tol * s and s > 1e-12)


def fold_align(camera, align) -> np.ndarray:
    """Camera ``[7]`` whose projection equals ``align`` applied to ``camera``'s projection.

    For ``align = [[a, -b, c0], [b, a, c1]]`` (``a = s cos t``, ``b = s sin t``): roll -> roll - t,
    scale -> scale * s, (tx, ty) -> align @ (tx, ty, 1).  The image-plane rotation is a rotation
    about the optical axis, which leaves camera-frame depth (and so perspective) unchanged."""
    A = np.asarray(align, np.float64)
    if not is_similarity(A):
        raise ValueError("align is not a similarity transform; cannot fold it into the camera")
    cam = np.asarray(camera, np.float64).copy()
    a, b = A[0, 0], A[1, 0]
    s, t = np.hypot(a, b), np.arctan2(b, a)
    tx, ty = cam[3], cam[4]
    cam[2] = cam[2] - t
    cam[5] = cam[5] * s
    cam[3] = a * tx - b * ty + A[0, 2]
    cam[4] = b * tx + a * ty + A[1, 2]
    return cam.astype(np.float32)


def warp_affine(image, align, size: tuple[int, int]) -> np.ndarray:
    """Resample ``image [H, W, C]`` (uint8 or float) into ``size = (h, w)`` such that output
    pixel centre ``q`` shows the input at ``align^-1 q`` (pixel-corner origin, centres at
    ``+0.5``, bilinear, black outside the input like the fit's crops).  Returns float32
    [h, w, C] (uint8 input scaled to [0, 1])."""
    from scipy.ndimage import map_coordinates

    img = np.asarray(image)
    imgf = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    A = np.vstack([np.asarray(align, np.float64), [0, 0, 1]])
    Ai = np.linalg.inv(A)
    h, w = size
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    u = Ai[0, 0] * jj + Ai[0, 1] * ii + Ai[0, 2]
    v = Ai[1, 0] * jj + Ai[1, 1] * ii + Ai[1, 2]
    coords = np.stack([v - 0.5, u - 0.5])
    out = [map_coordinates(imgf[..., c], coords, order=1, mode="constant", cval=0.0) for c in range(imgf.shape[2])]
    return np.stack(out, -1).astype(np.float32)


def crop_photo(photo, align, size: int) -> np.ndarray:
    """The fit stage's aligned crop (``fitting.align.warp_crop``: bilinear, box-reduced first
    when shrinking by more than 2x) as float32 ``[size, size, 3]`` in [0, 1], so warps and
    fitted photos share pixels exactly outside the face."""
    try:
        from fitting.align import warp_crop
    except ImportError:  # pragma: no cover - fit part absent
        return warp_affine(photo, align, (size, size))
    return warp_crop(photo, align, size).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- inpainting
def _pool2(x: np.ndarray) -> np.ndarray:
    """Sum 2x2 blocks of ``x [H, W, C]`` (odd sizes padded with zeros) -> ``[ceil(H/2), ceil(W/2), C]``."""
    H, W = x.shape[:2]
    if H % 2 or W % 2:
        x = np.pad(x, ((0, H % 2), (0, W % 2), (0, 0)))
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x.reshape(h, 2, w, 2, -1).sum((1, 3))


def _upsample(x: np.ndarray, shape) -> np.ndarray:
    """Bilinear upsampling by 2 of ``x [h, w, C]`` cropped to ``shape = (H, W)`` (pixel
    centres aligned as in an image pyramid)."""
    from scipy.ndimage import zoom

    H, W = shape
    up = zoom(x, (2, 2, 1), order=1, mode="nearest", grid_mode=True)
    return up[:H, :W]


def inpaint(image, hole) -> np.ndarray:
    """Fill ``hole [H, W] bool`` of ``image [H, W, C]`` float from its surroundings.

    Push-pull (Gortler et al. 1996): average the known pixels down an image pyramid until
    every coarse cell has support, then fill each level's unknown pixels from the bilinearly
    upsampled coarser level.  Smooth, no seams, O(HW).  Hand-written because OpenCV is not
    installed; plain numpy block sums (torch pooling was slower for 128x128 because of
    thread start-up under load)."""
    img = np.asarray(image, np.float32)
    hole = np.asarray(hole, bool)
    if not hole.any():
        return img.copy()
    if hole.all():
        return np.full_like(img, 0.5)
    w = (~hole).astype(np.float32)[..., None]
    levels = [(img * w, w)]
    while min(levels[-1][1].shape[:2]) > 1 and (levels[-1][1] <= 0).any():
        c, w = levels[-1]
        levels.append((_pool2(c), _pool2(w)))
    c, w = levels[-1]
    filled = c / np.maximum(w, 1e-8)
    for c, w in reversed(levels[:-1]):
        up = _upsample(filled, c.shape[:2])
        alpha = np.clip(w, 0, 1)
        filled = c / np.maximum(w, 1e-8) * alpha + up * (1 - alpha)
    return np.where(hole[..., None], filled, img).astype(np.float32)


# ----------------------------------------------------------------------------- mesh helpers
def edges_of(triangles) -> np.ndarray:
    """Unique undirected edges ``[M, 2]`` (sorted pairs) of ``triangles [T, 3]``."""
    t = np.asarray(triangles, np.int64)
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    return np.unique(np.sort(e, 1), axis=0)


def boundary_loops(triangles) -> list[np.ndarray]:
    """Closed boundary loops of a manifold triangle mesh, each an ordered vertex array."""
    t = np.asarray(triangles, np.int64)
    e = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), 1)
    u, cnt = np.unique(e, axis=0, return_counts=True)
    b = u[cnt == 1]
    nbr: dict[int, list[int]] = {}
    for a, c in b:
        nbr.setdefault(int(a), []).append(int(c))
        nbr.setdefault(int(c), []).append(int(a))
    seen: set[int] = set()
    loops = []
    for start in sorted(nbr):
        if start in seen:
            continue
        loop, prev, cur = [start], -1, start
        seen.add(start)
        while True:
            nxt = [n for n in nbr[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(np.array(loop, np.int64))
    return loops


@dataclass
class MouthCavity:
    """A dark, recessed cap that closes the mouth hole of the mesh.

    ``loop [L]``: ordered boundary loop of the mouth opening (vertex indices).  The cap adds
    ``L`` ring vertices (the loop pushed back by ``ring_depth`` x mouth width along the
    model's -z) and one centre vertex (pushed back by ``depth`` x width), with triangles
    ``[2L + L, 3]`` (a strip lip-edge -> ring and a fan ring -> centre) appended after the
    mesh's.  Geometry follows the current shape, so the cavity opens with the jaw; when the
    lips close it is hidden behind them by the z-buffer.  Colours: ``ring_colour`` /
    ``centre_colour`` times the mean lip colour (so it darkens with the photo's exposure)."""
    loop: np.ndarray
    n_vertices: int
    depth: float = 0.5
    ring_depth: float = 0.04
    ring_colour: float = 0.35
    centre_colour: float = 0.12

    @classmethod
    def find(cls, triangles, vertices, landmarks, n_vertices=None) -> "MouthCavity | None":
        """The boundary loop nearest the inner-lip landmarks (iBUG 60-67); None when the
        mesh has no hole there (mesh without a mouth slit: no cavity needed)."""
        V = np.asarray(vertices, np.float64)
        L = np.asarray(landmarks, np.int64)
        if len(L) < 68:
            return None
        mouth = V[L[60:68]].mean(0)
        width = np.linalg.norm(V[L[54]] - V[L[48]])
        best, best_d = None, np.inf
        for loop in boundary_loops(triangles):
            if len(loop) < 6:
                continue
            d = np.linalg.norm(V[loop].mean(0) - mouth)
            if d < best_d:
                best, best_d = loop, d
        if best is None or best_d > 0.5 * width:
            return None
        return cls(best, int(n_vertices or len(V)))

    def triangles(self) -> np.ndarray:
        L, N = len(self.loop), self.n_vertices
        i = np.arange(L)
        j = (i + 1) % L
        ring = N + i
        ring_next = N + j
        centre = np.full(L, N + L)
        strip1 = np.stack([self.loop[i], self.loop[j], ring], 1)
        strip2 = np.stack([self.loop[j], ring_next, ring], 1)
        fan = np.stack([ring, ring_next, centre], 1)
        return np.concatenate([strip1, strip2, fan]).astype(np.int64)

    def vertices(self, V) -> np.ndarray:
        """Extra vertices ``[L + 1, 3]`` for shape ``V [N, 3]``."""
        P = np.asarray(V)[self.loop]
        width = max(float(P[:, 0].max() - P[:, 0].min()), 1e-9)
        back = np.array([0.0, 0.0, 1.0])
        ring = P - back * self.ring_depth * width
        centre = P.mean(0) - back * self.depth * width
        return np.vstack([ring, centre[None]]).astype(np.float64)

    def colours(self, C) -> np.ndarray:
        """Extra colours ``[L + 1, 3]`` given the mesh colours ``C [N, 3]``."""
        lip = np.asarray(C)[self.loop].mean(0)
        L = len(self.loop)
        return np.vstack([np.tile(lip * self.ring_colour, (L, 1)), (lip * self.centre_colour)[None]]).astype(np.float32)


def mirror_map(vertices, max_dist: float | None = None) -> np.ndarray:
    """For each vertex of a (roughly) left-right symmetric shape ``[N, 3]`` (x = left-right),
    the index of the vertex nearest its mirror image ``(-x, y, z)``; -1 when none lies within
    ``max_dist`` (default: 2 x the median nearest-neighbour distance).  ``[N] int64``."""
    from scipy.spatial import cKDTree

    V = np.asarray(vertices, np.float64)
    tree = cKDTree(V)
    if max_dist is None:
        d1, _ = tree.query(V, k=2)
        max_dist = 2.0 * float(np.median(d1[:, 1]))
    d, idx = tree.query(V * np.array([-1.0, 1.0, 1.0]), k=1)
    return np.where(d <= max_dist, idx, -1).astype(np.int64)


def fill_occluded(colours, known, points, mirror=None, k: int = 4, neighbours=None, rounds: int = 12,
                  near_rounds: int = 2, ignore=None) -> np.ndarray:
    """Colours for the vertices that are not ``known``.

    ``colours [N, 3]`` (values of unknown vertices are ignored), ``known [N] bool``,
    ``points [N, 3]`` vertex positions to measure nearness in (the mean shape), ``mirror
    [N]`` (-1 = none), ``neighbours = (dist [N, M], idx [N, M])`` each vertex's M nearest
    vertices sorted by distance (:func:`nearest_vertices`, once per model).

    Rounds (with ``neighbours``): every unknown vertex with at least ``k`` resolved vertices
    among its M nearest takes the inverse-distance-weighted mean of the first ``k`` of them
    (in the first round: exactly its k nearest known vertices); vertices resolved in a round
    count as resolved in the next, so the fill grows inwards from the visible border.

    1. ``near_rounds`` rounds: the strip just beyond the visible border takes its visible
       neighbours' colours (same lighting, so no seam where a deformed face shows it);
    2. mirror: an unknown vertex whose mirrored vertex is resolved takes its colour (the
       other side of the face, same skin);
    3. up to ``rounds`` more rounds;
    4. whatever is left: the weighted mean of its ``k`` nearest resolved vertices (KD-tree).

    ``ignore [N] bool`` (unknown vertices whose colour does not matter): they take the mean
    known colour, are never filled and never serve as a source.
    Returns float32 [N, 3]."""
    from scipy.spatial import cKDTree

    C = np.asarray(colours, np.float32).copy()
    known = np.asarray(known, bool).copy()
    if known.all():
        return C
    if not known.any():
        return np.full_like(C, 0.5)
    mean = C[known].mean(0)
    skip = np.zeros(len(C), bool) if ignore is None else (np.asarray(ignore, bool) & ~known)
    todo = np.nonzero(~known & ~skip)[0]

    def grow(todo, n_rounds):
        for _ in range(n_rounds if neighbours is not None else 0):
            if not len(todo):
                break
            nd, ni = neighbours[0][todo], neighbours[1][todo]          # [n, M]
            kn = known[ni]
            rank = np.cumsum(kn, 1)
            ok = rank[:, -1] >= k
            if not ok.any():
                break
            sel = (kn & (rank <= k))[ok]
            w = np.where(sel, 1.0 / np.maximum(nd[ok], 1e-9), 0.0)
            w /= w.sum(1, keepdims=True)
            C[todo[ok]] = (C[ni[ok]] * w[..., None]).sum(1)
            known[todo[ok]] = True
            todo = todo[~ok]
        return todo

    todo = grow(todo, near_rounds)
    if mirror is not None and len(todo):
        m = np.asarray(mirror)[todo]
        take = m >= 0
        take[take] = known[m[take]]
        C[todo[take]] = C[m[take]]
        known[todo[take]] = True
        todo = todo[~take]
    todo = grow(todo, rounds)
    if len(todo):
        P = np.asarray(points, np.float64)
        src = np.nonzero(known)[0]
        kk = min(k, len(src))
        d, idx = cKDTree(P[src]).query(P[todo], k=kk)
        d, idx = d.reshape(len(todo), kk), idx.reshape(len(todo), kk)
        wgt = 1.0 / np.maximum(d, 1e-9)
        wgt /= wgt.sum(1, keepdims=True)
        C[todo] = (C[src[idx]] * wgt[..., None]).sum(1)
    C[skip] = mean
    return C


def nearest_vertices(points, m: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Each vertex's ``m`` nearest other vertices, sorted: ``(dist [N, m] float32, idx [N, m] int32)``."""
    from scipy.spatial import cKDTree

    P = np.asarray(points, np.float64)
    m = min(m, len(P) - 1)
    d, i = cKDTree(P).query(P, k=m + 1)
    return d[:, 1:].astype(np.float32), i[:, 1:].astype(np.int32)


def mouth_interior(vertices, triangles, landmarks, loop, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the mouth's inside (rolled-in inner lips, mouth walls) of a closed-mouth
    mean shape ``[N, 3]``: inside the outer-lip landmark polygon (iBUG 48-59, frontal x/y) and
    hidden in a frontal render.  Returns ``(interior [N] bool, t [N] float)`` with ``t`` from 0
    (next to the visible lips) to 1 (at the mouth hole ``loop``), by geodesic distance."""
    from matplotlib.path import Path as _Path
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    from render import visible_vertices
    from render.camera import camera_fitting_view

    V = np.asarray(vertices, np.float64)
    L = np.asarray(landmarks, np.int64)
    cam = camera_fitting_view(V, (size, size))
    vis = visible_vertices(V, triangles, cam, (size, size))
    inside = _Path(V[L[48:60], :2]).contains_points(V[:, :2])
    interior = inside & ~vis
    interior[loop] = True
    t = np.zeros(len(V))
    idx = np.nonzero(interior)[0]
    if len(idx) > 1:
        e = edges_of(triangles)
        e = e[interior[e[:, 0]] & interior[e[:, 1]]]
        remap = -np.ones(len(V), np.int64)
        remap[idx] = np.arange(len(idx))
        w = np.linalg.norm(V[e[:, 0]] - V[e[:, 1]], axis=1) + 1e-12
        G = coo_matrix((w, (remap[e[:, 0]], remap[e[:, 1]])), shape=(len(idx),) * 2).tocsr()
        g = dijkstra(G, directed=False, indices=remap[loop], min_only=True)
        g = np.where(np.isfinite(g), g, 0.0)
        t[idx] = 1.0 - g / max(g.max(), 1e-12)
    return interior, t


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class MouthStretch:
    """Dark mouth for meshes whose lips are joined by skin (no mouth slit, or a slit hidden
    behind rolled-in lips, as in the demo model): when the jaw opens, the triangles between
    the lips stretch.  Mouth-region vertices are darkened by ``smoothstep(area ratio, lo, hi)``
    of their adjacent triangles (relative to the mean shape), gated by how far the mouth
    opened: the outer-lip gap (iBUG 51-57) grown by ``open_lo..open_hi`` mouth widths over the
    expression-free shape.  The gate keeps a smile's sideways stretch from darkening lips.

    ``vertices [M]`` mouth-region vertex ids (inside the outer-lip landmark polygon 48-59 of
    the frontal mean, slightly enlarged), ``triangles [Tm, 3]`` the triangles touching them,
    ``area0 [Tm]`` their mean-shape areas, ``landmarks [68]``."""
    vertices: np.ndarray
    triangles: np.ndarray
    area0: np.ndarray
    landmarks: np.ndarray
    smooth: object = None
    lo: float = 1.6
    hi: float = 3.5
    open_lo: float = 0.04
    open_hi: float = 0.2
    dark: float = 0.12

    @classmethod
    def build(cls, vertices, triangles, landmarks, grow: float = 1.15) -> "MouthStretch | None":
        from matplotlib.path import Path as _Path

        V = np.asarray(vertices, np.float64)
        L = np.asarray(landmarks, np.int64)
        if len(L) < 68:
            return None
        poly = V[L[48:60], :2]
        c = poly.mean(0)
        inside = _Path(c + (poly - c) * grow).contains_points(V[:, :2]) & (V[:, 2] > V[L[48:60], 2].min() - 0.5 * np.ptp(poly[:, 0]))
        if not inside.any():
            return None
        T = np.asarray(triangles, np.int64)
        tsel = inside[T].any(1)
        Tm = T[tsel]
        verts = np.nonzero(inside)[0]
        # row-normalised adjacency (with self loops) among the mouth vertices: the stretch
        # ratio is averaged over each vertex's ring (twice) so that single stretched
        # triangles at the lip corners do not leave dark specks
        from scipy.sparse import coo_matrix, diags

        local = -np.ones(len(V), np.int64)
        local[verts] = np.arange(len(verts))
        e = edges_of(Tm)
        e = e[(local[e[:, 0]] >= 0) & (local[e[:, 1]] >= 0)]
        r = np.concatenate([local[e[:, 0]], local[e[:, 1]], np.arange(len(verts))])
        c = np.concatenate([local[e[:, 1]], local[e[:, 0]], np.arange(len(verts))])
        A = coo_matrix((np.ones(len(r)), (r, c)), shape=(len(verts),) * 2).tocsr()
        A = diags(1.0 / np.asarray(A.sum(1)).ravel()) @ A
        return cls(verts, Tm, cls._areas(V, Tm), L, A.tocsr())

    @staticmethod
    def _areas(V, T):
        a, b, c = V[T[:, 0]], V[T[:, 1]], V[T[:, 2]]
        return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)

    def opening(self, V, rest) -> float:
        """Outer-lip gap growth of ``V`` over ``rest`` (both ``[N, 3]``), in mouth widths."""
        L = self.landmarks
        V, R = np.asarray(V, np.float64), np.asarray(rest, np.float64)
        width = max(np.linalg.norm(R[L[54]] - R[L[48]]), 1e-12)
        return float((np.linalg.norm(V[L[51]] - V[L[57]]) - np.linalg.norm(R[L[51]] - R[L[57]])) / width)

    def weights(self, V, rest=None) -> np.ndarray:
        """Darkening weight per mouth vertex ``[M]`` in [0, 1] for shape ``V [N, 3]``
        (``rest``: the expression-free shape for the opening gate; None = no gate)."""
        gate = 1.0 if rest is None else float(_smoothstep(self.opening(V, rest), self.open_lo, self.open_hi))
        if gate <= 0:
            return np.zeros(len(self.vertices))
        r = self._areas(np.asarray(V, np.float64), self.triangles) / np.maximum(self.area0, 1e-18)
        n = int(np.asarray(V).shape[0])
        acc = np.bincount(self.triangles.ravel(), weights=np.repeat(r, 3), minlength=n)
        cnt = np.bincount(self.triangles.ravel(), minlength=n)
        vr = acc[self.vertices] / np.maximum(cnt[self.vertices], 1)
        if self.smooth is not None:
            vr = self.smooth @ (self.smooth @ vr)
        return gate * _smoothstep(vr, self.lo, self.hi)

    def apply(self, V, C, rest=None) -> np.ndarray:
        """Colours ``C [N, 3]`` with the opened mouth darkened towards ``dark`` x lip colour."""
        w = self.weights(V, rest)
        if not (w > 0).any():
            return C
        C = np.array(C, np.float32, copy=True)
        lip = C[self.vertices].mean(0)
        C[self.vertices] = C[self.vertices] * (1 - w[:, None]) + (lip * self.dark)[None] * w[:, None]
        return C


def texture_resolution(photo, camera, align, oversample: float = 2.0):
    """The photo (and camera) to sample the texture from: when the crop shrinks the face by
    more than ``2 x oversample``, the photo is box-reduced by the integer factor
    ``k = floor(1 / (oversample * s))`` (``s`` = the align's scale) and the camera's scale
    and shift divided by ``k`` (exact: reduced pixel ``u'`` covers ``u = k u'``).  The same
    rule as the fit's crop (``fitting.align.warp_crop``): a crop pixel still spans
    ``oversample`` photo pixels, the texture is anti-aliased, and a 6000-pixel photo does
    not cost two full-size z-buffers.  Returns ``(photo uint8 [h, w, 3], camera [7])``."""
    A = np.asarray(align, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))
    k = int(np.floor(1.0 / (oversample * scale))) if scale > 0 else 1
    if k < 2:
        return photo, camera
    from PIL import Image

    small = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).reduce(k))
    cam = np.asarray(camera, np.float64).copy()
    cam[3:6] /= k
    return small, cam.astype(np.float32)


# ----------------------------------------------------------------------------- the warper
@dataclass
class WarpSource:
    """Per-photo state reused by every warp of that photo."""
    shape_id: np.ndarray       # [N, 3] float32: mean + identity offset (expression-free)
    colours: np.ndarray        # [N, 3] float32 in [0, 1] (sampled + filled)
    visible: np.ndarray        # [N] bool: vertices whose colour came from the photo
    camera: np.ndarray         # [7] the camera the renders use (crop camera when space == crop)
    background: np.ndarray     # [h, w, 3] float32: inpainted background in render space
    footprint: np.ndarray      # [h, w] bool: inpainted region (original face footprint)
    align: np.ndarray          # [2, 3]
    space: str                 # "crop" | "full"


class Warper:
    """Renders random-expression warps of fitted photos (see module docstring).

    ``Warper(model, size=128, backend="fast", space="crop", cavity=True)``;
    ``src = warper.prepare(photo, p_id, p_exp, camera, align)``;
    ``images = warper.render(src, P)`` with ``P [k, E]`` normalised -> ``uint8 [k, size, size, 3]``.
    """

    def __init__(self, model, size: int = 128, backend: str = "fast", space: str = "crop",
                 cavity: bool = True, grazing: float = 0.05, dilate: int = 1, supersample: int = 1):
        if space not in SPACES:
            raise ValueError(f"unknown render space {space!r} (expected one of {SPACES})")
        if int(supersample) < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.supersample = int(supersample)
        self.model = model
        self.size = int(size)
        self.backend = backend
        self.space = space
        self.grazing = float(grazing)
        self.dilate = int(dilate)
        self.triangles = np.asarray(model.trilist, np.int64)
        mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
        self.n = len(mean)
        self.cavity = MouthCavity.find(self.triangles, mean, model.landmarks) if cavity else None
        self.triangles_ext = (np.concatenate([self.triangles, self.cavity.triangles()])
                              if self.cavity is not None else self.triangles)
        self.mirror = mirror_map(mean)
        self.points = mean
        self.neighbours = nearest_vertices(mean)
        self.interior, self.interior_t = (mouth_interior(mean, self.triangles, model.landmarks, self.cavity.loop)
                                          if self.cavity is not None else (np.zeros(self.n, bool), np.zeros(self.n)))
        lips = np.zeros(self.n, bool)
        if self.cavity is not None and len(model.landmarks) >= 68:
            from matplotlib.path import Path as _Path
            outer = _Path(mean[np.asarray(model.landmarks)[48:60], :2])
            lips = outer.contains_points(mean[:, :2]) & ~self.interior
        self.cavity_lips = lips
        self.stretch = MouthStretch.build(mean, self.triangles, model.landmarks) if cavity else None
        self._Bexp = None

    # -- shapes
    def shapes(self, shape_id, P) -> np.ndarray:
        """``shape_id [N, 3]`` + expression offsets for ``P [k, E]`` -> ``[k, N, 3]`` float32."""
        P = np.atleast_2d(np.asarray(P, np.float32))
        if self._Bexp is None or self._Bexp.shape[0] != P.shape[1]:
            U, ev = self.model._exp_basis_np(P.shape[1]) if hasattr(self.model, "_exp_basis_np") else (
                self.model.U_exp[:, :P.shape[1]], self.model.ev_exp[:P.shape[1]])
            self._Bexp = (np.asarray(U, np.float32) * np.sqrt(np.asarray(ev, np.float32))[None]).T.copy()  # [E, 3N]
        off = P @ self._Bexp
        return (np.asarray(shape_id, np.float32).reshape(1, -1) + off).reshape(len(P), self.n, 3)

    def with_cavity(self, V, C) -> tuple[np.ndarray, np.ndarray]:
        """Append the mouth cavity's vertices/colours: ``[N', 3]`` each."""
        if self.cavity is None:
            return V, C
        return (np.vstack([V, self.cavity.vertices(V)]), np.vstack([C, self.cavity.colours(C)]))

    # -- per photo
    def sample_colours(self, photo, V, camera) -> tuple[np.ndarray, np.ndarray]:
        """Visibility-aware vertex colours from ``photo [H, W, 3] uint8`` for shape ``V [N, 3]``:
        ``(colours [N, 3] float32, visible [N] bool)``; invisible vertices are filled."""
        from render import sample_vertex_colours
        from render.camera import project, to_camera_frame
        from render.lighting import vertex_normals

        cols, vis = sample_vertex_colours(photo, V, self.triangles, camera)
        # the bilinear sample must not mix in pixels off the face (silhouette fringe): all four
        # pixels around the sample point must be covered by the face in the photo
        from render import render as _render

        H, W = photo.shape[:2]
        mask = _render(V, self.triangles, np.zeros_like(V), camera, background=(H, W)).mask
        uv = project(V, camera)
        j0 = np.floor(uv[:, 0] - 0.5).astype(np.int64)
        i0 = np.floor(uv[:, 1] - 0.5).astype(np.int64)
        on_face = np.ones(len(V), bool)
        for di in (0, 1):
            for dj in (0, 1):
                ii, jj = np.clip(i0 + di, 0, H - 1), np.clip(j0 + dj, 0, W - 1)
                on_face &= mask[ii, jj]
        vis = vis & on_face
        if self.grazing > -1:
            cam = np.asarray(camera, np.float64)
            Xc = to_camera_frame(V, cam)
            nrm = vertex_normals(Xc, self.triangles)
            if cam[6] > 0:  # perspective: view direction from the vertex to the eye
                view = np.array([0.0, 0.0, cam[6]]) - Xc
                view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
                facing = (nrm * view).sum(1)
            else:
                facing = nrm[:, 2]
            vis = vis & (facing > self.grazing)
            away = facing < -0.3
        else:
            away = np.zeros(len(V), bool)
        known = vis.copy()
        hidden_mouth = self.interior & ~vis
        if hidden_mouth.any() and self.cavity is not None:
            # the rolled-in inner lips and mouth walls the photo does not show: dark, darker
            # towards the throat, scaled by the photo's lip colour (exposure)
            lip = cols[self.cavity_lips & vis].mean(0) if (self.cavity_lips & vis).any() else cols[vis].mean(0)
            t = self.interior_t[hidden_mouth, None]
            cols[hidden_mouth] = lip * (self.cavity.ring_colour * (1 - t) + self.cavity.centre_colour * t)
            known |= hidden_mouth
        # vertices turned well away from the camera stay unseen whatever the expression (the
        # camera is the photo's): they take the mean colour and skip the fill (~half its work
        # on a turned face)
        away &= ~known
        return fill_occluded(cols, known, self.points, self.mirror, neighbours=self.neighbours, ignore=away), vis

    def prepare(self, photo, p_id, p_exp, camera, align) -> WarpSource:
        """Per-photo state: texture, render-space camera, inpainted background.

        photo ``[H, W, 3] uint8``; p_id ``[K']``, p_exp ``[E']`` normalised; camera ``[7]``;
        align ``[2, 3]`` (original pixels -> crop pixels)."""
        from scipy.ndimage import binary_dilation, binary_fill_holes

        from render import render

        photo = np.asarray(photo)
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise ValueError(f"photo must be uint8 [H, W, 3], got {photo.dtype} {photo.shape}")
        camera = np.asarray(camera, np.float32)
        align = np.asarray(align, np.float32)
        shape_id = np.asarray(self.model.instance(p_id=np.asarray(p_id, np.float32)), np.float32)
        V0 = self.shapes(shape_id, np.asarray(p_exp, np.float32)[None])[0]
        tex_photo, tex_cam = texture_resolution(photo, camera, align)
        colours, vis = self.sample_colours(tex_photo, V0, tex_cam)
        space = self.space if is_similarity(align) else "full"
        if space == "crop":
            cam = fold_align(camera, align)
            bg = crop_photo(photo, align, self.size)
        else:
            cam = camera
            bg = photo.astype(np.float32) / 255.0
        r = render(V0, self.triangles, colours, cam, background=bg.shape[:2], backend="fast")
        foot = binary_fill_holes(r.mask)
        if self.dilate > 0:
            foot = binary_dilation(foot, iterations=self.dilate)
        bg = inpaint(bg, foot)
        return WarpSource(shape_id, colours, vis, cam, bg, foot, align, space)

    def _render_fast(self, V, C, camera, background) -> tuple[np.ndarray, np.ndarray]:
        """``render.render(V, triangles_ext, C, camera, background, backend="fast")``'s image
        and mask without its per-call argument checks and conversions (the mesh, triangles
        and background are validated once per photo; ~30% of a warp's time went there).
        Same camera transform and rasteriser; checked against ``render.render`` by the tests.
        Returns ``(image float32 [H, W, 3], mask bool [H, W])``."""
        from render.core import camera_transform
        from render.raster import rasterize

        Xc, uv, w = camera_transform(V, np.asarray(camera, np.float64))
        tri, bary, _ = rasterize(uv, Xc[:, 2], w, self.triangles_ext, background.shape[:2])
        mask = tri >= 0
        ii, jj = np.nonzero(mask)
        img = background.copy()
        if len(ii):
            t = self.triangles_ext[tri[ii, jj]]
            img[ii, jj] = np.einsum("pk,pkc->pc", bary[ii, jj], C[t])
        return img, mask

    def render(self, src: WarpSource, P, return_masks: bool = False):
        """Warps of one photo: ``P [k, E]`` normalised -> ``uint8 [k, size, size, 3]``
        (and ``bool [k, size, size]`` face masks, cavity included, if ``return_masks``)."""
        from render import render

        Vs = self.shapes(src.shape_id, P)
        out = np.empty((len(Vs), self.size, self.size, 3), np.uint8)
        masks = np.empty((len(Vs), self.size, self.size), bool)
        ss = self.supersample if src.space == "crop" else 1
        cam, bg = src.camera, src.background
        if ss > 1:  # render at ss x the crop size, then average ss x ss blocks (anti-aliased edges)
            cam = np.asarray(cam, np.float64).copy()
            cam[3:6] *= ss                     # corner-origin pixels: u' = ss * u exactly
            bg = np.repeat(np.repeat(bg, ss, 0), ss, 1)
        for i, V in enumerate(Vs):
            C = self.stretch.apply(V, src.colours, src.shape_id) if self.stretch is not None else src.colours
            Ve, Ce = self.with_cavity(V, C)
            if self.backend == "fast":
                img, mask = self._render_fast(Ve, Ce, cam, bg)
            else:
                r = render(Ve, self.triangles_ext, Ce, cam, background=bg, backend=self.backend)
                img, mask = r.image, r.mask
            if ss > 1:
                h = img.shape[0] // ss
                img = img.reshape(h, ss, h, ss, 3).mean((1, 3))
                mask = mask.reshape(h, ss, h, ss).mean((1, 3)) >= 0.5
            if src.space == "full":
                img = warp_affine(img, src.align, (self.size, self.size))
                mask = warp_affine(mask[..., None].astype(np.float32), src.align, (self.size, self.size))[..., 0] > 0.5
            out[i] = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
            masks[i] = mask
        return (out, masks) if return_masks else out
