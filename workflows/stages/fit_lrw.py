"""The ``fit-lrw`` shard stage (slidergan fit-lrw): LRW videos + LRW-3D speech -> 40-vectors.

Glue only: the loaders are :mod:`fitting.lrw`, the video fit :mod:`fitting.video` (built on
:class:`fitting.fit.LandmarkFitter`).  One input item = one video (its id
``<WORD>/<split>/<WORD>_<id>``); it yields one row per frame.  Datasets per row
(docs/speech.md):

``key`` (``<video id>#<frame>``), ``video`` (the id), ``word``, ``split`` (train | val | test),
``group`` (int64 from sha256 of the video id: every frame of a video shares it), ``identity``
(from ``--metadata``, else -1), ``label`` (-1), ``frame``, ``n_frames``, ``image`` (aligned crop
``fit.crop_size``), ``p_exp`` [E + S] (E fitted expression + the first S LRW-3D speech
parameters), ``speech_fitted`` [S] (the video fit's own speech estimate when the model has a
speech basis, else NaN; a check on the speech files), ``p_id`` (the video's), ``camera``
(smoothed), ``align``, ``lm_detected``, ``lm_fitted``, ``fit_error``, ``lm_source`` (0 sidecar,
1 detected, 2 detected and calibrated, 3 interpolated from neighbouring frames).

Crops: every frame is cropped with the similarity that maps the *neutral* face of the video's
identity under that frame's smoothed camera onto the reference shape, so the crop follows the
head and not the mouth (``align``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.cache import cached
from pipeline.stage import BadInput, ChunkResult, Stage

LANDMARK_MODES = ("sidecar", "detect", "auto")


def video_group(video_id: str) -> int:
    """Stable non-negative int64 id of a video: first 63 bits of sha256(id)."""
    return int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "big") >> 1


def read_video_metadata(path: str | os.PathLike) -> dict:
    """``{video id: identity}`` from an HDF5 with ``video`` and ``identity`` datasets (the demo
    world's ``lrw/truth.h5``); {} when it has no ``video`` column."""
    import h5py

    with h5py.File(path, "r") as f:
        if "video" not in f or "identity" not in f:
            return {}
        vids = [v.decode() if isinstance(v, bytes) else str(v) for v in f["video"][()]]
        ident = f["identity"][()].astype(np.int64)
    return {v: int(i) for v, i in zip(vids, ident)}


class FitLrwStage(Stage):
    """Fit every video; picklable (paths, the video list and options only)."""

    name = "fit-lrw"
    version = "1"
    compression = "lzf"

    def __init__(self, videos, speech, model_path: str, fit_cfg: dict, lrw_cfg: dict,
                 metadata: Optional[dict] = None, metadata_source: str = "", image_domain: str = "photo"):
        from fitting.photo import fit_settings
        from pipeline.config import schema_section
        from workflows.stages.warps import checked_model_hash

        self.videos = videos                      # fitting.lrw.LrwVideos
        self.speech = speech                      # fitting.lrw.SpeechSource
        self.model_path = os.path.abspath(model_path)
        self.fit_cfg = fit_settings(fit_cfg)
        self.cfg = {**schema_section("lrw"), **dict(lrw_cfg)}
        self.metadata = metadata or {}
        self.metadata_source = metadata_source
        self.image_domain = image_domain
        self._model_hash = checked_model_hash(self.model_path)
        from workflows.stages.calibrate import stage_calibration

        self.calibration, self.calibration_note, self._calibration_hash = stage_calibration(
            self.fit_cfg["landmark_calibration"], self.model_path, self.image_domain)

    # ------------------------------------------------------------------ Stage API
    def input_keys(self) -> list[str]:
        return list(self.videos.keys)

    def params(self) -> dict:
        fit = {k: v for k, v in sorted(self.fit_cfg.items()) if k not in ("chunk_size",)}
        lrw = {k: v for k, v in sorted(self.cfg.items()) if k not in ("chunk_size",)}
        meta = hashlib.sha256(repr(sorted(self.metadata.items())).encode()).hexdigest()[:16]
        return {"fit": fit, "lrw": lrw, "videos": os.path.abspath(self.videos.root),
                "speech": [self.speech.kind, self.speech.path, self.speech.n], "metadata": meta,
                "landmark_calibration": self._calibration_hash, "image_domain": self.image_domain}

    def model_hash(self) -> str | None:
        return self._model_hash

    def attrs(self) -> dict:
        return {"camera_layout": "pitch,yaw,roll,tx,ty,scale,dist", "videos": os.path.abspath(self.videos.root),
                "speech_source": f"{self.speech.kind}:{self.speech.path}", "n_speech": self.speech.n,
                "p_exp_layout": f"{self._n_exp()} fitted expression + {self.speech.n} LRW-3D speech",
                "metadata_source": self.metadata_source, "landmark_calibration": self.calibration or ""}

    # ------------------------------------------------------------------ helpers
    def _model(self):
        from workflows.stages.warps import load_model       # a corrupt model: ConfigError, exit 2

        return cached(("model", self.model_path, self._model_hash), lambda: load_model(self.model_path))

    def _n_exp(self) -> int:
        """The model's expression components E (read from model.h5 without loading it)."""
        import h5py

        def read():
            with h5py.File(self.model_path, "r") as f:
                return int(f["U_exp"].shape[1]), (int(f["U_speech"].shape[1]) if "U_speech" in f else 0)
        return cached(("dims", self.model_path, self._model_hash), read)[0]

    def _fit_speech(self, model) -> int:
        """Speech components fitted jointly with the expression (``lrw.fit_speech`` and a model
        with a speech basis): they keep the mouth's speech motion out of the expression."""
        return min(self.speech.n, model.n_speech) if self.cfg.get("fit_speech", True) else 0

    def _contour(self, source: int) -> str:
        c = self.fit_cfg.get("contour", "auto")
        return ("dynamic" if source == 1 else "fixed") if c == "auto" else c

    def _video_fitter(self, model, source: int):
        from fitting.fit import FitOptions
        from fitting.video import VideoFitOptions, VideoFitter

        sigma = float(self.fit_cfg["sigma"] if source == 0 else self.fit_cfg["sigma_detected"])
        n_exp = model.n_exp + self._fit_speech(model)
        fo = FitOptions.from_config(self.fit_cfg, contour=self._contour(source), sigma=sigma, n_exp=n_exp)
        vo = VideoFitOptions.from_config(self.cfg)
        return cached(("video-fitter", self._model_hash, repr(fo), repr(vo)), lambda: VideoFitter(model, fo, vo))

    def _calibration_obj(self):
        from fitting.landmarks import LandmarkCalibration

        if self.calibration is None:
            return None
        return cached(("calibration", self._calibration_hash), lambda: LandmarkCalibration.load(self.calibration))

    def _landmarks(self, path: str, frames: np.ndarray):
        """-> (lm [F,68,2], source [F] int8, valid [F] bool); raises LrwReject."""
        from fitting.landmarks import get_detector
        from fitting.lrw import LrwReject, landmarks_path, read_video_landmarks

        F = len(frames)
        mode = self.cfg.get("landmarks", "auto")
        side = landmarks_path(path)
        if mode in ("sidecar", "auto") and side.is_file():
            lm = read_video_landmarks(side, F)
            return lm, np.zeros(F, np.int8), np.ones(F, bool)
        if mode == "sidecar":
            raise LrwReject("no landmarks", f"no {side.name} beside the video (lrw.landmarks=sidecar)")
        det, cal = get_detector(), self._calibration_obj()
        lm = np.zeros((F, 68, 2))
        valid = np.zeros(F, bool)
        for f in range(F):
            p = det.detect(frames[f])
            if p is not None and np.isfinite(p).all():
                lm[f] = cal.apply(p) if cal is not None else p
                valid[f] = True
        need = float(self.cfg.get("min_face_frames", 0.5))
        if valid.mean() < need:
            raise LrwReject("no face", f"face found in {int(valid.sum())} of {F} frames "
                                       f"(lrw.min_face_frames={need:g})")
        src = np.where(valid, 2 if cal is not None else 1, 3).astype(np.int8)
        return lm, src, valid

    # ------------------------------------------------------------------ chunk
    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        import torch

        from pipeline.threads import one_blas_thread

        old = torch.get_num_threads()
        n = int(self.fit_cfg.get("threads", 1))
        if n > 0:
            torch.set_num_threads(n)
        try:
            with one_blas_thread():
                return self._process_chunk(keys)
        finally:
            torch.set_num_threads(old)

    def _process_chunk(self, keys: list[str]) -> ChunkResult:
        from fitting.lrw import LrwReject
        from fitting.photo import fit_gate

        model = self._model()
        size = int(self.fit_cfg.get("crop_size", 128))
        S = self.speech.n
        E = model.n_exp
        cols: dict[str, list] = {k: [] for k in (
            "key", "video", "word", "split", "group", "identity", "label", "frame", "n_frames", "image",
            "p_exp", "speech_fitted", "p_id", "camera", "align", "lm_detected", "lm_fitted", "fit_error",
            "lm_source")}
        rejects = []
        for vid in keys:
            try:
                rows = self._video(vid, model, size)
            except (LrwReject, BadInput) as e:  # declared input errors only; anything else fails the chunk
                rejects.append({"key": vid, "reason": e.reason, "detail": e.detail})
                continue
            why = fit_gate(float(np.mean(rows["fit_error"])), float("nan"), self.fit_cfg)
            if why:
                rejects.append({"key": vid, "reason": "fit diverged", "detail": f"mean over frames: {why}"})
                continue
            for name, vals in rows.items():
                cols[name].extend(vals)
        n_id = min(int(self.fit_cfg.get("n_id") or model.n_id), model.n_id)
        shapes = {"group": ((), np.int64), "identity": ((), np.int64), "label": ((), np.int64),
                  "frame": ((), np.int16), "n_frames": ((), np.int16), "image": ((size, size, 3), np.uint8),
                  "p_exp": ((E + S,), np.float32), "speech_fitted": ((S,), np.float32),
                  "p_id": ((n_id,), np.float32), "camera": ((7,), np.float32), "align": ((2, 3), np.float32),
                  "lm_detected": ((68, 2), np.float32), "lm_fitted": ((68, 2), np.float32),
                  "fit_error": ((), np.float32), "lm_source": ((), np.int8)}
        out = {k: list(cols[k]) for k in ("key", "video", "word", "split")}
        for name, (shp, dt) in shapes.items():
            out[name] = np.stack([np.asarray(v, dt) for v in cols[name]]) if cols[name] else np.zeros((0,) + shp, dt)
        rejects.sort(key=lambda r: r["key"])
        return ChunkResult(rows=out, rejects=rejects)

    def _video(self, vid: str, model, size: int) -> dict:
        """Every frame's row of one video (raises LrwReject)."""
        from fitting.align import reference_shape, similarity_transform, warp_crop
        from fitting.lrw import LrwReject, read_video
        from render.camera import project

        path = self.videos.paths[vid]
        frames = read_video(path)
        F = len(frames)
        speech = self.speech.get(vid, F)
        lm, src, valid = self._landmarks(path, frames)
        fitter = self._video_fitter(model, int(src[valid].max()))       # 0 sidecar, 1 raw, 2 calibrated
        try:
            res = fitter.fit(lm, valid)
        except ValueError as e:
            raise LrwReject("fit diverged", str(e)) from None
        if not (np.isfinite(res.p_exp).all() and np.isfinite(res.camera).all()):
            raise LrwReject("fit diverged", "non-finite parameters")
        E, S = model.n_exp, self.speech.n
        ks = res.p_exp.shape[1] - E
        sp_fit = np.full((F, S), np.nan, np.float32)
        sp_fit[:, :ks] = res.p_exp[:, E:E + ks]
        ref = reference_shape(model.mean_shape[model.landmarks], size)
        neutral = project(model.landmarks_3d(res.p_id), res.camera.astype(np.float64))   # [F, 68, 2]
        word, split = self.videos.word[vid], self.videos.split[vid]
        ident = int(self.metadata.get(vid, -1))
        g = video_group(vid)
        rows: dict[str, list] = {k: [] for k in (
            "key", "video", "word", "split", "group", "identity", "label", "frame", "n_frames", "image",
            "p_exp", "speech_fitted", "p_id", "camera", "align", "lm_detected", "lm_fitted", "fit_error",
            "lm_source")}
        for f in range(F):
            A = similarity_transform(neutral[f], ref)
            rows["key"].append(f"{vid}#{f:03d}")
            rows["video"].append(vid)
            rows["word"].append(word)
            rows["split"].append(split)
            rows["group"].append(g)
            rows["identity"].append(ident)
            rows["label"].append(-1)
            rows["frame"].append(f)
            rows["n_frames"].append(F)
            rows["image"].append(warp_crop(frames[f], A, size))
            rows["p_exp"].append(np.concatenate([res.p_exp[f, :E], speech[f]]))
            rows["speech_fitted"].append(sp_fit[f])
            rows["p_id"].append(res.p_id)
            rows["camera"].append(res.camera[f])
            rows["align"].append(A.astype(np.float32))
            rows["lm_detected"].append(lm[f].astype(np.float32))
            rows["lm_fitted"].append(res.lm_fitted[f])
            rows["fit_error"].append(res.fit_error[f])
            rows["lm_source"].append(src[f])
        return rows


def build_stage(videos: str, speech: str, model: str, fit_cfg: dict, lrw_cfg: dict,
                metadata: Optional[str] = None) -> FitLrwStage:
    """Validate the inputs and options and build the stage (raises ConfigError)."""
    from fitting.lrw import LrwInputError, SpeechSource, scan_videos
    from fitting.photo import fit_settings, image_domain, load_calibration, validate
    from pipeline.config import ConfigError, schema_section

    fit_cfg = fit_settings(fit_cfg)
    validate(fit_cfg)
    lrw_cfg = {**schema_section("lrw"), **dict(lrw_cfg)}

    if lrw_cfg.get("landmarks", "auto") not in LANDMARK_MODES:
        raise ConfigError(f"lrw.landmarks must be one of {', '.join(LANDMARK_MODES)}, got {lrw_cfg.get('landmarks')!r}")
    if int(lrw_cfg.get("speech_components", 10)) < 1:
        raise ConfigError("lrw.speech_components must be >= 1")
    for k in ("smooth_camera", "smooth_exp"):
        if float(lrw_cfg.get(k, 0.0)) < 0:
            raise ConfigError(f"lrw.{k} must be >= 0")
    if not 0.0 <= float(lrw_cfg.get("min_face_frames", 0.5)) <= 1.0:
        raise ConfigError("lrw.min_face_frames must be in [0, 1]")
    if not Path(model).is_file():
        raise ConfigError(f"model file not found: {model}")
    try:
        vids = scan_videos(videos)
        sp = SpeechSource(speech, int(lrw_cfg.get("speech_components", 10)))
    except LrwInputError as e:
        raise ConfigError(str(e)) from None
    meta, source = {}, ""
    mpath = metadata
    if mpath is None:
        for cand in (Path(vids.root) / "truth.h5", Path(vids.root).parent / "truth.h5"):
            if cand.is_file():
                mpath = str(cand)
                break
    if mpath:
        if not Path(mpath).is_file():
            raise ConfigError(f"metadata file not found: {mpath}")
        try:
            meta = read_video_metadata(mpath)
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(f"cannot read metadata {mpath}: {e}") from None
        source = os.path.abspath(mpath) if meta else ""
    domain = image_domain(fit_cfg["image_domain"], mpath or vids.root)
    load_calibration(fit_cfg["landmark_calibration"], model, domain)          # refuse a bad file now
    try:
        return FitLrwStage(vids, sp, model, fit_cfg, lrw_cfg, meta, source, domain)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read model {model}: {e}") from None
