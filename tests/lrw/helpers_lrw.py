"""Fixture files for the LRW tests: small videos and speech files in LRW's layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def moving_frames(n: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth picture that moves from frame to frame: uint8 [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    c = rng.uniform(0.2, 0.8, 3)
    out = []
    for f in range(n):
        t = f / max(n - 1, 1)
        blob = np.exp(-((xx - 0.3 - 0.4 * t) ** 2 + (yy - 0.5) ** 2) / 0.02)
        img = 0.3 * xx[..., None] + 0.2 * yy[..., None] + c[None, None] * blob[..., None]
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def write_lrw_tree(root: Path, videos: dict, size: int = 64) -> dict:
    """``videos``: {id "<WORD>/<split>/<WORD>_<n>": frames} -> writes ``root/<id>.mp4`` + .txt;
    returns {id: frames as written}."""
    from fitting.lrw import word_txt, write_video

    out = {}
    for vid, n in videos.items():
        fr = moving_frames(n, size, seed=len(out))
        p = root / f"{vid}.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_video(p, fr)
        p.with_suffix(".txt").write_text(word_txt(vid.split("/")[0], n))
        out[vid] = fr
    return out
