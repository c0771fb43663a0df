"""The offline demo world (``slidergan make-demo``): a 3DMM, EmotioNet-style photos,
4DFAB-style meshes and LRW-style sequences with exact ground truth.

Layout of ``D`` (DESIGN.md, "Demo world"; truth schemas in docs/INTERFACES.md)::

    D/model.h5
    D/emotionet/<00000>.jpg + .pts, truth.h5
    D/4dfab/id<000>/s<00>/<000>.obj (vertex colours), truth.h5
    D/lrw/seq<000>/<000>.jpg + .pts, truth.h5
    D/lrw/lipread_mp4/<WORD>/<split>/<WORD>_<id>.mp4 + .txt + .landmarks.npy   (LRW layout)
    D/lrw/lrw3d/<WORD>/<split>/<WORD>_<id>.npy     LRW-3D-style speech parameters [frames, S]
    D/preview.png       contact sheet: 64 photos + 16 mesh renders
    D/_demo.json        written last: params, params_hash, counts (re-run = no-op)

Every item draws its randomness from ``np.random.default_rng([seed, domain, index...])``,
so the world does not depend on chunking or on the number of workers.  Work is split in
chunks (``demo.chunk_size`` items) run as Dask tasks; each chunk writes its files
atomically and then a chunk record ``D/_demo_chunks/<kind>-<chunk>.npz`` (its truth rows),
so a killed run resumes where it stopped.  ``truth.h5`` files are assembled from the chunk
records at the end.  This module holds orchestration only; rendering is :mod:`render`,
the model is :mod:`fitting.model`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "slidergan-demo/1"
GENERATOR_VERSION = "2"        # 2: LRW-style .mp4 videos and LRW-3D-style speech files
MARKER = "_demo.json"
CHUNKS = "_demo_chunks"
KINDS = ("emotionet", "4dfab", "lrw")
DOMAIN = {"photo": 1, "photo_id": 2, "mesh_id": 3, "mesh_session": 4, "mesh_frame": 5,
          "lrw": 6, "lrw_id": 7, "preview": 8, "calib": 9, "calib_id": 10}
#: identity labels are unique across the three datasets
IDENTITY_OFFSET = {"emotionet": 0, "4dfab": 100000, "lrw": 200000}


def rng_for(seed: int, domain: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), DOMAIN[domain], *[int(i) for i in index]])


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class WorldParams:
    """Everything that determines the world's bytes (hashed into ``_demo.json``)."""

    seed: int
    n_id: int
    n_exp: int
    n_speech: int
    faces: int
    identities: int
    identities_4dfab: int
    sessions_4dfab: int
    frames_4dfab: int
    lrw_sequences: int
    lrw_frames: int
    lrw_size: int
    min_size: int
    max_size: int
    max_yaw: float
    camera_dist: float
    prototype_fraction: float
    jpeg_quality: int
    backend: str

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["generator"] = GENERATOR_VERSION
        return d

    def validate(self) -> None:
        from pipeline.config import ConfigError

        for name in ("faces", "identities_4dfab", "sessions_4dfab", "frames_4dfab", "lrw_sequences",
                     "lrw_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"demo.{name} must be >= 0, got {getattr(self, name)}")
        if self.identities < 1:
            raise ConfigError(f"demo.identities must be >= 1, got {self.identities}")
        if not 32 <= self.min_size <= self.max_size:
            raise ConfigError(f"need 32 <= demo.min_size <= demo.max_size, got {self.min_size}, {self.max_size}")
        if self.lrw_size < 32:
            raise ConfigError(f"demo.lrw_size must be >= 32, got {self.lrw_size}")
        if not 0.0 <= self.max_yaw <= 89.0:
            raise ConfigError(f"demo.max_yaw must be in [0, 89] degrees, got {self.max_yaw}")
        if not 0.0 <= self.prototype_fraction <= 1.0:
            raise ConfigError(f"demo.prototype_fraction must be in [0, 1], got {self.prototype_fraction}")
        if self.camera_dist < 0 or 0 < self.camera_dist < 2.5:
            raise ConfigError(f"demo.camera_dist must be 0 (weak perspective) or >= 2.5, got {self.camera_dist}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"demo.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.backend not in ("fast", "pyrender"):
            raise ConfigError(f"render.backend must be fast or pyrender, got {self.backend!r}")


# ---------------------------------------------------------------------------- model cache
_MODELS: dict = {}
_MODEL_LOCK = threading.Lock()


def load_model_cached(path: str):
    """Load ``model.h5`` once per process (tasks of one worker share it)."""
    from fitting.demo_model import expression_prototypes
    from fitting.model import MorphableModel

    key = (str(path), os.stat(path).st_mtime_ns)
    with _MODEL_LOCK:
        if key not in _MODELS:
            model = MorphableModel.load(path)
            _MODELS.clear()
            _MODELS[key] = (model, expression_prototypes(model))
        return _MODELS[key]


# ---------------------------------------------------------------------------- sampling
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


def _jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pts_text(lm: np.ndarray) -> str:
    """menpo/iBUG ``.pts`` text of project-pixel landmarks ``[n, 2]`` (u, v).

    The file holds ``x y`` per point, 1-based with pixel centres on integers (menpo's
    importer subtracts 1 and swaps to (y, x)); project pixel centres are at ``j + 0.5``,
    so ``x = u + 0.5``."""
    lm = np.asarray(lm, np.float64) + 0.5
    body = "\n".join(f"{x:.4f} {y:.4f}" for x, y in lm)
    return f"version: 1\nn_points: {len(lm)}\n{{\n{body}\n}}\n"


def _write_pts(path: Path, lm: np.ndarray) -> None:
    from pipeline.atomic import atomic_write_text

    atomic_write_text(path, pts_text(lm))


# ---------------------------------------------------------------------------- OBJ writer
def _format_rows_kernel():
    """Compile (once, cached on disk) the fixed-point row formatter used by :func:`format_rows`."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def kernel(vals, decimals, prefix, out):  # pragma: no cover - jitted
        pos = 0
        digits = np.empty(24, np.uint8)
        for i in range(vals.shape[0]):
            for c in range(prefix.shape[0]):
                out[pos] = prefix[c]
                pos += 1
            for k in range(vals.shape[1]):
                d = decimals[k]
                scale = 10 ** d
                x = vals[i, k]
                q = np.int64(abs(x) * scale + 0.5)
                if x < 0 and q != 0:
                    out[pos] = 45  # '-'
                    pos += 1
                ip = q // scale
                fp = q - ip * scale
                n = 0
                while True:
                    digits[n] = 48 + ip % 10
                    ip //= 10
                    n += 1
                    if ip == 0:
                        break
                for j in range(n - 1, -1, -1):
                    out[pos] = digits[j]
                    pos += 1
                if d > 0:
                    out[pos] = 46  # '.'
                    pos += 1
                    for j in range(d - 1, -1, -1):
                        out[pos + j] = 48 + fp % 10
                        fp //= 10
                    pos += d
                out[pos] = 32 if k < vals.shape[1] - 1 else 10  # ' ' or '\n'
                pos += 1
        return pos

    return kernel


_KERNEL = []


def format_rows(prefix: str, vals: np.ndarray, decimals) -> bytes:
    """``prefix v0 v1 ...\n`` per row of ``vals [n, k]`` in fixed point with ``decimals[k]``
    digits (0 = integer).  Equivalent to ``np.savetxt(fmt="prefix %.6f ...")`` for values
    below 1e12, but compiled: savetxt formats row by row in Python and took ~0.4 s per
    53k-vertex mesh, most of make-demo's time."""
    if not _KERNEL:
        _KERNEL.append(_format_rows_kernel())
    vals = np.ascontiguousarray(vals, dtype=np.float64)
    if vals.size and not np.isfinite(vals).all():
        raise ValueError("cannot write non-finite values to OBJ")
    dec = np.asarray(decimals, dtype=np.int64)
    pre = np.frombuffer(prefix.encode(), np.uint8)
    width = len(pre) + int(sum(16 + d for d in dec)) + 2
    out = np.empty(len(vals) * width, np.uint8)
    n = _KERNEL[0](vals, dec, pre, out)
    return out[:n].tobytes()


_FACES_TEXT: dict = {}


def obj_text(vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray) -> bytes:
    """An OBJ with per-vertex colours (``v x y z r g b``; loads with trimesh); the face
    block is formatted once per topology."""
    tri = np.asarray(triangles, np.int64)
    key = (len(tri), hashlib.sha1(tri.tobytes()).hexdigest())
    ftxt = _FACES_TEXT.get(key)
    if ftxt is None:
        ftxt = format_rows("f ", tri + 1, [0, 0, 0])
        _FACES_TEXT.clear()
        _FACES_TEXT[key] = ftxt
    vc = np.hstack([np.asarray(vertices, np.float64), np.asarray(colours, np.float64)])
    return (b"# slidergan demo world mesh (vertex colours)\n"
            + format_rows("v ", vc, [6, 6, 6, 4, 4, 4]) + ftxt)


# ---------------------------------------------------------------------------- items
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


def photo_key(i: int, n: int = 0) -> str:
    """``00000.jpg``; more digits when there are over 100,000 photos, so keys sort numerically."""
    return f"{i:0{max(5, len(str(max(n - 1, 0))))}d}.jpg"


def mesh_items(P: WorldParams) -> list[tuple[int, int, int]]:
    return [(m, s, f) for m in range(P.identities_4dfab) for s in range(P.sessions_4dfab)
            for f in range(P.frames_4dfab)]


def mesh_key(m: int, s: int, f: int) -> str:
    return f"id{m:03d}/s{s:02d}/{f:03d}"


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


#: LRW-style words of the demo videos, and the split of sequence ``s`` (cycle, so that even
#: two sequences give a training and a test video)
LRW_WORDS = ("ABOUT", "WORLD", "THINK")
LRW_SPLIT_CYCLE = ("train", "test", "val", "train")
#: the demo videos' H.264 quality (x264 CRF; 17 is visually lossless)
LRW_CRF = 17


def lrw_video_id(seq: int) -> str:
    """The LRW-style id ``<WORD>/<split>/<WORD>_<id>`` of demo sequence ``seq`` (its video is
    ``D/lrw/lipread_mp4/<id>.mp4``, its speech parameters ``D/lrw/lrw3d/<id>.npy``)."""
    word = LRW_WORDS[seq % len(LRW_WORDS)]
    split = LRW_SPLIT_CYCLE[seq % len(LRW_SPLIT_CYCLE)]
    return f"{word}/{split}/{word}_{seq + 1:05d}"


def write_lrw_video(out: Path, seq: int, frames: np.ndarray, lm: np.ndarray, speech: np.ndarray) -> None:
    """Sequence ``seq`` in LRW's layout: ``.mp4`` (25 fps H.264) + ``.txt`` + the exact
    landmarks ``.landmarks.npy`` [F, 68, 2], and its speech parameters [F, S] as an LRW-3D
    mirror tree (fitting/lrw.py).  Every file atomic."""
    from fitting.lrw import LANDMARKS_SUFFIX, word_txt, write_video
    from pipeline.atomic import atomic_write_bytes, atomic_write_text

    vid = lrw_video_id(seq)
    video = out / "lrw" / "lipread_mp4" / f"{vid}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    write_video(video, frames, crf=LRW_CRF)
    atomic_write_text(video.with_suffix(".txt"), word_txt(vid.split("/")[0], len(frames)))
    buf = io.BytesIO()
    np.save(buf, np.asarray(lm, np.float32))
    atomic_write_bytes(video.with_name(video.stem + LANDMARKS_SUFFIX), buf.getvalue())
    if speech.shape[1]:
        sp = out / "lrw" / "lrw3d" / f"{vid}.npy"
        sp.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.asarray(speech, np.float32))
        atomic_write_bytes(sp, buf.getvalue())


# ---------------------------------------------------------------------------- chunks
def _chunk_record(out: Path, kind: str, chunk: int) -> Path:
    return out / CHUNKS / f"{kind}-{chunk:05d}.npz"


def _save_record(path: Path, rows: list[dict], keys: list[str], phash: str) -> None:
    from pipeline.atomic import atomic_write_bytes

    cols = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
    buf = io.BytesIO()
    np.savez(buf, key=np.array(keys, dtype=str), params_hash=np.array(phash), **cols)
    atomic_write_bytes(path, buf.getvalue())


def record_ok(path: Path, phash: str) -> bool:
    try:
        with np.load(path) as z:
            return str(z["params_hash"]) == phash
    except (OSError, ValueError, KeyError):
        return False


def run_chunk(out: str, kind: str, chunk: int, items: list, params: dict, phash: str) -> int:
    """Generate one chunk of ``kind`` (a Dask task); returns the number of items written."""
    from pipeline.atomic import atomic_write_bytes

    import render

    out = Path(out)
    P = WorldParams(**{k: v for k, v in params.items() if k != "generator"})
    rec = _chunk_record(out, kind, chunk)
    if record_ok(rec, phash):
        return len(items)
    model, protos = load_model_cached(str(out / "model.h5"))
    rows, keys = [], []
    if kind == "emotionet":
        folder = out / "emotionet"
        folder.mkdir(parents=True, exist_ok=True)
        for i in items:
            row, img = render_photo(model, protos, P, i)
            key = photo_key(i, P.faces)
            atomic_write_bytes(folder / key, _jpeg_bytes(img, P.jpeg_quality))
            _write_pts((folder / key).with_suffix(".pts"), row["landmarks"])
            rows.append(row)
            keys.append(key)
    elif kind == "4dfab":
        for (m, s, f) in items:
            row = mesh_params(model, protos, P, m, s, f)
            V = model.instance(row["p_id"], row["p_exp"])
            key = mesh_key(m, s, f)
            path = out / "4dfab" / f"{key}.obj"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, obj_text(V, model.trilist, model.texture(row["p_tex"])))
            rows.append(row)
            keys.append(key)
    elif kind == "lrw":
        for seq in items:
            rng = rng_for(P.seed, "lrw", seq)
            p_id, p_tex = identity_params(P.seed, "lrw_id", seq, model)
            S = model.n_speech
            traj = lrw_trajectory(rng, P.lrw_frames, model.n_exp, S)
            H = W = P.lrw_size
            V0 = model.instance(p_id, None)
            cam = place_camera(rng, V0, model.landmarks, H, W, min(P.max_yaw, 30.0), P.camera_dist,
                               fill=(0.55, 0.7), jitter=0.03)
            light = render.random_light(rng)
            bg = make_background(rng, H, W)
            tex = model.texture(p_tex)
            folder = out / "lrw" / f"seq{seq:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            frames, lms = [], []
            for f in range(P.lrw_frames):
                V = model.instance(p_id, traj[f])
                res = render.render(V, model.trilist, tex, cam, background=bg, light=light, backend=P.backend)
                key = f"seq{seq:03d}/{f:03d}.jpg"
                frames.append(res.image_uint8())
                atomic_write_bytes(out / "lrw" / key, _jpeg_bytes(frames[-1], P.jpeg_quality))
                lm = render.project(V[model.landmarks], cam).astype(np.float32)
                lms.append(lm)
                _write_pts((out / "lrw" / key).with_suffix(".pts"), lm)
                rows.append(dict(sequence=np.int64(seq), frame=np.int64(f),
                                 identity=np.int64(IDENTITY_OFFSET["lrw"] + seq), p_id=p_id, p_exp=traj[f],
                                 p_tex=p_tex, camera=cam.astype(np.float32), landmarks=lm,
                                 video=lrw_video_id(seq)))
                keys.append(key)
            if frames:
                write_lrw_video(out, seq, np.stack(frames), np.stack(lms), traj[:, model.n_exp:])
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown chunk kind {kind!r}")
    rec.parent.mkdir(parents=True, exist_ok=True)
    _save_record(rec, rows, keys, phash)
    return len(items)


def plan_chunks(P: WorldParams, chunk_size: int) -> list[tuple[str, int, list]]:
    """(kind, chunk index, items) for every chunk of the world, deterministic."""
    tasks = []
    photos = list(range(P.faces))
    for c in range(0, len(photos), chunk_size):
        tasks.append(("emotionet", c // chunk_size, photos[c:c + chunk_size]))
    meshes = mesh_items(P)
    for c in range(0, len(meshes), chunk_size):
        tasks.append(("4dfab", c // chunk_size, meshes[c:c + chunk_size]))
    per = max(1, chunk_size // max(P.lrw_frames, 1))
    seqs = list(range(P.lrw_sequences)) if P.lrw_frames > 0 else []
    for c in range(0, len(seqs), per):
        tasks.append(("lrw", c // per, seqs[c:c + per]))
    return tasks


# ---------------------------------------------------------------------------- assembly
def _write_truth(path: Path, records: list[Path]) -> int:
    import h5py

    from pipeline.atomic import atomic_write_with

    cols: dict[str, list] = {}
    for r in records:
        with np.load(r) as z:
            for k in z.files:
                if k == "params_hash":
                    continue
                cols.setdefault(k, []).append(z[k])
    data = {k: np.concatenate(v) for k, v in cols.items()} if cols else {}
    n = len(data.get("key", []))

    def write(tmp):
        with h5py.File(tmp, "w") as h:
            h.attrs["schema"] = "slidergan-demo-truth/1"
            h.attrs["n"] = n
            for k, v in data.items():
                if k == "key" or v.dtype.kind == "U":
                    h.create_dataset(k, data=np.array([str(s) for s in v], dtype=object),
                                     dtype=h5py.string_dtype())
                else:
                    h.create_dataset(k, data=v)

    atomic_write_with(path, write)
    return n


def _thumb(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((side, side), Image.BILINEAR)
    canvas = Image.new("RGB", (side, side), (24, 24, 24))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas)


def make_preview(out: Path, model, P: WorldParams, side: int = 96, cols: int = 8) -> Path:
    """Contact sheet ``D/preview.png``: up to 64 photos, then up to 16 4DFAB-style renders."""
    from PIL import Image

    import render
    from pipeline.atomic import atomic_write_bytes
    from render.camera import camera_fitting_view

    tiles = []
    for i in range(min(64, P.faces)):
        tiles.append(_thumb(np.asarray(Image.open(out / "emotionet" / photo_key(i, P.faces)).convert("RGB")), side))
    while len(tiles) % cols:
        tiles.append(np.full((side, side, 3), 24, np.uint8))
    protos = load_model_cached(str(out / "model.h5"))[1]
    items = mesh_items(P)
    # one frame per session, last frame (the apex) first
    pick = [it for it in items if it[2] == P.frames_4dfab - 1][:16]
    rng = rng_for(P.seed, "preview", 0)
    light = render.random_light(rng, strength=0.5, colour=0.0)
    for (m, s, f) in pick:
        row = mesh_params(model, protos, P, m, s, f)
        V = model.instance(row["p_id"], row["p_exp"])
        cam = camera_fitting_view(V, (2 * side, 2 * side), yaw=np.deg2rad(20.0 * ((m + s) % 3 - 1)), fill=0.9)
        img = render.render(V, model.trilist, model.texture(row["p_tex"]), cam,
                            background=np.full((2 * side, 2 * side, 3), 235, np.uint8), light=light).image_uint8()
        tiles.append(np.asarray(Image.fromarray(img).resize((side, side), Image.LANCZOS)))
    while len(tiles) % cols:
        tiles.append(np.full((side, side, 3), 24, np.uint8))
    if not tiles:
        tiles = [np.full((side, side, 3), 24, np.uint8)]
    rows = [np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)]
    sheet = np.concatenate(rows, axis=0)
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    path = out / "preview.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------- driver
def read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _clear_generated(out: Path) -> None:
    """Remove what a previous make-demo with other params generated (only our folders)."""
    for name in (*KINDS, CHUNKS):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
    for name in ("model.h5", "preview.png", MARKER):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def build_world(out: str | os.PathLike, P: WorldParams, chunk_size: int = 32, force: bool = False,
                cluster: str = "local", workers: int | None = None, progress: bool = True,
                log=print) -> dict:
    """Build (or complete) the demo world in ``out``; returns the marker dict.

    A finished world with the same params is left untouched (no-op); other params or
    ``force`` regenerate it; a partial world with the same params is completed."""
    from pipeline.atomic import atomic_write_json, remove_stale_temps
    from pipeline.config import ConfigError
    from pipeline.lock import StageLock

    P.validate()
    if chunk_size < 1:
        raise ConfigError(f"demo.chunk_size must be >= 1, got {chunk_size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out exists and is not a folder: {out}")
    params = P.to_dict()
    phash = params_hash(params)
    with StageLock(out):
        marker = read_marker(out)
        if marker and marker.get("params_hash") == phash and not force:
            log(f"demo world in {out} is up to date (params {phash})")
            return marker
        if force or (marker and marker.get("params_hash") != phash) or not _records_match(out, phash):
            _clear_generated(out)
        for sub in (out, out / CHUNKS, *(out / k for k in KINDS)):
            sub.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(sub)
        model_path = out / "model.h5"
        if not model_path.exists():
            from fitting.demo_model import build_demo_model

            log(f"building the demo 3DMM (seed {P.seed}, {P.n_id} id, {P.n_exp} exp, {P.n_speech} speech)")
            build_demo_model(seed=P.seed, n_id=P.n_id, n_exp=P.n_exp, n_speech=P.n_speech).save(model_path)
        (out / CHUNKS / "params_hash").write_text(phash + "\n")
        model, _ = load_model_cached(str(model_path))

        tasks = [t for t in plan_chunks(P, chunk_size) if not record_ok(_chunk_record(out, t[0], t[1]), phash)]
        n_items = sum(len(t[2]) for t in tasks)
        log(f"generating {n_items} items in {len(tasks)} chunks ({P.faces} photos, "
            f"{len(mesh_items(P))} meshes, {P.lrw_sequences}x{P.lrw_frames} frames)")
        _run_tasks(str(out), tasks, params, phash, cluster, workers, progress)

        counts = {}
        for kind in KINDS:
            recs = sorted((out / CHUNKS).glob(f"{kind}-*.npz"))
            counts[kind] = _write_truth(out / kind / "truth.h5", recs)
        make_preview(out, model, P)
        marker = {"format": FORMAT, "params": params, "params_hash": phash, "model_hash": model.hash,
                  "counts": counts}
        atomic_write_json(out / MARKER, marker)
        log(f"demo world ready in {out}: {counts['emotionet']} photos, {counts['4dfab']} meshes, "
            f"{counts['lrw']} sequence frames; preview {out / 'preview.png'}")
        return marker


def _records_match(out: Path, phash: str) -> bool:
    f = out / CHUNKS / "params_hash"
    try:
        return f.read_text().strip() == phash
    except OSError:
        return False


def _run_tasks(out: str, tasks: list, params: dict, phash: str, cluster: str, workers: int | None,
               progress: bool) -> None:
    run_tasks(run_chunk, [(out, kind, chunk, items, params, phash) for kind, chunk, items in tasks],
              cluster, workers, progress, desc="demo world")


def run_tasks(fn, arg_tuples: list, cluster: str, workers: int | None, progress: bool,
              local_scheduler: str = "threads", retries: int = 1, desc: str | None = None) -> list:
    """``[fn(*args) for args in arg_tuples]`` in parallel: for ``cluster="local"`` a thread pool
    or (``local_scheduler="processes"``) a process pool whose workers die with this process
    (:func:`pipeline.procs.process_pool`), else the pipeline's Dask client (SLURM profile or a
    scheduler).  A task that raises is retried ``retries`` times; then a RuntimeError names
    the task and its error.  Progress: :class:`pipeline.progress.Progress` (a bar on a
    terminal, a line every 30 s in a log)."""
    if not arg_tuples:
        return []
    from pipeline.progress import Progress

    n = len(arg_tuples)
    desc = desc or getattr(fn, "__name__", "tasks")
    nw = max(1, min(n, workers or os.cpu_count() or 1))
    with Progress(n, desc, unit="task", enabled=progress) as bar:
        if cluster == "local":
            return _run_local(fn, arg_tuples, nw, local_scheduler, retries, bar)
        return _run_dask(fn, arg_tuples, cluster, workers, retries, bar)


def _task_error(i: int, n: int, fn, e: BaseException) -> RuntimeError:
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    return RuntimeError(f"{getattr(fn, '__name__', 'task')} task {i} of {n} failed: {e.__class__.__name__}: {msg}")


def _run_local(fn, arg_tuples: list, nw: int, scheduler: str, retries: int, bar) -> list:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    n = len(arg_tuples)
    out: list = [None] * n
    if nw == 1:
        for i, args in enumerate(arg_tuples):
            for attempt in range(retries + 1):
                try:
                    out[i] = fn(*args)
                    break
                except Exception as e:  # noqa: BLE001 — retried, then named
                    if attempt == retries:
                        raise _task_error(i, n, fn, e) from e
            bar.update(1)
        return out
    if scheduler == "processes":
        from pipeline.procs import process_pool

        pool = process_pool(nw)
    else:
        pool = ThreadPoolExecutor(nw)
    try:
        pending = {pool.submit(fn, *args): (i, 0) for i, args in enumerate(arg_tuples)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i, attempt = pending.pop(fut)
                try:
                    out[i] = fut.result()
                except Exception as e:  # noqa: BLE001 — retried, then named
                    if attempt >= retries:
                        raise _task_error(i, n, fn, e) from e
                    pending[pool.submit(fn, *arg_tuples[i])] = (i, attempt + 1)
                    continue
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _run_dask(fn, arg_tuples: list, cluster: str, workers: int | None, retries: int, bar) -> list:
    from distributed import as_completed

    from pipeline.cluster import open_client

    n = len(arg_tuples)
    with open_client(cluster, workers, max_workers=n) as client:
        futures = {client.submit(fn, *args, pure=False, retries=retries): i for i, args in enumerate(arg_tuples)}
        out: list = [None] * n
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                out[i] = fut.result()
            except Exception as e:  # noqa: BLE001 — Dask retried it already
                raise _task_error(i, n, fn, e) from e
            bar.update(1)
        return out
