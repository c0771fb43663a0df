"""The paper's evaluation protocols on a loaded checkpoint (:class:`evaluation.networks.Networks`).

* Table 1 (:func:`table1_ied`): 4DFAB renders of held-out identities; random ordered pairs
  (source, target) of the same identity+session (``group``); G(source, p_target) is compared
  with the target render by IED.
* Table 4 (:func:`real_edits`): on real test photos, ``d_rel_error_fit`` = mean
  ||p_fit - D(I)|| / ||p_fit||, and ``d_rel_error_trg`` = mean ||p_trg - D(G(I, p_trg))|| / ||p_trg||
  with p_trg the fitted parameters of another test photo (a fixed random permutation).
  The same edits give ``identity_cos`` and ``exp_rel_error_refit`` (the fit stage's fit of the
  edits, :func:`refitter`; its floor ``refit_real_floor`` is the same fit of the unedited crops).
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
    out = generate(nets, images[src], p_exp[trg], p_exp[src])
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

    def head(self, n: int) -> "RealEdits":
        """The first ``n`` edits (all arrays cut alike; ``extra`` kept)."""
        cut = [None if a is None else a[:n] for a in (self.inputs, self.p_fit, self.p_trg, self.outputs,
                                                       self.d_fit, self.d_out)]
        return RealEdits(*cut, dict(self.extra))


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
    outputs = generate(nets, images, p_trg, p_fit)
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


def refitter(model, fit_cfg: dict | None = None, model_path=None, images_root=None, detector=None):
    """The fit the refit measurements use: the fit stage's own (:class:`fitting.photo.PhotoFitter`)
    with the run's ``fit:`` section, the landmark calibration ``fit.landmark_calibration``
    picks for ``model_path`` and the image domain of the photos under ``images_root``
    (``fit.image_domain``), and dlib's detector with its retry (or ``detector``), on the
    CPU.  So the refit of an unedited test crop is a fit of a detected photo as the stage
    makes it, and its distance to the stage's ``p_exp`` is the floor of the refit error."""
    from fitting.photo import PhotoFitter, fit_settings, image_domain, load_calibration

    cfg = fit_settings(fit_cfg)
    domain = image_domain(cfg["image_domain"], images_root)
    cal = None
    if model_path is not None:
        cal = load_calibration(cfg["landmark_calibration"], str(model_path), domain)
    return PhotoFitter(model, cfg, cal, detector, device="cpu", domain=domain)


def refit_params(fitter, images, n_exp: int):
    """Fit the 3DMM to each image as the fit stage fits a detected photo (``fitter``: a
    :func:`refitter`: detection, calibration, landmark fit, photometric refinement, gate).

    images uint8/float [N,H,W,3] -> (rows int64 [M] of the images with an accepted fit,
    p_exp float32 [M, n_exp]: the fit's first ``n_exp`` expression parameters, zero-padded).
    """
    res = fitter.fit_photos(list(metrics.to_uint8(images)), where="the refit")
    rows = [i for i, r in enumerate(res) if isinstance(r, dict)]
    p = np.zeros((len(rows), n_exp), np.float32)
    for k, i in enumerate(rows):
        e = res[i]["p_exp"][:n_exp]
        p[k, :len(e)] = e
    return np.asarray(rows, np.int64), p


def refit_error(fitter, ed: RealEdits) -> dict:
    """Fit the 3DMM to each generated image and compare with p_trg (:func:`refit_params`).

    Images without an accepted fit (no face, or rejected by the gate) are counted
    (``refit_no_face``) and left out.
    Returns {"exp_rel_error_refit", "exp_rel_error_refit_vertex", "refit_no_face", "refit_n"}.
    """
    rows, p = refit_params(fitter, ed.outputs, ed.p_trg.shape[1])
    if len(rows) == 0:
        raise Unavailable(f"no face detected (and fitted) in any of the {len(ed.outputs)} generated images")
    err = metrics.mean_relative_error(ed.p_trg[rows], p)
    return {"exp_rel_error_refit": err,
            "exp_rel_error_refit_vertex": metrics.mean_vertex_error(fitter.model, ed.p_trg[rows], p),
            "refit_no_face": int(len(ed.outputs) - len(rows)), "refit_n": int(len(rows))}


def refit_floor_errors(fitter, images, p_fit) -> dict:
    """The refit measurement applied to the unedited test crops against their stage fits:
    what :func:`refit_error` reports for a perfect generator (its floor; near the stage's own
    error on detected landmarks, since both are the same fit of a detected photo).
    {"refit_real_floor", "refit_real_floor_vertex", "refit_real_floor_n"}, None without fits."""
    p_fit = np.asarray(p_fit, np.float32)
    rows, p = refit_params(fitter, images, p_fit.shape[1])
    if not len(rows):
        return {"refit_real_floor": None, "refit_real_floor_vertex": None, "refit_real_floor_n": 0}
    return {"refit_real_floor": metrics.mean_relative_error(p_fit[rows], p),
            "refit_real_floor_vertex": metrics.mean_vertex_error(fitter.model, p_fit[rows], p),
            "refit_real_floor_n": int(len(rows))}


def refit_floor(fitter, images, p_fit) -> float | None:
    """:func:`refit_floor_errors`' ``refit_real_floor`` (None without fits)."""
    return refit_floor_errors(fitter, images, p_fit)["refit_real_floor"]


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


def expression_recognition(nets: Networks, classifier, test_images, presets, have, p_src=None) -> dict:
    """Translate every test photo to every available preset and classify the result
    (``p_src [N,E]``: the photos' fits, for a generator conditioned on the change).

    Returns {"expr_recognition_acc", "expr_n", "per_class" {c: acc}}.
    """
    classes = np.nonzero(have)[0]
    if len(classes) < 2 or len(test_images) == 0:
        raise Unavailable("need test photos and presets of at least two expression classes")
    n = len(test_images)
    imgs = np.concatenate([test_images] * len(classes))
    p = np.repeat(presets[classes], n, axis=0)
    truth = np.repeat(classes, n)
    ps = None if p_src is None else np.concatenate([np.asarray(p_src, np.float32)] * len(classes))
    pred = classifier.predict(generate(nets, imgs, p, ps))
    per = {int(c): metrics.accuracy(pred[truth == c], truth[truth == c]) for c in classes}
    return {"expr_recognition_acc": metrics.accuracy(pred, truth), "expr_n": int(len(truth)), "per_class": per}
