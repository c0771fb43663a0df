"""The ``warps`` shard stage (slidergan render-warps): 3D-warped images of fitted photos.

Glue only; the algorithm is :class:`fitting.warp.Warper`.  One input item = one fitted
photo (its fit ``key``); it yields ``per_face`` rows.  Datasets per row:

``key`` (``<photo key>#<k>``), ``group`` (= the photo's fit group), ``identity``, ``label``
(-1: the expression was replaced), ``image`` [128,128,3], ``p_exp`` (the exact target, [E]),
``p_id``, ``camera``, ``align`` (the fit's), ``source`` (row of the photo in the fit stage,
attribute ``source_stage``), ``k`` (draw index), ``p_exp_source`` (the photo's fitted
expression, so (photo, p_exp_source) <-> (warp, p_exp) pairs need no second lookup).

``warps.speech`` = S > 0 (the speech warps of docs/speech.md, e.g. ``RUN/warps-speech``): each
draw also gets S speech parameters (the model's speech basis; same distribution,
``warps.speech_scale``), so ``p_exp`` is E + S wide, and ``p_exp_source`` is the photo's fit
with zero speech (a photo fit has none).

``warps.around_source`` = s > 0: each draw's expression is the photo's fitted ``p_exp`` plus a
draw of scale s (``distribution``), instead of an independent draw: warps that differ from
their photo (and from each other) by small changes, as frames of one video do (the speech
warps of docs/speech.md). 0 = the paper's independent draws.

``warps.residual: true`` writes change warps: the photo's aligned crop plus the render's change
from the photo's own fit, ``crop + R(p_k) - R(p_fit)`` (:meth:`fitting.warp.Warper.render_change`),
instead of the render itself. The photo's pixels stay wherever the 3D edit changes nothing,
so a pair of such warps differs only by the edit (no texture or resampling gap between the
render and the photo; docs/warps.md). Off = the paper's rendered warps.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.cache import cached
from pipeline.stage import BadInput, ChunkResult, Stage
from pipeline.threads import one_blas_thread


def _model_hash(path: str) -> str:
    from fitting.model import read_model_hash

    return read_model_hash(path)


def load_model(path: str):
    """``MorphableModel.load(path)``; an unreadable or corrupt file is a one-line ConfigError
    (exit 2, and a stage stops at the first chunk that meets it: the same for every chunk)."""
    from fitting.model import ModelError, MorphableModel
    from pipeline.config import ConfigError

    try:
        return MorphableModel.load(path)
    except (ModelError, OSError) as e:
        msg = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise ConfigError(f"cannot read model {path}: {msg}" if str(path) not in msg else msg) from None


def checked_model_hash(path: str) -> str:
    """The content hash of ``path`` after loading it once (a corrupt model is a ConfigError
    here, before any chunk runs, not a failure of every chunk)."""
    return load_model(path).hash


def warp_key(key: str, k: int, per_face: int) -> str:
    return f"{key}#{k:0{max(2, len(str(per_face - 1)))}d}"


class WarpsStage(Stage):
    """Picklable: paths, options and the fit keys only; model/warper/fit reader are loaded
    lazily per process."""

    name = "warps"
    version = "2"
    compression = "lzf"

    def __init__(self, fits_dir: str, model_path: str, warps_cfg: dict, seed: int = 0,
                 images_root: Optional[str] = None, backend: str = "fast"):
        from pipeline.config import ConfigError
        from pipeline.shards import ShardSet

        from fitting.sampling import DISTRIBUTIONS, select_keys

        self.fits_dir = os.path.abspath(fits_dir)
        self.model_path = os.path.abspath(model_path)
        self.cfg = dict(warps_cfg)
        self.seed = int(seed)
        self.backend = backend
        fits = ShardSet(self.fits_dir)
        missing = [d for d in ("key", "p_id", "p_exp", "camera", "align", "group") if d not in fits.datasets]
        if missing:
            raise ConfigError(f"{fits_dir} is not a fit stage (missing datasets: {', '.join(missing)})")
        self.fits_hash = str(fits.attrs.get("params_hash"))
        fit_params = fits.attrs.get("params") or {}
        root = images_root or fit_params.get("root")
        if not root:
            raise ConfigError(f"{fits_dir}: the fit stage does not record its images root; pass --images DIR")
        self.images_root = os.path.abspath(root)
        if not os.path.isdir(self.images_root):
            raise ConfigError(f"images folder not found: {self.images_root} (pass --images DIR)")
        self.crop_size = int(fits.datasets["image"][1][1]) if "image" in fits.datasets else 128
        self.n_exp = int(fits.datasets["p_exp"][1][1])
        faces, per_face = int(self.cfg.get("faces", 10000)), int(self.cfg.get("per_face", 20))
        if faces < 1 or per_face < 1:
            raise ConfigError(f"warps.faces and warps.per_face must be >= 1 (got {faces}, {per_face})")
        if self.cfg.get("distribution", "uniform") not in DISTRIBUTIONS:
            raise ConfigError(f"warps.distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if not float(self.cfg.get("scale", 1.0)) > 0:
            raise ConfigError("warps.scale must be > 0")
        if self.cfg.get("space", "crop") not in ("crop", "full"):
            raise ConfigError("warps.space must be crop or full")
        if not 1 <= int(self.cfg.get("supersample", 1)) <= 4:
            raise ConfigError("warps.supersample must be 1..4")
        self.n_speech = int(self.cfg.get("speech", 0) or 0)
        if self.n_speech < 0:
            raise ConfigError(f"warps.speech must be >= 0, got {self.n_speech}")
        self.speech_scale = float(self.cfg.get("speech_scale", 0.7))
        if self.n_speech and not self.speech_scale > 0:
            raise ConfigError("warps.speech_scale must be > 0")
        self.around = float(self.cfg.get("around_source", 0.0) or 0.0)
        if not (np.isfinite(self.around) and self.around >= 0):
            raise ConfigError(f"warps.around_source must be >= 0, got {self.cfg.get('around_source')}")
        res = self.cfg.get("residual", False)
        if res not in (True, False, None, 0, 1):
            raise ConfigError(f"warps.residual must be true or false, got {res!r}")
        self.residual = bool(res)
        self.keys = select_keys(fits.keys(), faces, self.seed)
        self._model_hash = checked_model_hash(self.model_path)
        if self.n_speech:
            model = self._model()
            if self.n_exp != model.n_exp:
                raise ConfigError(f"warps.speech={self.n_speech}: {fits_dir} has p_exp [{self.n_exp}] wide, not the "
                                  f"model's {model.n_exp} expression parameters (speech is drawn for photo fits)")
            if model.n_speech < self.n_speech:
                raise ConfigError(f"warps.speech={self.n_speech}: the model has {model.n_speech} speech components")
        fit_model = fits.attrs.get("model_hash")
        if fit_model and fit_model != self._model_hash:
            raise ConfigError(f"{fits_dir} was fitted with another model (hash {fit_model}); "
                              f"--model {model_path} has hash {self._model_hash}")

    # ------------------------------------------------------------------ Stage API
    def input_keys(self) -> list[str]:
        return list(self.keys)

    def params(self) -> dict:
        cfg = {k: v for k, v in sorted(self.cfg.items()) if k not in ("chunk_size", "faces")}
        if not self.n_speech:              # the paper's warps keep the params hash they had before the options
            cfg = {k: v for k, v in cfg.items() if k not in ("speech", "speech_scale")}
        if not self.around:
            cfg.pop("around_source", None)
        if not self.residual:
            cfg.pop("residual", None)
        return {"warps": cfg, "seed": self.seed, "fits": self.fits_hash, "images": self.images_root,
                "backend": self.backend}

    def model_hash(self) -> str | None:
        return self._model_hash

    def attrs(self) -> dict:
        return {"source_stage": self.fits_dir, "distribution": str(self.cfg.get("distribution", "uniform")),
                "per_face": int(self.cfg.get("per_face", 20)), "camera_layout": "pitch,yaw,roll,tx,ty,scale,dist"}

    # ------------------------------------------------------------------ helpers
    def _model(self):
        return cached(("model", self.model_path, self._model_hash), lambda: load_model(self.model_path))

    def warper(self):
        from fitting.warp import Warper

        c = self.cfg
        opts = (self.crop_size, self.backend, c.get("space", "crop"), bool(c.get("mouth", True)),
                int(c.get("supersample", 1)))
        return cached(("warper", self.model_path, self._model_hash, opts),
                      lambda: Warper(self._model(), size=opts[0], backend=opts[1], space=opts[2], cavity=opts[3],
                                     supersample=opts[4]))

    def _fits(self):
        from pipeline.shards import ShardSet

        def make():
            ds = ShardSet(self.fits_dir)
            return ds, {k: i for i, k in enumerate(ds.keys())}
        return cached(("fits", self.fits_dir, self.fits_hash), make)

    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        with one_blas_thread():
            return self._process_chunk(keys, chunk)

    def _inputs(self, key: str, fits, index: dict):
        """-> (row, fit record, identity, photo) of one fitted photo, or raise BadInput (photo
        gone from the fit stage, non-finite fit, unreadable photo)."""
        from fitting.images import ImageReject, load_image

        if key not in index:
            raise BadInput("not in fit stage", "photo no longer in the fit stage")
        row = index[key]
        rec = {n: fits.read(n, row) for n in ("p_id", "p_exp", "camera", "align", "group")}
        bad = [n for n in ("p_id", "p_exp", "camera", "align") if not np.all(np.isfinite(rec[n]))]
        if bad:
            raise BadInput("bad fit", f"non-finite {', '.join(bad)}")
        ident = int(fits.read("identity", row)) if "identity" in fits.datasets else -1
        try:
            photo = load_image(Path(self.images_root) / key)
        except ImageReject as e:
            raise BadInput(f"photo {e.reason}", e.detail) from None
        return row, rec, ident, photo

    def _process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        from fitting.sampling import sample_expressions

        fits, index = self._fits()
        warper = self.warper()
        per_face = int(self.cfg.get("per_face", 20))
        dist, scale = str(self.cfg.get("distribution", "uniform")), float(self.cfg.get("scale", 1.0))
        cols = {k: [] for k in ("key", "group", "identity", "label", "image", "p_exp", "p_id", "camera",
                                "align", "source", "k", "p_exp_source")}
        rejects = []
        for key in keys:
            # Only declared input errors are rejects (BadInput); anything else fails the chunk.
            try:
                row, rec, ident, photo = self._inputs(key, fits, index)
                try:
                    src = warper.prepare(photo, rec["p_id"], rec["p_exp"], rec["camera"], rec["align"])
                except ValueError as e:                 # prepare's checks of the photo and the fit's align
                    raise BadInput("bad fit", str(e).splitlines()[0]) from None
            except BadInput as e:
                rejects.append(e.as_reject(key))
                continue
            p_src = np.asarray(rec["p_exp"], np.float32)
            if self.around:         # warps.around_source: small changes of the photo's own expression
                P = p_src + sample_expressions(self.seed, key, per_face, self.n_exp, dist, self.around)
            else:                   # the paper's: independent draws
                P = sample_expressions(self.seed, key, per_face, self.n_exp, dist, scale)
            if self.n_speech:       # warps.speech: speech drawn beside the expression; the photo's is zero
                P = np.concatenate([P, sample_expressions(self.seed, f"{key}#speech", per_face, self.n_speech,
                                                          dist, self.speech_scale)], 1)
                p_src = np.concatenate([p_src, np.zeros(self.n_speech, np.float32)])
            if self.residual:       # warps.residual: the photo's crop plus the 3D edit's change
                from fitting.align import warp_crop       # the fit stage's uint8 crop of the photo
                images = warper.render_change(src, P, p_src, warp_crop(photo, rec["align"], self.crop_size))
            else:
                images = warper.render(src, P)
            for k in range(per_face):
                cols["key"].append(warp_key(key, k, per_face))
                cols["group"].append(int(rec["group"]))
                cols["identity"].append(ident)
                cols["label"].append(-1)
                cols["image"].append(images[k])
                cols["p_exp"].append(P[k])
                cols["p_id"].append(np.asarray(rec["p_id"], np.float32))
                cols["camera"].append(np.asarray(rec["camera"], np.float32))
                cols["align"].append(np.asarray(rec["align"], np.float32))
                cols["source"].append(row)
                cols["k"].append(k)
                cols["p_exp_source"].append(p_src)
        n_id = int(fits.datasets["p_id"][1][1])
        width = self.n_exp + self.n_speech
        shapes = {"group": ((), np.int64), "identity": ((), np.int64), "label": ((), np.int64),
                  "image": ((self.crop_size, self.crop_size, 3), np.uint8), "p_exp": ((width,), np.float32),
                  "p_id": ((n_id,), np.float32), "camera": ((7,), np.float32), "align": ((2, 3), np.float32),
                  "source": ((), np.int64), "k": ((), np.int16), "p_exp_source": ((width,), np.float32)}
        rows = {"key": cols["key"]}
        for name, (shape, dt) in shapes.items():
            rows[name] = (np.stack(cols[name]).astype(dt) if cols[name] else np.zeros((0,) + shape, dt))
        return ChunkResult(rows=rows, rejects=rejects)


def build_stage(fits: str, model: str, warps_cfg: dict, seed: int = 0, images: Optional[str] = None,
                backend: str = "fast") -> WarpsStage:
    from workflows.common import require_dir, require_file

    require_dir(fits, "fit stage folder")
    require_file(model, "model file")
    if images is not None:
        require_dir(images, "images folder")
    return WarpsStage(fits, model, warps_cfg, seed=seed, images_root=images, backend=backend)


def write_preview(stage_dir, n_faces: int = 8, n_warps: int = 5) -> Path | None:
    """``W/preview.png``: per row, the fitted photo's crop then ``n_warps`` warps, for the
    first ``n_faces`` photos.  Atomic.  None when the stage is empty."""
    from PIL import Image

    from pipeline.shards import ShardSet

    ds = ShardSet(stage_dir)
    if len(ds) == 0:
        return None
    src = ds.read("source")
    k = ds.read("k")
    fits_dir = ds.attrs.get("source_stage")
    fits = ShardSet(fits_dir) if fits_dir and os.path.isdir(fits_dir) else None
    order = list(dict.fromkeys(src.tolist()))[:n_faces]
    n_warps = max(1, min(n_warps, int(k.max()) + 1))
    S = ds.datasets["image"][1][1]
    sheet = np.full((len(order) * (S + 4), (n_warps + 1) * (S + 4) + 8, 3), 255, np.uint8)
    for r, s in enumerate(order):
        y = r * (S + 4)
        if fits is not None and "image" in fits.datasets:
            sheet[y:y + S, :S] = fits.read("image", int(s))
        rows = np.nonzero((src == s) & (k < n_warps))[0]
        for c, i in enumerate(rows[:n_warps]):
            x = 8 + (c + 1) * (S + 4)
            sheet[y:y + S, x:x + S] = ds.read("image", int(i))
    out = Path(stage_dir) / "preview.png"
    tmp = out.with_name(f".preview.png.tmp-{os.getpid()}")
    Image.fromarray(sheet).save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
