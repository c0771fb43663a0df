"""The ``fit`` shard stage (slidergan fit-emotionet): load, landmark, fit, align each photo.

Glue only; the algorithms live in ``fitting/`` (images, inputs, landmarks, fit, align, itw).
Datasets per row: key group identity label image p_exp p_id camera lm_detected (the landmarks
the fit used) lm_raw (as read or detected, before the landmark calibration) lm_fitted align
fit_error fit_residual (photometric refinement's median colour residual, NaN where none ran)
lm_source (0 sidecar, 1 detected, 2 detected and calibrated) (+ au [60] for EmotioNet lists).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.stage import ChunkResult, Stage

LANDMARK_MODES = ("sidecar", "detect", "auto")
FITTERS = ("landmarks", "itw")
_CACHE: dict = {}


def key_group(key: str) -> int:
    """Stable non-negative int64 id of a photo: first 63 bits of sha256(key)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 1


def read_metadata(path: str | os.PathLike) -> dict:
    """``{key: (identity, label)}`` from an HDF5 file with ``key`` and ``identity``/``label``
    datasets (e.g. the demo world's ``emotionet/truth.h5``)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        if "key" not in f:
            return out
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][()]]
        n = len(keys)
        ident = f["identity"][()].astype(np.int64) if "identity" in f else np.full(n, -1, np.int64)
        label = f["label"][()].astype(np.int64) if "label" in f else np.full(n, -1, np.int64)
    for k, i, l in zip(keys, ident, label):
        out[k] = (int(i), int(l))
    return out


def _model_hash(path: str) -> str:
    from fitting.model import read_model_hash

    return read_model_hash(path)


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


class FitStage(Stage):
    """Fit every input photo; picklable (paths, inputs and options only)."""

    name = "fit"
    version = "5"            # 5: landmark calibration of detections, lm_raw (4: pose search, fit_residual)
    compression = "lzf"

    def __init__(self, inputs, model_path: str, fit_cfg: dict, metadata: Optional[dict] = None,
                 metadata_source: str = "", seed: int = 0):
        self.inputs = inputs
        self.model_path = str(model_path)
        self.cfg = dict(fit_cfg)
        self.metadata = metadata or {}
        self.metadata_source = metadata_source
        self.seed = int(seed)
        self._model_hash = _model_hash(self.model_path)
        self.calibration = resolve_calibration(self.cfg.get("landmark_calibration", "auto"), self.model_path)
        self._calibration_hash = None
        if self.calibration is not None:
            from workflows.stages.calibrate import file_sha256

            self._calibration_hash = file_sha256(self.calibration)

    # ------------------------------------------------------------------ Stage API
    def input_keys(self) -> list[str]:
        return list(self.inputs.keys)

    def params(self) -> dict:
        cfg = {k: v for k, v in self.cfg.items() if k not in ("chunk_size",)}
        meta = hashlib.sha256(repr(sorted(self.metadata.items())).encode()).hexdigest()[:16]
        return {"fit": cfg, "root": os.path.abspath(self.inputs.root), "metadata": meta,
                "has_au": self.inputs.au is not None, "landmark_calibration": self._calibration_hash}

    def model_hash(self) -> str | None:
        return self._model_hash

    def attrs(self) -> dict:
        return {"camera_layout": "pitch,yaw,roll,tx,ty,scale,dist", "fitter": str(self.cfg.get("fitter")),
                "metadata_source": self.metadata_source}

    # ------------------------------------------------------------------ helpers
    def _model(self):
        from fitting.model import MorphableModel

        return _cached(("model", self.model_path, self._model_hash), lambda: MorphableModel.load(self.model_path))

    def _calibration(self):
        """The per-process cached :class:`fitting.landmarks.LandmarkCalibration`, or None."""
        from fitting.landmarks import LandmarkCalibration

        if self.calibration is None:
            return None
        return _cached(("calibration", self._calibration_hash), lambda: LandmarkCalibration.load(self.calibration))

    def _fitter(self, model, source: int = 0):
        """The per-process cached landmark fitter for landmarks from ``source`` (0 sidecar,
        1 detected, 2 detected and calibrated): ``fit.contour=auto`` is fixed for sidecars and
        calibrated detections (both are the model's landmark vertices) and dynamic for raw
        detections; detections use the noise level ``fit.sigma_detected`` instead of ``fit.sigma``."""
        from fitting.fit import FitOptions, LandmarkFitter

        c = self._contour(source)
        sigma = float(self.cfg.get("sigma", 0.005) if source == 0 else self.cfg.get("sigma_detected", 0.1))
        opts = FitOptions.from_config(self.cfg, contour=c, sigma=sigma)
        return _cached(("fitter", self._model_hash, repr(opts)), lambda: LandmarkFitter(model, opts))

    def _contour(self, source: int) -> str:
        """``fit.contour`` for landmarks from ``source``: ``auto`` is fixed for sidecars (0)
        and calibrated detections (2), dynamic for raw detections (1)."""
        c = self.cfg.get("contour", "auto")
        return ("dynamic" if source == 1 else "fixed") if c == "auto" else c

    def _landmarks(self, key: str, path: str, rgb: np.ndarray):
        """-> (lm [68,2], source, raw [68,2]): source 0 sidecar, 1 detected, 2 detected and
        calibrated (``lm`` corrected by the landmark calibration, ``raw`` dlib's points);
        raises Reject."""
        from fitting.landmarks import LandmarkFileError, get_detector, read_sidecar, sidecar_path
        from pipeline.stage import Reject

        mode = self.cfg.get("landmarks", "auto")
        side = sidecar_path(path) if mode in ("sidecar", "auto") else None
        if side is not None:
            try:
                lm = read_sidecar(side)
                return lm, 0, lm
            except LandmarkFileError as e:
                if mode == "sidecar":
                    raise Reject("bad landmarks", str(e)) from None
        elif mode == "sidecar":
            raise Reject("no landmarks", "no .pts/.ljson sidecar beside the image (fit.landmarks=sidecar)")
        lm = get_detector().detect(rgb)
        if lm is None:
            raise Reject("no face", "no face detected")
        cal = self._calibration()
        if cal is None:
            return lm, 1, lm
        return cal.apply(lm), 2, lm

    # ------------------------------------------------------------------ chunk
    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        from fitting.align import reference_shape, similarity_transform, warp_crop
        from fitting.fit import interocular
        from fitting.images import ImageReject, load_image
        from fitting.inputs import N_AU, label_from_au
        from pipeline.stage import Reject

        cfg = self.cfg
        model = self._model()
        size = int(cfg.get("crop_size", 128))
        max_pixels = int(cfg.get("max_pixels", 64_000_000))
        min_face = float(cfg.get("min_face_px", 40))
        ref = reference_shape(model.mean_shape[model.landmarks], size)
        itw = cfg.get("fitter", "landmarks") == "itw"             # ITW fits the full photo
        photo = str(cfg.get("photometric", "none"))                # ... and so does the refinement
        rejects, items = [], []
        for key in keys:
            path = self.inputs.paths[key]
            try:
                try:
                    rgb = load_image(path, max_pixels=max_pixels, min_side=16)
                except ImageReject as e:
                    raise Reject(e.reason, e.detail) from None
                lm, src, raw = self._landmarks(key, path, rgb)
                if not np.all(np.isfinite(lm)):
                    raise Reject("bad landmarks", "non-finite coordinates")
                face = 2.5 * float(interocular(lm))
                if face < min_face:
                    raise Reject("too small", f"face {face:.0f} px < fit.min_face_px={min_face:g}")
                A = similarity_transform(lm, ref)                   # crop now: keep no full photo
                crop = warp_crop(rgb, A, size)
                keep = itw or photo == "all" or (photo == "detected" and src >= 1)
                items.append((key, rgb if keep else None, lm, src, A, crop, raw))
            except Reject as e:
                rejects.append({"key": key, "reason": e.reason, "detail": e.detail})
            except Exception as e:  # noqa: BLE001 — a bad input is a reject, never a crash
                rejects.append({"key": key, "reason": "error", "detail": f"{e.__class__.__name__}: {e}".splitlines()[0]})

        fits = self._fit([it[2] for it in items], [it[1] for it in items], model,
                         np.array([it[3] for it in items], np.int64))
        resid = fits.residual if fits.residual is not None else np.full(len(items), np.nan, np.float32)
        cols = {k: [] for k in ("key", "group", "identity", "label", "image", "p_exp", "p_id", "camera",
                                "lm_detected", "lm_raw", "lm_fitted", "align", "fit_error", "fit_residual",
                                "lm_source")}
        if self.inputs.au is not None:
            cols["au"] = []
        for i, (key, _, lm, src, A, crop, raw) in enumerate(items):
            err = float(fits.fit_error[i])
            why = fit_gate(err, float(resid[i]), cfg) if fits.converged[i] else "did not converge"
            if why:
                rejects.append({"key": key, "reason": "fit diverged", "detail": why})
                continue
            ident, label = self.metadata.get(key, (-1, -1))
            au = None
            if self.inputs.au is not None:
                au = self.inputs.au.get(key, np.full(N_AU, np.nan, np.float32))
                if label < 0:
                    label = label_from_au(au)
                cols["au"].append(np.asarray(au, np.float32))
            cols["key"].append(key)
            cols["group"].append(key_group(key))
            cols["identity"].append(ident)
            cols["label"].append(label)
            cols["image"].append(crop)
            cols["p_exp"].append(fits.p_exp[i])
            cols["p_id"].append(fits.p_id[i])
            cols["camera"].append(fits.camera[i])
            cols["lm_detected"].append(lm.astype(np.float32))
            cols["lm_raw"].append(raw.astype(np.float32))
            cols["lm_fitted"].append(fits.lm_fitted[i])
            cols["align"].append(A.astype(np.float32))
            cols["fit_error"].append(np.float32(err))
            cols["fit_residual"].append(np.float32(resid[i]))
            cols["lm_source"].append(src)
        n_id, n_exp = fits.p_id.shape[1], fits.p_exp.shape[1]
        shapes = {"group": ((), np.int64), "identity": ((), np.int64), "label": ((), np.int64),
                  "image": ((size, size, 3), np.uint8), "p_exp": ((n_exp,), np.float32),
                  "p_id": ((n_id,), np.float32), "camera": ((7,), np.float32),
                  "lm_detected": ((68, 2), np.float32), "lm_raw": ((68, 2), np.float32),
                  "lm_fitted": ((68, 2), np.float32),
                  "align": ((2, 3), np.float32), "fit_error": ((), np.float32), "fit_residual": ((), np.float32),
                  "lm_source": ((), np.int8),
                  "au": ((N_AU,), np.float32)}
        rows = {}
        for name, vals in cols.items():
            if name == "key":
                rows[name] = list(vals)
                continue
            shp, dt = shapes[name]
            rows[name] = (np.stack([np.asarray(v, dt) for v in vals]) if vals
                          else np.zeros((0,) + shp, dt))
        rejects.sort(key=lambda r: r["key"])
        return ChunkResult(rows=rows, rejects=rejects)

    def _fit(self, lms, rgbs, model, sources):
        """Fit all faces of a chunk at once, with ``fit.threads`` torch threads -> FitResult."""
        import torch

        old = torch.get_num_threads()
        n = int(self.cfg.get("threads", 1))
        if n > 0:
            torch.set_num_threads(n)
        try:
            return self._fit_batch(lms, rgbs, model, sources)
        finally:
            torch.set_num_threads(old)

    def _fit_batch(self, lms, rgbs, model, sources):
        """Sidecar (source 0) and detected (source 1) landmarks are fitted as two batches
        with their own options (see :meth:`_fitter`)."""
        from fitting.fit import FitResult

        lm = np.stack(lms) if lms else np.zeros((0, 68, 2))
        if self.cfg.get("fitter", "landmarks") == "itw":
            from fitting.itw import ITWFitter

            fitter = _cached(("itw", self._model_hash, repr(sorted(self.cfg.items()))),
                             lambda: ITWFitter(model, self.cfg, landmark_fitter=self._fitter(model, 0)))
            return fitter.fit(rgbs, lm)
        if len(lm) == 0:
            return self._fitter(model).fit(lm)
        parts = {}
        for src in (0, 1, 2):
            idx = np.flatnonzero(sources == src)
            if len(idx):
                parts[src] = (idx, self._fitter(model, src).fit(lm[idx]))
        first = next(iter(parts.values()))[1]
        out = {}
        for name in ("p_id", "p_exp", "camera", "lm_fitted", "fit_error", "converged"):
            ref = getattr(first, name)
            arr = np.zeros((len(lm),) + ref.shape[1:], ref.dtype)
            for idx, res in parts.values():
                arr[idx] = getattr(res, name)
            out[name] = arr
        res = FitResult(**out, residual=np.full(len(lm), np.nan, np.float32))
        self._refine(res, lm, rgbs, model, sources)
        return res

    def _refine(self, res, lm, rgbs, model, sources) -> None:
        """``fit.photometric`` (none | detected | all): refine the chosen faces' landmark fits
        against their photos (:mod:`fitting.photometric`), in place (``res.residual``: the
        refinement's median colour residual, NaN where none ran).  Jaw points follow
        ``fit.contour`` (auto: dynamic for raw detections).  A refinement that fails or ends
        non-finite keeps the landmark fit; a model without texture skips the step.
        (``fit.fitter=itw`` is photometric already and returns before this.)"""
        from fitting.fit import landmark_error
        from fitting.photometric import PhotometricOptions, PhotometricRefiner

        mode = str(self.cfg.get("photometric", "none"))
        opts = PhotometricOptions.from_config(self.cfg)
        if mode == "none" or int(opts.iterations) <= 0 or model.U_tex is None or model.texture_mean is None:
            return                                                  # no texture model: landmark fits only
        todo = [i for i in range(len(lm)) if rgbs[i] is not None and res.converged[i]
                and (mode == "all" or sources[i] >= 1)]
        if not todo:
            return
        ref = _cached(("photometric", self._model_hash, repr(opts)), lambda: PhotometricRefiner(model, opts))
        for i in todo:
            try:
                p_id, p_exp, cam, info = ref.refine(rgbs[i], lm[i], res.p_id[i], res.p_exp[i], res.camera[i],
                                                    contour=self._contour(sources[i]))
            except (ValueError, RuntimeError):                      # e.g. a singular system: keep the landmark fit
                continue
            fitted = info["lm_fitted"]
            if not all(np.isfinite(a).all() for a in (p_id, p_exp, cam, fitted)):
                continue
            res.p_id[i], res.p_exp[i], res.camera[i] = p_id, p_exp, cam
            res.lm_fitted[i] = fitted
            res.residual[i] = info["residual"]
            res.fit_error[i] = landmark_error(fitted, lm[i])


def fit_gate(fit_error: float, residual: float, cfg: dict) -> Optional[str]:
    """Why a fit is rejected as diverged, or None to keep it.  A landmark-only fit
    (``residual`` NaN) is judged by its landmark error (``fit.max_fit_error``).  A fit refined
    against the photo, with ``fit.max_photometric_residual`` on, is judged by how well it
    explains the photo; its landmark error only has to stay under the looser
    ``fit.max_fit_error_refined``, since detected landmarks are themselves off (0.17 of the
    inter-ocular distance on the demo renders, 0.09 after the landmark calibration) and the
    refinement rightly moves off them."""
    max_res = float(cfg.get("max_photometric_residual", 0.0))
    refined = max_res > 0 and np.isfinite(residual)
    key = "max_fit_error_refined" if refined else "max_fit_error"
    max_err = float(cfg.get(key, 0.5 if refined else 0.25))
    if not np.isfinite(fit_error) or fit_error > max_err:
        return f"landmark error {fit_error:.3f} x inter-ocular > fit.{key}={max_err:g}"
    if refined and residual > max_res:
        return f"photometric residual {residual:.4f} > fit.max_photometric_residual={max_res:g}"
    return None


def resolve_calibration(value, model_path: str) -> Optional[str]:
    """``fit.landmark_calibration`` -> the calibration file to use, or None: ``auto`` is the
    model's ``<stem>.lmcal.npz`` when it exists, ``none`` is none, anything else a path that
    must exist (ConfigError)."""
    from pipeline.config import ConfigError
    from workflows.stages.calibrate import calibration_path

    v = str(value if value is not None else "none").strip()
    if v in ("none", ""):
        return None
    if v == "auto":
        p = calibration_path(model_path)
        return os.path.abspath(p) if p.is_file() else None
    if not Path(v).is_file():
        raise ConfigError(f"fit.landmark_calibration file not found: {v}")
    return os.path.abspath(v)


def load_calibration(value, model_path: str):
    """The :class:`fitting.landmarks.LandmarkCalibration` that ``fit.landmark_calibration``
    names for ``model_path`` (see :func:`resolve_calibration`), or None.  An unreadable file,
    or one learned for another model (its ``meta.model_hash``), is a one-line ConfigError."""
    from fitting.landmarks import CalibrationError, LandmarkCalibration
    from pipeline.config import ConfigError

    path = resolve_calibration(value, model_path)
    if path is None:
        return None
    try:
        cal = LandmarkCalibration.load(path)
    except CalibrationError as e:
        raise ConfigError(f"fit.landmark_calibration: {e}") from None
    learned_for = cal.meta.get("model_hash")
    if learned_for and Path(model_path).is_file() and learned_for != _model_hash(model_path):
        raise ConfigError(f"fit.landmark_calibration: {path} was learned for another model "
                          f"(re-run slidergan calibrate-landmarks --model {model_path})")
    return cal


def build_stage(images: str, model: str, fit_cfg: dict, root: Optional[str] = None,
                metadata: Optional[str] = None, seed: int = 0) -> FitStage:
    """Validate the inputs and options and build the stage (raises ConfigError)."""
    from fitting.inputs import InputError, collect_inputs
    from pipeline.config import ConfigError

    if fit_cfg.get("landmarks") not in LANDMARK_MODES:
        raise ConfigError(f"fit.landmarks must be one of {', '.join(LANDMARK_MODES)}, got {fit_cfg.get('landmarks')!r}")
    if fit_cfg.get("fitter") not in FITTERS:
        raise ConfigError(f"fit.fitter must be one of {', '.join(FITTERS)}, got {fit_cfg.get('fitter')!r}")
    if str(fit_cfg.get("photometric", "none")) not in ("none", "detected", "all"):
        raise ConfigError(f"fit.photometric must be none, detected or all, got {fit_cfg.get('photometric')!r}")
    if fit_cfg.get("contour", "auto") not in ("auto", "dynamic", "fixed"):
        raise ConfigError(f"fit.contour must be auto, dynamic or fixed, got {fit_cfg.get('contour')!r}")
    if int(fit_cfg.get("crop_size", 128)) < 8:
        raise ConfigError("fit.crop_size must be >= 8")
    if not Path(model).is_file():
        raise ConfigError(f"model file not found: {model}")
    try:
        inputs = collect_inputs(images, root)
    except InputError as e:
        raise ConfigError(str(e)) from None
    meta, source = {}, ""
    mpath = metadata
    if mpath is None and Path(images).is_dir() and (Path(images) / "truth.h5").is_file():
        mpath = str(Path(images) / "truth.h5")
    if mpath:
        if not Path(mpath).is_file():
            raise ConfigError(f"metadata file not found: {mpath}")
        try:
            meta = read_metadata(mpath)
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(f"cannot read metadata {mpath}: {e}") from None
        source = os.path.abspath(mpath)
    load_calibration(fit_cfg.get("landmark_calibration", "auto"), model)      # refuse a bad file now
    try:
        return FitStage(inputs, model, fit_cfg, meta, source, seed)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read model {model}: {e}") from None
