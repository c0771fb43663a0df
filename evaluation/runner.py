"""``slidergan evaluate``'s engine: every protocol and figure for one or more checkpoints,
then ``metrics.json`` and ``index.html``.

A protocol that cannot run (missing stage, wrong parameter count, no face found, ...)
leaves its metrics ``null`` and records the reason; only unusable *inputs the user named*
(a missing checkpoint, an empty run folder) are errors.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from evaluation import metrics
from evaluation.baselines import COPY, IDENTITY_ALIGN, ORACLE, CopyInput, WarpFit, WarpOracle, make_warper, warps_options
from evaluation.data import EvalData, Unavailable, balanced_rows, load_data
from evaluation.networks import Networks, PseudoNetwork, load_checkpoint
from pipeline.config import ConfigError

N_CLASSES = 7
#: names a checkpoint cannot take (the metrics.json top-level keys and the baselines)
RESERVED_NAMES = ("models", "baselines", "reader", "curves", "schema", COPY, ORACLE)
#: vertex-space twins (need RUN/model.h5)
VERTEX_KEYS = ("d_rel_error_fit_vertex", "d_rel_error_trg_vertex", "exp_rel_error_refit_vertex",
               "reader_vertex_error_trg", "reader_vertex_error_t1")
READER_T1 = ["reader_rel_error_t1", "reader_vertex_error_t1"]
READER_TRG = ["reader_rel_error_trg", "reader_vertex_error_trg"]


@dataclass
class EvalOptions:
    """The ``evaluate:`` config section (config/demo.yaml) plus the global seed."""

    pairs: int = 64
    grid_step: float = 0.2
    grid_params: int = 10
    test_images: int = 32
    test_fraction: float = 0.17
    identity: str = "auto"            # auto | dlib | pixels | PATH (train-identity / ArcFace weights)
    refit: bool = True
    refit_images: int = 0             # refit only the first N edits (0 = all test_images)
    figures: bool = True
    lrw_pairs: int = 32
    max_per_class: int = 200          # labelled photos per expression class (classifier, presets)
    figure_photos: int = 4
    device: str = "auto"
    reader: str = "auto"              # auto (RUN/reader/reader.pt when present) | none | PATH
    seed: int = 0
    fit: dict = field(default_factory=dict)   # the fit: section (refit options)
    warps: dict = field(default_factory=dict)  # the warps: section (oracle, when RUN/warps records none)

    @classmethod
    def from_config(cls, cfg) -> "EvalOptions":
        sec = cfg.section("evaluate") if "evaluate" in cfg else {}
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in sec.items() if k in names}
        if "seed" in cfg:
            kw["seed"] = int(cfg.seed)
        if "fit" in cfg:
            kw["fit"] = cfg.section("fit")
        if "warps" in cfg:
            kw["warps"] = cfg.section("warps")
        opt = cls(**kw)
        if opt.grid_step <= 0 or opt.grid_step > 2:
            raise ConfigError(f"evaluate.grid_step must be in (0, 2], got {opt.grid_step}")
        for k in ("pairs", "test_images", "lrw_pairs", "max_per_class", "refit_images"):
            if getattr(opt, k) < 0:
                raise ConfigError(f"evaluate.{k} must be >= 0, got {getattr(opt, k)}")
        if not 0 < opt.test_fraction < 1:
            raise ConfigError(f"evaluate.test_fraction must be in (0, 1), got {opt.test_fraction}")
        if not isinstance(opt.reader, str) or not opt.reader:
            raise ConfigError(f"evaluate.reader must be auto, none or a reader file path, got {opt.reader!r}")
        return opt


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available (use auto or cpu)")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)")
    return name


def load_reader_option(opt: EvalOptions, run: Path, device: str = "cpu"):
    """The independent expression reader of ``evaluate.reader``: (reader | None, reason | None).

    ``auto``: ``RUN/reader/reader.pt`` when present, else none with the reason; ``none``: off;
    anything else is a path that must load (ConfigError otherwise: the user named it)."""
    choice = str(opt.reader)
    if choice == "none":
        return None, "disabled (evaluate.reader=none)"
    try:
        from train.reader import default_reader_path, load_reader
    except ImportError as e:
        if choice == "auto":
            return None, f"no reader: train.reader cannot be imported ({e})"
        raise ConfigError(f"evaluate.reader={choice}: train.reader cannot be imported ({e})") from None
    if choice == "auto":
        path = default_reader_path(run)
        if not path.is_file():
            return None, "no reader: run slidergan train-reader"
    else:
        path = Path(choice)
    return load_reader(path, device=device), None   # ConfigError (one line) when unusable


def identity_candidates(run: Path, checkpoints: Sequence[str | Path] = ()) -> list[Path]:
    """Where ``auto`` looks for train-identity weights: ``RUN/identity.pt``,
    ``RUN/identity/identity.pt``, then ``T/identity.pt`` next to each checkpoint's
    ``T/checkpoints/`` folder (where ``slidergan train`` writes the embedder it trained)."""
    out = [run / "identity.pt", run / "identity" / "identity.pt"]
    for c in checkpoints:
        out.append(Path(c).resolve().parent.parent / "identity.pt")
    return out


def _dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError:
        return False
    return True


def make_identity_embedder(opt: EvalOptions, run: Path, checkpoints: Sequence[str | Path] = ()
                           ) -> metrics.IdentityEmbedder:
    """The embedder of ``identity_cos`` (one for all checkpoints, so they are comparable).

    ``auto``: the first train-identity file of :func:`identity_candidates`, else dlib's ResNet
    descriptor, else 32x32 grey pixels; ``dlib`` / ``pixels`` force one; any other value is a
    path to identity weights (our train-identity file or an InsightFace iresnet state_dict).
    """
    choice = opt.identity
    if choice == "dlib":
        return metrics.DlibEmbedder()
    if choice == "pixels":
        return metrics.PixelEmbedder()
    path = None
    if choice == "auto":
        path = next((c for c in identity_candidates(run, checkpoints) if c.is_file()), None)
        if path is None:
            return metrics.DlibEmbedder() if _dlib_available() else metrics.PixelEmbedder()
    else:
        path = Path(choice)
        if not path.is_file():
            raise ConfigError(f"evaluate.identity: weights not found: {choice}")
    import torch

    from model.identity import IdentityWeightsError, build_identity

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = build_identity(state)
    except (IdentityWeightsError, RuntimeError, OSError, ValueError) as e:
        raise ConfigError(f"identity weights {path}: {str(e).splitlines()[0]}")
    return metrics.TorchEmbedder(net, name=f"trained identity embedder ({path.name})",
                                 note=f"loaded from {path}; G was trained against this embedder when "
                                      f"lambda_id > 0, see identity_cos_dlib for an independent check",
                                 device=_device(opt.device))


def unique_names(nets: Sequence[Networks]) -> None:
    """Name each checkpoint by its variant; repeated variants get -2, -3, ... (in order), and
    so do the names metrics.json reserves (:data:`RESERVED_NAMES`)."""
    seen: dict[str, int] = {r: 1 for r in RESERVED_NAMES}
    for n in nets:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", str(n.variant or "")).strip(".-") or "model"  # a folder name
        seen[base] = seen.get(base, 0) + 1
        n.name = base if seen[base] == 1 else f"{base}-{seen[base]}"


class _Result:
    def __init__(self, nets):
        from evaluation.report import METRIC_KEYS

        self.nets = nets
        self.metrics: dict = {k: None for k in METRIC_KEYS}
        self.reasons: dict = {}
        self.notes: dict = {}
        self.presets = self.have = None     # Table 2 presets (for the figures)

    def fail(self, keys, reason: str):
        for k in keys:
            self.metrics.setdefault(k, None)
            if self.metrics.get(k) is None:
                self.reasons.setdefault(k, reason)

    def as_dict(self) -> dict:
        n = self.nets
        out = {"metrics": self.metrics, "notes": self.notes, "variant": n.variant,
               "reasons": {k: v for k, v in self.reasons.items() if self.metrics.get(k) is None},
               "checkpoint": n.path, "step": n.step, "n_params": n.n_params,
               "kind": "baseline" if isinstance(n, PseudoNetwork) else "model"}
        if isinstance(n, PseudoNetwork):
            out.update(checkpoint=None, step=None, note=n.note, regressor=getattr(n, "regressor_name", None))
        return out


def _guard(res: _Result, keys, fn: Callable[[], dict], log) -> dict | None:
    """Run one protocol; Unavailable -> null with reason; other errors -> null with the error
    (an evaluation must report what it could, not die on one protocol). Array values of the
    protocol's result (per-pair numbers, outputs) are returned but not stored as metrics."""
    try:
        out = fn()
    except Unavailable as e:
        res.fail(keys, str(e))
        return None
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — recorded in the report, see docstring
        res.fail(keys, f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        log(f"  {res.nets.name}: {keys[0]} failed: {type(e).__name__}: {e}")
        return None
    for k, v in out.items():
        if k == "per_class" or isinstance(v, np.ndarray):
            continue
        res.metrics[k] = v
    if "per_class" in out:
        res.metrics["expr_per_class"] = {str(k): v for k, v in out["per_class"].items()}
    for k in keys:
        if res.metrics.get(k) is None and k not in res.reasons:
            res.reasons[k] = "no usable rows (e.g. all reference vectors ~0)"
    return out


@dataclass
class _Shared:
    """Material every evaluated network (checkpoint or baseline) shares."""

    data: EvalData
    opt: EvalOptions
    log: Callable
    test_idx: np.ndarray
    test_imgs: object
    lab_all: np.ndarray
    lab_imgs: object
    classifier: object
    clf_reason: str | None
    clf_real_acc: float | None
    clf_real_reason: str
    embedder: object
    second: object
    refitter: object                      # evaluation.protocols.refitter (the fit stage's fit) or None
    reader: object = None
    reader_reason: str | None = None
    oracle: WarpOracle | None = None
    refit_cache: dict = field(default_factory=dict)
    lrw_cache: dict = field(default_factory=dict)

    def lrw_material(self, size: int):
        """Table 3's frame pairs at one crop size (made once; registered with the oracle)."""
        from evaluation.lrw import lrw_pairs

        if size not in self.lrw_cache:
            try:
                self.lrw_cache[size] = lrw_pairs(self.data.model, self.data.lrw_dir, self.opt.lrw_pairs,
                                                 self.opt.seed, size)
            except Unavailable as e:
                self.lrw_cache[size] = e
            else:
                got = self.lrw_cache[size]
                if self.oracle is not None and got.fits_a is not None:
                    self.oracle.register(got.crops_a, got.fits_a)
                elif self.oracle is not None:
                    self.oracle.unavailable(got.crops_a, got.oracle_reason or "oracle-3d: no fits of the LRW frames")
        got = self.lrw_cache[size]
        if isinstance(got, Unavailable):
            raise got
        return got


def _make_baselines(nets: Sequence[Networks], data: EvalData, opt: EvalOptions, sh: _Shared, info: dict) -> list:
    """copy-input and oracle-3d, regressing with the first checkpoint's D; the oracle knows the
    3D fits of the real test photos and of Table 1's source renders."""
    from evaluation.protocols import same_group_pairs

    first = nets[0]
    model = data.model
    width = model.n_exp + model.n_speech if model is not None else max(n.n_params for n in nets)
    copy = CopyInput(width, regressor=first)
    wopts, where = warps_options(data.run, opt.warps)
    oracle = WarpOracle(width, lambda size: make_warper(model, size, wopts), regressor=first)
    info["baselines"] = (f"{COPY}: {copy.note}; {ORACLE}: {oracle.note} (warp options from {where}). "
                         f"Their D-based numbers use {first.name}'s D.")
    no_model = data.missing.get("model", "no 3DMM")
    if data.real is not None and len(sh.test_idx):
        real = data.real
        if model is None or real.fit_missing:
            oracle.unavailable(sh.test_imgs, f"{ORACLE}: {real.fit_missing or no_model}")
        else:
            oracle.register(sh.test_imgs, [WarpFit(real.photo_root / str(real.key[i]), real.p_id[i], real.p_exp[i],
                                                   real.camera[i], real.align[i]) for i in sh.test_idx])
    if data.fab is not None:
        fab = data.fab
        src = np.unique(same_group_pairs(fab.group, opt.pairs, opt.seed)[:, 0])
        imgs = fab.images[src]
        if model is None or fab.p_id is None or fab.camera is None:
            why = no_model if model is None else "4dfab-params has no p_id/camera (the renders' fit)"
            oracle.unavailable(imgs, f"{ORACLE}: {why}")
        else:
            oracle.register(imgs, [WarpFit(im, fab.p_id[i], fab.p_exp[i], fab.camera[i], IDENTITY_ALIGN)
                                   for im, i in zip(imgs, src)])
    return [copy, oracle]


def evaluate(checkpoints: Sequence[str | Path], run: str | Path, out: str | Path, opt: EvalOptions,
             log: Callable[[str], None] = print) -> dict:
    """Evaluate checkpoints on a run folder; write ``out/metrics.json``, ``out/index.html``,
    ``out/curves.png`` and the figures. Returns the metrics.json object."""
    from evaluation import figures as F
    from evaluation.report import _jsonable, metrics_json, save_png, write_report

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run}")
    device = _device(opt.device)
    nets = [load_checkpoint(c, device=device) for c in checkpoints]
    if not nets:
        raise ConfigError("no checkpoint given")
    unique_names(nets)
    reader, reader_reason = load_reader_option(opt, run, device)
    t0 = time.time()
    data: EvalData = load_data(run, opt.test_fraction, opt.seed)
    if data.real is None and data.fab is None:
        raise ConfigError(f"{run}: nothing to evaluate on ({'; '.join(data.missing.values())})")
    out.mkdir(parents=True, exist_ok=True)
    info = {"run folder": str(run)}
    for k, why in data.missing.items():
        info[f"missing {k}"] = why

    # shared material: real test photos, labelled photos, expression classifier, identity embedder
    real = data.real
    test_idx = lab_train = lab_test = lab_all = np.zeros(0, np.int64)
    test_imgs = lab_imgs = None
    if real is not None:
        test_idx = np.nonzero(real.test)[0][: opt.test_images]
        labelled = (real.label >= 0) & (real.label < N_CLASSES)
        lab_train = np.nonzero(labelled & ~real.test)[0]
        lab_train = lab_train[balanced_rows(real.label[lab_train], range(N_CLASSES), opt.max_per_class, opt.seed)]
        lab_test = np.nonzero(labelled & real.test)[0]
        lab_test = lab_test[balanced_rows(real.label[lab_test], range(N_CLASSES), opt.max_per_class, opt.seed)]
        lab_all = np.nonzero(labelled)[0]
        lab_all = lab_all[balanced_rows(real.label[lab_all], range(N_CLASSES), opt.max_per_class, opt.seed)]
        test_imgs = real.images[test_idx]            # read once, used by every checkpoint
        lab_imgs = real.images[lab_all]
        info["real test photos"] = f"{len(test_idx)} of {int(real.test.sum())} held-out-identity fits " \
                                   f"(test_fraction {opt.test_fraction}, hash split by identity)"
    classifier, clf_reason, clf_real_acc = None, None, None
    clf_real_reason = "no expression classifier"
    if real is None:
        clf_reason = data.missing.get("real", "no real photos")
    else:
        train_rows = lab_train if len(np.unique(real.label[lab_train])) >= 2 else lab_all
        if len(np.unique(real.label[train_rows])) < 2:
            clf_reason = "fewer than two labelled expression classes among the fitted photos"
        else:
            try:
                classifier = metrics.ExpressionClassifier(seed=opt.seed).fit(real.images[train_rows],
                                                                            real.label[train_rows])
                fallback = len(train_rows) != len(lab_train)
                if len(lab_test) and not fallback:
                    clf_real_acc = metrics.accuracy(classifier.predict(real.images[lab_test]), real.label[lab_test])
                else:
                    clf_real_reason = ("the classifier was trained on the test identities too" if fallback
                                       else "no labelled photos among the test identities")
                info["expression classifier"] = (f"dlib 68-landmark geometry + HOG, logistic regression, trained on "
                                                 f"{len(train_rows)} labelled photos"
                                                 + ("" if len(train_rows) == len(lab_train) else
                                                    " (including test identities: too few labelled train photos)"))
            except Exception as e:  # noqa: BLE001 — recorded as the metric's reason
                clf_reason = f"classifier training failed: {type(e).__name__}: {e}"
    embedder = make_identity_embedder(opt, run, checkpoints)
    info["identity embedder"] = f"{embedder.name}: {embedder.note}"
    second = metrics.DlibEmbedder() if (isinstance(embedder, metrics.TorchEmbedder) and _dlib_available()) else None
    reader_info = _reader_summary(reader, reader_reason)
    info["expression reader"] = reader_info["summary"]
    renderer = None
    if data.model is not None and opt.figures:
        try:
            photos = data.real.images if data.real is not None else data.fab.images
            renderer = F.BlendshapeRenderer(data.model, size=int(photos.shape[1]))
        except Exception as e:  # noqa: BLE001 — figures without 3D rows
            info["3D renders"] = f"unavailable: {type(e).__name__}: {e}"
    names = list(getattr(data.model, "exp_names", []) or []) if data.model is not None else []
    if data.model is not None and data.model.n_speech:
        names = names + list(getattr(data.model, "speech_names", []) or
                             [f"speech {i}" for i in range(data.model.n_speech)])
    from fitting.model import EXPRESSION_NAMES

    # the refit is the fit stage's own fit of a detected photo (fitting.photo), with the run's fit:
    # section, calibration and image domain: only then is it comparable with p_fit
    refitter = None
    if data.model is not None and opt.refit:
        from evaluation.protocols import refitter as make_refitter

        refitter = make_refitter(data.model, opt.fit, data.run / "model.h5",
                                 data.real.photo_root if data.real is not None else None)
    sh = _Shared(data, opt, log, test_idx, test_imgs, lab_all, lab_imgs, classifier, clf_reason, clf_real_acc,
                 clf_real_reason, embedder, second, refitter, reader, reader_reason)
    baselines = _make_baselines(nets, data, opt, sh, info)
    sh.oracle = baselines[1]
    results, figs = {}, {}
    for net in nets:
        res = _evaluate_one(net, sh)
        _training_numbers(res, net)
        results[net.name] = res
        # figures
        figs[net.name] = []
        if opt.figures:
            log("  figures")
            figs[net.name] = _figures(net, data, opt, out, renderer, names, res.presets, res.have, EXPRESSION_NAMES,
                                      test_idx, res, log, save_png)
            figs[net.name] += _speech_figure(net, sh, out, res, log, save_png)
    base_results = {}
    for b in baselines:
        base_results[b.name] = _evaluate_one(b, sh)
    _ratio_to_copy(results, base_results, "ied", lambda res: "no IED")
    _ratio_to_copy(results, base_results, "lrw_ied", lambda res: res.reasons.get("lrw_ied", "no Table 3 IED"))
    _gap_left(results, base_results, "reader_vertex_error_trg")
    for name, res in list(results.items()) + list(base_results.items()):
        log(f"  {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in res.metrics.items() if k in metrics_keys()))
    curves = _curves(nets, out, log)
    info["training curves"] = curves["note"]
    info["elapsed"] = f"{time.time() - t0:.1f} s on {device}"
    results = {k: r.as_dict() for k, r in results.items()}
    base_results = {k: r.as_dict() for k, r in base_results.items()}
    write_report(out, results, figs, info, baselines=base_results, reader=reader_info, curves=curves)
    return _jsonable(metrics_json(results, base_results, reader_info, curves))


def _reader_summary(reader, reason: str | None) -> dict:
    """metrics.json's ``reader`` block: the reader's own held-out figures (from its meta)."""
    if reader is None:
        return {"path": None, "reason": reason, "summary": f"none ({reason})"}
    meta = dict(getattr(reader, "meta", {}) or {})
    keep = ("heldout_rel_error", "heldout_vertex_error", "heldout_zero_vertex_error", "heldout_r2", "n_params",
            "image_size", "n_heldout", "heldout_split", "n_train")
    out = {"path": str(getattr(reader, "path", "")), "reason": None, **{k: meta.get(k) for k in keep}}
    rel, vert = meta.get("heldout_rel_error"), meta.get("heldout_vertex_error")
    out["summary"] = (f"{out['path']}: held-out warps rel error "
                      f"{'n/a' if rel is None else f'{rel:.3f}'}, vertex error {'n/a' if vert is None else f'{vert:.3f}'}"
                      f" ({meta.get('n_heldout', '?')} warps of held-out photos)")
    return out


def _evaluate_one(net, sh: _Shared) -> _Result:
    """Every protocol for one checkpoint or baseline (one code path)."""
    from evaluation import protocols as P

    data, opt, log = sh.data, sh.opt, sh.log
    real, model = data.real, data.model
    baseline = isinstance(net, PseudoNetwork)
    log(f"evaluating {net.name} ({net.path or getattr(net, 'note', '')})")
    res = _Result(net)
    res.metrics["classifier_real_acc"] = sh.clf_real_acc
    if sh.clf_real_acc is None:
        res.reasons["classifier_real_acc"] = sh.clf_reason or sh.clf_real_reason
    if model is None:
        res.fail(VERTEX_KEYS, f"no 3DMM for vertex-space errors ({data.missing.get('model', 'RUN/model.h5')})")
    if sh.reader is None:
        res.fail(READER_T1 + READER_TRG, sh.reader_reason or "no reader")
    log("  Table 1: transfer on held-out 4DFAB renders")
    t1 = None
    if data.fab is None:
        res.fail(["ied"] + READER_T1, data.missing.get("fab", "no 4DFAB renders"))
    else:
        fab = data.fab
        t1 = _guard(res, ["ied"], lambda: {("ied_pairs" if k == "n_pairs" else k): v for k, v in
                                           P.table1_ied(net, fab.images, fab.p_exp, fab.group, opt.pairs,
                                                        opt.seed).items()}, log)
        if t1 is None:
            res.fail(READER_T1, res.reasons.get("ied", "Table 1 unavailable"))
        elif sh.reader is not None:
            _guard(res, READER_T1, lambda: P.reader_errors(sh.reader, t1["outputs"], t1["p_trg"], model, "t1"), log)
    log("  Table 4, identity, refit: edits of real test photos")
    ed = None
    edit_keys = ["d_rel_error_fit", "d_rel_error_trg", "d_rel_error_fit_vertex", "d_rel_error_trg_vertex",
                 "identity_cos", "exp_rel_error_refit", "exp_rel_error_refit_vertex"] + READER_TRG
    if real is None:
        res.fail(edit_keys, data.missing.get("real", "no real photos"))
    elif len(sh.test_idx) == 0:
        res.fail(edit_keys, "no real photos of held-out identities")
    else:
        try:
            ed = P.real_edits(net, sh.test_imgs, real.p_exp[sh.test_idx], opt.seed)
            res.metrics["n_test"] = int(len(sh.test_idx))
        except Unavailable as e:
            res.fail(edit_keys, str(e))
    if ed is not None:
        fit_keys = ["d_rel_error_fit", "d_rel_error_fit_vertex"]
        if baseline:   # D's reading of the unedited photos does not depend on G
            res.fail(fit_keys, f"independent of the generator: D's reading of the unedited photos "
                               f"(= {net.regressor_name}'s)")
            _guard(res, ["d_rel_error_trg", "d_rel_error_trg_vertex"],
                   lambda: {k: v for k, v in P.d_errors(ed, model).items() if k not in fit_keys}, log)
        else:
            _guard(res, fit_keys + ["d_rel_error_trg", "d_rel_error_trg_vertex"], lambda: P.d_errors(ed, model), log)
        _guard(res, ["identity_cos"], lambda: {"identity_cos": metrics.identity_cos(sh.embedder, ed.inputs,
                                                                                     ed.outputs)}, log)
        res.notes["identity_cos"] = f"embedder: {sh.embedder.name}"
        if sh.second is not None:
            _guard(res, ["identity_cos_dlib"], lambda: {"identity_cos_dlib": metrics.identity_cos(
                sh.second, ed.inputs, ed.outputs)}, log)
        if sh.reader is not None:
            _guard(res, READER_TRG, lambda: P.reader_errors(sh.reader, ed.outputs, ed.p_trg, model, "trg"), log)
        refit_keys = ["exp_rel_error_refit", "exp_rel_error_refit_vertex"]
        if not opt.refit:
            res.fail(refit_keys, "disabled (evaluate.refit=false)")
        elif model is None:
            res.fail(refit_keys, data.missing.get("model", "no 3DMM"))
        else:
            n = opt.refit_images or len(ed.outputs)       # the refit costs seconds per image
            edr = ed.head(n)
            _guard(res, refit_keys, lambda: P.refit_error(sh.refitter, edr), log)
            if "floor" not in sh.refit_cache:   # same photos for every checkpoint: once
                try:
                    sh.refit_cache["floor"] = P.refit_floor_errors(sh.refitter, edr.inputs, edr.p_fit)
                except Exception as e:  # noqa: BLE001 — the floor is context, not a metric
                    sh.refit_cache["floor"] = {"refit_real_floor": None, "refit_real_floor_vertex": None,
                                               "refit_real_floor_n": 0}
                    log(f"  refit floor failed: {type(e).__name__}: {e}")
            res.metrics.update(sh.refit_cache["floor"])
    log("  Table 2: discrete expressions")
    if sh.classifier is None:
        res.fail(["expr_recognition_acc"], sh.clf_reason or "no classifier")
    elif len(sh.test_idx) == 0:
        res.fail(["expr_recognition_acc"], "no real photos of held-out identities")
    else:
        got = _guard(res, ["expr_recognition_acc"], lambda: dict(zip(("presets", "have"), P.expression_presets(
            net, sh.lab_imgs, real.label[sh.lab_all], N_CLASSES))), log)
        if got is not None:
            res.presets, res.have = got["presets"], got["have"]
            _guard(res, ["expr_recognition_acc"], lambda: P.expression_recognition(
                net, sh.classifier, sh.test_imgs, res.presets, res.have), log)
    log("  Table 3: held-out LRW videos (RUN/lrw-fits, split test)")
    if data.lrw_dir is None:
        res.fail(["lrw_ied"], data.missing.get("lrw", "no LRW sequences"))
    else:
        from evaluation.lrw import table3_ied

        size = int(net.model_config.get("image_size", 128))
        _guard(res, ["lrw_ied"], lambda: table3_ied(net, model, data.lrw_dir, opt.lrw_pairs, opt.seed, size=size,
                                                    pairs=sh.lrw_material(size) if model is not None else None), log)
    return res


def _ratio_to_copy(results: dict, base_results: dict, key: str, missing) -> None:
    """``<key>_vs_copy`` = key / copy-input's key, for every model and baseline (Table 1's ``ied``,
    Table 3's ``lrw_ied``; the goal: <= 0.85). ``missing(res)`` is the reason when a row has no
    value; the label of ``key`` names what copy-input lacks."""
    label = {"ied": "IED", "lrw_ied": "Table 3 IED"}[key]
    copy = base_results.get(COPY)
    c = copy.metrics.get(key) if copy is not None else None
    for res in list(results.values()) + list(base_results.values()):
        v = res.metrics.get(key)
        if v is not None and c is not None and c > 0:
            res.metrics[f"{key}_vs_copy"] = float(v / c)
        else:
            res.fail([f"{key}_vs_copy"], missing(res) if v is None else f"no {COPY} {label} to divide by")


def _gap_left(results: dict, base_results: dict, key: str) -> None:
    """``<key>_gap`` = (key - oracle-3d's) / (copy-input's - oracle-3d's): the share of the way
    from doing nothing to the 3D warp left to go (0 = as good as the oracle, 1 = no better than
    copying; the goal <= 0.5). Read through the reader, whose own error puts the oracle above 0,
    this is fairer than the raw error. Every row gets it when both baselines have the key."""
    c = base_results[COPY].metrics.get(key) if COPY in base_results else None
    o = base_results[ORACLE].metrics.get(key) if ORACLE in base_results else None
    for res in list(results.values()) + list(base_results.values()):
        v = res.metrics.get(key)
        if v is not None and c is not None and o is not None and c - o > 1e-12:
            res.metrics[f"{key}_gap"] = float((v - o) / (c - o))
        else:
            why = (res.reasons.get(key, f"no {key}") if v is None else
                   f"{COPY} / {ORACLE} lack {key}" if c is None or o is None else f"{ORACLE} is no better than {COPY}")
            res.fail([f"{key}_gap"], why)


def _training_numbers(res: _Result, net: Networks) -> None:
    """Final held-out validation numbers of the training run (T/metrics.jsonl) into the metrics."""
    from evaluation.curves import FINAL_KEYS, final_values, read_metrics_jsonl, training_folder

    keys = list(FINAL_KEYS) + ["train_val_step"]
    path = training_folder(net.path) / "metrics.jsonl" if net.path else None
    if path is None or not path.is_file():
        res.fail(keys, f"no training log {path}")
        return
    recs, _ = read_metrics_jsonl(path)
    res.metrics.update(final_values(recs, net.step))
    res.fail(keys, f"{path} has no validation record (val_*) up to step {net.step}")


def _curves(nets: Sequence[Networks], out: Path, log) -> dict:
    """``out/curves.png`` from each checkpoint's T/metrics.jsonl: {"figure": relpath | None, "note"}."""
    from evaluation.curves import plot_curves, read_metrics_jsonl, training_folder

    runs, missing, skipped = {}, [], 0
    for n in nets:
        path = training_folder(n.path) / "metrics.jsonl"
        if not path.is_file():
            missing.append(f"{n.name}: no {path}")
            continue
        recs, bad = read_metrics_jsonl(path)
        skipped += bad
        runs[n.name] = recs
    notes = missing + ([f"{skipped} unreadable metrics.jsonl lines skipped"] if skipped else [])
    if not runs or not plot_curves(runs, out / "curves.png"):
        (out / "curves.png").unlink(missing_ok=True)       # not a stale figure of an earlier run
        why = "; ".join(missing) if missing else "no curve keys (val_l1, d_exp, mask_mean) in metrics.jsonl"
        log(f"  training curves unavailable: {why}")
        return {"figure": None, "note": f"unavailable: {why}", "runs": sorted(runs)}
    note = f"from T/metrics.jsonl of {', '.join(runs)}"
    return {"figure": "curves.png", "note": "; ".join([note] + notes), "runs": sorted(runs)}


def metrics_keys():
    from evaluation.report import METRIC_KEYS

    return METRIC_KEYS


def _speech_figure(net, sh: _Shared, out: Path, res, log, save_png) -> list:
    """Fig. 14 style (target frames of a held-out LRW video, G(one input frame, p_target)) for a
    checkpoint with the expression + speech parameters; [] otherwise (its reason is Table 3's)."""
    from evaluation.lrw import check_width, speech_transfer_figure

    model = sh.data.model
    if model is None or sh.data.lrw_dir is None:
        return []
    try:
        pairs = sh.lrw_material(int(net.model_config.get("image_size", 128)))
        check_width(net, model, pairs.width)
        img = speech_transfer_figure(net, pairs)
    except Unavailable:
        return []
    except Exception as e:  # noqa: BLE001 — a failed figure is noted, the report still renders
        res.notes["figure speech_transfer.png"] = f"{type(e).__name__}: {e}"
        log(f"  {net.name}: figure speech_transfer.png failed: {type(e).__name__}: {e}")
        return []
    (out / net.name).mkdir(parents=True, exist_ok=True)
    save_png(img, out / net.name / "speech_transfer.png")
    return [("Expression + speech transfer within a held-out LRW video (Fig. 14: targets above, "
             "G(input, p_target) below)", f"{net.name}/speech_transfer.png")]


def _figures(net, data, opt, out, renderer, names, presets, have, expr_names, test_idx, res, log, save_png):
    from evaluation import figures as F

    made = []
    folder = out / net.name
    folder.mkdir(parents=True, exist_ok=True)
    photos = None
    if data.real is not None and len(data.real.images):
        order = test_idx if len(test_idx) else np.arange(len(data.real.images))
        photos = data.real.images[order[: max(1, opt.figure_photos)]]
    elif data.fab is not None:
        photos = data.fab.images[: max(1, opt.figure_photos)]
    if photos is None:
        res.notes["figures"] = "no photos to edit"
        return made

    def add(fname, title, fn):
        try:
            img = fn()
        except Exception as e:  # noqa: BLE001 — a failed figure is noted, the report still renders
            res.notes[f"figure {fname}"] = f"{type(e).__name__}: {e}"
            log(f"  {net.name}: figure {fname} failed: {type(e).__name__}: {e}")
            return
        save_png(img, folder / fname)
        made.append((title, f"{net.name}/{fname}"))

    E = net.n_params
    n_exp = data.model.n_exp if data.model is not None else E
    add("sliders.png", "Single-parameter sliders (3D blendshape render above each edit)",
        lambda: F.slider_grid(net, photos[0], renderer, names, min(opt.grid_params, n_exp), opt.grid_step))
    add("random.png", "Random multi-parameter edits with their 3D renders",
        lambda: F.random_edits(net, photos[: 3], renderer, n=6, seed=opt.seed))
    if len(photos) >= 2:
        add("transfer.png", "Expression transfer with D's regressed parameters",
            lambda: F.transfer_grid(net, photos[: 2], photos))
        add("interpolation.png", "Interpolation between D's regressed parameters",
            lambda: F.interpolation_grid(net, [(photos[0], photos[1]), (photos[1], photos[-1])]))
    if presets is not None:
        add("expressions.png", "The seven discrete expressions (presets: mean of D over labelled photos)",
            lambda: F.discrete_expressions(net, photos[: 3], presets, have, expr_names, renderer))
    add("neutral.png", "Neutralisation (p = 0)", lambda: F.neutralisation(net, photos))
    if E > n_exp:
        add("speech.png", "Expression + speech: single speech-parameter sliders",
            lambda: F.slider_grid(net, photos[0], renderer, names, E - n_exp, opt.grid_step, offset=n_exp,
                                  title="speech-parameter sliders"))
    return made
