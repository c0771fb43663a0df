"""Table 3: expression + speech transfer within LRW videos, from the pipeline's own outputs.

Material: the held-out (``split == "test"``) rows of the ``fit-lrw`` stage (``RUN/lrw-fits``,
docs/speech.md): per frame the aligned crop ``image``, the 40-vector ``p_exp`` (30 fitted
expression + 10 LRW-3D speech), the video's ``p_id``, the smoothed ``camera`` and ``align``
(frame pixels -> crop pixels). For random ordered frame pairs (a, b) of one video,
G(crop_a, p_b) is compared with crop_b, aligned to the output, by IED.

**Aligning b to the output.** G keeps the geometry of its input, so the output sits where
frame a's head sits in crop a. The stage already crops every frame with the similarity that
puts the *neutral* face of the video's identity under the frame's camera onto the reference
shape, so in both crops the head (not the mouth) is at the same place. What is left is the
similarity :func:`target_alignment`: the least-squares similarity from b's neutral-face
landmarks in b's crop to a's in a's crop (the 68 landmarks of ``p_exp = 0``: the expression
and speech landmarks would pull the fit towards the edit being measured). It is the identity
when the two cameras agree (the demo's fixed cameras: then crop_b is used unchanged, no
resampling) and absorbs what a 2D similarity can of a head that moved (an in-plane roll and
translation are already normalised by the crops; yaw/pitch changes leave a small
residual no 2D map removes). A crop whose ``align`` was not made on the neutral face (another
pipeline's crops) is brought back by the same map (tests/evaluation/test_eval_lrw.py).

Baselines: ``copy-input`` (crop_a itself) and ``oracle-3d`` (frame a's 3D fit from the stage,
p_exp = its 30 fitted + 10 speech parameters, re-rendered with p_b and pasted over the
inpainted frame: the warps of the training data, made from the decoded video frame).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.data import Unavailable
from evaluation.networks import Networks, generate

STAGE = "lrw-fits"
SPLIT = "test"
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _str(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], object)


@dataclass
class LrwSet:
    """The held-out rows of a fit-lrw stage (row order of the stage)."""

    dir: Path
    shards: object                 # pipeline.shards.ShardSet
    rows: np.ndarray               # int64 [N] stage rows with split == test
    video: np.ndarray              # str [N]
    frame: np.ndarray              # int64 [N]
    p_exp: np.ndarray              # float32 [N, E+S]
    p_id: np.ndarray               # float32 [N, K]
    camera: np.ndarray             # float32 [N, 7]
    align: np.ndarray              # float64 [N, 2, 3]
    videos_root: Path | None       # where the stage read its videos (the oracle decodes frame a)

    def crops(self, idx) -> np.ndarray:
        """uint8 [len(idx), S, S, 3] crops of positions ``idx`` (into ``rows``)."""
        return np.stack([self.shards.read("image", int(self.rows[i])) for i in idx])


def load_lrw(stage_dir: Path, split: str = SPLIT) -> LrwSet:
    """Open ``RUN/lrw-fits`` and take its ``split`` rows (Unavailable when it cannot serve Table 3)."""
    from pipeline.shards import ShardSet

    stage_dir = Path(stage_dir)
    if not (stage_dir / "_stage.json").is_file():
        raise Unavailable(f"no fit-lrw stage at {stage_dir} (run slidergan fit-lrw)")
    ds = ShardSet(stage_dir)
    need = ("image", "p_exp", "video", "split", "p_id", "camera", "align")
    miss = [k for k in need if k not in ds.datasets]
    if miss:
        raise Unavailable(f"{stage_dir} lacks {', '.join(miss)}")
    if len(ds) == 0:
        raise Unavailable(f"{stage_dir} has no rows")
    rows = np.nonzero(_str(ds.read("split")) == split)[0].astype(np.int64)
    if len(rows) == 0:
        raise Unavailable(f"{stage_dir} has no {split}-split videos")
    root = (ds.attrs or {}).get("videos")
    frame = ds.read("frame")[rows].astype(np.int64) if "frame" in ds.datasets else np.zeros(len(rows), np.int64)
    return LrwSet(stage_dir, ds, rows, _str(ds.read("video"))[rows], frame,
                  np.asarray(ds.read("p_exp"), np.float32)[rows], np.asarray(ds.read("p_id"), np.float32)[rows],
                  np.asarray(ds.read("camera"), np.float32)[rows],
                  np.asarray(ds.read("align"), np.float64)[rows].reshape(-1, 2, 3),
                  Path(root) if root else None)


def neutral_landmarks_in_crop(model, p_id, camera, align) -> np.ndarray:
    """[68, 2] crop pixels of the neutral face (p_exp = 0) of ``p_id`` under ``camera``."""
    from fitting.align import apply_affine
    from render.camera import project

    lm3 = model.landmarks_3d(p_id=np.asarray(p_id, np.float32))
    return apply_affine(align, project(lm3, np.asarray(camera, np.float64)))


def target_alignment(model, lrw: LrwSet, a: int, b: int) -> np.ndarray:
    """[2, 3] similarity taking crop b's pixels to crop a's: the least-squares fit of b's
    neutral-face landmarks (in crop b) onto a's (in crop a)."""
    from fitting.align import similarity_transform

    la = neutral_landmarks_in_crop(model, lrw.p_id[a], lrw.camera[a], lrw.align[a])
    lb = neutral_landmarks_in_crop(model, lrw.p_id[b], lrw.camera[b], lrw.align[b])
    return similarity_transform(lb, la)


def align_target(crop_b: np.ndarray, M: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """crop_b [S,S,3] uint8 resampled into crop a's frame (``M``: b pixels -> a pixels; bilinear,
    black outside). Within ``tol`` pixels of the identity over the crop, crop_b itself."""
    from fitting.align import warp_crop

    S = crop_b.shape[0]
    corners = np.array([[0, 0, 1], [S, 0, 1], [0, S, 1], [S, S, 1]], np.float64)
    if np.abs(corners @ (np.asarray(M, np.float64) - IDENTITY).T).max() <= tol:
        return crop_b
    return warp_crop(crop_b, M, S)


def align_target_slow(crop_b: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Reference of :func:`align_target` (no identity shortcut): for every output pixel centre,
    its preimage under M sampled bilinearly (corner-origin pixels; outside -> 0), in a
    Python loop. For tests."""
    from fitting.align import invert_affine

    S = crop_b.shape[0]
    inv = invert_affine(M)
    src = crop_b.astype(np.float64)
    out = np.zeros_like(src)
    for i in range(S):
        for j in range(S):
            x, y = inv @ np.array([j + 0.5, i + 0.5, 1.0])
            x, y = x - 0.5, y - 0.5                       # pixel-centre coordinates
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            acc = np.zeros(3)
            for yy, xx, w in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                              (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
                if 0 <= yy < S and 0 <= xx < S:
                    acc += w * src[yy, xx]
            out[i, j] = acc
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass
class LrwPairs:
    """Table 3's material (shared by every evaluated network): frame pairs (a, b) of one
    held-out video, crop a, crop b aligned to a, b's 40-vector, a's fit for the warp oracle,
    and the Fig. 14 material (one input frame, target frames of its video)."""

    crops_a: np.ndarray        # uint8 [P, S, S, 3]
    crops_b: np.ndarray        # uint8 [P, S, S, 3] (aligned to crop a)
    p_b: np.ndarray            # float32 [P, E+S]
    p_a: np.ndarray            # float32 [P, E+S] (the input frames' own, for a generator conditioned on the change)
    fits_a: list | None        # evaluation.baselines.WarpFit per pair, or None (then oracle_reason)
    width: int                 # parameters per frame in the stage
    videos: np.ndarray = field(default_factory=lambda: np.zeros(0, object))   # str [P]
    moved: int = 0             # pairs whose alignment was not the identity
    oracle_reason: str | None = None
    fig_input: np.ndarray | None = None     # uint8 [S, S, 3]
    fig_targets: np.ndarray | None = None   # uint8 [T, S, S, 3] (aligned to the input)
    fig_p: np.ndarray | None = None         # float32 [T, E+S]
    fig_p_input: np.ndarray | None = None   # float32 [E+S] (the input frame's)
    fig_video: str = ""

    def __len__(self) -> int:
        return len(self.p_b)


def _frames_of(lrw: LrwSet, vid: str) -> np.ndarray | None:
    """Decoded frames of a video (for the oracle), or None when its file is not there."""
    if lrw.videos_root is None:
        return None
    path = lrw.videos_root / f"{vid}.mp4"
    if not path.is_file():
        return None
    from fitting.lrw import LrwReject, read_video

    try:
        return read_video(path)
    except LrwReject:
        return None


def lrw_pairs(model, stage_dir: Path, n_pairs: int, seed: int = 0, size: int | None = None,
              fig_frames: int = 6) -> LrwPairs:
    """Random ordered frame pairs of the held-out videos (Unavailable when none). ``size`` is
    ignored (the crops stay at the stage's crop size; :func:`evaluation.networks.generate`
    resizes for G), kept so callers can key material by the network's size."""
    from evaluation.baselines import WarpFit
    from evaluation.protocols import same_group_pairs

    if model is None:
        raise Unavailable("no 3DMM to align the LRW frames")
    lrw = load_lrw(stage_dir)
    vids = lrw.video
    codes = np.unique(vids, return_inverse=True)[1]
    pairs = same_group_pairs(codes, n_pairs, seed)
    if len(pairs) == 0:
        raise Unavailable(f"no held-out LRW video in {stage_dir} has two frames")
    used = np.unique(pairs)
    crops = dict(zip(used.tolist(), lrw.crops(used)))
    cb, moved = [], 0
    for a, b in pairs:
        M = target_alignment(model, lrw, int(a), int(b))
        out = align_target(crops[int(b)], M)
        moved += out is not crops[int(b)]
        cb.append(out)
    fits, reason, frames = [], None, {}
    for a in pairs[:, 0]:
        v = str(vids[a])
        if v not in frames:
            frames[v] = _frames_of(lrw, v)
        fr = frames[v]
        if fr is None or lrw.frame[a] >= len(fr):
            reason = f"oracle-3d: the video {v}.mp4 is not readable under {lrw.videos_root} (the stage's videos)"
            fits = None
            break
        fits.append(WarpFit(fr[lrw.frame[a]], lrw.p_id[a], lrw.p_exp[a], lrw.camera[a],
                            lrw.align[a].astype(np.float32)))
    res = LrwPairs(np.stack([crops[int(a)] for a in pairs[:, 0]]), np.stack(cb), lrw.p_exp[pairs[:, 1]],
                   lrw.p_exp[pairs[:, 0]], fits, int(lrw.p_exp.shape[1]), vids[pairs[:, 0]], int(moved), reason)
    # Fig. 14: the first held-out video (sorted ids): its first frame edited to its other frames
    first = sorted(set(vids.tolist()))[0]
    idx = np.nonzero(vids == first)[0]
    idx = idx[np.argsort(lrw.frame[idx], kind="stable")]
    if len(idx) >= 2 and fig_frames > 0:
        src = int(idx[0])
        tg = idx[1:][np.unique(np.linspace(0, len(idx) - 2, min(fig_frames, len(idx) - 1)).round().astype(int))]
        c = lrw.crops(np.concatenate([[src], tg]))
        res.fig_input = c[0]
        res.fig_targets = np.stack([align_target(c[k + 1], target_alignment(model, lrw, src, int(t)))
                                    for k, t in enumerate(tg)])
        res.fig_p = lrw.p_exp[tg]
        res.fig_p_input = lrw.p_exp[src]
        res.fig_video = first
    return res


def check_width(nets: Networks, model, width: int) -> None:
    """Unavailable unless ``nets`` takes the stage's expression + speech parameters."""
    if nets.n_params < width or width <= model.n_exp:
        raise Unavailable(f"checkpoint has {nets.n_params} parameters; the expression + speech experiment "
                          f"needs {model.n_exp + model.n_speech} (train with train.speech=true)")


def stage_width(stage_dir: Path) -> int:
    from pipeline.shards import ShardSet

    if not (Path(stage_dir) / "_stage.json").is_file():
        raise Unavailable(f"no fit-lrw stage at {stage_dir} (run slidergan fit-lrw)")
    ds = ShardSet(stage_dir)
    if "p_exp" not in ds.datasets:
        raise Unavailable(f"{stage_dir} lacks p_exp")
    return int(ds.datasets["p_exp"][1][1])


def table3_ied(nets: Networks, model, stage_dir: Path, n_pairs: int, seed: int = 0, size: int = 128,
               pairs: LrwPairs | None = None) -> dict:
    """{"lrw_ied", "lrw_ied_identity", "lrw_pairs"} or Unavailable. ``pairs``: the material of
    :func:`lrw_pairs` when already made (it is the same for every network)."""
    from evaluation import ied

    if model is None:
        raise Unavailable("no 3DMM to align the LRW frames")
    check_width(nets, model, pairs.width if pairs is not None else stage_width(stage_dir))
    if pairs is None:
        pairs = lrw_pairs(model, stage_dir, n_pairs, seed, size)
    out = generate(nets, pairs.crops_a, pairs.p_b, pairs.p_a)
    target = pairs.crops_b.astype(np.float64) / 255.0
    return {"lrw_ied": float(np.mean(ied(out, target))),
            "lrw_ied_identity": float(np.mean(ied(pairs.crops_a.astype(np.float64) / 255.0, target))),
            "lrw_pairs": int(len(pairs))}


def speech_transfer_figure(nets: Networks, pairs: LrwPairs):
    """Fig. 14 style: target frames of one held-out video (top), G(input frame, p_target)
    (bottom), the input frame on the left -> PIL.Image."""
    from evaluation.figures import compose_grid

    if pairs.fig_input is None:
        raise Unavailable("no held-out LRW video with two frames")
    out = generate(nets, np.repeat(pairs.fig_input[None], len(pairs.fig_p), 0), pairs.fig_p,
                   np.repeat(pairs.fig_p_input[None], len(pairs.fig_p), 0))
    rows = [[pairs.fig_input, *pairs.fig_targets], [None, *out]]
    return compose_grid(rows, row_labels=["target frames", "G(input, p_target)"],
                        col_labels=["input"] + [f"target {k + 1}" for k in range(len(pairs.fig_p))],
                        title=f"expression + speech transfer within {pairs.fig_video} (held out)")
