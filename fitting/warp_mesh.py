"""Mesh-side helpers of the 3D warps (:mod:`fitting.warp`): mesh topology, the mouth
(:class:`MouthCavity` closes a mouth slit with a dark recessed cap; :class:`MouthStretch`
darkens skin stretched between joined lips; :func:`mouth_interior`) and the colours of
vertices the photo does not show (:func:`fill_occluded` with :func:`mirror_map` and
:func:`nearest_vertices`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

