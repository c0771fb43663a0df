"""A synthetic skin-albedo model for the demo 3DMM (no licensed texture data needed).

``demo_texture_model(mean, trilist, landmarks, seed) -> (texture_mean, U_tex, ev_tex)``

The mean albedo paints facial features from the 68 landmarks (iBUG order) on a neutral
skin tone: lips (outer polygon 48-59, inner 60-67 darker), brows (thick polylines 17-21
and 22-26), eyes (lid polygons 36-41 / 42-47 with sclera, iris, pupil and a dark lash
line), nostrils (around 31-35), a little blush on cheeks/nose and a darker jaw/neck.
Feature regions are found in the frontal x-y plane (model y up, z towards the viewer)
and limited to vertices near the front surface, with soft edges measured in units of the
inter-ocular distance (so the model is scale-free).

The variation model is a linear model of designed *fields* ``F [3N, K]`` (global tone,
redness, yellowness, lip colour, brow darkness, iris colour and random smooth
low-frequency colour blobs), each with an amplitude (its standard deviation in albedo
units).  ``delta = F z`` with ``z ~ N(0, I)`` has covariance ``F F^T``, whose PCA is the
thin SVD ``F = U S V^T``: ``U_tex = U`` (orthonormal columns), ``ev_tex = S**2``.  So a
normalised texture parameter vector ``p ~ N(0, I)`` draws a plausible albedo.
"""
from __future__ import annotations

import numpy as np

SKIN = np.array([0.80, 0.60, 0.50])
LIP = np.array([0.66, 0.36, 0.36])
MOUTH = np.array([0.30, 0.12, 0.12])
BROW = np.array([0.24, 0.16, 0.11])
SCLERA = np.array([0.88, 0.86, 0.84])
IRIS = np.array([0.30, 0.20, 0.12])
PUPIL = np.array([0.05, 0.04, 0.04])
LASH = np.array([0.12, 0.08, 0.07])
NOSTRIL = np.array([0.30, 0.17, 0.14])


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _seg_dist(P: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Distance of points ``P [N, 2]`` to segments ``A, B [M, 2]`` -> ``[N]`` (min over M)."""
    AB = B - A  # [M, 2]
    AP = P[:, None, :] - A[None]  # [N, M, 2]
    t = np.clip((AP * AB[None]).sum(-1) / np.maximum((AB * AB).sum(-1), 1e-12)[None], 0, 1)
    closest = A[None] + t[..., None] * AB[None]
    return np.linalg.norm(P[:, None, :] - closest, axis=-1).min(axis=1)


def _polygon_sdf(P: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of ``P [N, 2]`` to the closed polygon ``[M, 2]``."""
    from matplotlib.path import Path

    d = _seg_dist(P, poly, np.roll(poly, -1, axis=0))
    inside = Path(poly).contains_points(P)
    return np.where(inside, -d, d)


def _polyline_dist(P: np.ndarray, line: np.ndarray) -> np.ndarray:
    return _seg_dist(P, line[:-1], line[1:])


def _front_weight(V: np.ndarray, lm: np.ndarray, iod: float, depth: float = 0.35) -> np.ndarray:
    """1 for vertices at most ``depth * iod`` behind the nearest of the landmarks ``lm``
    (the front surface around a feature), fading to 0 deeper (ears, back of the head)."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(lm[:, :2]).query(V[:, :2])
    dz = lm[idx, 2] - V[:, 2]
    return 1.0 - _smoothstep((dz - depth * iod) / (0.2 * iod))


def _blend(tex: np.ndarray, colour, w: np.ndarray) -> None:
    w = np.clip(w, 0, 1)[:, None]
    tex[:] = tex * (1 - w) + np.asarray(colour)[None] * w


def feature_masks(mean: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Soft feature masks ``[N]`` in [0, 1] ('lips', 'mouth', 'brows', 'eyes', 'iris',
    'pupil', 'lash', 'nostrils', 'cheeks', 'skin') from a mean shape ``[N, 3]`` and its
    68 landmark vertex indices."""
    V = np.asarray(mean, dtype=np.float64).reshape(-1, 3)
    lmi = np.asarray(landmarks, dtype=np.int64).reshape(-1)
    if lmi.shape != (68,):
        raise ValueError(f"landmarks must be 68 vertex indices, got shape {lmi.shape}")
    L = V[lmi]
    iod = float(np.linalg.norm(L[36] - L[45]))
    P = V[:, :2]
    m: dict[str, np.ndarray] = {}

    def region(poly_idx, soft, depth=0.35):
        poly = L[poly_idx]
        sd = _polygon_sdf(P, poly[:, :2])
        return (1 - _smoothstep(sd / (soft * iod) + 0.5)) * _front_weight(V, poly, iod, depth)

    m["lips"] = region(list(range(48, 60)), 0.04)
    # mouth interior: the inner-lip polygon plus a dark band along the inner-lip contour, so
    # that triangles stretched across an opening mouth interpolate dark colours
    inner = L[list(range(60, 68))]
    seam = _seg_dist(P, inner[:, :2], np.roll(inner, -1, axis=0)[:, :2])
    band = (1 - _smoothstep((seam - 0.02 * iod) / (0.02 * iod) + 0.5)) * _front_weight(V, inner, iod, 0.3)
    m["mouth"] = np.maximum(region(list(range(60, 68)), 0.02), band)
    brows = np.zeros(len(V))
    for idx in (list(range(17, 22)), list(range(22, 27))):
        line = L[idx].copy()
        line[:, 1] += 0.03 * iod  # brows sit a little above the landmark line
        dist = _polyline_dist(P, line[:, :2])
        # thicker in the middle of the brow than at its tail
        width = 0.05 * iod
        brows = np.maximum(brows, (1 - _smoothstep((dist - width) / (0.05 * iod) + 0.5))
                           * _front_weight(V, line, iod, 0.3))
    m["brows"] = brows
    eyes = np.zeros(len(V))
    iris = np.zeros(len(V))
    pupil = np.zeros(len(V))
    lash = np.zeros(len(V))
    for idx in (list(range(36, 42)), list(range(42, 48))):
        poly = L[idx]
        # open the painted eye a little (the lids of the mean shape are nearly closed)
        c = poly.mean(0)
        poly2 = c + (poly - c) * np.array([1.0, 1.6, 1.0])
        sd = _polygon_sdf(P, poly2[:, :2])
        fw = _front_weight(V, poly2, iod, 0.25)
        eyes = np.maximum(eyes, (1 - _smoothstep(sd / (0.015 * iod) + 0.5)) * fw)
        lash = np.maximum(lash, (1 - _smoothstep((np.abs(sd) - 0.012 * iod) / (0.012 * iod) + 0.5)) * fw)
        r = np.linalg.norm(P - c[None, :2], axis=1)
        inside = (sd < 0).astype(float)
        iris = np.maximum(iris, (1 - _smoothstep((r - 0.085 * iod) / (0.02 * iod) + 0.5)) * fw * inside)
        pupil = np.maximum(pupil, (1 - _smoothstep((r - 0.035 * iod) / (0.01 * iod) + 0.5)) * fw * inside)
    m["eyes"], m["iris"], m["pupil"], m["lash"] = eyes, iris, pupil, lash
    nost = np.zeros(len(V))
    for a, b in ((31, 32), (35, 34)):
        c = 0.6 * L[a] + 0.4 * L[b]
        c[1] += 0.04 * iod
        r = np.linalg.norm(P - c[None, :2], axis=1)
        nost = np.maximum(nost, (1 - _smoothstep((r - 0.03 * iod) / (0.03 * iod) + 0.5))
                          * _front_weight(V, L[31:36], iod, 0.25))
    m["nostrils"] = nost
    cheeks = np.zeros(len(V))
    for a, b in ((2, 31), (14, 35)):
        c = 0.5 * (L[a] + L[b])
        r = np.linalg.norm(P - c[None, :2], axis=1)
        cheeks = np.maximum(cheeks, np.exp(-0.5 * (r / (0.3 * iod)) ** 2))
    nose_tip = L[30]
    cheeks = np.maximum(cheeks, 0.6 * np.exp(-0.5 * (np.linalg.norm(P - nose_tip[None, :2], axis=1)
                                                      / (0.15 * iod)) ** 2))
    m["cheeks"] = cheeks * _front_weight(V, L, iod, 0.5)
    feat = np.maximum.reduce([m["lips"], m["mouth"], m["brows"], m["eyes"], m["nostrils"]])
    m["skin"] = 1 - feat
    m["_iod"] = np.array([iod])
    return m


def demo_texture_model(mean, trilist, landmarks, seed: int = 0, n_blobs: int = 12):
    """Build the demo albedo model.

    Args:
        mean: ``[N, 3]`` (or ``[3N]``) mean shape, y up, z towards the viewer.
        trilist: ``[T, 3]`` triangles (kept for the signature; regions are found per vertex).
        landmarks: ``[68]`` vertex indices (iBUG 68 order).
        seed: seeds the random low-frequency fields.
        n_blobs: number of random smooth colour fields.
    Returns:
        ``texture_mean float32 [N, 3]`` in [0, 1], ``U_tex float32 [3N, Kt]`` (orthonormal
        columns), ``ev_tex float32 [Kt]`` (decreasing).
    """
    V = np.asarray(mean, dtype=np.float64).reshape(-1, 3)
    N = len(V)
    rng = np.random.default_rng(seed)
    m = feature_masks(V, landmarks)
    iod = float(m["_iod"][0])
    L = V[np.asarray(landmarks, dtype=np.int64)]

    # ------------------------------------------------------------------ mean albedo
    tex = np.repeat(SKIN[None], N, axis=0)
    # low-frequency tone: darker below the jaw line (neck) and at the sides, redder cheeks/nose
    chin_y = L[8, 1]
    neck = _smoothstep((chin_y - V[:, 1]) / (0.6 * iod))
    tex *= (1 - 0.10 * neck)[:, None]
    side = _smoothstep((np.abs(V[:, 0] - L[27, 0]) - 1.0 * iod) / (0.8 * iod))
    tex *= (1 - 0.06 * side)[:, None]
    tex += (m["cheeks"][:, None] * np.array([0.05, -0.02, -0.01])[None])
    _blend(tex, LIP, m["lips"])
    _blend(tex, MOUTH, m["mouth"])
    _blend(tex, NOSTRIL, 0.6 * m["nostrils"])
    _blend(tex, BROW, 0.85 * m["brows"])
    _blend(tex, SCLERA, m["eyes"])
    _blend(tex, IRIS, m["iris"])
    _blend(tex, PUPIL, m["pupil"])
    _blend(tex, LASH, 0.9 * m["lash"])
    texture_mean = np.clip(tex, 0, 1).astype(np.float32)

    # ------------------------------------------------------------------ variation fields
    skin = m["skin"][:, None]
    fields: list[np.ndarray] = []
    fields.append(0.10 * skin * SKIN[None] / np.linalg.norm(SKIN))         # overall tone
    fields.append(0.035 * skin * np.array([1.0, -0.3, -0.5])[None])        # redness
    fields.append(0.020 * skin * np.array([0.5, 0.5, -1.0])[None])         # yellowness
    fields.append(0.060 * m["lips"][:, None] * np.array([1.0, -0.2, -0.1])[None])  # lip colour
    fields.append(0.070 * m["brows"][:, None] * np.array([-1.0, -1.0, -1.0])[None])  # brow darkness
    fields.append(0.080 * m["iris"][:, None] * np.array([-0.6, 0.2, 0.6])[None])    # iris colour
    fields.append(0.030 * m["cheeks"][:, None] * np.array([1.0, -0.4, -0.3])[None])  # blush
    centre = L.mean(0)
    for _ in range(n_blobs):
        c = centre + rng.normal(size=3) * np.array([1.2, 1.4, 0.5]) * iod
        width = rng.uniform(0.5, 1.5) * iod
        g = np.exp(-0.5 * (np.linalg.norm(V - c[None], axis=1) / width) ** 2)
        col = rng.normal(size=3) * 0.3 + np.array([1.0, 0.8, 0.7])
        col /= np.linalg.norm(col)
        fields.append(rng.uniform(0.02, 0.04) * (g[:, None] * skin) * col[None])
    F = np.stack([f.reshape(-1) for f in fields], axis=1)  # [3N, K]
    U, S, _ = np.linalg.svd(F, full_matrices=False)
    keep = S > 1e-8 * S[0]
    U, S = U[:, keep], S[keep]
    # deterministic sign: largest-magnitude entry of each column positive
    sign = np.sign(U[np.abs(U).argmax(0), np.arange(U.shape[1])])
    U = U * np.where(sign == 0, 1, sign)[None]
    return texture_mean, U.astype(np.float32), (S ** 2).astype(np.float32)
