"""The material every evaluated network (checkpoint or baseline) shares: the real test
photos, the labelled photos and the expression classifier, the identity embedder, the
refitter, the reader, Table 3's frame pairs, and the two baselines (copy-input, oracle-3d)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from evaluation import metrics
from evaluation.baselines import COPY, IDENTITY_ALIGN, ORACLE, CopyInput, WarpFit, WarpOracle, make_warper, warps_options
from evaluation.data import EvalData, Unavailable, balanced_rows
from evaluation.networks import Networks
from evaluation.options import EvalOptions, _dlib_available, make_identity_embedder
from evaluation.tables import N_CLASSES


@dataclass
class Shared:
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


def build_shared(data: EvalData, opt: EvalOptions, run: Path, checkpoints: Sequence, log: Callable, info: dict,
                 reader=None, reader_reason: str | None = None) -> Shared:
    """The shared material (:class:`Shared`); notes what it used in ``info`` (the report's
    "about this evaluation" list)."""
    # real test photos, labelled photos (read once, used by every network)
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
    classifier, clf_reason, clf_real_acc, clf_real_reason = _classifier(data, opt, lab_train, lab_test, lab_all, info)
    embedder = make_identity_embedder(opt, run, checkpoints)
    info["identity embedder"] = f"{embedder.name}: {embedder.note}"
    second = metrics.DlibEmbedder() if (isinstance(embedder, metrics.TorchEmbedder) and _dlib_available()) else None
    # the refit is the fit stage's own fit of a detected photo (fitting.photo), with the run's fit:
    # section, calibration and image domain: only then is it comparable with p_fit
    refitter = None
    if data.model is not None and opt.refit:
        from evaluation.protocols import refitter as make_refitter

        refitter = make_refitter(data.model, opt.fit, data.run / "model.h5",
                                 data.real.photo_root if data.real is not None else None)
    return Shared(data, opt, log, test_idx, test_imgs, lab_all, lab_imgs, classifier, clf_reason, clf_real_acc,
                  clf_real_reason, embedder, second, refitter, reader, reader_reason)


def _classifier(data: EvalData, opt: EvalOptions, lab_train, lab_test, lab_all, info: dict):
    """Table 2's expression classifier, trained on labelled photos of the training identities
    (all labelled photos when those have fewer than two classes): ``(classifier | None,
    reason | None, accuracy on labelled test photos | None, reason for no accuracy)``."""
    real = data.real
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
    return classifier, clf_reason, clf_real_acc, clf_real_reason

def make_baselines(nets: Sequence[Networks], data: EvalData, opt: EvalOptions, sh: Shared, info: dict) -> list:
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


def reader_summary(reader, reason: str | None) -> dict:
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
