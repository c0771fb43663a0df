"""The evaluation's metrics, one small function each, registered in the order they run
(:mod:`evaluation.registry`): Table 1 (4DFAB transfer), the edits of real test photos
(Table 4, identity, refit, reader), Table 2 (discrete expressions), Table 3 (LRW) and the
training run's final validation; then the comparisons over all rows (``<key>_vs_copy``,
``<key>_gap``).  The protocols themselves are :mod:`evaluation.protocols`,
:mod:`evaluation.metrics` and :mod:`evaluation.lrw`."""
from __future__ import annotations

from evaluation import metrics
from evaluation.baselines import COPY, ORACLE
from evaluation.data import Unavailable
from evaluation.registry import MetricContext, Result, register_comparison, register_metric

N_CLASSES = 7
#: vertex-space twins (need RUN/model.h5)
VERTEX_KEYS = ("d_rel_error_fit_vertex", "d_rel_error_trg_vertex", "exp_rel_error_refit_vertex",
               "reader_vertex_error_trg", "reader_vertex_error_t1")
READER_T1 = ["reader_rel_error_t1", "reader_vertex_error_t1"]
READER_TRG = ["reader_rel_error_trg", "reader_vertex_error_trg"]
FIT_KEYS = ["d_rel_error_fit", "d_rel_error_fit_vertex"]
TRG_KEYS = ["d_rel_error_trg", "d_rel_error_trg_vertex"]
REFIT_KEYS = ["exp_rel_error_refit", "exp_rel_error_refit_vertex"]
EDIT_KEYS = ["d_rel_error_fit", "d_rel_error_trg", "d_rel_error_fit_vertex", "d_rel_error_trg_vertex",
             "identity_cos", "exp_rel_error_refit", "exp_rel_error_refit_vertex"] + READER_TRG


def prepare(ctx: MetricContext) -> None:
    """What every row starts with: the classifier's accuracy on real photos (shared), and the
    keys no protocol can fill for want of the 3DMM or the reader."""
    res, sh, data = ctx.res, ctx.sh, ctx.data
    res.metrics["classifier_real_acc"] = sh.clf_real_acc
    if sh.clf_real_acc is None:
        res.reasons["classifier_real_acc"] = sh.clf_reason or sh.clf_real_reason
    if data.model is None:
        res.fail(VERTEX_KEYS, f"no 3DMM for vertex-space errors ({data.missing.get('model', 'RUN/model.h5')})")
    if sh.reader is None:
        res.fail(READER_T1 + READER_TRG, sh.reader_reason or "no reader")


# ----------------------------------------------------------------------------- Table 1
@register_metric(keys=["ied"], fails=["ied"] + READER_T1, title="Table 1: transfer on held-out 4DFAB renders")
def table1_ied(ctx: MetricContext) -> dict:
    from evaluation import protocols as P

    fab = ctx.data.fab
    if fab is None:
        raise Unavailable(ctx.data.missing.get("fab", "no 4DFAB renders"))
    return {("ied_pairs" if k == "n_pairs" else k): v for k, v in
            P.table1_ied(ctx.net, fab.images, fab.p_exp, fab.group, ctx.opt.pairs, ctx.opt.seed).items()}


@register_metric(keys=READER_T1, after="table1_ied")
def table1_reader(ctx: MetricContext) -> dict | None:
    from evaluation import protocols as P

    if ctx.sh.reader is None:
        return None
    t1 = ctx.outputs["table1_ied"]
    return P.reader_errors(ctx.sh.reader, t1["outputs"], t1["p_trg"], ctx.model, "t1")


# ----------------------------------------------------------------------------- edits of real photos
@register_metric(fails=EDIT_KEYS, title="Table 4, identity, refit: edits of real test photos")
def real_edits(ctx: MetricContext) -> dict:
    from evaluation import protocols as P

    real, sh = ctx.real, ctx.sh
    if real is None:
        raise Unavailable(ctx.data.missing.get("real", "no real photos"))
    if len(sh.test_idx) == 0:
        raise Unavailable("no real photos of held-out identities")
    ctx.cache["edits"] = P.real_edits(ctx.net, sh.test_imgs, real.p_exp[sh.test_idx], ctx.opt.seed)
    return {"n_test": int(len(sh.test_idx))}


def _edits(ctx: MetricContext):
    return ctx.cache["edits"]


@register_metric(keys=FIT_KEYS + TRG_KEYS, after="real_edits")
def table4_d_errors(ctx: MetricContext) -> dict:
    """D's parameter error on the unedited photos (``fit``) and on the edits (``trg``)."""
    from evaluation import protocols as P

    if ctx.baseline:   # D's reading of the unedited photos does not depend on G
        ctx.res.fail(FIT_KEYS, f"independent of the generator: D's reading of the unedited photos "
                               f"(= {ctx.net.regressor_name}'s)")
        return {k: v for k, v in P.d_errors(_edits(ctx), ctx.model).items() if k not in FIT_KEYS}
    return P.d_errors(_edits(ctx), ctx.model)


@register_metric(keys=["identity_cos"], after="real_edits")
def identity_cos(ctx: MetricContext) -> dict:
    ed, emb = _edits(ctx), ctx.sh.embedder
    ctx.res.notes["identity_cos"] = f"embedder: {emb.name}"
    return {"identity_cos": metrics.identity_cos(emb, ed.inputs, ed.outputs)}


@register_metric(keys=["identity_cos_dlib"], after="real_edits")
def identity_cos_dlib(ctx: MetricContext) -> dict | None:
    """The independent dlib check when ``identity_cos`` uses a trained embedder."""
    if ctx.sh.second is None:
        return None
    ed = _edits(ctx)
    return {"identity_cos_dlib": metrics.identity_cos(ctx.sh.second, ed.inputs, ed.outputs)}


@register_metric(keys=READER_TRG, after="real_edits")
def edits_reader(ctx: MetricContext) -> dict | None:
    from evaluation import protocols as P

    if ctx.sh.reader is None:
        return None
    ed = _edits(ctx)
    return P.reader_errors(ctx.sh.reader, ed.outputs, ed.p_trg, ctx.model, "trg")


def _refit_edits(ctx: MetricContext):
    ed = _edits(ctx)
    return ed.head(ctx.opt.refit_images or len(ed.outputs))       # the refit costs seconds per image


@register_metric(keys=REFIT_KEYS, after="real_edits")
def refit(ctx: MetricContext) -> dict:
    """The fit stage's own fit of the edits against their targets."""
    from evaluation import protocols as P

    if not ctx.opt.refit:
        raise Unavailable("disabled (evaluate.refit=false)")
    if ctx.model is None:
        raise Unavailable(ctx.data.missing.get("model", "no 3DMM"))
    return P.refit_error(ctx.sh.refitter, _refit_edits(ctx))


@register_metric(after="real_edits")
def refit_floor(ctx: MetricContext) -> dict | None:
    """The refit's error on the unedited photos (context, the same photos for every row: once)."""
    from evaluation import protocols as P

    sh = ctx.sh
    if not ctx.opt.refit or ctx.model is None:
        return None
    if "floor" not in sh.refit_cache:
        edr = _refit_edits(ctx)
        try:
            sh.refit_cache["floor"] = P.refit_floor_errors(sh.refitter, edr.inputs, edr.p_fit)
        except Exception as e:  # noqa: BLE001 — the floor is context, not a metric
            sh.refit_cache["floor"] = {"refit_real_floor": None, "refit_real_floor_vertex": None,
                                       "refit_real_floor_n": 0}
            ctx.log(f"  refit floor failed: {type(e).__name__}: {e}")
    return dict(sh.refit_cache["floor"])


# ----------------------------------------------------------------------------- Table 2
@register_metric(fails=["expr_recognition_acc"], title="Table 2: discrete expressions")
def expr_presets(ctx: MetricContext) -> dict:
    """The seven presets: the mean of D over labelled photos of each class."""
    from evaluation import protocols as P

    sh = ctx.sh
    if sh.classifier is None:
        raise Unavailable(sh.clf_reason or "no classifier")
    if len(sh.test_idx) == 0:
        raise Unavailable("no real photos of held-out identities")
    got = dict(zip(("presets", "have"), P.expression_presets(ctx.net, sh.lab_imgs, ctx.real.label[sh.lab_all],
                                                             N_CLASSES)))
    ctx.res.presets, ctx.res.have = got["presets"], got["have"]
    return got


@register_metric(keys=["expr_recognition_acc"], after="expr_presets")
def expr_recognition(ctx: MetricContext) -> dict:
    from evaluation import protocols as P

    return P.expression_recognition(ctx.net, ctx.sh.classifier, ctx.sh.test_imgs, ctx.res.presets, ctx.res.have,
                                    ctx.real.p_exp[ctx.sh.test_idx])


# ----------------------------------------------------------------------------- Table 3
@register_metric(keys=["lrw_ied"], title="Table 3: held-out LRW videos (RUN/lrw-fits, split test)")
def table3_lrw(ctx: MetricContext) -> dict:
    from evaluation.lrw import table3_ied

    data, opt = ctx.data, ctx.opt
    if data.lrw_dir is None:
        raise Unavailable(data.missing.get("lrw", "no LRW sequences"))
    size = int(ctx.net.model_config.get("image_size", 128))
    return table3_ied(ctx.net, data.model, data.lrw_dir, opt.lrw_pairs, opt.seed, size=size,
                      pairs=ctx.sh.lrw_material(size) if data.model is not None else None)


# ----------------------------------------------------------------------------- training run
def _training_log(net):
    from evaluation.curves import training_folder

    return training_folder(net.path) / "metrics.jsonl" if net.path else None


def _final_keys() -> list:
    from evaluation.curves import FINAL_KEYS

    return list(FINAL_KEYS) + ["train_val_step"]


@register_metric(keys=_final_keys(), models_only=True, empty=lambda ctx: (
    f"{_training_log(ctx.net)} has no validation record (val_*) up to step {ctx.net.step}"))
def training_numbers(ctx: MetricContext) -> dict:
    """Final held-out validation numbers of the training run (T/metrics.jsonl)."""
    from evaluation.curves import final_values, read_metrics_jsonl

    path = _training_log(ctx.net)
    if path is None or not path.is_file():
        raise Unavailable(f"no training log {path}")
    recs, _ = read_metrics_jsonl(path)
    out = final_values(recs, ctx.net.step)
    out.update({k: None for k in _final_keys() if k not in out})
    return out


# ----------------------------------------------------------------------------- over all rows
def _rows(results: dict, base_results: dict) -> list[Result]:
    return list(results.values()) + list(base_results.values())


def ratio_to_copy(results: dict, base_results: dict, key: str, missing) -> None:
    """``<key>_vs_copy`` = key / copy-input's key, for every model and baseline (Table 1's ``ied``,
    Table 3's ``lrw_ied``; the goal: <= 0.85). ``missing(res)`` is the reason when a row has no
    value; the label of ``key`` names what copy-input lacks."""
    label = {"ied": "IED", "lrw_ied": "Table 3 IED"}[key]
    copy = base_results.get(COPY)
    c = copy.metrics.get(key) if copy is not None else None
    for res in _rows(results, base_results):
        v = res.metrics.get(key)
        if v is not None and c is not None and c > 0:
            res.metrics[f"{key}_vs_copy"] = float(v / c)
        else:
            res.fail([f"{key}_vs_copy"], missing(res) if v is None else f"no {COPY} {label} to divide by")


def gap_left(results: dict, base_results: dict, key: str) -> None:
    """``<key>_gap`` = (key - oracle-3d's) / (copy-input's - oracle-3d's): the share of the way
    from doing nothing to the 3D warp left to go (0 = as good as the oracle, 1 = no better than
    copying; the goal <= 0.5). Read through the reader, whose own error puts the oracle above 0,
    this is fairer than the raw error. Every row gets it when both baselines have the key."""
    c = base_results[COPY].metrics.get(key) if COPY in base_results else None
    o = base_results[ORACLE].metrics.get(key) if ORACLE in base_results else None
    for res in _rows(results, base_results):
        v = res.metrics.get(key)
        if v is not None and c is not None and o is not None and c - o > 1e-12:
            res.metrics[f"{key}_gap"] = float((v - o) / (c - o))
        else:
            why = (res.reasons.get(key, f"no {key}") if v is None else
                   f"{COPY} / {ORACLE} lack {key}" if c is None or o is None else f"{ORACLE} is no better than {COPY}")
            res.fail([f"{key}_gap"], why)


@register_comparison
def ied_vs_copy(results: dict, base_results: dict) -> str:
    ratio_to_copy(results, base_results, "ied", lambda res: "no IED")
    return "ied_vs_copy"


@register_comparison
def lrw_ied_vs_copy(results: dict, base_results: dict) -> str:
    ratio_to_copy(results, base_results, "lrw_ied", lambda res: res.reasons.get("lrw_ied", "no Table 3 IED"))
    return "lrw_ied_vs_copy"


@register_comparison
def reader_vertex_error_trg_gap(results: dict, base_results: dict) -> str:
    gap_left(results, base_results, "reader_vertex_error_trg")
    return "reader_vertex_error_trg_gap"
