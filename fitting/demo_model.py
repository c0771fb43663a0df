"""The demo 3DMM, built offline from the mean face that ships with menpo3d.

``template.ply`` (53,349 vertices, 106,111 triangles) and ``template.ljson`` (68 iBUG
landmarks) are read with trimesh / json (menpo3d's own .ply importer needs VTK, which we
do not install).  The mesh is centred on its landmarks and scaled so that the face spans
about [-1, 1] in x; axes: x to the subject's left, y up, z towards the viewer.

- Identity basis: PCA of random smooth deformation fields (sums of wide Gaussian radial
  bumps with random 3D displacements), so components are smooth, orthonormal, and their
  eigenvalues decay as in a real PCA model.
- Expression basis: 30 *localised* blendshapes in the spirit of Neumann et al.'s sparse
  localised components, each defined from the 68 landmarks (Gaussian falloff around
  landmark-defined control points, a hinge rotation for the jaw).  The leading ones are
  named (jaw open, smile, lip pucker, brow raise, ...).  Components are ordered by the norm
  of their designed field (so eigenvalues decay), orthonormalised in that order (leading
  ones stay closest to their design), and each eigenvalue is the squared norm of its
  designed field, so that a normalised value of +1 is a strong but plausible expression.
- Speech basis: 10 mouth/lip motions (visemes), orthonormalised against the expression
  basis, for the 40-parameter expression + speech experiment.
- Texture: :func:`fitting.demo_texture.demo_texture_model` (skin albedo by landmark regions).

Everything is deterministic given ``seed``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fitting.model import EXPRESSION_NAMES, MorphableModel, orthonormalise

# name -> list of (kind, spec).  Displacements are in model units (face half-width = 1).
# Each blendshape is the sum of its terms.  "bump": Gaussian falloff (sigma) around a
# control point given as landmark indices (their mean), moving by (dx, dy, dz); an optional
# "mirror" duplicates the term on the other side of the face (x -> -x, dx -> -dx).
EXP_NAMES = [
    "jaw_open", "smile", "lip_pucker", "brow_raise", "brow_furrow", "eye_close_left",
    "eye_close_right", "cheek_puff", "lip_corner_down", "mouth_stretch", "nose_wrinkle",
    "upper_lip_raise", "lower_lip_depress", "jaw_left", "mouth_left", "lip_press",
    "smile_left", "smile_right", "brow_raise_inner", "brow_raise_outer", "squint_left",
    "squint_right", "chin_raise", "lip_funnel", "dimpler", "cheek_raise", "eye_wide",
    "lips_part", "lip_suck", "jaw_forward",
]

SPEECH_NAMES = [
    "viseme_aa", "viseme_oo", "viseme_ee", "viseme_mbp", "viseme_fv", "viseme_th",
    "viseme_ch", "viseme_l", "viseme_w", "viseme_s",
]


def template_path(name: str) -> Path:
    """Path of a builtin menpo3d asset (found without importing menpo3d, which is slow)."""
    import importlib.util

    spec = importlib.util.find_spec("menpo3d")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("menpo3d is not installed (run make setup)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """menpo3d's builtin mean face: vertices [N,3] (float64, raw units), triangles [T,3],
    landmark vertex indices [68] (nearest vertices to template.ljson's points)."""
    import trimesh
    from scipy.spatial import cKDTree

    mesh = trimesh.load(template_path("template.ply"), process=False)
    V = np.asarray(mesh.vertices, np.float64)
    T = np.asarray(mesh.faces, np.int64)
    lj = json.loads(template_path("template.ljson").read_text())
    group = next(iter(lj["groups"].values())) if "groups" in lj else lj
    pts = np.asarray(group["landmarks"]["points"], np.float64)
    _, idx = cKDTree(V).query(pts)
    return V, T, np.asarray(idx, np.int64)


def _bump(V, centre, sigma, disp):
    w = np.exp(-((V - centre) ** 2).sum(1) / (2.0 * sigma ** 2))
    return w[:, None] * np.asarray(disp, np.float64)[None]


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _expression_fields(V: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
    """The 30 designed blendshape displacement fields, each [N, 3], in EXP_NAMES order."""
    P = V[L]  # [68, 3] landmark positions

    def c(*ids):
        return P[list(ids)].mean(0)

    def mirror(p):
        return p * np.array([-1.0, 1.0, 1.0])

    mouth_l, mouth_r = P[54], P[48]          # subject's left corner (x > 0), right corner
    upper_lip, lower_lip = c(50, 51, 52, 61, 62, 63), c(56, 57, 58, 65, 66, 67)
    brow_l, brow_r = c(22, 23, 24, 25, 26), c(17, 18, 19, 20, 21)
    eye_l, eye_r = c(42, 43, 44, 45, 46, 47), c(36, 37, 38, 39, 40, 41)
    lid_l, lid_r = c(43, 44), c(37, 38)
    cheek_l, cheek_r = (P[13] + P[54]) / 2, (P[3] + P[48]) / 2
    chin = c(7, 8, 9)
    mouth_c = c(48, 54, 62, 66)
    mouth_y = (upper_lip[1] + lower_lip[1]) / 2
    ear_y = P[0][1]
    F = {}

    # jaw open: hinge rotation of the lower face about an axis near the ears.
    pivot = np.array([0.0, ear_y, P[0][2] - 0.3])
    below = _smoothstep((mouth_y - V[:, 1]) / 0.04)              # lower lip and below
    side = np.exp(-np.maximum(np.abs(V[:, 0]) - 0.55, 0) ** 2 / 0.02)  # fades towards ears
    rel = V - pivot
    ang = 0.12                                                  # radians at +1 (before falloff)
    rot = np.stack([np.zeros(len(V)), -rel[:, 2] * ang, rel[:, 1] * ang], 1)  # d = ang * (x-axis x rel)
    rot[:, 1] = -np.abs(rot[:, 1])                              # always downwards
    F["jaw_open"] = rot * (below * side)[:, None]

    F["smile"] = (_bump(V, mouth_l, 0.16, [0.06, 0.07, -0.03]) + _bump(V, mouth_r, 0.16, [-0.06, 0.07, -0.03])
                  + _bump(V, cheek_l, 0.18, [0.0, 0.03, 0.02]) + _bump(V, cheek_r, 0.18, [0.0, 0.03, 0.02]))
    F["lip_pucker"] = (_bump(V, mouth_c, 0.12, [0, 0, 0.09]) + _bump(V, mouth_l, 0.09, [-0.06, 0, 0.02])
                       + _bump(V, mouth_r, 0.09, [0.06, 0, 0.02]))
    F["brow_raise"] = _bump(V, brow_l, 0.2, [0, 0.08, 0.0]) + _bump(V, brow_r, 0.2, [0, 0.08, 0.0])
    F["brow_furrow"] = (_bump(V, c(21, 22), 0.14, [0, -0.06, 0.0]) + _bump(V, P[22], 0.1, [-0.03, 0, 0])
                        + _bump(V, P[21], 0.1, [0.03, 0, 0]))
    lid_drop = (eye_l[1] - lid_l[1]) * 1.0
    F["eye_close_left"] = _bump(V, lid_l + [0, 0.02, 0], 0.055, [0, lid_drop - 0.035, 0.0])
    lid_drop_r = (eye_r[1] - lid_r[1]) * 1.0
    F["eye_close_right"] = _bump(V, lid_r + [0, 0.02, 0], 0.055, [0, lid_drop_r - 0.035, 0.0])
    F["cheek_puff"] = _bump(V, cheek_l, 0.2, [0.06, 0, 0.04]) + _bump(V, cheek_r, 0.2, [-0.06, 0, 0.04])
    F["lip_corner_down"] = _bump(V, mouth_l, 0.12, [0, -0.07, 0]) + _bump(V, mouth_r, 0.12, [0, -0.07, 0])
    F["mouth_stretch"] = _bump(V, mouth_l, 0.13, [0.07, -0.02, -0.01]) + _bump(V, mouth_r, 0.13, [-0.07, -0.02, -0.01])
    F["nose_wrinkle"] = (_bump(V, c(31, 32), 0.09, [0, 0.04, 0]) + _bump(V, c(34, 35), 0.09, [0, 0.04, 0])
                         + _bump(V, c(27, 28), 0.1, [0, -0.02, 0]))
    F["upper_lip_raise"] = _bump(V, upper_lip, 0.1, [0, 0.05, 0.01])
    F["lower_lip_depress"] = _bump(V, lower_lip, 0.1, [0, -0.05, 0.01])
    F["jaw_left"] = _bump(V, chin, 0.35, [0.07, 0, 0]) * below[:, None]
    F["mouth_left"] = _bump(V, mouth_c, 0.15, [0.06, 0, 0])
    F["lip_press"] = _bump(V, upper_lip, 0.08, [0, -0.02, -0.01]) + _bump(V, lower_lip, 0.08, [0, 0.02, -0.01])
    F["smile_left"] = _bump(V, mouth_l, 0.15, [0.05, 0.07, -0.02])
    F["smile_right"] = _bump(V, mouth_r, 0.15, [-0.05, 0.07, -0.02])
    F["brow_raise_inner"] = _bump(V, c(21, 22), 0.12, [0, 0.06, 0])
    F["brow_raise_outer"] = _bump(V, P[26], 0.12, [0, 0.06, 0]) + _bump(V, P[17], 0.12, [0, 0.06, 0])
    F["squint_left"] = _bump(V, c(46, 47), 0.07, [0, 0.03, 0]) + _bump(V, lid_l, 0.06, [0, -0.02, 0])
    F["squint_right"] = _bump(V, c(40, 41), 0.07, [0, 0.03, 0]) + _bump(V, lid_r, 0.06, [0, -0.02, 0])
    F["chin_raise"] = _bump(V, chin, 0.15, [0, 0.04, 0.02]) + _bump(V, lower_lip, 0.08, [0, 0.02, 0.02])
    F["lip_funnel"] = _bump(V, upper_lip, 0.08, [0, 0.02, 0.05]) + _bump(V, lower_lip, 0.08, [0, -0.02, 0.05])
    F["dimpler"] = _bump(V, mouth_l + [0.06, 0, 0], 0.08, [0.02, 0, -0.04]) + _bump(V, mouth_r - [0.06, 0, 0], 0.08, [-0.02, 0, -0.04])
    F["cheek_raise"] = _bump(V, cheek_l + [0, 0.1, 0], 0.14, [0, 0.04, 0.02]) + _bump(V, cheek_r + [0, 0.1, 0], 0.14, [0, 0.04, 0.02])
    F["eye_wide"] = _bump(V, lid_l + [0, 0.02, 0], 0.06, [0, 0.025, 0]) + _bump(V, lid_r + [0, 0.02, 0], 0.06, [0, 0.025, 0])
    F["lips_part"] = _bump(V, upper_lip, 0.07, [0, 0.02, 0]) + _bump(V, lower_lip, 0.07, [0, -0.03, 0])
    F["lip_suck"] = _bump(V, upper_lip, 0.07, [0, 0, -0.04]) + _bump(V, lower_lip, 0.07, [0, 0, -0.04])
    F["jaw_forward"] = _bump(V, chin, 0.3, [0, 0, 0.05]) * below[:, None]
    # Local motions are exaggerated 1.5x so that +-1 is clearly visible at 128x128.
    return [F[n] * (1.0 if n == "jaw_open" else 1.5) for n in EXP_NAMES]


def _speech_fields(V: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
    P = V[L]
    upper, lower = P[[61, 62, 63]].mean(0), P[[65, 66, 67]].mean(0)
    ml, mr, mc = P[54], P[48], P[[48, 54, 62, 66]].mean(0)
    b = _bump
    return [
        b(V, lower, 0.14, [0, -0.07, 0]) + b(V, upper, 0.07, [0, 0.015, 0]),                       # aa
        b(V, mc, 0.1, [0, 0, 0.06]) + b(V, ml, 0.08, [-0.05, 0, 0]) + b(V, mr, 0.08, [0.05, 0, 0]),  # oo
        b(V, ml, 0.1, [0.05, 0.01, 0]) + b(V, mr, 0.1, [-0.05, 0.01, 0]) + b(V, lower, 0.08, [0, -0.02, 0]),  # ee
        b(V, upper, 0.06, [0, -0.015, 0.01]) + b(V, lower, 0.06, [0, 0.02, 0.01]),                  # m b p
        b(V, lower, 0.07, [0, 0.01, -0.035]),                                                       # f v
        b(V, lower, 0.09, [0, -0.03, 0.0]) + b(V, upper, 0.06, [0, 0.0, 0.015]),                     # th
        b(V, mc, 0.09, [0, 0, 0.04]) + b(V, lower, 0.1, [0, -0.03, 0]),                              # ch
        b(V, upper, 0.08, [0, 0.02, 0]) + b(V, lower, 0.12, [0, -0.045, 0]),                         # l
        b(V, mc, 0.07, [0, 0, 0.07]),                                                                 # w
        b(V, ml, 0.08, [0.025, 0, 0]) + b(V, mr, 0.08, [-0.025, 0, 0]) + b(V, lower, 0.07, [0, -0.01, 0]),  # s
    ]


def _identity_basis(V: np.ndarray, n_id: int, rng: np.random.Generator, n_fields: int = 160):
    """PCA of random smooth deformations -> (U [3N, n_id] orthonormal, ev [n_id])."""
    N = len(V)
    fields = np.empty((n_fields, N, 3), np.float64)
    sq = (V ** 2).sum(1)
    for j in range(n_fields):
        centres = V[rng.integers(N, size=4)]                       # [4, 3]
        sigmas = rng.uniform(0.25, 0.7, 4)
        disp = rng.normal(0, 0.05, (4, 3))
        d2 = sq[:, None] - 2.0 * V @ centres.T + (centres ** 2).sum(1)[None]   # [N, 4]
        w = np.exp(-np.maximum(d2, 0.0) / (2.0 * sigmas[None] ** 2))
        # global anisotropic scaling (face width / height / depth) is part of identity too
        fields[j] = w @ disp + V * rng.normal(0, 0.04, 3)[None]
    fields = fields.reshape(n_fields, 3 * N).T                      # [3N, n_fields]
    fields -= fields.mean(1, keepdims=True)
    # PCA through the small [n_fields, n_fields] Gram matrix (much cheaper than a thin SVD
    # of the [3N, n_fields] matrix): F^T F = V diag(s^2) V^T, U = F V / s.
    w, Vg = np.linalg.eigh(fields.T @ fields)
    top = np.argsort(-w, kind="stable")[:n_id]
    U = fields @ (Vg[:, top] / np.sqrt(w[top])[None])             # orthonormal columns
    U *= np.sign(U[np.abs(U).argmax(0), np.arange(n_id)])[None]  # deterministic sign
    ev = w[top] / (n_fields - 1)
    return U, ev


def _orthonormal_with_ev(fields: list[np.ndarray], prior: np.ndarray | None = None):
    """Orthonormalise designed fields (against ``prior`` columns first).

    Fields are ordered by decreasing designed norm, so that eigenvalues decay; returns
    (U [3N, k], ev [k], order) where ``ev`` is the squared norm of each designed field, so
    that normalised +1 reproduces (about) the designed displacement, and ``order`` the
    permutation applied to ``fields``."""
    D = np.stack([f.reshape(-1) for f in fields], 1)
    order = np.argsort(-(D ** 2).sum(0), kind="stable")
    D = D[:, order]
    if prior is not None:
        Q = orthonormalise(np.concatenate([prior, D], 1))[:, prior.shape[1]:]
    else:
        Q = orthonormalise(D)
    Q *= np.sign((Q * D).sum(0))[None]  # keep each column's orientation aligned with its design
    ev = (D ** 2).sum(0)
    return Q, ev, order


def build_demo_model(seed: int = 0, n_id: int = 40, n_exp: int = 30, n_speech: int = 10,
                     texture: bool = True) -> MorphableModel:
    """The demo 3DMM (deterministic for ``seed``). n_exp <= 30, n_speech <= 10."""
    if not 1 <= n_exp <= len(EXP_NAMES):
        raise ValueError(f"n_exp must be in 1..{len(EXP_NAMES)}")
    if not 0 <= n_speech <= len(SPEECH_NAMES):
        raise ValueError(f"n_speech must be in 0..{len(SPEECH_NAMES)}")
    rng = np.random.default_rng(seed)
    V_raw, T, L = load_template()
    centre = V_raw[L].mean(0)
    scale = np.abs(V_raw[:, 0] - centre[0]).max()
    V = (V_raw - centre) / scale
    U_id, ev_id = _identity_basis(V, n_id, rng)
    fields = _expression_fields(V, L)
    norms = np.array([np.linalg.norm(f) for f in fields])
    keep = sorted(np.argsort(-norms, kind="stable")[:n_exp])      # the n_exp largest designs
    U_exp, ev_exp, order = _orthonormal_with_ev([fields[i] for i in keep])
    exp_names = [EXP_NAMES[keep[i]] for i in order]
    kw = {}
    if n_speech:
        U_sp, ev_sp, sp_order = _orthonormal_with_ev(_speech_fields(V, L)[:n_speech], prior=U_exp)
        kw.update(U_speech=U_sp, ev_speech=ev_sp, speech_names=[SPEECH_NAMES[i] for i in sp_order])
    if texture:
        from fitting.demo_texture import demo_texture_model

        t_mean, U_tex, ev_tex = demo_texture_model(V.astype(np.float32), T, L, seed=seed)
        kw.update(texture_mean=t_mean, U_tex=U_tex, ev_tex=ev_tex)
    return MorphableModel(mean=V.reshape(-1), U_id=U_id, ev_id=ev_id, U_exp=U_exp, ev_exp=ev_exp,
                          trilist=T, landmarks=L, exp_names=exp_names,
                          source=f"demo(seed={seed}, template.ply)", **kw)


# Discrete expression prototypes, as normalised values of named blendshapes.
_PROTOTYPES = {
    "neutral": {},
    "anger": {"brow_furrow": 1.0, "lip_press": 0.8, "squint_left": 0.5, "squint_right": 0.5,
              "nose_wrinkle": 0.3, "chin_raise": 0.4},
    "disgust": {"nose_wrinkle": 1.0, "upper_lip_raise": 0.9, "brow_furrow": 0.5, "lip_corner_down": 0.4,
                "squint_left": 0.3, "squint_right": 0.3},
    "fear": {"brow_raise_inner": 1.0, "brow_raise": 0.5, "eye_wide": 0.9, "mouth_stretch": 0.8,
             "jaw_open": 0.3, "brow_furrow": 0.3},
    "happiness": {"smile": 1.0, "cheek_raise": 0.8, "squint_left": 0.3, "squint_right": 0.3,
                  "lips_part": 0.3, "dimpler": 0.3},
    "sadness": {"lip_corner_down": 1.0, "brow_raise_inner": 0.8, "chin_raise": 0.6,
                "eye_close_left": 0.2, "eye_close_right": 0.2},
    "surprise": {"jaw_open": 0.9, "brow_raise": 1.0, "eye_wide": 0.9, "lip_funnel": 0.3},
}


def expression_prototypes(model: MorphableModel) -> np.ndarray:
    """[7, E] normalised expression vectors for EXPRESSION_NAMES (by blendshape name;
    names the model lacks are ignored, so a real model gets zeros unless named alike)."""
    out = np.zeros((len(EXPRESSION_NAMES), model.n_exp), np.float32)
    index = {n: i for i, n in enumerate(model.exp_names)}
    for r, name in enumerate(EXPRESSION_NAMES):
        for bs, v in _PROTOTYPES[name].items():
            if bs in index:
                out[r, index[bs]] = v
    return out
