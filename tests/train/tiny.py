"""A tiny structured run folder for trainer tests (shards written by pipeline.testing).

Faces are smooth colour gradients (one per identity); the expression draws a bright
band whose row is set by p[0] and whose thickness by p[1], so a warp of a face is the same
gradient with the band moved: a learnable, paired image-to-image task at 32x32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.testing import make_stage


def face_image(identity: int, p: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 [size,size,3]: gradient of the identity's colours + band from p[0], p[1]."""
    rng = np.random.default_rng(1000 + identity)
    c0, c1 = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
    t = np.linspace(0, 1, size)[None, :, None]
    img = np.broadcast_to(c0 * (1 - t) + c1 * t, (size, size, 3)).copy()
    row = (0.5 + 0.35 * float(np.clip(p[0], -1, 1))) * size
    half = 1.5 + 1.5 * (float(np.clip(p[1], -1, 1)) + 1)
    rows = np.arange(size)[:, None, None]
    img = np.where(np.abs(rows + 0.5 - row) < half, 250.0, img)
    return img.clip(0, 255).astype(np.uint8)


def make_tiny_run(root: str | Path, faces: int = 8, per_face: int = 3, size: int = 32, E: int = 30,
                  warps: bool = True, fab: bool = True, seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    ident = np.arange(faces) // 2
    p_fit = rng.uniform(-1, 1, (faces, E)).astype(np.float32)
    make_stage(root / "fits", "fits", {
        "key": [f"photo{i:03d}.jpg" for i in range(faces)],
        "group": np.arange(faces, dtype=np.int64), "identity": ident.astype(np.int64),
        "label": np.full(faces, -1, np.int64),
        "image": np.stack([face_image(int(ident[i]), p_fit[i], size) for i in range(faces)]),
        "p_exp": p_fit, "p_id": rng.normal(size=(faces, 4)).astype(np.float32)}, chunk_size=5)
    if warps:
        n = faces * per_face
        src = np.repeat(np.arange(faces), per_face)
        p_w = rng.uniform(-1, 1, (n, E)).astype(np.float32)
        make_stage(root / "warps", "warps", {
            "key": [f"photo{s:03d}/{k}" for s, k in zip(src, np.tile(np.arange(per_face), faces))],
            "group": src.astype(np.int64), "source": src.astype(np.int64),
            "identity": ident[src].astype(np.int64),
            "image": np.stack([face_image(int(ident[s]), p_w[i], size) for i, s in enumerate(src)]),
            "p_exp": p_w}, chunk_size=7)
    if fab:
        n = 8
        fid = np.arange(n) // 2 + 100
        p_f = rng.uniform(-1, 1, (n, E)).astype(np.float32)
        make_stage(root / "4dfab-params", "4dfab-params", {
            "key": [f"{i}/s/f" for i in range(n)], "identity": fid.astype(np.int64),
            "group": fid.astype(np.int64), "split": (fid >= 103).astype(np.int8),
            "image": np.stack([face_image(int(f), p_f[i], size) for i, f in enumerate(fid)]),
            "p_exp": p_f}, chunk_size=8)
    return root


# config overrides for tiny, fast training runs
TINY_TRAIN = ["train.image_size=32", "train.batch_size=4", "train.g_conv_dim=8", "train.d_conv_dim=8",
              "train.g_repeat=1", "train.d_repeat=3", "train.workers=0", "train.n_critic=2",
              "train.log_every=5", "train.image_every=10", "train.checkpoint_every=5",
              "train.identity_epochs=1", "train.identity_width=8", "train.identity_size=32",
              "train.identity_features=16", "train.keep_checkpoints=0", "train.holdout=false",
              "train.paired_4dfab=0"]
