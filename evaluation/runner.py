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
from evaluation.data import EvalData, Unavailable, balanced_rows, load_data
from evaluation.networks import Networks, load_checkpoint
from pipeline.config import ConfigError

N_CLASSES = 7


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
    figures: bool = True
    lrw_pairs: int = 32
    max_per_class: int = 200          # labelled photos per expression class (classifier, presets)
    figure_photos: int = 4
    device: str = "auto"
    seed: int = 0
    fit: dict = field(default_factory=dict)   # the fit: section (refit options)

    @classmethod
    def from_config(cls, cfg) -> "EvalOptions":
        sec = cfg.section("evaluate") if "evaluate" in cfg else {}
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in sec.items() if k in names}
        if "seed" in cfg:
            kw["seed"] = int(cfg.seed)
        if "fit" in cfg:
            kw["fit"] = cfg.section("fit")
        opt = cls(**kw)
        if opt.grid_step <= 0 or opt.grid_step > 2:
            raise ConfigError(f"evaluate.grid_step must be in (0, 2], got {opt.grid_step}")
        for k in ("pairs", "test_images", "lrw_pairs", "max_per_class"):
            if getattr(opt, k) < 0:
                raise ConfigError(f"evaluate.{k} must be >= 0, got {getattr(opt, k)}")
        if not 0 < opt.test_fraction < 1:
            raise ConfigError(f"evaluate.test_fraction must be in (0, 1), got {opt.test_fraction}")
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
    """Name each checkpoint by its variant; repeated variants get -2, -3, ... (in order)."""
    seen: dict[str, int] = {}
    for n in nets:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", str(n.variant or "")).strip(".-") or "model"  # a folder name
        seen[base] = seen.get(base, 0) + 1
        n.name = base if seen[base] == 1 else f"{base}-{seen[base]}"


class _Result:
    def __init__(self, nets: Networks):
        self.nets = nets
        self.metrics: dict = {k: None for k in ("ied", "d_rel_error_fit", "d_rel_error_trg", "identity_cos",
                                                "exp_rel_error_refit", "expr_recognition_acc")}
        self.reasons: dict = {}
        self.notes: dict = {}

    def fail(self, keys, reason: str):
        for k in keys:
            self.metrics.setdefault(k, None)
            if self.metrics.get(k) is None:
                self.reasons[k] = reason

    def as_dict(self) -> dict:
        n = self.nets
        return {"metrics": self.metrics, "reasons": self.reasons, "notes": self.notes, "variant": n.variant,
                "checkpoint": n.path, "step": n.step, "n_params": n.n_params}


def _guard(res: _Result, keys, fn: Callable[[], dict], log) -> dict | None:
    """Run one protocol; Unavailable -> null with reason; other errors -> null with the error
    (an evaluation must report what it could, not die on one protocol)."""
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
        if k in ("per_pair", "per_class"):
            continue
        res.metrics[k] = v
    if "per_class" in out:
        res.metrics["expr_per_class"] = {str(k): v for k, v in out["per_class"].items()}
    for k in keys:
        if res.metrics.get(k) is None and k not in res.reasons:
            res.reasons[k] = "no usable rows (e.g. all reference vectors ~0)"
    return out


def evaluate(checkpoints: Sequence[str | Path], run: str | Path, out: str | Path, opt: EvalOptions,
             log: Callable[[str], None] = print) -> dict:
    """Evaluate checkpoints on a run folder; write ``out/metrics.json``, ``out/index.html``
    and the figures. Returns the metrics.json object."""
    from evaluation import figures as F
    from evaluation import protocols as P
    from evaluation.report import metrics_json, save_png, write_report

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run}")
    device = _device(opt.device)
    nets = [load_checkpoint(c, device=device) for c in checkpoints]
    if not nets:
        raise ConfigError("no checkpoint given")
    unique_names(nets)
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
    from fitting.demo_model import EXPRESSION_NAMES

    # the stage's fit options (a refit is only comparable with p_fit when fitted alike)
    fit_opts = {k: v for k, v in opt.fit.items() if k in ("iterations", "n_id", "prior_id", "prior_exp")}
    refit_cache: dict = {}
    results, figs = {}, {}
    for net in nets:
        log(f"evaluating {net.name} ({net.path})")
        res = _Result(net)
        res.metrics["classifier_real_acc"] = clf_real_acc
        if clf_real_acc is None:
            res.reasons["classifier_real_acc"] = clf_reason or clf_real_reason
        log("  Table 1: transfer on held-out 4DFAB renders")
        if data.fab is None:
            res.fail(["ied"], data.missing.get("fab", "no 4DFAB renders"))
        else:
            fab = data.fab
            _guard(res, ["ied"], lambda: {("ied_pairs" if k == "n_pairs" else k): v for k, v in
                                          P.table1_ied(net, fab.images, fab.p_exp, fab.group, opt.pairs,
                                                       opt.seed).items()}, log)
        log("  Table 4, identity, refit: edits of real test photos")
        ed = None
        edit_keys = ["d_rel_error_fit", "d_rel_error_trg", "identity_cos", "exp_rel_error_refit"]
        if real is None:
            res.fail(edit_keys, data.missing.get("real", "no real photos"))
        elif len(test_idx) == 0:
            res.fail(edit_keys, "no real photos of held-out identities")
        else:
            try:
                ed = P.real_edits(net, test_imgs, real.p_exp[test_idx], opt.seed)
                res.metrics["n_test"] = int(len(test_idx))
            except Unavailable as e:
                res.fail(edit_keys, str(e))
        if ed is not None:
            _guard(res, ["d_rel_error_fit", "d_rel_error_trg"], lambda: P.d_errors(ed), log)
            _guard(res, ["identity_cos"], lambda: {"identity_cos": metrics.identity_cos(embedder, ed.inputs,
                                                                                         ed.outputs)}, log)
            res.notes["identity_cos"] = f"embedder: {embedder.name}"
            if second is not None:
                _guard(res, ["identity_cos_dlib"], lambda: {"identity_cos_dlib": metrics.identity_cos(
                    second, ed.inputs, ed.outputs)}, log)
            if not opt.refit:
                res.fail(["exp_rel_error_refit"], "disabled (evaluate.refit=false)")
            elif data.model is None:
                res.fail(["exp_rel_error_refit"], data.missing.get("model", "no 3DMM"))
            else:
                _guard(res, ["exp_rel_error_refit"], lambda: P.refit_error(data.model, ed, fit_opts), log)
                if "floor" not in refit_cache:   # same photos for every checkpoint: once
                    try:
                        refit_cache["floor"] = P.refit_floor(data.model, ed.inputs, ed.p_fit, fit_opts)
                    except Exception as e:  # noqa: BLE001 — the floor is context, not a metric
                        refit_cache["floor"] = None
                        log(f"  refit floor failed: {type(e).__name__}: {e}")
                res.metrics["refit_real_floor"] = refit_cache["floor"]
        log("  Table 2: discrete expressions")
        presets = have = None
        if classifier is None:
            res.fail(["expr_recognition_acc"], clf_reason or "no classifier")
        elif len(test_idx) == 0:
            res.fail(["expr_recognition_acc"], "no real photos of held-out identities")
        else:
            presets, have = P.expression_presets(net, lab_imgs, real.label[lab_all], N_CLASSES)
            _guard(res, ["expr_recognition_acc"], lambda: P.expression_recognition(
                net, classifier, test_imgs, presets, have), log)
        log("  Table 3: LRW-style sequences")
        if data.lrw_dir is None:
            res.fail(["lrw_ied"], data.missing.get("lrw", "no LRW sequences"))
        else:
            from evaluation.lrw import table3_ied

            _guard(res, ["lrw_ied"], lambda: table3_ied(net, data.model, data.lrw_dir, opt.lrw_pairs, opt.seed,
                                         size=int(net.model_config.get("image_size", 128))), log)
        results[net.name] = res.as_dict()
        # figures
        figs[net.name] = []
        if opt.figures:
            log("  figures")
            figs[net.name] = _figures(net, data, opt, out, renderer, names, presets, have, EXPRESSION_NAMES,
                                      test_idx, res, log, save_png)
        log(f"  {net.name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in res.metrics.items() if k in metrics_keys()))
    info["elapsed"] = f"{time.time() - t0:.1f} s on {device}"
    write_report(out, results, figs, info)
    return metrics_json(results)


def metrics_keys():
    from evaluation.report import METRIC_KEYS

    return METRIC_KEYS


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
