"""The paper's evaluation protocols on a loaded checkpoint (:class:`evaluation.networks.Networks`).

* Table 1 (:func:`table1_ied`): 4DFAB renders of held-out identities; random ordered pairs
  (source, target) of the same identity+session (``group``); G(source, p_target) is compared
  with the target render by IED.
* Table 4 (:func:`real_edits`): on real test photos, ``d_rel_error_fit`` = mean
  ||p_fit - D(I)|| / ||p_fit||, and ``d_rel_error_trg`` = mean ||p_trg - D(G(I, p_trg))|| / ||p_trg||
  with p_trg the fitted parameters of another test photo (a fixed random permutation).
  The same edits give ``identity_cos`` and ``exp_rel_error_refit``.
* Table 2 (:func:`expression_recognition`): presets = per-class mean of D's regressed
  parameters over the labelled photos; test photos are translated to each of the seven
  presets and a D-independent classifier must recognise the target class.
* Table 3 (:func:`evaluation.lrw.table3_ied`): expression + speech transfer in LRW-style sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluation import metrics
from evaluation.data import Unavailable
from evaluation.networks import Networks, generate, regress


def same_group_pairs(group, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Random ordered pairs (i, j), i != j, group[i] == group[j] -> int64 [P, 2], P <= n_pairs.

    Pairs are drawn without replacement from all such ordered pairs (deterministic for a seed).
    """
    g = np.asarray(group)
    cand = []
    for u in np.unique(g):
        idx = np.nonzero(g == u)[0]
        if len(idx) < 2:
            continue
        a, b = np.meshgrid(idx, idx, indexing="ij")
        m = a != b
        cand.append(np.stack([a[m], b[m]], 1))
    if not cand:
        return np.zeros((0, 2), np.int64)
    cand = np.concatenate(cand).astype(np.int64)
    rng = np.random.default_rng(seed)
    take = rng.permutation(len(cand))[: max(0, int(n_pairs))]
    return cand[np.sort(take)]


def table1_ied(nets: Networks, images, p_exp, group, n_pairs: int, seed: int = 0) -> dict:
    """IED of G(source, p_target) against the target: {"ied", "n_pairs", "ied_identity"}
    (+ arrays "per_pair" [P], "outputs" [P,H,W,3] and "p_trg" [P,E], which are not metrics).

    images uint8 [N,H,W,3], p_exp [N,E], group [N]. ``ied_identity`` is the IED of the
    untouched source against the target (the do-nothing baseline; also the ``copy-input``
    row's ``ied``).
    """
    from evaluation import ied

    pairs = same_group_pairs(group, n_pairs, seed)
    if len(pairs) == 0:
        raise Unavailable("no identity+session group has two held-out 4DFAB renders")
    src, trg = pairs[:, 0], pairs[:, 1]
    out = generate(nets, images[src], p_exp[trg])
    target = images[trg].astype(np.float64) / 255.0
    d = ied(out, target)
    base = ied(images[src].astype(np.float64) / 255.0, target)
    return {"ied": float(np.mean(d)), "n_pairs": int(len(pairs)), "ied_identity": float(np.mean(base)),
            "per_pair": d, "outputs": out, "p_trg": np.asarray(p_exp, np.float32)[trg]}


@dataclass
class RealEdits:
    """Real test photos edited towards other photos' parameters (inputs of Tables 4 and refit)."""

    inputs: np.ndarray        # uint8 [N,H,W,3]
    p_fit: np.ndarray         # [N,E] fitted parameters of the inputs
    p_trg: np.ndarray         # [N,E] target parameters
    outputs: np.ndarray       # float32 [N,H,W,3] in [0,1]
    d_fit: np.ndarray         # [N,E] D(inputs)
    d_out: np.ndarray         # [N,E] D(outputs)
    extra: dict = field(default_factory=dict)


def target_permutation(n: int, seed: int = 0) -> np.ndarray:
    """A fixed permutation of range(n) without fixed points when n > 1 (a cyclic shift of a shuffle)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def real_edits(nets: Networks, images, p_fit, seed: int = 0) -> RealEdits:
    p_fit = np.asarray(p_fit, np.float32)[:, : nets.n_params]
    if len(images) == 0:
        raise Unavailable("no real test photos")
    p_trg = p_fit[target_permutation(len(images), seed)]
    outputs = generate(nets, images, p_trg)
    return RealEdits(images, p_fit, p_trg, outputs, regress(nets, images), regress(nets, outputs))


def d_errors(ed: RealEdits, model=None) -> dict:
    """Table 4: {"d_rel_error_fit", "d_rel_error_trg"} and their vertex-space twins
    {"d_rel_error_fit_vertex", "d_rel_error_trg_vertex"} (:func:`metrics.mean_vertex_error`
    with the run's 3DMM ``model``; None without one). Each None when no usable row."""
    return {"d_rel_error_fit": metrics.mean_relative_error(ed.p_fit, ed.d_fit),
            "d_rel_error_trg": metrics.mean_relative_error(ed.p_trg, ed.d_out),
            "d_rel_error_fit_vertex": metrics.mean_vertex_error(model, ed.p_fit, ed.d_fit),
            "d_rel_error_trg_vertex": metrics.mean_vertex_error(model, ed.p_trg, ed.d_out)}


def reader_errors(reader, images, p_ref, model=None, suffix: str = "trg") -> dict:
    """The independent reader's reading of ``images`` [N,H,W,3] (edits) against the parameters
    they should show, ``p_ref`` [N,E]: {"reader_rel_error_<suffix>", "reader_vertex_error_<suffix>"}
    (mean relative error in parameters, and its vertex-space twin; compared on the first
    min(E, E_reader) columns). ``reader.predict(uint8 [N,H,W,3]) -> [N,E_reader]``."""
    p_hat = np.asarray(reader.predict(metrics.to_uint8(images)), np.float32)
    return {f"reader_rel_error_{suffix}": metrics.mean_relative_error(p_ref, p_hat),
            f"reader_vertex_error_{suffix}": metrics.mean_vertex_error(model, p_ref, p_hat)}


_DETECTORS: dict = {}


def _detector(upsample: int):
    """Per-process cached ``fitting.landmarks.Detector`` (loading dlib's models takes seconds)."""
    from fitting.landmarks import Detector

    if upsample not in _DETECTORS:
        _DETECTORS[upsample] = Detector(upsample=upsample)
    return _DETECTORS[upsample]


def refit_params(model, images, n_exp: int, fit_options: dict | None = None, upsample: int = 2):
    """Fit the 3DMM to detected landmarks of each image.

    images uint8/float [N,H,W,3] -> (rows int64 [M] of the images with a detected face,
    p_exp float32 [M, n_exp]). Landmarks: ``fitting.landmarks.Detector`` (dlib HOG detector +
    68-point predictor) with ``upsample`` pyramid up-samplings (a 128-px face is small for
    dlib's detector); fit: ``fitting.fit.LandmarkFitter`` with ``fit_options`` (FitOptions fields).
    """
    from fitting.fit import FitOptions, LandmarkFitter

    det = _detector(upsample)
    lms, rows = [], []
    for i, im in enumerate(metrics.to_uint8(images)):
        lm = det.detect(im)
        if lm is not None and np.isfinite(lm).all():
            lms.append(lm)
            rows.append(i)
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, n_exp), np.float32)
    opts = dict(fit_options or {})
    opts["n_exp"] = n_exp
    opts.setdefault("device", "cpu")
    fitter = LandmarkFitter(model, FitOptions(**{k: v for k, v in opts.items()
                                                 if k in FitOptions.__dataclass_fields__}))
    return np.asarray(rows, np.int64), np.asarray(fitter.fit(np.stack(lms)).p_exp, np.float32)


def refit_error(model, ed: RealEdits, fit_options: dict | None = None, upsample: int = 2) -> dict:
    """Fit the 3DMM to each generated image and compare with p_trg (:func:`refit_params`).

    Images without a detected face are counted (``refit_no_face``) and left out.
    Returns {"exp_rel_error_refit", "exp_rel_error_refit_vertex", "refit_no_face", "refit_n"}.
    """
    rows, p = refit_params(model, ed.outputs, ed.p_trg.shape[1], fit_options, upsample)
    if len(rows) == 0:
        raise Unavailable(f"no face detected in any of the {len(ed.outputs)} generated images")
    err = metrics.mean_relative_error(ed.p_trg[rows], p)
    return {"exp_rel_error_refit": err, "exp_rel_error_refit_vertex": metrics.mean_vertex_error(model, ed.p_trg[rows], p),
            "refit_no_face": int(len(ed.outputs) - len(rows)), "refit_n": int(len(rows))}


def refit_floor_errors(model, images, p_fit, fit_options: dict | None = None, upsample: int = 2) -> dict:
    """The refit measurement applied to unedited photos against their stage fits: the error
    :func:`refit_error` reports for a perfect generator (its floor).
    {"refit_real_floor", "refit_real_floor_vertex"}, None without detections."""
    p_fit = np.asarray(p_fit, np.float32)
    rows, p = refit_params(model, images, p_fit.shape[1], fit_options, upsample)
    if not len(rows):
        return {"refit_real_floor": None, "refit_real_floor_vertex": None}
    return {"refit_real_floor": metrics.mean_relative_error(p_fit[rows], p),
            "refit_real_floor_vertex": metrics.mean_vertex_error(model, p_fit[rows], p)}


def refit_floor(model, images, p_fit, fit_options: dict | None = None, upsample: int = 2) -> float | None:
    """:func:`refit_floor_errors`' ``refit_real_floor`` (None without detections)."""
    return refit_floor_errors(model, images, p_fit, fit_options, upsample)["refit_real_floor"]


def expression_presets(nets: Networks, images, labels, n_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean of D's regressed parameters over labelled photos (the paper's presets).

    images [N,H,W,3], labels [N] in 0..n_classes-1 -> (presets [n_classes,E], have bool [n_classes]).
    """
    labels = np.asarray(labels, np.int64)
    reg = regress(nets, images)
    presets = np.zeros((n_classes, nets.n_params), np.float32)
    have = np.zeros(n_classes, bool)
    for c in range(n_classes):
        m = labels == c
        if m.any():
            presets[c] = reg[m].mean(0)
            have[c] = True
    return presets, have


def expression_recognition(nets: Networks, classifier, test_images, presets, have) -> dict:
    """Translate every test photo to every available preset and classify the result.

    Returns {"expr_recognition_acc", "expr_n", "per_class" {c: acc}}.
    """
    classes = np.nonzero(have)[0]
    if len(classes) < 2 or len(test_images) == 0:
        raise Unavailable("need test photos and presets of at least two expression classes")
    n = len(test_images)
    imgs = np.concatenate([test_images] * len(classes))
    p = np.repeat(presets[classes], n, axis=0)
    truth = np.repeat(classes, n)
    pred = classifier.predict(generate(nets, imgs, p))
    per = {int(c): metrics.accuracy(pred[truth == c], truth[truth == c]) for c in classes}
    return {"expr_recognition_acc": metrics.accuracy(pred, truth), "expr_n": int(len(truth)), "per_class": per}
