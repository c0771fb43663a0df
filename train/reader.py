"""Train, save and load the independent expression reader (``model/reader.py``).

``train_reader(run, out_path, cfg)`` fits the reader to the 3D warps of RUN (exact
parameters) and writes ``RUN/reader/reader.pt`` (or ``out_path``) atomically; the file is a
dict of plain values and tensors, loadable with ``torch.load(weights_only=True)``::

    {"format": "slidergan-reader/1",
     "reader_config": {image_size, n_params, width, stages, head, stem_stride},
     "state_dict": {...}, "meta": {...}}

``load_reader(path) -> Reader``; ``Reader.predict(images uint8 [N,H,W,3]) -> float32 [N,E]``.

Data (decisions, docs/training.md "Expression reader"):

* Training rows: RUN/warps minus the warps of the photos the evaluation holds out — the
  trainer's split (``pipeline.split.holdout_rows`` over the fits' ``identity`` with
  ``evaluate.test_fraction`` and the global ``seed``; warps share their photo's ``group``).
  The reader always holds them out (also with ``train.holdout: false``): they are its
  held-out evaluation set, and the photos the evaluation edits must be unseen by the
  instrument that reads the edits.  When that split holds out nothing (no identity labels),
  groups are split by the same hash instead (``meta["heldout_split"] = "group"``).
* Warps only, no real photos: the photos' fitted parameters are estimates (noisy), and the
  held-out warp error did not improve with them (``reader.use_fits``; measured in the docs).
* No horizontal flips: the blendshapes are not left-right symmetric (jaw_left, ...), so a
  flip does not preserve the label.  Colour jitter per image and channel
  (``reader.jitter``; skin, light and background differ between identities) and optional
  integer shifts (``reader.shift``, no gain measured).
* Loss: squared error weighted per component by ``(1 - a) + a * ev_i / mean(ev)``
  (``a = reader.vertex_weight``; a = 1 is the vertex-space error the 3DMM draws, a = 0 plain
  MSE over the normalised parameters).  Without RUN/model.h5 the weights are uniform and
  the vertex-space figures are None.
* Images are converted as the GAN trainer converts them (``train.data.uint8_to_float``:
  antialiased bilinear resize to ``reader.image_size``), once, and kept in memory as
  float16 (``reader.max_train`` caps the rows for very large warp stages).

Deterministic: batch order from ``(seed, epoch)`` (:class:`train.data.ResumableBatchSampler`),
jitter/shifts from one generator seeded by ``seed``, weights from ``seed``; on the CPU two runs
give identical weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from model.networks import resize_images
from model.reader import ReaderConfigError, build_reader
from pipeline.atomic import atomic_write_with
from pipeline.config import Config, ConfigError
from pipeline.split import held_out_identity, holdout_rows
from train.data import ResumableBatchSampler, open_stage, params_to_width, uint8_to_float

FORMAT = "slidergan-reader/1"
CODE_VERSION = "2"          # bump when training changes what a file holds (part of the re-run key)
DEFAULT_NAME = Path("reader") / "reader.pt"
# reader.* keys that do not change the trained weights (left out of the re-run key)
_NOT_KEYED = ("device", "threads", "log_every")


def default_reader_path(run: str | Path) -> Path:
    """``RUN/reader/reader.pt``."""
    return Path(run) / DEFAULT_NAME


# -- settings ------------------------------------------------------------------------------
def reader_settings(cfg: Config) -> dict:
    """The ``reader:`` section, checked (ConfigError with one line)."""
    if "reader" not in cfg:
        raise ConfigError("config has no 'reader' section (config/demo.yaml lists its keys)")
    r = cfg.section("reader")
    for key, low in (("image_size", 16), ("width", 1), ("stages", 1), ("steps", 0), ("batch_size", 1),
                     ("eval_batch", 1), ("log_every", 1), ("shift", 0), ("max_train", 0), ("threads", 0)):
        if int(r[key]) < low:
            raise ConfigError(f"reader.{key} must be >= {low}, got {r[key]}")
    if r["head"] not in ("flatten", "pool"):
        raise ConfigError(f"reader.head must be flatten or pool, got {r['head']!r}")
    if r["lr_schedule"] not in ("cosine", "linear", "constant"):
        raise ConfigError(f"reader.lr_schedule must be cosine, linear or constant, got {r['lr_schedule']!r}")
    if not 0.0 <= float(r["jitter"]) < 1.0:
        raise ConfigError(f"reader.jitter must be in [0, 1), got {r['jitter']}")
    if not 0.0 <= float(r["vertex_weight"]) <= 1.0:
        raise ConfigError(f"reader.vertex_weight must be in [0, 1], got {r['vertex_weight']}")
    if float(r["lr"]) <= 0 or float(r["weight_decay"]) < 0 or not 0.0 <= float(r["warmup_fraction"]) < 1.0:
        raise ConfigError("reader.lr must be > 0, reader.weight_decay >= 0, reader.warmup_fraction in [0, 1)")
    return r


def reader_config(r: dict, n_params: int) -> dict:
    """The network's config dict (stored in the file) from the ``reader:`` section."""
    return {"image_size": int(r["image_size"]), "n_params": int(n_params), "width": int(r["width"]),
            "stages": int(r["stages"]), "head": str(r["head"]), "stem_stride": int(r["stem_stride"]),
}


def _device(name: str) -> torch.device:
    try:
        dev = torch.device("cuda" if name == "auto" and torch.cuda.is_available()
                           else ("cpu" if name == "auto" else name))
    except (RuntimeError, TypeError):
        raise ConfigError(f"reader.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"reader.device={name} but no CUDA device is available (use auto or cpu)")
    return dev


# -- data ----------------------------------------------------------------------------------
def _stage_identity(ds) -> dict:
    """What identifies a stage's content: params/code/model hashes and the shard checksums."""
    m = ds.meta
    return {"name": m.get("name"), "params_hash": m.get("params_hash"), "code_version": m.get("code_version"),
            "model_hash": m.get("model_hash"),
            "shards": [[s.get("file"), int(s.get("n", 0)), s.get("sha256")] for s in m.get("shards", [])]}


def heldout_warps(fits, warps, fraction: float, seed: int) -> tuple[np.ndarray, str, int]:
    """bool [len(warps)]: the warps of the photos the evaluation holds out.

    The trainer's ``_holdout``: ``holdout_rows`` over the fits' identity (keys for unknown
    identities), fraction ``evaluate.test_fraction``, global seed; the held-out photos'
    ``group`` values select their warps.  Returns (mask, split kind, held-out photos); the
    kind is "identity", or "group" when that split holds out nothing or everything (then
    the photo groups themselves are split by the same hash)."""
    if "group" not in warps.datasets:
        raise ConfigError(f"{warps.dir}: warps have no 'group' dataset")
    wg = warps.read("group").astype(np.int64)
    test = None
    if fits is not None and "identity" in fits.datasets and "group" in fits.datasets:
        keys = np.asarray(fits.keys(), object) if "key" in fits.datasets else None
        t = holdout_rows(fits.read("identity").astype(np.int64), keys, fraction, seed)
        if t.any() and not t.all():
            test = t
    if test is not None:
        held_groups = fits.read("group").astype(np.int64)[test]
        return np.isin(wg, held_groups), "identity", int(test.sum())
    groups = np.unique(wg)
    g_test = held_out_identity(groups, fraction, seed)
    if not g_test.any() and len(groups) > 1:
        g_test[-1] = True
    if g_test.all() and len(groups) > 1:
        g_test[0] = False
    return np.isin(wg, groups[g_test]), "group", int(g_test.sum())


def load_images(ds, rows: np.ndarray, size: int, block: int = 256, dtype=torch.float16) -> torch.Tensor:
    """``dtype`` [n,3,size,size] in [-1,1] of ``rows`` of a stage, converted with the trainer's
    ``uint8_to_float``.  Read in contiguous slices of ``block`` rows (h5py reads a slice
    much faster than scattered rows) from which the wanted rows are picked."""
    rows = np.asarray(rows, np.int64)
    out = torch.empty((len(rows), 3, size, size), dtype=dtype)
    if len(rows) == 0:
        return out
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    pos = 0
    while pos < len(srt):
        a = int(srt[pos])
        end = int(np.searchsorted(srt, a + block, side="left"))
        chunk = ds.read("image", slice(a, int(srt[end - 1]) + 1))
        u8 = torch.from_numpy(np.ascontiguousarray(chunk[srt[pos:end] - a])).permute(0, 3, 1, 2)
        out[torch.from_numpy(order[pos:end])] = uint8_to_float(u8, size).to(dtype)
        pos = end
    return out


def _load_model(run: Path, echo):
    """RUN/model.h5 as a MorphableModel, or None (with a note) when absent."""
    path = run / "model.h5"
    if not path.is_file():
        echo(f"note: {path} not found: uniform loss weights, no vertex-space figures")
        return None
    from fitting.model import ModelError, MorphableModel
    try:
        return MorphableModel.load(path)
    except (ModelError, OSError) as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


def _component_ev(model, E: int) -> np.ndarray | None:
    if model is None:
        return None
    ev = [np.asarray(model.ev_exp, np.float64)]
    if model.ev_speech is not None:
        ev.append(np.asarray(model.ev_speech, np.float64))
    ev = np.concatenate(ev)
    if len(ev) < E:
        raise ConfigError(f"RUN/model.h5 has {len(ev)} expression + speech components; the reader needs {E}")
    return ev[:E]


# -- metrics -------------------------------------------------------------------------------
def reader_metrics(p: np.ndarray, p_hat: np.ndarray, model=None) -> dict:
    """Held-out figures of predictions ``p_hat`` [N,E] against the truth ``p`` [N,E].

    ``rel_error`` mean ||p - p_hat|| / ||p|| (rows with ||p|| > 0); ``r2`` per component
    (None where the truth does not vary, e.g. zero-padded speech columns); with a 3DMM
    ``vertex_error`` = mean of ``MorphableModel.vertex_rel_errors`` and ``zero_vertex_error``
    the same for predicting zeros (1.0 by construction)."""
    p, p_hat = np.asarray(p, np.float64), np.asarray(p_hat, np.float64)
    norm = np.linalg.norm(p, axis=1)
    ok = norm > 0
    rel = float(np.mean(np.linalg.norm(p - p_hat, axis=1)[ok] / norm[ok])) if ok.any() else float("nan")
    ss_tot = ((p - p.mean(0)) ** 2).sum(0)
    ss_res = ((p - p_hat) ** 2).sum(0)
    r2 = [None if t <= 1e-12 else round(float(1.0 - r / t), 6) for r, t in zip(ss_res, ss_tot)]
    out = {"rel_error": rel, "r2": r2, "vertex_error": None, "zero_vertex_error": None}
    if model is not None:
        out["vertex_error"] = float(np.mean(model.vertex_rel_errors(p, p_hat)))
        out["zero_vertex_error"] = float(np.mean(model.vertex_rel_errors(p, np.zeros_like(p))))
    return out


# -- the reader object ---------------------------------------------------------------------
class Reader:
    """A trained, frozen reader: ``predict(images)``, ``predict_tensor(x)``, ``meta``,
    ``config``, ``n_params``, ``image_size``."""

    def __init__(self, net, config: dict, meta: dict, device: str | torch.device = "cpu", path: str = ""):
        self.net = net.to(device).eval()
        for q in self.net.parameters():
            q.requires_grad_(False)
        self.config, self.meta, self.device, self.path = dict(config), dict(meta), torch.device(device), str(path)
        self.n_params, self.image_size = int(config["n_params"]), int(config["image_size"])

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """x float [N,3,H,W] in [-1,1] (any H, W: ``model.networks.resize_images``, as in
        ``uint8_to_float``) -> [N,E]
        float32 on ``x``'s device.  Gradients do not flow (the reader is an instrument)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"predict_tensor expects [N,3,H,W], got {list(x.shape)}")
        S = self.image_size
        outs = []
        for a in range(0, x.shape[0], batch):
            t = x[a:a + batch].to(self.device, torch.float32)
            t = resize_images(t, S)                   # the one resize (model.networks); t itself at S x S
            outs.append(self.net(t).float())
        out = torch.cat(outs) if outs else torch.zeros((0, self.n_params))
        return out.to(x.device)

    def predict(self, images, batch: int = 128) -> np.ndarray:
        """uint8 images [N,H,W,3] (or one [H,W,3]) of any size -> float32 [N,E] (converted
        with the trainer's ``uint8_to_float``)."""
        a = np.asarray(images)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"predict expects uint8 [N,H,W,3], got shape {list(a.shape)}")
        if a.dtype != np.uint8:
            raise ValueError(f"predict expects uint8 images, got {a.dtype}")
        outs = []
        with torch.no_grad():
            for s in range(0, len(a), batch):
                u8 = torch.from_numpy(np.array(a[s:s + batch], copy=True)).permute(0, 3, 1, 2).to(self.device)
                outs.append(self.net(uint8_to_float(u8, self.image_size)).float().cpu())
        out = torch.cat(outs).numpy() if outs else np.zeros((0, self.n_params), np.float32)
        return out.astype(np.float32, copy=False)


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def load_reader_file(path: str | Path) -> dict:
    """The raw reader dict (weights_only); ConfigError with one line when unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"reader file not found: {path}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — corrupt / foreign file: one line
        raise ConfigError(f"{p}: not a readable reader file ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        fmt = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"{p}: not a reader file (format {fmt!r}, expected {FORMAT!r})")
    for k in ("reader_config", "state_dict", "meta"):
        if k not in obj:
            raise ConfigError(f"{p}: reader file has no {k!r} entry")
    return obj


def load_reader(path: str | Path, device: str = "cpu") -> Reader:
    """A :class:`Reader` from a ``slidergan-reader/1`` file; every failure (missing,
    corrupt, foreign, weights that do not fit the config) is a one-line ConfigError."""
    obj = load_reader_file(path)
    try:
        net = build_reader(obj["reader_config"])
        net.load_state_dict(obj["state_dict"])
    except (ReaderConfigError, RuntimeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: reader weights do not fit its reader_config ({_one_line(e)})") from None
    return Reader(net, obj["reader_config"], obj["meta"], device, str(path))


# -- training ------------------------------------------------------------------------------
def _lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t


def _shift_batch(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) in [-max_shift, max_shift] (edge pixels
    replicated).  [B,3,S,S] -> [B,3,S,S]."""
    B, _, S, _ = x.shape
    d = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=gen)
    pad = F.pad(x, (max_shift,) * 4, mode="replicate")
    out = torch.empty_like(x)
    for i in range(B):
        dy, dx = int(d[i, 0]) + max_shift, int(d[i, 1]) + max_shift
        out[i] = pad[i, :, dy:dy + S, dx:dx + S]
    return out


def _jitter_batch(x: torch.Tensor, gen: torch.Generator, amount: float) -> torch.Tensor:
    """Per image and channel a gain in [1 - a, 1 + a] and an offset in [-a, a] (colour and
    brightness of skin, light and background vary between identities); clipped to [-1, 1]."""
    B, C = x.shape[:2]
    gain = 1.0 + amount * (2 * torch.rand((B, C, 1, 1), generator=gen) - 1)
    off = amount * (2 * torch.rand((B, C, 1, 1), generator=gen) - 1)
    return (x * gain.to(x.device) + off.to(x.device)).clamp_(-1.0, 1.0)


def run_key(r: dict, E: int, seed: int, fraction: float, steps: int, fits, warps, model_hash) -> str:
    """sha256[:16] of everything the trained file depends on: the reader settings (but
    device, threads, log_every), E, seed, test fraction, steps, the fits and warps stages
    (hashes + shard checksums) and the 3DMM's hash."""
    payload = {"format": FORMAT, "code_version": CODE_VERSION, "reader": {k: v for k, v in sorted(r.items()) if k not in _NOT_KEYED},
               "E": int(E), "seed": int(seed), "test_fraction": float(fraction), "steps": int(steps),
               "fits": None if fits is None else _stage_identity(fits), "warps": _stage_identity(warps),
               "model_hash": model_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _existing_meta(path: Path, key: str) -> dict | None:
    """The meta of an existing reader file made with the same key, else None."""
    if not path.is_file():
        return None
    try:
        obj = load_reader_file(path)
    except ConfigError:
        return None
    meta = obj.get("meta") or {}
    return dict(meta) if meta.get("key") == key else None


def train_reader(run: str | Path, out_path: str | Path | None, cfg: Config, echo: Callable[[str], None] = print,
                 steps: int | None = None, progress: bool | None = None) -> dict:
    """Train the reader on RUN's warps and write it to ``out_path`` (default
    ``RUN/reader/reader.pt``).  Returns its meta (with ``skipped: True`` when a file made from
    the same inputs and settings already exists: then nothing is trained).

    ``steps`` overrides ``reader.steps``; ``progress`` None = a tqdm bar when stdout is a
    terminal, else a line every ``reader.log_every`` steps through ``echo``."""
    run = Path(run)
    out = Path(out_path) if out_path else default_reader_path(run)
    r = reader_settings(cfg)
    seed = int(cfg.get("seed", 0))
    t_sec = cfg.section("train") if "train" in cfg else {}
    speech = bool(t_sec.get("speech", False))
    E = 40 if speech else 30
    n_steps = int(r["steps"] if steps is None else steps)
    if n_steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {n_steps}")
    frac = float(cfg.section("evaluate").get("test_fraction", 0.17)) if "evaluate" in cfg else 0.17
    fits = open_stage(run, "fits", required=False)
    warps = open_stage(run, "warps", required=True)
    model = _load_model(run, echo)
    mhash = None if model is None else model.hash
    key = run_key(r, E, seed, frac, n_steps, fits, warps, mhash)
    old = _existing_meta(out, key)
    if old is not None:
        echo(f"reader {out} is up to date (key {key}); nothing to do")
        return dict(old, skipped=True, path=str(out))

    warp_p = params_to_width(warps.read("p_exp"), E, str(warps.dir), speech)
    held, split_kind, held_photos = heldout_warps(fits, warps, frac, seed)
    train_rows, held_rows = np.nonzero(~held)[0], np.nonzero(held)[0]
    if len(train_rows) == 0 or len(held_rows) == 0:
        raise ConfigError(f"{warps.dir}: need training and held-out warps, got {len(train_rows)} and {len(held_rows)}")
    if int(r["max_train"]) and len(train_rows) > int(r["max_train"]):
        pick = np.random.default_rng([seed, 31]).choice(len(train_rows), int(r["max_train"]), replace=False)
        train_rows = np.sort(train_rows[pick])
    use_fits = bool(r["use_fits"]) and fits is not None
    conf = reader_config(r, E)
    try:
        build_reader(conf)
    except ReaderConfigError as e:
        raise ConfigError(str(e)) from None
    S = conf["image_size"]
    device = _device(str(r["device"]))
    n_threads = torch.get_num_threads()
    if device.type == "cpu" and int(r["threads"]) > 0:
        torch.set_num_threads(int(r["threads"]))
    try:
        t_load = time.perf_counter()
        x_train = load_images(warps, train_rows, S)
        y_train = torch.from_numpy(warp_p[train_rows])
        n_fit_rows = 0
        if use_fits:
            fit_p = params_to_width(fits.read("p_exp"), E, str(fits.dir), speech)
            f_groups = fits.read("group").astype(np.int64) if "group" in fits.datasets else np.arange(len(fits))
            held_groups = np.unique(warps.read("group").astype(np.int64)[held])
            f_rows = np.nonzero(~np.isin(f_groups, held_groups))[0]
            x_train = torch.cat([x_train, load_images(fits, f_rows, S)])
            y_train = torch.cat([y_train, torch.from_numpy(fit_p[f_rows])])
            n_fit_rows = len(f_rows)
        x_held = load_images(warps, held_rows, S, dtype=torch.float32)   # exactly what predict() sees
        y_held = warp_p[held_rows]
        load_s = time.perf_counter() - t_load
        echo(f"reader: {len(train_rows)} training warps" + (f" + {n_fit_rows} photos" if n_fit_rows else "")
             + f", {len(held_rows)} held-out warps ({held_photos} held-out photos, split by {split_kind}), "
             f"{S}x{S}, E={E}, {n_steps} steps on {device} (images read in {load_s:.1f} s)")
        net, m = _fit(conf, r, x_train, y_train, x_held, y_held, model, E, n_steps, seed, device, echo, progress)
        photo = _heldout_photo_figures(net, conf, fits, warps, held, E, speech, model)
    finally:
        torch.set_num_threads(n_threads)
    meta = {"key": key, "format": FORMAT, "run": str(run.resolve()), "model_hash": mhash,
            "n_params": E, "image_size": S, "speech": speech, "n_train": int(len(y_train)),
            "n_train_warps": int(len(train_rows)), "n_train_photos": int(n_fit_rows),
            "n_heldout": int(len(held_rows)), "heldout_photos": held_photos, "heldout_split": split_kind,
            "test_fraction": frac, "seed": seed, "steps": n_steps, "batch_size": m["batch_size"],
            "exp_names": [] if model is None else list(model.exp_names) + list(getattr(model, "speech_names", []) or []),
            "heldout_rel_error": m["rel_error"], "heldout_vertex_error": m["vertex_error"],
            "heldout_zero_vertex_error": m["zero_vertex_error"], "heldout_r2": m["r2"],
            "heldout_photo_rel_error_vs_fit": photo.get("rel_error"),
            "heldout_photo_vertex_error_vs_fit": photo.get("vertex_error"), "n_heldout_fit_photos": photo.get("n", 0),
            "train_rel_error": m["train_rel_error"], "train_seconds": m["seconds"], "load_seconds": round(load_s, 3),
            "loss_final": m["loss_final"], "device": str(device), "settings": {k: r[k] for k in sorted(r)},
            "n_weights": int(sum(q.numel() for q in net.parameters())), "fits_stage": None if fits is None else str(fits.dir),
            "warps_stage": str(warps.dir), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    meta["exp_names"] = meta["exp_names"][:E]
    save_reader(out, net, conf, meta)
    return dict(meta, skipped=False, path=str(out))


def _heldout_photo_figures(net, conf, fits, warps, held, E, speech, model) -> dict:
    """The reader on the held-out *photos* (fits rows of the held-out groups) against their
    fitted parameters — an estimate, not the truth, but the domain G's edits live in.
    {} when there are no fits."""
    if fits is None or "group" not in fits.datasets or not held.any():
        return {}
    groups = np.unique(warps.read("group").astype(np.int64)[held])
    rows = np.nonzero(np.isin(fits.read("group").astype(np.int64), groups))[0]
    if len(rows) == 0:
        return {}
    p_fit = params_to_width(fits.read("p_exp"), E, str(fits.dir), speech)[rows]
    x = load_images(fits, rows, conf["image_size"], dtype=torch.float32)
    with torch.no_grad():
        q = torch.cat([net(x[a:a + 256]) for a in range(0, len(x), 256)]).numpy()
    out = reader_metrics(p_fit, q, model)
    return {"rel_error": out["rel_error"], "vertex_error": out["vertex_error"], "n": int(len(rows))}


def save_reader(path: str | Path, net, config: dict, meta: dict) -> Path:
    """Write a ``slidergan-reader/1`` file atomically (plain values and CPU tensors only, so
    ``torch.load(weights_only=True)`` reads it)."""
    obj = {"format": FORMAT, "reader_config": dict(config),
           "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, "meta": dict(meta)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))
    return path


def _fit(conf, r, x_train, y_train, x_held, y_held, model, E, n_steps, seed, device, echo, progress):
    """The optimisation: (trained net in eval mode on the CPU, figures)."""
    torch.manual_seed(seed)
    net = build_reader(conf).to(device)
    ev = _component_ev(model, E)
    a = float(r["vertex_weight"])
    w = np.ones(E) if ev is None else (1.0 - a) + a * ev / max(ev.mean(), 1e-12)
    w_t = torch.tensor(w / w.mean(), dtype=torch.float32, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=float(r["lr"]), weight_decay=float(r["weight_decay"]))
    bs = min(int(r["batch_size"]), len(y_train))
    nb = ResumableBatchSampler.count(len(y_train), bs)
    warmup = int(round(float(r["warmup_fraction"]) * n_steps))
    shift, jitter = int(r["shift"]), float(r["jitter"])
    gen = torch.Generator().manual_seed(seed * 7919 + 1)
    if progress is None:
        progress = sys.stdout.isatty()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_steps, unit="step", desc="reader", dynamic_ncols=True, file=sys.stdout)
    log_every = int(r["log_every"])
    net.train()
    t0 = time.perf_counter()
    step, epoch, loss_win, loss_final = 0, 0, [], float("nan")
    while step < n_steps:
        for idx in ResumableBatchSampler(len(y_train), bs, seed, epoch).batches():
            if step >= n_steps:
                break
            ii = torch.as_tensor(idx)
            x = x_train[ii].to(device, torch.float32)
            y = y_train[ii].to(device)
            if shift:
                x = _shift_batch(x, gen, shift)
            if jitter > 0:
                x = _jitter_batch(x, gen, jitter)
            for g in opt.param_groups:
                g["lr"] = float(r["lr"]) * _lr_factor(step, n_steps, str(r["lr_schedule"]), warmup)
            loss = (((net(x) - y) ** 2) * w_t).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_win.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix_str(f"loss {np.mean(loss_win[-10:]):.4f}", refresh=False)
            elif step % log_every == 0 or step == n_steps:
                el = time.perf_counter() - t0
                echo(f"reader step {step}/{n_steps}: loss {np.mean(loss_win[-log_every:]):.4f} "
                     f"({step / max(el, 1e-9):.1f} steps/s)")
        epoch += 1
        if nb == 0:
            break
    if bar is not None:
        bar.close()
    loss_final = float(np.mean(loss_win[-max(1, min(len(loss_win), 50)):])) if loss_win else float("nan")
    seconds = time.perf_counter() - t0
    net.eval()
    bs_eval = int(r["eval_batch"])

    def _predict(xs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([net(xs[a:a + bs_eval].to(device, torch.float32)).float().cpu()
                              for a in range(0, len(xs), bs_eval)]).numpy()

    held = reader_metrics(y_held, _predict(x_held), model)
    sub = np.random.default_rng([seed, 5]).permutation(len(y_train))[:min(len(y_train), len(y_held), 1024)]
    tr = reader_metrics(y_train.numpy()[sub], _predict(x_train[torch.as_tensor(sub)]), None)
    net = net.cpu()
    return net, {"rel_error": held["rel_error"], "vertex_error": held["vertex_error"],
                 "zero_vertex_error": held["zero_vertex_error"], "r2": held["r2"],
                 "train_rel_error": tr["rel_error"], "seconds": round(seconds, 3), "loss_final": loss_final,
                 "batch_size": bs}


def summary_line(meta: dict) -> str:
    """One line of the reader's held-out figures (CLI, docs)."""
    r2 = meta.get("heldout_r2") or []
    names = meta.get("exp_names") or []
    parts = [f"{names[i] if i < len(names) else f'p{i + 1}'} {r2[i]:.2f}" for i in range(min(3, len(r2)))
             if r2[i] is not None]
    ve = meta.get("heldout_vertex_error")
    return (f"held-out rel error {meta['heldout_rel_error']:.3f}"
            + (f", vertex error {ve:.3f} (zeros {meta.get('heldout_zero_vertex_error', 1.0):.2f})" if ve is not None else "")
            + (f", R^2 {', '.join(parts)}" if parts else "") + f" on {meta['n_heldout']} warps"
            + (f"; held-out photos vs their fit: vertex error {pv:.3f}"
               if (pv := meta.get("heldout_photo_vertex_error_vs_fit")) is not None else ""))


__all__ = ["FORMAT", "Reader", "default_reader_path", "heldout_warps", "load_reader", "load_reader_file",
           "reader_config", "reader_metrics", "reader_settings", "run_key", "save_reader", "summary_line",
           "train_reader"]
