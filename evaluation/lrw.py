"""Table 3: expression + speech transfer within LRW-style sequences.

Each sequence shows one identity under one camera with expression and speech parameters
varying over time (``lrw/truth.h5``: key ``<sequence>/<frame>.jpg``, sequence, frame, p_id,
p_exp [n, E+S], camera). Frames are cropped like the fitted photos (``fitting.align``:
similarity onto the model's reference landmarks, ``crop_size`` pixels) using the projected
landmarks of the *neutral* face (p_exp = 0) of the frame's identity and camera, so that
all frames of a sequence share one crop and the comparison measures the edit, not a
re-alignment. For random ordered frame pairs (a, b) of a sequence, G(crop_a, p_b) is
compared with crop_b by IED.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.data import Unavailable
from evaluation.networks import Networks, generate


def read_truth(lrw_dir: Path) -> dict:
    import h5py

    with h5py.File(Path(lrw_dir) / "truth.h5", "r") as f:
        need = ("key", "sequence", "p_id", "p_exp", "camera")
        miss = [k for k in need if k not in f]
        if miss:
            raise Unavailable(f"{lrw_dir}/truth.h5 lacks {', '.join(miss)}")
        out = {k: f[k][()] for k in need}
    out["key"] = np.array([k.decode() if isinstance(k, bytes) else str(k) for k in out["key"]], object)
    out["sequence"] = np.asarray(out["sequence"])
    return out


def crop_frames(model, lrw_dir: Path, truth: dict, rows, size: int = 128) -> np.ndarray:
    """Aligned crops uint8 [len(rows), size, size, 3] of the given truth rows."""
    from fitting.align import reference_shape, similarity_transform, warp_crop
    from fitting.images import load_image
    from render.camera import project

    ref = reference_shape(model.landmarks_3d(), size)
    out = []
    for i in rows:
        lm3 = model.landmarks_3d(p_id=np.asarray(truth["p_id"][i], np.float32))
        lm2 = project(lm3, np.asarray(truth["camera"][i], np.float64))
        A = similarity_transform(lm2, ref)
        out.append(warp_crop(load_image(Path(lrw_dir) / truth["key"][i]), A, size))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def table3_ied(nets: Networks, model, lrw_dir: Path, n_pairs: int, seed: int = 0, size: int = 128) -> dict:
    """{"lrw_ied", "lrw_ied_identity", "lrw_pairs"} or Unavailable."""
    from evaluation import ied
    from evaluation.protocols import same_group_pairs

    if model is None:
        raise Unavailable("no 3DMM to align the LRW frames")
    truth = read_truth(lrw_dir)
    width = truth["p_exp"].shape[1]
    if nets.n_params < width or width <= model.n_exp:
        raise Unavailable(f"checkpoint has {nets.n_params} parameters; the expression + speech experiment "
                          f"needs {model.n_exp + model.n_speech} (train with train.speech=true)")
    pairs = same_group_pairs(truth["sequence"], n_pairs, seed)
    if len(pairs) == 0:
        raise Unavailable("no LRW sequence has two frames")
    rows = np.unique(pairs)
    crops = crop_frames(model, lrw_dir, truth, rows, size)
    pos = {int(r): k for k, r in enumerate(rows)}
    a = np.array([pos[int(i)] for i in pairs[:, 0]])
    b = np.array([pos[int(i)] for i in pairs[:, 1]])
    out = generate(nets, crops[a], np.asarray(truth["p_exp"], np.float32)[pairs[:, 1]])
    target = crops[b].astype(np.float64) / 255.0
    return {"lrw_ied": float(np.mean(ied(out, target))),
            "lrw_ied_identity": float(np.mean(ied(crops[a].astype(np.float64) / 255.0, target))),
            "lrw_pairs": int(len(pairs))}
