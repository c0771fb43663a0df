"""Builders for the evaluation tests: a tiny synthetic 3DMM, a run
folder made with ``pipeline.testing.make_stage`` (fits, 4dfab-params) plus LRW-style frames,
and tiny random checkpoints in the ``slidergan-ckpt/1`` format."""
from pathlib import Path

import numpy as np

from tests import helpers

SIZE = 32   # image side of the fixtures (the real crops are 128; everything reads the size from data)


def tiny_model(seed: int = 0, n_id: int = 5, n_exp: int = 30, n_speech: int = 10):
    """A 14x14-vertex curved sheet with random orthonormal bases (fast to build and render)."""
    from fitting.model import MorphableModel

    rng = np.random.default_rng(seed)
    g = 14
    y, x = np.meshgrid(np.linspace(1, -1, g), np.linspace(-1, 1, g), indexing="ij")
    z = 0.4 * np.exp(-(x ** 2 + y ** 2))
    V = np.stack([x, y, z], -1).reshape(-1, 3) * 80.0
    tris = []
    for i in range(g - 1):
        for j in range(g - 1):
            a, b, c, d = i * g + j, i * g + j + 1, (i + 1) * g + j, (i + 1) * g + j + 1
            tris += [[a, c, b], [b, c, d]]
    N = len(V)

    def basis(k):
        q, _ = np.linalg.qr(rng.normal(size=(3 * N, k)))
        return q.astype(np.float32)

    return MorphableModel(mean=V.reshape(-1), U_id=basis(n_id), ev_id=np.linspace(30, 5, n_id) ** 2,
                          U_exp=basis(n_exp), ev_exp=np.linspace(20, 2, n_exp) ** 2,
                          U_speech=basis(n_speech) if n_speech else None,
                          ev_speech=np.linspace(10, 2, n_speech) ** 2 if n_speech else None,
                          trilist=np.array(tris), landmarks=rng.choice(N, 68, replace=False),
                          source="tiny test model")


def smooth_images(rng, n, size=SIZE):
    """Smooth random RGB images uint8 [n, size, size, 3] (low-frequency noise, upsampled)."""
    from PIL import Image

    small = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BILINEAR)) for s in small])


def build_eval_run(root: Path) -> Path:
    """A run folder: model.h5, fits/ (24 photos, 8 identities, labels, the 3D fit: p_id,
    camera, align = identity, the photos as files under photos/ so the warp oracle can warp
    them), 4dfab-params/ (4 identities x 2 sessions x 3 frames, identities 2-3 held out, with
    p_id and camera), lrw-fits/ (3 videos x 4 frames, 2 of them test split; build_lrw_fits)."""
    from PIL import Image

    from pipeline.testing import make_stage
    from render.camera import camera_fitting_view

    model = tiny_model()
    model.save(root / "model.h5")
    rng = np.random.default_rng(0)
    n = 24
    ident = np.repeat(np.arange(8), 3)
    label = np.array([(i % 8) - 1 for i in range(n)], np.int64)   # -1, 0..6 cycling
    crops = smooth_images(rng, n)
    keys = [f"img{i:03d}.png" for i in range(n)]
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for k, im in zip(keys, crops):                # the photo is its own crop (align = identity)
        Image.fromarray(im).save(root / "photos" / k)
    cam32 = camera_fitting_view(model.mean.reshape(-1, 3), (SIZE, SIZE), fill=0.8).astype(np.float32)
    make_stage(root / "fits", "fit", {
        "key": keys, "group": np.arange(n, dtype=np.int64),
        "identity": ident.astype(np.int64), "image": crops,
        "p_exp": rng.uniform(-1, 1, (n, 30)).astype(np.float32), "label": label,
        "p_id": (rng.normal(size=(n, 5)) * 0.3).astype(np.float32), "camera": np.repeat(cam32[None], n, 0),
        "align": np.repeat(np.array([[[1, 0, 0], [0, 1, 0]]], np.float32), n, 0)},
        chunk_size=10, params={"root": str(root / "photos")})
    ids, sess, frame = np.meshgrid(np.arange(4), np.arange(2), np.arange(3), indexing="ij")
    ids, sess = ids.ravel(), sess.ravel()
    m = len(ids)
    make_stage(root / "4dfab-params", "project-4dfab", {
        "key": [f"{a}/{b}/{c}" for a, b, c in zip(ids, sess, frame.ravel())],
        "group": (ids * 2 + sess).astype(np.int64), "identity": ids.astype(np.int64),
        "session": sess.astype(np.int64), "image": smooth_images(rng, m),
        "p_exp": rng.uniform(-1, 1, (m, 30)).astype(np.float32), "split": (ids >= 2).astype(np.int8),
        "p_id": (rng.normal(size=(m, 5)) * 0.3).astype(np.float32), "camera": np.repeat(cam32[None], m, 0)},
        chunk_size=8)
    build_lrw_fits(root, model, rng)
    return root


def build_lrw_fits(root: Path, model, rng, videos=("A/train/A_00001", "A/test/A_00002", "B/test/B_00003"),
                   frames: int = 4) -> Path:
    """A fit-lrw stage (``root/lrw-fits``, the rows of workflows/stages/fit_lrw.py) and its videos
    (``root/lrw/lipread_mp4/<id>.mp4``, SIZE x SIZE, so the oracle can decode frame a): one fixed
    camera per video, the crops are the frames (align = identity), p_exp 40-wide."""
    from fitting.lrw import write_video
    from render.camera import camera_fitting_view

    cam = camera_fitting_view(model.mean.reshape(-1, 3), (SIZE, SIZE), fill=0.6).astype(np.float32)
    vroot = root / "lrw" / "lipread_mp4"
    rows = {k: [] for k in ("key", "video", "word", "split", "group", "frame", "image", "p_exp", "p_id", "camera",
                            "align")}
    for v, vid in enumerate(videos):
        ims = smooth_images(rng, frames)
        (vroot / vid).parent.mkdir(parents=True, exist_ok=True)
        write_video(vroot / f"{vid}.mp4", ims)
        p_id = (rng.normal(size=5) * 0.3).astype(np.float32)
        for f in range(frames):
            rows["key"].append(f"{vid}#{f:03d}"), rows["video"].append(vid)
            rows["word"].append(vid.split("/")[0]), rows["split"].append(vid.split("/")[1])
            rows["group"].append(v), rows["frame"].append(f), rows["image"].append(ims[f])
            rows["p_exp"].append(rng.uniform(-1, 1, 40).astype(np.float32)), rows["p_id"].append(p_id)
            rows["camera"].append(cam), rows["align"].append(np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    data = {k: (v if k in ("key", "video", "word", "split") else np.stack(v)) for k, v in rows.items()}
    data["group"] = data["group"].astype(np.int64)
    data["frame"] = data["frame"].astype(np.int16)
    from pipeline.testing import make_stage

    return make_stage(root / "lrw-fits", "fit-lrw", data, chunk_size=8, attrs={"videos": str(vroot)})


def build_checkpoints(root: Path) -> dict:
    """Tiny random checkpoints for the SIZE x SIZE fixtures: rad (30 parameters), speech (40), ganimation."""
    def save(name, c_dim, variant, seed):
        cfg = {"image_size": SIZE, "c_dim": c_dim, "g_conv_dim": 4, "g_repeat": 1, "d_conv_dim": 4, "d_repeat": 3}
        return helpers.save_checkpoint(root / name / "latest.pt", cfg, variant, step=7, phase="unpaired", seed=seed)

    return {"rad": save("rad", 30, "rad", 1), "speech": save("speech", 40, "rad", 2),
            "ganimation": save("gan", 30, "ganimation", 3)}


def save_tiny_reader(path: Path, n_params: int = 30, seed: int = 0) -> Path:
    """A random tiny expression reader file in ``train.reader``'s format (its config built by
    ``train.reader.reader_config`` from the preset's ``reader:`` section, made tiny)."""
    import torch

    from model.reader import build_reader
    from pipeline.config import load_config
    from train.reader import FORMAT, reader_config

    cfg = load_config(None, ["reader.image_size=16", "reader.width=2", "reader.stages=1"])
    conf = reader_config(dict(cfg.section("reader")), n_params)
    torch.manual_seed(seed)
    net = build_reader(conf)
    meta = {"heldout_rel_error": 0.25, "heldout_vertex_error": 0.2, "heldout_zero_vertex_error": 1.0,
            "heldout_r2": [0.5] * n_params, "n_params": n_params, "image_size": 16, "n_heldout": 12}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "reader_config": conf, "state_dict": net.state_dict(), "meta": meta}, path)
    return path


#: a synthetic training log: log records every 2 steps, validation records at 4 and 8
SYNTHETIC_LOG = [
    {"step": 2, "phase": "paired", "d_exp": 0.9, "mask_mean": 0.2, "g_gen": 0.3, "loss_d": 5.0, "loss_g": 9.0},
    {"step": 4, "phase": "paired", "d_exp": 0.7, "mask_mean": 0.25, "g_gen": 0.25, "loss_d": 4.0, "loss_g": 8.0,
     "val_l1": 0.21, "val_l1_copy": 0.30, "val_l1_wrong": 0.33, "val_d_exp": 0.8, "val_mask": 0.24},
    {"step": 6, "phase": "unpaired", "d_exp": 0.5, "mask_mean": 0.3, "g_gen": 0.0, "loss_d": 3.0, "loss_g": 7.0},
    {"step": 8, "phase": "unpaired", "d_exp": 0.4, "mask_mean": 0.3, "g_gen": 0.0, "loss_d": 3.0, "loss_g": 6.0,
     "val_l1": 0.15, "val_l1_copy": 0.30, "val_l1_wrong": 0.31, "val_d_exp": 0.6, "val_mask": 0.29},
]


def training_folder_with_log(root: Path, checkpoint: Path, records=SYNTHETIC_LOG, tail: str = "") -> Path:
    """T/checkpoints/latest.pt (a copy of ``checkpoint``) and T/metrics.jsonl with ``records``
    (+ ``tail``, e.g. a half-written line). Returns the checkpoint path."""
    import json
    import shutil

    ck = root / "checkpoints" / "latest.pt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, ck)
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return ck
