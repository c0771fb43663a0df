"""The editor's glue: load a checkpoint and a 3DMM, fit + align a photo, run G, render the
3D blendshape face, regress parameters with D, paste the edit back into the photo.

Everything here is plain Python over numpy/torch; :mod:`workflows.editor.app` puts it on
the web and :mod:`workflows.commands.edit` on the command line.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ConfigError
from train.checkpoint import FORMAT as CHECKPOINT_FORMAT  # noqa: F401 (re-exported)
from train.checkpoint import load_checkpoint as _load_checkpoint, load_networks, resolve_checkpoint
from workflows.editor import fitbridge
from workflows.editor.cached_generator import CachedGenerator, generated_image
from workflows.editor.imaging import ImageInputError, paste_back, to_uint8

# the 3D blendshape view: grey clay under an ambient + key SH light (render.lighting)
RENDER_ALBEDO = 0.72
RENDER_AMBIENT = 0.6
RENDER_KEY = np.array([0.25, 0.3, 0.15])


@dataclass
class Face:
    """A photo prepared for editing.

    image: uint8 [H, W, 3] the photo; crop: uint8 [S, S, 3] the aligned crop G sees;
    align: float32 [2, 3] photo pixels -> crop pixels; p_exp: float32 [E] fitted normalised
    expression (width of the checkpoint); p_id: float32 [K] fitted identity;
    camera: float32 [7] fit camera in photo pixels; landmarks: float32 [68, 2] photo pixels.
    """

    key: str
    image: np.ndarray
    crop: np.ndarray
    align: np.ndarray
    p_exp: np.ndarray
    p_id: np.ndarray | None = None
    camera: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    fit_error: float | None = None
    landmark_source: str = ""
    timings: dict = field(default_factory=dict)


def _regression_output(out) -> torch.Tensor:
    """D's parameter regression [B, E] from ``D(x) -> (patch realism, params)``."""
    return out[1]


def load_checkpoint(path, device: str = "cpu") -> dict:
    """:func:`train.checkpoint.load_checkpoint` (a file or a training folder; every check,
    one-line :class:`ConfigError`) plus ``ckpt["_path"]``, the file actually read."""
    p = resolve_checkpoint(path)
    ckpt = _load_checkpoint(p, device)
    ckpt["_path"] = str(p)
    return ckpt


def build_from_checkpoint(ckpt: dict, device: str = "cpu"):
    """(G, D) in eval mode with the checkpoint's weights (D is None when it has none):
    :func:`train.checkpoint.load_networks`."""
    return load_networks(ckpt, device, ckpt.get("_path", "checkpoint"))


def find_model_file(checkpoint_path) -> Path | None:
    """The run's ``model.h5`` next to a checkpoint laid out as RUN/train/<variant>/checkpoints/x.pt
    (searched in the checkpoint's parent folders)."""
    p = Path(checkpoint_path).resolve()
    for parent in list(p.parents)[:5]:
        cand = parent / "model.h5"
        if cand.is_file():
            return cand
    return None


def find_reader_file(checkpoint_path, model_path=None) -> Path | None:
    """``RUN/reader/reader.pt`` of the checkpoint's run folder (searched in the checkpoint's
    parent folders, as :func:`find_model_file`), else beside the 3DMM (``model.h5``'s folder)."""
    p = Path(checkpoint_path).resolve()
    for parent in list(p.parents)[:5]:
        cand = parent / "reader" / "reader.pt"
        if cand.is_file():
            return cand
    if model_path is not None:
        cand = Path(model_path).resolve().parent / "reader" / "reader.pt"
        if cand.is_file():
            return cand
    return None


def resolve_reader(reader, checkpoint_path, model_path, morphable_model, device: str = "cpu"):
    """(Reader or None, note).  ``reader``: "auto" | "none" | None | a path.  A reader made for
    another 3DMM (``meta["model_hash"]``) reads other blendshapes: an explicit one is refused
    (ConfigError), an auto-discovered one is skipped with a note."""
    from train.reader import load_reader

    if reader is None or str(reader) == "none":
        return None, ""
    auto = str(reader) == "auto"
    path = find_reader_file(checkpoint_path, model_path) if auto else Path(reader)
    if path is None:
        return None, ""
    try:
        rd = load_reader(path, device)
    except ConfigError as e:
        if not auto:
            raise
        return None, f"reader {path} not used: {str(e).splitlines()[0]}"
    want, got = getattr(morphable_model, "hash", None), rd.meta.get("model_hash")
    if want and got and want != got:
        msg = f"reader {path} was trained for another 3DMM (model hash {got}, this model {want})"
        if not auto:
            raise ConfigError(msg)
        return None, msg + "; not used"
    return rd, ""


def _n_params_from(ckpt: dict, G) -> int:
    mc = ckpt["model_config"]
    for k in ("n_params", "n_exp", "p_dim", "c_dim", "E"):
        if k in mc and isinstance(mc[k], int):
            return int(mc[k])
    for k in ("n_params", "c_dim", "n_exp"):
        if hasattr(G, k):
            return int(getattr(G, k))
    raise ConfigError(f"{ckpt.get('_path', 'checkpoint')}: cannot tell the number of expression parameters")


class Editor:
    """A trained generator plus the 3DMM, ready to edit photos.

    ``edit(face, p)`` and ``render_face(face, p)`` are called once per slider move; both
    are serialised by a lock (two cores: parallel requests would only slow each other).
    """

    def __init__(self, G, D, morphable_model, n_params: int, *, image_size: int = 128, device: str = "cpu",
                 variant: str = "", step: int | None = None, render_size: int = 160, fit_cfg=None,
                 model_path=None, reader=None, reader_note: str = ""):
        self.G, self.D, self.model = G, D, morphable_model
        self.reader = reader                    # train.reader.Reader (independent regressor) or None
        self.reader_note = reader_note          # why an auto-discovered reader is not used ("" = none found)
        self.fit_cfg = fitbridge.fit_config(fit_cfg)   # the preset's complete fit: section (fit-emotionet's)
        self.model_path = Path(model_path) if model_path else None   # where the landmark calibration is looked for
        self.default_domain = fitbridge.image_domain(self.fit_cfg)  # uploads: fit.image_domain (auto: photo)
        self._fitters: dict = {}                # image domain -> fitting.photo.PhotoFitter
        self.n_params = int(n_params)
        self.image_size = int(image_size)
        self.device = device
        self.variant, self.step = variant, step
        self.render_size = int(render_size)
        self._lock = threading.Lock()
        names = list(getattr(morphable_model, "exp_names", []) or [])
        names += list(getattr(morphable_model, "speech_names", []) or [])
        self.exp_names = [str(n) if i < len(names) and names[i] else f"p{i + 1}"
                          for i, n in enumerate((names + [""] * self.n_params)[: self.n_params])]
        self._render_cam = None
        self._fast = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, checkpoint, model_path=None, device: str = "cpu", reader="auto", config=None) -> "Editor":
        """Editor from a checkpoint and a 3DMM.  ``reader``: "auto" (``RUN/reader/reader.pt``
        of the checkpoint's run folder when there and made for this 3DMM), "none"/None, or a
        reader file (errors are one line).  ``config``: the preset (a
        :class:`pipeline.config.Config`; None = the default preset) whose ``fit:`` section
        fits the photos, as ``fit-emotionet`` does with it."""
        from fitting.model import ModelError, MorphableModel

        ckpt = load_checkpoint(checkpoint, device)
        G, D = build_from_checkpoint(ckpt, device)
        mpath = Path(model_path) if model_path else find_model_file(ckpt["_path"])
        if mpath is None:
            raise ConfigError(f"no 3DMM found next to {checkpoint}: pass --model model.h5")
        if not mpath.is_file():
            raise ConfigError(f"3DMM file not found: {mpath}")
        try:
            mm = MorphableModel.load(mpath)
        except (ModelError, OSError) as e:
            raise ConfigError(f"{mpath}: {str(e).splitlines()[0]}") from None
        n = _n_params_from(ckpt, G)
        if n > mm.n_exp + mm.n_speech:
            raise ConfigError(f"checkpoint expects {n} expression parameters; {mpath} has {mm.n_exp + mm.n_speech}")
        size = int(ckpt["model_config"].get("image_size", 128))
        rd, note = resolve_reader(reader, ckpt["_path"], mpath, mm, device)
        return cls(G, D, mm, n, image_size=size, device=device, variant=str(ckpt.get("variant", "")),
                   step=ckpt.get("step"), fit_cfg=fitbridge.fit_config(config), model_path=mpath, reader=rd,
                   reader_note=note)

    # ------------------------------------------------------------------ parameters
    def check_params(self, p) -> np.ndarray:
        """A parameter vector from a list [E] or a {name: value} mapping; float32 [E].
        Bad input raises :class:`ConfigError` (one line)."""
        if isinstance(p, dict):
            out = np.zeros(self.n_params, np.float32)
            index = {n: i for i, n in enumerate(self.exp_names)}
            for k, v in p.items():
                if k not in index:
                    raise ConfigError(f"unknown expression parameter {k!r} (known: {', '.join(self.exp_names)})")
                out[index[k]] = _number(v, k)
            return out
        if not isinstance(p, (list, tuple, np.ndarray)):
            raise ConfigError(f"parameters must be a list of {self.n_params} numbers or a {{name: value}} mapping")
        if len(p) != self.n_params:
            raise ConfigError(f"expected {self.n_params} parameters, got {len(p)}")
        return np.array([_number(v, f"p[{i}]") for i, v in enumerate(p)], np.float32)

    def prototypes(self) -> dict[str, list[float]]:
        """The seven discrete expressions as normalised vectors of width E (name -> [E])."""
        from fitting.demo_model import expression_prototypes
        from fitting.model import EXPRESSION_NAMES

        P = np.asarray(expression_prototypes(self.model), np.float32)
        out = np.zeros((P.shape[0], self.n_params), np.float32)
        w = min(P.shape[1], self.n_params)
        out[:, :w] = P[:, :w]
        return {str(n): [round(float(x), 4) for x in out[i]] for i, n in enumerate(EXPRESSION_NAMES)}

    # ------------------------------------------------------------------ photos
    def calibration_for(self, domain: str):
        """The landmark calibration detections of ``domain`` photos go through (None: raw)."""
        return self.fitter(domain).calibration

    def domain_of(self, path) -> str:
        """The image domain of a photo file (``fit.image_domain``; auto: ``render`` in the demo
        world's photo folder, else ``photo``)."""
        return fitbridge.image_domain(self.fit_cfg, path)

    def fitter(self, domain: str | None = None):
        """The :class:`fitting.photo.PhotoFitter` for photos of ``domain`` (default: uploads')."""
        from fitting.photo import PhotoFitter

        domain = domain or self.default_domain
        if domain not in self._fitters:
            cal = (fitbridge.load_calibration(self.model_path, self.fit_cfg, domain)
                   if self.model_path is not None else None)
            self._fitters[domain] = PhotoFitter(self.model, self.fit_cfg, cal, domain=domain)
        return self._fitters[domain]

    def prepare(self, image: np.ndarray, key: str = "photo", landmarks: np.ndarray | None = None,
                domain: str | None = None) -> Face:
        """Detect (unless ``landmarks`` [68, 2] are given), fit the 3DMM and align the photo,
        exactly as the fit stage does (:mod:`fitting.photo`), for a photo of ``domain``
        (default: uploads', see :meth:`domain_of`).  image uint8 [H, W, 3].  No face ->
        :class:`ImageInputError`."""
        t0 = time.perf_counter()
        fit = fitbridge.fit_photo(self.fitter(domain), image, landmarks=landmarks)
        p = np.zeros(self.n_params, np.float32)
        w = min(self.n_params, len(fit["p_exp"]))
        p[:w] = fit["p_exp"][:w]
        face = Face(key=key, image=image, crop=fit["crop"], align=fit["align"], p_exp=p, p_id=fit.get("p_id"),
                    camera=fit.get("camera"), landmarks=fit.get("landmarks"), fit_error=fit.get("fit_error"),
                    landmark_source=fit.get("landmark_source", ""))
        face.timings["fit_ms"] = (time.perf_counter() - t0) * 1e3
        return face

    # ------------------------------------------------------------------ networks
    def _crop_tensor(self, crop: np.ndarray) -> torch.Tensor:
        """uint8 [s, s, 3] crop -> G's input [1, 3, S, S] in [-1, 1], S = image_size, with the
        trainer's own conversion (train.data.uint8_to_float: antialiased bilinear resize
        when the shards' crop size differs from the network's)."""
        from train.data import uint8_to_float

        u8 = torch.from_numpy(np.array(crop, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
        return uint8_to_float(u8.to(self.device), self.image_size)

    def net_align(self, face: Face) -> np.ndarray:
        """[2, 3] map from photo pixels to G's output pixels (the crop's ``align`` scaled
        from the crop size to ``image_size``; corner-origin pixels scale exactly)."""
        return np.asarray(face.align, np.float64) * (self.image_size / face.crop.shape[0])

    @property
    def fast(self) -> CachedGenerator | None:
        """The cached-first-layer generator, or None where G lacks that structure."""
        if self._fast is None:
            cg = CachedGenerator(self.G, self.n_params, self.image_size, self.device)
            self._fast = cg if cg.ok else False
        return self._fast or None

    @torch.inference_mode()
    def edit(self, face: Face, p, use_cache: bool = True) -> np.ndarray:
        """G(crop, p): the edited crop, uint8 [S, S, 3].  With ``use_cache`` the photo's
        share of G's first layer is computed once per photo (:class:`CachedGenerator`)."""
        pt = torch.as_tensor(np.asarray(p, np.float32), device=self.device)[None]
        ps = torch.as_tensor(np.asarray(face.p_exp, np.float32), device=self.device)[None]   # the photo's fit
        with self._lock:
            x = self._crop_tensor(face.crop)
            fast = self.fast if use_cache else None
            if fast is not None:
                x_feat = getattr(face, "_x_feat", None)
                if x_feat is None:
                    x_feat = face._x_feat = fast.prepare(x)
                out = fast.forward(x, x_feat, pt, ps)
            else:
                out = generated_image(self.G(x, pt, ps))
        img = (out[0].float().clamp(-1, 1) + 1.0) * 0.5
        return to_uint8(img.permute(1, 2, 0))

    @property
    def regressors(self) -> list[str]:
        """The parameter regressors available for transfer: "D" (the critic's head), "reader"."""
        return (["D"] if self.D is not None else []) + (["reader"] if self.reader is not None else [])

    @torch.inference_mode()
    def regress(self, face: Face, regressor: str = "D") -> np.ndarray:
        """The expression parameters of the aligned crop, float32 [E], read by D's regression
        head (``"D"``) or by the independent reader (``"reader"``; its width is cut or
        zero-padded to E: a 40-wide reader's last 10 are the speech parameters)."""
        if regressor == "reader":
            if self.reader is None:
                raise ConfigError("no expression reader loaded (serve/edit --reader F; slidergan train-reader)")
            with self._lock:
                q = self.reader.predict(np.asarray(face.crop, np.uint8))[0]
            out = np.zeros(self.n_params, np.float32)
            w = min(len(q), self.n_params)
            out[:w] = q[:w]
            return out
        if regressor != "D":
            raise ConfigError(f"unknown regressor {regressor!r} (D or reader)")
        if self.D is None:
            raise ConfigError("this checkpoint has no discriminator weights to regress parameters with")
        with self._lock:
            out = _regression_output(self.D(self._crop_tensor(face.crop)))
        return out.reshape(-1)[: self.n_params].float().cpu().numpy()

    def paste(self, face: Face, edited: np.ndarray) -> np.ndarray:
        """The edited crop (uint8 [S, S, 3], S = image_size) pasted back into the photo,
        uint8 [H, W, 3]."""
        return paste_back(face.image, edited, self.net_align(face))

    # ------------------------------------------------------------------ 3D render
    def _camera(self, V: np.ndarray) -> np.ndarray:
        """A near-frontal camera [7] framing vertices V [N, 3] in a render_size square."""
        from render.camera import make_camera, rotation_matrix

        pitch, yaw = 0.08, 0.25
        R = rotation_matrix(pitch, yaw, 0.0)
        Xc = np.asarray(V, np.float64) @ R.T
        lo, hi = Xc.min(0), Xc.max(0)
        c = (lo + hi) / 2
        s = 0.9 * self.render_size / float(max(hi[0] - lo[0], hi[1] - lo[1]))
        half = self.render_size / 2  # u = s x + tx, v = -s y + ty: the box centre goes to the middle
        return make_camera(pitch=pitch, yaw=yaw, tx=half - s * c[0], ty=half + s * c[1], scale=s)

    def face_camera(self, face: Face | None) -> np.ndarray:
        """The render camera of a face: framed on its neutral fitted shape (cached per face),
        so the view stays put while the expression changes."""
        cam = getattr(face, "_render_cam", None) if face is not None else self._render_cam
        if cam is None:
            cam = self._camera(self.face_shape(face, np.zeros(self.n_params, np.float32)))
            if face is not None:
                face._render_cam = cam
            else:
                self._render_cam = cam
        return cam

    def _expression_basis(self) -> np.ndarray:
        """U_exp (+ speech) scaled by sqrt(ev), float32 [3N, E] (cached)."""
        if getattr(self, "_bexp", None) is None:
            E = self.n_params  # instance() is linear: its response to unit vectors is the basis
            units = np.asarray(self.model.instance(None, np.eye(E, dtype=np.float32)), np.float32)
            mean = np.asarray(self.model.instance(None, None), np.float32)
            self._bexp = np.ascontiguousarray((units - mean[None]).reshape(E, -1).T)
        return self._bexp

    def face_shape(self, face: Face | None, p) -> np.ndarray:
        """Vertices [N, 3] of the photo's fitted identity with expression ``p`` [E]
        (= model.instance(p_id, p); the identity part is cached per face)."""
        base = getattr(face, "_shape_id", None) if face is not None else None
        if base is None:
            pid = face.p_id if face is not None and face.p_id is not None else None
            base = np.asarray(self.model.instance(pid, None), np.float32).reshape(-1)
            if face is not None:
                face._shape_id = base
        pe = np.zeros(self.n_params, np.float32)
        q = np.asarray(p, np.float32).reshape(-1)[: self.n_params]
        pe[: len(q)] = q
        return (base + self._expression_basis() @ pe).reshape(-1, 3)

    def render_face(self, face: Face | None, p) -> np.ndarray:
        """The 3D blendshape face for expression ``p`` (the photo's fitted identity), grey
        with a key light, from a fixed near-frontal camera; uint8 [R, R, 3] (R = render_size)."""
        from render import render
        from render.lighting import AMBIENT

        V = self.face_shape(face, p)
        light = np.array(AMBIENT, np.float64) * RENDER_AMBIENT
        light[1:4] = RENDER_KEY  # SH band 1 (y, z, x): a key light from above, in front, to the right
        colours = np.full((V.shape[0], 3), RENDER_ALBEDO, np.float32)
        res = render(V, self.model.trilist, colours, self.face_camera(face),
                     background=(self.render_size, self.render_size), light=light)
        img = res.image
        img[~res.mask] = np.array([0.93, 0.94, 0.96], np.float32)
        return to_uint8(img)


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise ConfigError(f"parameter {what} must be a number, got {v!r}")
    f = float(v)
    if not np.isfinite(f):
        raise ConfigError(f"parameter {what} must be finite, got {v!r}")
    return f


__all__ = ["Editor", "Face", "ImageInputError", "load_checkpoint", "build_from_checkpoint", "find_model_file",
           "find_reader_file", "resolve_reader", "CHECKPOINT_FORMAT"]
