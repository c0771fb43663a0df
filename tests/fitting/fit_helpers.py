"""Small helpers for the fitting tests: a tiny face-shaped 3DMM and synthetic landmarks."""
from __future__ import annotations

import functools

import numpy as np

from fitting.model import MorphableModel, orthonormalise


@functools.lru_cache(maxsize=None)
def _template():
    from fitting.demo_model import load_template

    V, T, L = load_template()
    return np.asarray(V, np.float64), np.asarray(L, np.int64)


def tiny_model(n_extra: int = 1500, K: int = 8, E: int = 6, seed: int = 0) -> MorphableModel:
    """A 3DMM on a random subset of the template's vertices (all 68 landmark vertices kept),
    centred and scaled to unit half-width, with random orthonormal bases; [3N, K] / [3N, E]."""
    V, L = _template()
    rng = np.random.default_rng(seed)
    others = rng.choice(len(V), n_extra, replace=False)
    idx = np.unique(np.concatenate([L, others]))
    c = V[L].mean(0)
    Vs = (V[idx] - c) / np.abs(V[:, 0] - c[0]).max()
    lm = np.searchsorted(idx, L)
    N = len(idx)
    U = orthonormalise(rng.normal(size=(3 * N, K + E)))
    iod_scale = 1e-3  # eigenvalues such that a unit parameter moves landmarks by a few % of the face
    return MorphableModel(mean=Vs.reshape(-1), U_id=U[:, :K], ev_id=np.linspace(1, 0.3, K) * iod_scale * 3,
                          U_exp=U[:, K:], ev_exp=np.linspace(1, 0.3, E) * iod_scale * 3,
                          trilist=np.zeros((0, 3), np.int64), landmarks=lm, source="tiny-test")


def random_cameras(B: int, rng, max_yaw: float = 0.6) -> np.ndarray:
    """[B, 7] weak-perspective cameras with faces around (100, 100) px, scale 60-90 px/unit."""
    return np.stack([rng.uniform(-.3, .3, B), rng.uniform(-max_yaw, max_yaw, B), rng.uniform(-.2, .2, B),
                     rng.uniform(80, 120, B), rng.uniform(80, 120, B), rng.uniform(60, 90, B),
                     np.zeros(B)], 1)


def synthetic_faces(model: MorphableModel, B: int, seed: int = 1, max_yaw: float = 0.6):
    """(p_id [B,K], p_exp [B,E], camera [B,7], landmarks [B,68,2]) from the fixed landmark vertices."""
    from render.camera import project

    rng = np.random.default_rng(seed)
    pid = rng.normal(size=(B, model.n_id))
    pex = rng.normal(size=(B, model.n_exp))
    cam = random_cameras(B, rng, max_yaw)
    X = model.landmarks_3d(pid.astype(np.float32), pex.astype(np.float32))
    return pid, pex, cam, project(X, cam)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels but holds no image data."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def write_bad_inputs(folder, face_lm=None, size: int = 200) -> dict:
    """Write the bad-input test folder; returns {relative name: expected reason or None (good)}.

    Good images (CMYK, 16-bit, alpha, non-ASCII name, plain RGB) get a ``.pts`` sidecar with
    ``face_lm [68, 2]`` so they are fitted without a detector."""
    import io
    from pathlib import Path

    from PIL import Image

    from fitting.landmarks import format_pts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size          # smooth colours (JPEG keeps them)
    rgb = (np.dstack([40 + 180 * xx, 60 + 150 * yy, 200 - 120 * xx * yy])).astype(np.uint8)
    expect = {}

    def good(name, save):
        save(folder / name)
        if face_lm is not None:
            (folder / name).with_suffix(".pts").write_text(format_pts(face_lm))
        expect[name] = None

    good("plain.jpg", lambda p: Image.fromarray(rgb).save(p, quality=90))
    good("cmyk.jpg", lambda p: Image.fromarray(rgb).convert("CMYK").save(p, quality=90))
    a16 = (np.linspace(0, 65535, size * size).reshape(size, size)).astype(np.uint16)
    good("gray16.png", lambda p: Image.fromarray(a16).save(p))
    rgba = np.dstack([rgb, np.full((size, size), 128, np.uint8)])
    good("alpha.png", lambda p: Image.fromarray(rgba, "RGBA").save(p))
    good("visage_é_日本.jpg", lambda p: Image.fromarray(rgb).save(p, quality=90))
    (folder / "sub").mkdir(exist_ok=True)
    good("sub/gray.bmp", lambda p: Image.fromarray(rgb[..., 0]).save(p))

    (folder / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = "unreadable"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expect["truncated.jpg"] = "unreadable"
    (folder / "text.jpg").write_text("this is not an image\n")
    expect["text.jpg"] = "not an image"
    Image.fromarray(rgb[:8, :8]).save(folder / "tiny.png")
    expect["tiny.png"] = "too small"
    _png_header_only(folder / "bomb.png", 100_000, 100_000)
    expect["bomb.png"] = "decompression bomb"
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(folder / "flat_grey.png")
    expect["flat_grey.png"] = "no face"
    (folder / "notes.txt").write_text("not an input: wrong suffix\n")
    return expect
