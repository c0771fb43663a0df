"""The demo world's scenes: identities, expressions, backgrounds, cameras, the photo
renders and the 4DFAB- and LRW-style parameter sequences.  Every function draws from the
generator it is given (or from :func:`rng_for` streams), so an item does not depend on which
task makes it."""
from __future__ import annotations

import numpy as np

from workflows.demoworld.params import IDENTITY_OFFSET, WorldParams, rng_for


def identity_params(seed: int, domain: str, ident: int, model) -> tuple[np.ndarray, np.ndarray]:
    """(p_id [K], p_tex [Kt]) of an identity, normalised, clipped to +-2.5."""
    rng = rng_for(seed, domain, ident)
    p_id = np.clip(rng.normal(size=model.n_id), -2.5, 2.5).astype(np.float32)
    kt = 0 if model.ev_tex is None else len(model.ev_tex)
    p_tex = np.clip(rng.normal(size=kt), -2.5, 2.5).astype(np.float32)
    return p_id, p_tex


def sample_expression(rng: np.random.Generator, protos: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """A normalised expression ``[E]`` and its label (-1 for a uniform draw)."""
    E = protos.shape[1]
    if rng.random() < fraction:
        label = int(rng.integers(len(protos)))
        p = protos[label] + rng.normal(scale=0.1, size=E)
        return np.clip(p, -1.5, 1.5).astype(np.float32), label
    return rng.uniform(-1.0, 1.0, size=E).astype(np.float32), -1


def make_background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A varied background ``uint8 [H, W, 3]``: gradient, smooth noise or colour blobs."""
    from PIL import Image

    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) / max(H, W)
    c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    if kind == 0:
        a = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    elif kind == 1:
        g = int(rng.integers(3, 7))
        small = (rng.uniform(0, 1, (g, g, 3)) * 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(small).resize((W, H), Image.BICUBIC), np.float32) / 255.0
    else:
        img = np.broadcast_to(c1, (H, W, 3)).copy()
        for _ in range(int(rng.integers(4, 12))):
            cx, cy = rng.uniform(0, W / max(H, W)), rng.uniform(0, H / max(H, W))
            r = rng.uniform(0.05, 0.3)
            w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - w) + rng.uniform(0, 1, 3)[None, None] * w
    # desaturate towards grey by a random amount (real backgrounds are rarely pure colours)
    grey = img.mean(-1, keepdims=True)
    sat = rng.uniform(0.3, 0.75)
    img = grey + sat * (img - grey)
    img = img + rng.normal(scale=0.02, size=img.shape)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def place_camera(rng: np.random.Generator, V: np.ndarray, lm_idx: np.ndarray, H: int, W: int,
                 max_yaw_deg: float, dist: float, fill=(0.45, 0.75), jitter: float = 0.08) -> np.ndarray:
    """A random camera ``[7]`` that puts the face (half-width 1) at a random size and
    position with all 68 landmarks inside the image."""
    from render.camera import make_camera, project

    yaw = np.deg2rad(rng.uniform(-max_yaw_deg, max_yaw_deg))
    pitch = rng.uniform(-0.2, 0.2)
    roll = rng.uniform(-0.15, 0.15)
    frac = rng.uniform(*fill)
    jx, jy = rng.uniform(-jitter, jitter, 2) * min(H, W)
    scale = frac * min(H, W) / 2.0
    for _ in range(8):
        cam = make_camera(pitch, yaw, roll, 0.0, 0.0, scale, dist)
        uv = project(V[lm_idx], cam)
        c = (uv.min(0) + uv.max(0)) / 2
        cam[3], cam[4] = W / 2 - c[0] + jx, H / 2 - c[1] + jy
        uv = project(V[lm_idx], cam)
        if (uv.min(0) >= 2).all() and uv[:, 0].max() <= W - 2 and uv[:, 1].max() <= H - 2:
            return cam
        scale *= 0.85
        jx, jy = jx * 0.5, jy * 0.5
    return cam


def render_photo(model, protos, P: WorldParams, i: int, domain: str = "photo") -> tuple[dict, np.ndarray]:
    """EmotioNet-style photo ``i`` -> (truth row, uint8 image).  ``domain`` names the seed
    streams (``photo``: the demo photos; ``calib``: the landmark calibration's renders)."""
    import render

    rng = rng_for(P.seed, domain, i)
    ident = i % P.identities
    p_id, p_tex = identity_params(P.seed, f"{domain}_id", ident, model)
    p_tex = (p_tex + rng.normal(scale=0.3, size=p_tex.shape)).astype(np.float32)
    p_exp, label = sample_expression(rng, protos, P.prototype_fraction)
    H = int(rng.integers(P.min_size, P.max_size + 1))
    W = int(np.clip(round(H * rng.uniform(0.8, 1.25)), P.min_size, P.max_size))
    V = model.instance(p_id, p_exp)
    cam = place_camera(rng, V, model.landmarks, H, W, P.max_yaw, P.camera_dist)
    light = render.random_light(rng, colour=0.05)
    bg = make_background(rng, H, W)
    res = render.render(V, model.trilist, model.texture(p_tex), cam, background=bg, light=light,
                        backend=P.backend)
    img = res.image_uint8()
    lm = render.project(V[model.landmarks], cam).astype(np.float32)
    row = dict(p_id=p_id, p_exp=p_exp, p_tex=p_tex, camera=cam.astype(np.float32),
               identity=np.int64(IDENTITY_OFFSET["emotionet"] + ident), label=np.int64(label),
               size=np.array([H, W], np.int64), landmarks=lm, light=light.astype(np.float32))
    return row, img


def mesh_params(model, protos, P: WorldParams, m: int, s: int, f: int) -> dict:
    """4DFAB-style frame: a session ramps from neutral to one target expression."""
    p_id, p_tex = identity_params(P.seed, "mesh_id", m, model)
    target, label = sample_expression(rng_for(P.seed, "mesh_session", m, s), protos, P.prototype_fraction)
    w = (f + 1) / max(P.frames_4dfab, 1)
    noise = rng_for(P.seed, "mesh_frame", m, s, f).normal(scale=0.03, size=target.shape)
    p_exp = (w * target + noise).astype(np.float32)
    return dict(p_id=p_id, p_exp=p_exp, p_tex=p_tex, identity=np.int64(IDENTITY_OFFSET["4dfab"] + m),
                session=np.int64(s), frame=np.int64(f), label=np.int64(label))


def lrw_trajectory(rng: np.random.Generator, n_frames: int, n_exp: int, n_speech: int) -> np.ndarray:
    """Smoothly varying ``[F, E + S]`` normalised parameters: a few active expression
    components (slow sinusoids, 0.005-0.03 cycles per frame) and all speech components
    (0.03-0.08 cycles per frame, about 1-2 Hz at LRW's 25 fps), so that consecutive frames
    differ by at most ``2 pi * 0.08 * 0.9 = 0.45`` per parameter."""
    t = np.arange(n_frames, dtype=np.float64)
    out = np.zeros((n_frames, n_exp + n_speech))
    active = rng.choice(n_exp, size=min(n_exp, int(rng.integers(2, 6))), replace=False)
    for k in active:
        out[:, k] = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(0.005, 0.03) * t + rng.uniform(0, 2 * np.pi))
    for k in range(n_exp, n_exp + n_speech):
        out[:, k] = rng.uniform(0.2, 0.9) * np.sin(2 * np.pi * rng.uniform(0.03, 0.08) * t + rng.uniform(0, 2 * np.pi))
    return out.astype(np.float32)
