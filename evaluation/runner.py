"""``slidergan evaluate``'s engine: every metric and figure for one or more checkpoints,
then ``metrics.json``, ``metrics.jsonl`` and ``index.html``.

The metrics are a registry (:mod:`evaluation.registry`, the functions in
:mod:`evaluation.tables`) run for each checkpoint and each baseline through one guard: a
protocol that cannot run (missing stage, wrong parameter count, no face found, ...) leaves
its metrics ``null`` and records the reason; only unusable *inputs the user named* (a
missing checkpoint, an empty run folder) are errors.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from evaluation.data import EvalData, Unavailable, load_data
from evaluation.networks import Networks, load_checkpoint
from evaluation.options import EvalOptions, device_name, load_reader_option, unique_names
from evaluation.registry import COMPARISONS, MetricContext, MetricsLog, Result, registered, run_metrics
from evaluation.shared import Shared, build_shared, make_baselines, reader_summary
from evaluation.tables import prepare
from pipeline.config import ConfigError

__all__ = ["EvalOptions", "evaluate"]


def evaluate(checkpoints: Sequence[str | Path], run: str | Path, out: str | Path, opt: EvalOptions,
             log: Callable[[str], None] = print) -> dict:
    """Evaluate checkpoints on a run folder; write ``out/metrics.json``, ``out/metrics.jsonl``
    (one line per metric and network), ``out/index.html``, ``out/curves.png`` and the
    figures. Returns the metrics.json object."""
    from evaluation import figures as F
    from evaluation.report import METRIC_KEYS, _jsonable, metrics_json, save_png, write_report
    from fitting.model import EXPRESSION_NAMES

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run}")
    device = device_name(opt.device)
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
    sh = build_shared(data, opt, run, checkpoints, log, info, reader, reader_reason)
    reader_info = reader_summary(reader, reader_reason)
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
    baselines = make_baselines(nets, data, opt, sh, info)
    sh.oracle = baselines[1]
    jsonl = MetricsLog(out / "metrics.jsonl")
    results, figs = {}, {}
    for net in nets:
        res = _evaluate_one(net, sh, jsonl)
        results[net.name] = res
        figs[net.name] = []
        if opt.figures:
            log("  figures")
            figs[net.name] = _figures(net, data, opt, out, renderer, names, res.presets, res.have, EXPRESSION_NAMES,
                                      sh.test_idx, res, log, save_png)
            figs[net.name] += _speech_figure(net, sh, out, res, log, save_png)
    base_results = {b.name: _evaluate_one(b, sh, jsonl) for b in baselines}
    for name, fn in COMPARISONS.items():
        key = fn(results, base_results)
        jsonl.write({"comparison": name, "key": key,
                     "results": {n: r.metrics.get(key) for n, r in list(results.items()) + list(base_results.items())},
                     "reasons": {n: r.reasons[key] for n, r in list(results.items()) + list(base_results.items())
                                 if r.metrics.get(key) is None and key in r.reasons}})
    for name, res in list(results.items()) + list(base_results.items()):
        log(f"  {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in res.metrics.items() if k in METRIC_KEYS))
    curves = _curves(nets, out, log)
    info["training curves"] = curves["note"]
    info["elapsed"] = f"{time.time() - t0:.1f} s on {device}"
    results = {k: r.as_dict() for k, r in results.items()}
    base_results = {k: r.as_dict() for k, r in base_results.items()}
    write_report(out, results, figs, info, baselines=base_results, reader=reader_info, curves=curves)
    return _jsonable(metrics_json(results, base_results, reader_info, curves))


def _evaluate_one(net, sh: Shared, jsonl: MetricsLog | None = None) -> Result:
    """Every registered metric for one checkpoint or baseline (one code path)."""
    sh.log(f"evaluating {net.name} ({net.path or getattr(net, 'note', '')})")
    ctx = MetricContext(net, Result(net), sh)
    prepare(ctx)
    return run_metrics(ctx, registered(), jsonl)


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


def _speech_figure(net, sh: Shared, out: Path, res, log, save_png) -> list:
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
    photos = p_src = None                   # the photos edited and their own parameters (fits / exact)
    if data.real is not None and len(data.real.images):
        order = test_idx if len(test_idx) else np.arange(len(data.real.images))
        photos = data.real.images[order[: max(1, opt.figure_photos)]]
        p_src = data.real.p_exp[order[: max(1, opt.figure_photos)]]
    elif data.fab is not None:
        photos = data.fab.images[: max(1, opt.figure_photos)]
        p_src = data.fab.p_exp[: max(1, opt.figure_photos)]
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
        lambda: F.slider_grid(net, photos[0], renderer, names, min(opt.grid_params, n_exp), opt.grid_step,
                              p_src=p_src[0]))
    add("random.png", "Random multi-parameter edits with their 3D renders",
        lambda: F.random_edits(net, photos[: 3], renderer, n=6, seed=opt.seed, p_src=p_src[: 3]))
    if len(photos) >= 2:
        add("transfer.png", "Expression transfer with D's regressed parameters",
            lambda: F.transfer_grid(net, photos[: 2], photos, p_src=p_src[: 2]))
        add("interpolation.png", "Interpolation between D's regressed parameters",
            lambda: F.interpolation_grid(net, [(photos[0], photos[1]), (photos[1], photos[-1])],
                                         p_src=p_src[[0, 1]]))
    if presets is not None:
        add("expressions.png", "The seven discrete expressions (presets: mean of D over labelled photos)",
            lambda: F.discrete_expressions(net, photos[: 3], presets, have, expr_names, renderer, p_src[: 3]))
    add("neutral.png", "Neutralisation (p = 0)", lambda: F.neutralisation(net, photos, p_src))
    if E > n_exp:
        add("speech.png", "Expression + speech: single speech-parameter sliders",
            lambda: F.slider_grid(net, photos[0], renderer, names, E - n_exp, opt.grid_step, offset=n_exp,
                                  title="speech-parameter sliders", p_src=p_src[0]))
    return made
