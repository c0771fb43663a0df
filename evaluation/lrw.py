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

from dataclasses import dataclass
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


def frame_alignments(model, truth: dict, rows, size: int = 128) -> np.ndarray:
    """The crop similarity [len(rows), 2, 3] (frame pixels -> crop pixels) of each truth row:
    the projected landmarks of the neutral face of the row's identity and camera onto the
    reference shape."""
    from fitting.align import reference_shape, similarity_transform
    from render.camera import project

    ref = reference_shape(model.landmarks_3d(), size)
    out = []
    for i in rows:
        lm3 = model.landmarks_3d(p_id=np.asarray(truth["p_id"][i], np.float32))
        lm2 = project(lm3, np.asarray(truth["camera"][i], np.float64))
        out.append(similarity_transform(lm2, ref))
    return np.asarray(out, np.float64).reshape(-1, 2, 3)


def crop_frames(model, lrw_dir: Path, truth: dict, rows, size: int = 128) -> np.ndarray:
    """Aligned crops uint8 [len(rows), size, size, 3] of the given truth rows."""
    from fitting.align import warp_crop
    from fitting.images import load_image

    out = [warp_crop(load_image(Path(lrw_dir) / truth["key"][i]), A, size)
           for i, A in zip(rows, frame_alignments(model, truth, rows, size))]
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


@dataclass
class LrwPairs:
    """Table 3's material (shared by every evaluated network): frame pairs (a, b) of a
    sequence, their crops, b's parameters, and a's fit for the warp oracle."""

    crops_a: np.ndarray        # uint8 [P, S, S, 3]
    crops_b: np.ndarray        # uint8 [P, S, S, 3]
    p_b: np.ndarray            # float32 [P, E+S]
    fits_a: list               # evaluation.baselines.WarpFit per pair (the frame's truth)
    width: int                 # parameters per frame in truth.h5

    def __len__(self) -> int:
        return len(self.p_b)


def lrw_pairs(model, lrw_dir: Path, n_pairs: int, seed: int = 0, size: int = 128) -> LrwPairs:
    """Random ordered frame pairs of LRW-style sequences, cropped (Unavailable when none)."""
    from evaluation.baselines import WarpFit
    from evaluation.protocols import same_group_pairs

    if model is None:
        raise Unavailable("no 3DMM to align the LRW frames")
    truth = read_truth(lrw_dir)
    pairs = same_group_pairs(truth["sequence"], n_pairs, seed)
    if len(pairs) == 0:
        raise Unavailable("no LRW sequence has two frames")
    rows = np.unique(pairs)
    crops = crop_frames(model, lrw_dir, truth, rows, size)
    aligns = frame_alignments(model, truth, rows, size)
    pos = {int(r): k for k, r in enumerate(rows)}
    a = np.array([pos[int(i)] for i in pairs[:, 0]])
    b = np.array([pos[int(i)] for i in pairs[:, 1]])
    p = np.asarray(truth["p_exp"], np.float32)
    fits = [WarpFit(Path(lrw_dir) / truth["key"][i], np.asarray(truth["p_id"][i], np.float32), p[i],
                    np.asarray(truth["camera"][i], np.float32), aligns[pos[int(i)]].astype(np.float32))
            for i in pairs[:, 0]]
    return LrwPairs(crops[a], crops[b], p[pairs[:, 1]], fits, int(p.shape[1]))


def table3_ied(nets: Networks, model, lrw_dir: Path, n_pairs: int, seed: int = 0, size: int = 128,
               pairs: LrwPairs | None = None) -> dict:
    """{"lrw_ied", "lrw_ied_identity", "lrw_pairs"} or Unavailable. ``pairs``: the material of
    :func:`lrw_pairs` when already made (it is the same for every network of one crop size)."""
    from evaluation import ied

    if model is None:
        raise Unavailable("no 3DMM to align the LRW frames")
    width = pairs.width if pairs is not None else read_truth(lrw_dir)["p_exp"].shape[1]
    if nets.n_params < width or width <= model.n_exp:
        raise Unavailable(f"checkpoint has {nets.n_params} parameters; the expression + speech experiment "
                          f"needs {model.n_exp + model.n_speech} (train with train.speech=true)")
    if pairs is None:
        pairs = lrw_pairs(model, lrw_dir, n_pairs, seed, size)
    out = generate(nets, pairs.crops_a, pairs.p_b)
    target = pairs.crops_b.astype(np.float64) / 255.0
    return {"lrw_ied": float(np.mean(ied(out, target))),
            "lrw_ied_identity": float(np.mean(ied(pairs.crops_a.astype(np.float64) / 255.0, target))),
            "lrw_pairs": int(len(pairs))}
