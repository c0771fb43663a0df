"""One way to fit a photo: landmarks (given or detected), calibration, landmark fit,
photometric refinement and gate, used alike by the fit stage (``workflows/stages/fit.py``),
the editor (``workflows/editor/fitbridge.py``: ``serve``, ``edit``) and the evaluation's
refit (``evaluation/protocols.py``).

:class:`PhotoFitter` ``(model, fit_cfg, calibration)`` holds the per-process fitters;
:meth:`PhotoFitter.landmarks` gets a photo's 68 points, :meth:`PhotoFitter.fit` fits a batch
of faces (landmark fit per landmark source, then ``fit.photometric``),
:meth:`PhotoFitter.gate` judges a batch's fits and :meth:`PhotoFitter.fit_photos` chains
them for photos in memory.  The options are the ``fit:`` section completed from the schema
(:func:`fit_settings`; config/demo.yaml holds every default).

**Image domain** (``fit.image_domain``: photo | render | auto).  A landmark calibration
learned on renders of the model corrects dlib's bias *on renders*; on real photos it made
detections 2-3x worse (docs/fitting.md).  So ``fit.landmark_calibration: auto`` applies the
model's calibration only when the file's ``meta.domain`` is the images' domain.  ``auto``
takes the domain from the images: ``render`` when the folder holds the demo world's
``truth.h5`` (attribute ``schema`` ``slidergan-demo-truth/...``, written by ``make-demo``
beside its photos), ``photo`` otherwise; the editor's uploads are ``photo``.  A calibration
named by path is applied to any domain (it was asked for).

Sources of landmarks: 0 sidecar (given), 1 detected, 2 detected and calibrated.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_DOMAINS = ("photo", "render")
DEMO_TRUTH_SCHEMA = "slidergan-demo-truth/"
SOURCE_NAMES = ("sidecar", "detected", "calibrated")


class PhotoReject(Exception):
    """A photo this fit cannot use: ``reason`` (a reject reason: ``no face``, ``bad
    landmarks``, ``too small``, ``fit diverged``) and a one-line ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------------------- settings
def fit_settings(fit_cfg: Optional[dict] = None, domain: Optional[str] = None) -> dict:
    """The ``fit:`` section of the schema (config/demo.yaml) updated with ``fit_cfg``: every
    key has a value, so no code here keeps a default of its own.  For ``domain`` ``photo``
    the keys of ``fit.photo_overrides`` replace their namesakes (the section was tuned on
    renders; real photos differ in dlib's error and in what the model can explain)."""
    from pipeline.config import ConfigError, schema_section

    out = schema_section("fit")
    over = dict(out.get("photo_overrides") or {})
    cfg = dict(fit_cfg or {})
    if isinstance(cfg.get("photo_overrides"), dict):
        over.update(cfg.pop("photo_overrides"))
    out.update(cfg)
    out["photo_overrides"] = over
    if domain == "photo":
        for k, v in over.items():
            if k not in out or k == "photo_overrides":
                raise ConfigError(f"fit.photo_overrides.{k}: not a fit key")
            out[k] = v
    return out


def image_domain(setting, images: str | os.PathLike | None = None) -> str:
    """``fit.image_domain`` for photos under ``images`` (a folder or a file in it):
    ``photo``/``render`` as given; ``auto``: ``render`` when the folder holds the demo world's
    ``truth.h5`` (its ``schema`` attribute), else ``photo``."""
    from pipeline.config import ConfigError

    v = str(setting).strip()
    if v in IMAGE_DOMAINS:
        return v
    if v != "auto":
        raise ConfigError(f"fit.image_domain must be auto, photo or render, got {setting!r}")
    if images is None:
        return "photo"
    p = Path(images)
    folder = p if p.is_dir() else p.parent
    truth = folder / "truth.h5"
    if not truth.is_file():
        return "photo"
    try:
        import h5py

        with h5py.File(truth, "r") as f:
            schema = f.attrs.get("schema", "")
    except (OSError, ValueError):
        return "photo"
    schema = schema.decode() if isinstance(schema, bytes) else str(schema)
    return "render" if schema.startswith(DEMO_TRUTH_SCHEMA) else "photo"


def calibration_domain(cal) -> str:
    """The image domain a :class:`fitting.landmarks.LandmarkCalibration` was learned on
    (``meta.domain``; files written before the field existed were learned on renders, the
    only thing ``calibrate-landmarks`` does)."""
    return str(cal.meta.get("domain", "render"))


def resolve_calibration(value, model_path: str, domain: str = "photo") -> tuple[Optional[str], str]:
    """``fit.landmark_calibration`` for ``model_path`` and images of ``domain`` ->
    ``(path or None, note)``.  ``none``: none; ``auto``: the model's ``<stem>.lmcal.npz``
    when it exists and was learned on ``domain`` (``note`` says why not otherwise); a path:
    that file, any domain (ConfigError when missing)."""
    from fitting.landmarks import CalibrationError, LandmarkCalibration
    from pipeline.config import ConfigError
    from workflows.stages.calibrate import calibration_path

    v = str(value if value is not None else "none").strip()
    if v in ("none", ""):
        return None, "fit.landmark_calibration=none"
    if v == "auto":
        p = calibration_path(model_path)
        if not p.is_file():
            return None, f"no {p.name} beside the model"
        try:
            learned = calibration_domain(LandmarkCalibration.load(p))
        except CalibrationError as e:
            raise ConfigError(f"fit.landmark_calibration: {e}") from None
        if learned != domain:
            return None, (f"{p.name} was learned on {learned} images, these are {domain} images "
                          f"(fit.image_domain); name the file in fit.landmark_calibration to use it anyway")
        return os.path.abspath(p), f"{p.name} ({learned})"
    if not Path(v).is_file():
        raise ConfigError(f"fit.landmark_calibration file not found: {v}")
    return os.path.abspath(v), f"{Path(v).name} (named)"


def load_calibration(value, model_path: str, domain: str = "photo"):
    """The :class:`fitting.landmarks.LandmarkCalibration` that :func:`resolve_calibration`
    picks, or None.  An unreadable file, or one learned for another model (its
    ``meta.model_hash``), is a one-line ConfigError."""
    from fitting.landmarks import CalibrationError, LandmarkCalibration
    from fitting.model import read_model_hash
    from pipeline.config import ConfigError

    path, _ = resolve_calibration(value, model_path, domain)
    if path is None:
        return None
    try:
        cal = LandmarkCalibration.load(path)
    except CalibrationError as e:
        raise ConfigError(f"fit.landmark_calibration: {e}") from None
    learned_for = cal.meta.get("model_hash")
    if learned_for and Path(model_path).is_file() and learned_for != read_model_hash(model_path):
        raise ConfigError(f"fit.landmark_calibration: {path} was learned for another model "
                          f"(re-run slidergan calibrate-landmarks --model {model_path})")
    return cal


def validate(cfg: dict) -> None:
    """One-line ConfigError for a fit section whose choices are not known."""
    from pipeline.config import ConfigError

    choices = {"landmarks": ("sidecar", "detect", "auto"), "fitter": ("landmarks", "itw"),
               "photometric": ("none", "detected", "all"), "contour": ("auto", "dynamic", "fixed"),
               "image_domain": ("auto",) + IMAGE_DOMAINS}
    for key, ok in choices.items():
        if str(cfg[key]) not in ok:
            raise ConfigError(f"fit.{key} must be {', '.join(ok[:-1])} or {ok[-1]}, got {cfg[key]!r}")
    if int(cfg["crop_size"]) < 8:
        raise ConfigError("fit.crop_size must be >= 8")


# ---------------------------------------------------------------------------- gate
def _residual_gate_on(cfg: dict) -> bool:
    return float(cfg["max_photometric_residual"]) > 0 or float(cfg["photometric_residual_mads"]) > 0


def residual_limit(residuals, cfg: dict) -> float:
    """The colour-residual limit of a batch of refined fits (NaN entries: not refined): the
    absolute ``fit.max_photometric_residual`` (0 = none) and the relative rule ``median + k x
    MAD`` (``k = fit.photometric_residual_mads``, MAD scaled to a standard deviation and at
    least 5% of the median) over the batch when it has ``fit.photometric_residual_min_fits``
    refined fits; the lower of those that apply, ``inf`` when none does."""
    r = np.asarray(residuals, np.float64)
    r = r[np.isfinite(r)]
    lim = np.inf
    absolute = float(cfg["max_photometric_residual"])
    if absolute > 0:
        lim = absolute
    k = float(cfg["photometric_residual_mads"])
    if k > 0 and len(r) >= max(int(cfg["photometric_residual_min_fits"]), 1):
        med = float(np.median(r))
        mad = max(1.4826 * float(np.median(np.abs(r - med))), 0.05 * med)
        lim = min(lim, med + k * mad)
    return lim


def fit_gate(fit_error: float, residual: float, cfg: dict, limit: Optional[float] = None) -> Optional[str]:
    """Why one fit is rejected as diverged, or None to keep it.  A landmark-only fit
    (``residual`` NaN) is judged by its landmark error (``fit.max_fit_error``).  A fit refined
    against the photo, while a residual gate is on, is judged by how well it explains the photo
    (``limit``, default :func:`residual_limit` of this fit alone); its landmark error only has
    to stay under the looser ``fit.max_fit_error_refined``, since detected landmarks are
    themselves off and the refinement rightly moves off them."""
    refined = _residual_gate_on(cfg) and np.isfinite(residual)
    key = "max_fit_error_refined" if refined else "max_fit_error"
    max_err = float(cfg[key])
    if not np.isfinite(fit_error) or fit_error > max_err:
        return f"landmark error {fit_error:.3f} x inter-ocular > fit.{key}={max_err:g}"
    if refined:
        lim = residual_limit([residual], cfg) if limit is None else limit
        if residual > lim:
            return f"photometric residual {residual:.4f} > {lim:.4f} ({_limit_words(cfg)})"
    return None


def _limit_words(cfg: dict) -> str:
    parts = []
    if float(cfg["max_photometric_residual"]) > 0:
        parts.append(f"fit.max_photometric_residual={float(cfg['max_photometric_residual']):g}")
    if float(cfg["photometric_residual_mads"]) > 0:
        parts.append(f"median + {float(cfg['photometric_residual_mads']):g} MAD of the chunk")
    return " / ".join(parts)


def gate_batch(fit_error, residual, converged, cfg: dict, where: str = "", log=None) -> list:
    """:func:`fit_gate` of every fit of a batch, the residual limit taken over the batch
    (:func:`residual_limit`) -> list of reasons (None = kept).  When the gate rejects more than
    half of a batch of at least 4 fits, a warning goes to ``log`` (default stderr): a gate
    chosen on other data (renders) is probably rejecting good fits."""
    lim = residual_limit(residual, cfg)
    out = [fit_gate(float(e), float(r), cfg, lim) if bool(c) else "did not converge"
           for e, r, c in zip(fit_error, residual, converged)]
    n_bad = sum(w is not None for w in out)
    if len(out) >= 4 and n_bad > len(out) / 2:
        first = next(w for w in out if w is not None)
        msg = (f"warning: the fit gate rejected {n_bad} of {len(out)} fits{' of ' + where if where else ''} "
               f"(e.g. {first}); a gate chosen on other photos may not suit these: check fit.max_fit_error, "
               f"fit.max_photometric_residual and fit.photometric_residual_mads (docs/fitting.md)")
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)
    return out


# ---------------------------------------------------------------------------- fitter
class PhotoFitter:
    """The fit of photos with one model and one ``fit:`` section (see module doc).

    ``calibration``: a :class:`fitting.landmarks.LandmarkCalibration` for detections, or None
    (see :func:`load_calibration`).  ``detector``: anything with ``detect(rgb) -> [68, 2] |
    None`` (default: dlib with ``fit.detect_retry_*``).  ``device``: the landmark fitter's
    torch device (None: cuda when present).  ``domain``: the photos' image domain; ``photo``
    applies ``fit.photo_overrides`` (:func:`fit_settings`), ``render`` and None do not."""

    def __init__(self, model, fit_cfg: Optional[dict] = None, calibration=None, detector=None,
                 device: Optional[str] = None, domain: Optional[str] = None):
        self.model = model
        self.domain = domain
        self.cfg = fit_settings(fit_cfg, domain)
        validate(self.cfg)
        self.calibration = calibration
        self._detector = detector
        self.device = device
        self._cache: dict = {}

    # ------------------------------------------------------------------ pieces
    def detector(self):
        if self._detector is None:
            from fitting.landmarks import get_detector

            self._detector = get_detector(int(self.cfg["detect_retry_upsample"]),
                                          float(self.cfg["detect_retry_threshold"]))
        return self._detector

    def contour(self, source: int) -> str:
        from fitting.fit import resolve_contour

        return resolve_contour(self.cfg["contour"], source)

    def options(self, source: int):
        """FitOptions for landmarks from ``source``: detections (1, 2) use ``fit.sigma_detected``,
        sidecars ``fit.sigma``; the contour follows ``fit.contour`` (:func:`resolve_contour`)."""
        from fitting.fit import FitOptions

        sigma = float(self.cfg["sigma"] if source == 0 else self.cfg["sigma_detected"])
        over = {"contour": self.contour(source), "sigma": sigma}
        if self.device is not None:
            over["device"] = self.device
        return FitOptions.from_config(self.cfg, **over)

    def _fitter(self, source: int):
        from fitting.fit import LandmarkFitter

        opts = self.options(source)
        key = ("fitter", repr(opts))
        if key not in self._cache:
            self._cache[key] = LandmarkFitter(self.model, opts)
        return self._cache[key]

    def landmarks(self, rgb: np.ndarray, given: Optional[np.ndarray] = None):
        """-> ``(lm [68, 2], source, raw [68, 2])``: ``given`` landmarks (a sidecar; source 0),
        else detected (1), corrected by the calibration when there is one (2; ``raw`` are the
        detector's points).  Raises :class:`PhotoReject` (``no face``, ``bad landmarks``,
        ``too small``)."""
        from fitting.fit import interocular

        if given is not None:
            lm = raw = np.asarray(given, np.float64)
            src = 0
        else:
            raw = self.detector().detect(rgb)
            if raw is None:
                raise PhotoReject("no face", "no face detected")
            raw = np.asarray(raw, np.float64)
            lm, src = (raw, 1) if self.calibration is None else (self.calibration.apply(raw), 2)
        if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
            raise PhotoReject("bad landmarks", f"expected [68, 2] finite coordinates, got shape {lm.shape}")
        face = 2.5 * float(interocular(lm))
        min_face = float(self.cfg["min_face_px"])
        if face < min_face:
            raise PhotoReject("too small", f"face {face:.0f} px < fit.min_face_px={min_face:g}")
        return lm, src, raw

    def fit(self, lms, rgbs, sources):
        """Fit a batch: ``lms [B, 68, 2]``, ``rgbs`` (a photo per face, or None where the
        refinement need not see it), ``sources [B]`` -> :class:`fitting.fit.FitResult` (with
        ``residual``), on ``fit.threads`` torch threads."""
        import torch

        old = torch.get_num_threads()
        n = int(self.cfg["threads"])
        if n > 0:
            torch.set_num_threads(n)
        try:
            return self._fit_batch(lms, rgbs, np.asarray(sources, np.int64))
        finally:
            torch.set_num_threads(old)

    def needs_photo(self, source: int) -> bool:
        """Whether the fit of a face from ``source`` looks at the photo (ITW, refinement)."""
        mode = str(self.cfg["photometric"])
        return self.cfg["fitter"] == "itw" or mode == "all" or (mode == "detected" and source >= 1)

    def _fit_batch(self, lms, rgbs, sources):
        from fitting.fit import FitResult

        lm = np.stack([np.asarray(a, np.float64) for a in lms]) if len(lms) else np.zeros((0, 68, 2))
        if self.cfg["fitter"] == "itw":
            from fitting.itw import ITWFitter

            key = ("itw",)
            if key not in self._cache:
                self._cache[key] = ITWFitter(self.model, self.cfg, landmark_fitter=self._fitter(0))
            return self._cache[key].fit(rgbs, lm)
        if len(lm) == 0:
            res = self._fitter(0).fit(lm)
            res.residual = np.zeros(0, np.float32)
            return res
        parts = {}
        for src in (0, 1, 2):
            idx = np.flatnonzero(sources == src)
            if len(idx):
                parts[src] = (idx, self._fitter(src).fit(lm[idx]))
        first = next(iter(parts.values()))[1]
        out = {}
        for name in ("p_id", "p_exp", "camera", "lm_fitted", "fit_error", "converged"):
            ref = getattr(first, name)
            arr = np.zeros((len(lm),) + ref.shape[1:], ref.dtype)
            for idx, res in parts.values():
                arr[idx] = getattr(res, name)
            out[name] = arr
        res = FitResult(**out, residual=np.full(len(lm), np.nan, np.float32))
        self._refine(res, lm, rgbs, sources)
        return res

    def _refine(self, res, lm, rgbs, sources) -> None:
        """``fit.photometric`` (none | detected | all): refine the chosen faces' landmark fits
        against their photos (:mod:`fitting.photometric`), in place (``res.residual``: the
        refinement's median colour residual, NaN where none ran).  Jaw points follow
        ``fit.contour``.  A refinement that fails or ends non-finite keeps the landmark fit; a
        model without texture skips the step."""
        from fitting.fit import landmark_error
        from fitting.photometric import PhotometricOptions, PhotometricRefiner

        model = self.model
        opts = PhotometricOptions.from_config(self.cfg)
        if (str(self.cfg["photometric"]) == "none" or int(opts.iterations) <= 0 or model.U_tex is None
                or model.texture_mean is None):
            return
        todo = [i for i in range(len(lm)) if rgbs[i] is not None and res.converged[i]
                and self.needs_photo(int(sources[i]))]
        if not todo:
            return
        key = ("photometric", repr(opts))
        if key not in self._cache:
            self._cache[key] = PhotometricRefiner(model, opts)
        ref = self._cache[key]
        for i in todo:
            try:
                p_id, p_exp, cam, info = ref.refine(rgbs[i], lm[i], res.p_id[i], res.p_exp[i], res.camera[i],
                                                    contour=self.contour(int(sources[i])))
            except (ValueError, RuntimeError):                      # e.g. a singular system: keep the landmark fit
                continue
            fitted = info["lm_fitted"]
            if not all(np.isfinite(a).all() for a in (p_id, p_exp, cam, fitted)):
                continue
            res.p_id[i], res.p_exp[i], res.camera[i] = p_id, p_exp, cam
            res.lm_fitted[i] = fitted
            res.residual[i] = info["residual"]
            res.fit_error[i] = landmark_error(fitted, lm[i])

    def gate(self, res, where: str = "", log=None) -> list:
        """:func:`gate_batch` of a :class:`FitResult` with this fitter's settings."""
        resid = res.residual if res.residual is not None else np.full(len(res.fit_error), np.nan)
        return gate_batch(res.fit_error, resid, res.converged, self.cfg, where, log)

    def align(self, lm: np.ndarray, crop_size: Optional[int] = None) -> np.ndarray:
        """[2, 3] similarity from photo pixels to the crop: ``lm`` onto the model's mean
        landmarks seen frontally (fitting.align)."""
        from fitting.align import reference_shape, similarity_transform

        size = int(crop_size or self.cfg["crop_size"])
        key = ("reference", size)
        if key not in self._cache:
            self._cache[key] = reference_shape(self.model.mean_shape[self.model.landmarks], size)
        return similarity_transform(lm, self._cache[key])

    # ------------------------------------------------------------------ photos in memory
    def fit_photos(self, images, landmarks=None, crop_size: Optional[int] = None, where: str = "") -> list:
        """Fit photos (uint8 [H, W, 3] each) with given ``landmarks`` (a list, None entries
        detected) or all detected -> one entry per photo: a dict (``crop`` uint8 [S, S, 3],
        ``align`` [2, 3], ``p_exp``, ``p_id``, ``camera`` [7], ``landmarks`` (used) [68, 2],
        ``lm_raw``, ``lm_fitted``, ``fit_error``, ``residual`` (NaN: not refined),
        ``landmark_source`` (sidecar | detected | calibrated)) or the :class:`PhotoReject`."""
        from fitting.align import warp_crop

        n = len(images)
        given = list(landmarks) if landmarks is not None else [None] * n
        out: list = [None] * n
        items = []
        for i, (im, g) in enumerate(zip(images, given)):
            try:
                lm, src, raw = self.landmarks(im, g)
            except PhotoReject as e:
                out[i] = e
                continue
            items.append((i, lm, src, raw))
        if items:
            res = self.fit([it[1] for it in items],
                           [images[it[0]] if self.needs_photo(it[2]) else None for it in items],
                           [it[2] for it in items])
            why = self.gate(res, where)
            for k, (i, lm, src, raw) in enumerate(items):
                if why[k]:
                    out[i] = PhotoReject("fit diverged", why[k])
                    continue
                A = self.align(lm, crop_size)
                out[i] = {"crop": warp_crop(images[i], A, int(crop_size or self.cfg["crop_size"])),
                          "align": A.astype(np.float32), "p_exp": np.asarray(res.p_exp[k], np.float32),
                          "p_id": np.asarray(res.p_id[k], np.float32),
                          "camera": np.asarray(res.camera[k], np.float32), "landmarks": lm.astype(np.float32),
                          "lm_raw": raw.astype(np.float32), "lm_fitted": np.asarray(res.lm_fitted[k], np.float32),
                          "fit_error": float(res.fit_error[k]), "residual": float(res.residual[k]),
                          "landmark_source": SOURCE_NAMES[src]}
        return out

    def fit_photo(self, image: np.ndarray, landmarks: Optional[np.ndarray] = None,
                  crop_size: Optional[int] = None) -> dict:
        """:meth:`fit_photos` of one photo: its dict, or the :class:`PhotoReject` raised."""
        r = self.fit_photos([image], None if landmarks is None else [landmarks], crop_size)[0]
        if isinstance(r, PhotoReject):
            raise r
        return r


def fit_photo(image: np.ndarray, model, fit_cfg: Optional[dict] = None, landmarks: Optional[np.ndarray] = None,
              calibration=None, detector=None, crop_size: Optional[int] = None, domain: Optional[str] = None) -> dict:
    """Fit one photo (see :meth:`PhotoFitter.fit_photos`); a fitter made per call (keep a
    :class:`PhotoFitter` to fit many)."""
    return PhotoFitter(model, fit_cfg, calibration, detector, domain=domain).fit_photo(image, landmarks, crop_size)
