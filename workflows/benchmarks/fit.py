"""Fitting benchmark: our batched landmark fitter vs menpo3d's Lucas-Kanade ITW fitter.

Keys (all measured in this one run on ``ctx.world``'s EmotioNet-style photos):

- ``fit_faces_per_s``            fitting core (camera + identity + expression from 68 landmarks),
                                 all photos tiled to a batch of 2048 (4096 unless quick), one
                                 torch thread (as in a stage worker); ``..._2_threads`` with two
- ``fit_exp_rel_error``          mean ||p_fit - p_true|| / ||p_true|| with the true landmarks (sidecars)
- ``fit_exp_rel_error_detected`` the same with dlib-detected landmarks (photos where a face was
                                 found), as the stage uses them: through the world's landmark
                                 calibration (``model.lmcal.npz``, fixed contour) when it has one
                                 (``fit_landmark_calibration`` 1), else raw (dynamic contour);
                                 ``..._uncalibrated``: raw dlib points, dynamic contour, always
- ``fit_exp_rel_error_detected_photometric`` (and ``_median``) those fits refined against the
                                 photo (fitting/photometric.py), all of them (4 if quick);
                                 ``fit_exp_rel_error_detected_same_faces`` landmarks only, same faces;
                                 ``fit_photometric_s_per_face`` its cost (one thread);
                                 ``..._accepted`` over the rows the stage keeps (its gate:
                                 ``fit.max_photometric_residual``, ``fit.max_fit_error_refined``),
                                 ``fit_photometric_rejected`` how many it drops,
                                 ``fit_photometric_residual_median`` the median colour residual;
                                 every one of these again with ``_uncalibrated`` (raw dlib points)
- ``fit_detect_rate``, ``fit_detect_nme``  share of photos with a detection; detected-landmark
                                 error (RMSE / inter-ocular) against the truth;
                                 ``fit_detect_nme_calibrated`` after the calibration
- ``fit_stage_faces_per_s``      the stage's per-chunk work end to end (read JPEG + sidecar, fit,
                                 align, crop), one process
- ``fit_lm_error``               mean landmark RMSE / inter-ocular of the fit (true landmarks)
- ``fit_baseline_faces_per_s``, ``fit_baseline_exp_rel_error``  menpo3d ITW (Booth et al.) on the
                                 first few photos (true landmarks as its landmark term)
- ``fit_exp_rel_error_same_faces`` ours on exactly those photos; ``fit_speedup_vs_baseline``
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _rel(a, b):
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


def run(ctx) -> dict:
    import h5py
    import torch
    from PIL import Image

    from fitting.fit import FitOptions, LandmarkFitter, landmark_error, landmark_errors
    from fitting.landmarks import LandmarkCalibration, get_detector
    from fitting.model import MorphableModel
    from fitting.photo import resolve_calibration
    from pipeline.config import load_config
    from workflows.stages.fit import build_stage, fit_gate

    world = Path(ctx.world)
    model = MorphableModel.load(world / "model.h5")
    with h5py.File(world / "emotionet" / "truth.h5", "r") as f:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][()]]
        lm = f["landmarks"][()].astype(np.float64)
        p_true = f["p_exp"][()][:, : model.n_exp]
    cfg = load_config(None).section("fit")
    out: dict = {}

    fixed = LandmarkFitter(model, FitOptions.from_config(cfg, contour="fixed", device="cpu"))
    sig_det = float(cfg.get("sigma_detected", 0.1))
    dynamic = LandmarkFitter(model, FitOptions.from_config(cfg, contour="dynamic", sigma=sig_det, device="cpu"))
    fixed_det = LandmarkFitter(model, FitOptions.from_config(cfg, contour="fixed", sigma=sig_det, device="cpu"))
    res = fixed.fit(lm)
    out["fit_exp_rel_error"] = float(np.mean(_rel(res.p_exp, p_true)))
    out["fit_lm_error"] = float(np.mean(res.fit_error))

    # throughput of the core, batched
    n_big = 2048 if ctx.quick else 4096
    tiled = np.tile(lm, (n_big // len(lm) + 1, 1, 1))[:n_big]
    old_threads = torch.get_num_threads()
    for threads, key in ((1, "fit_faces_per_s"), (2, "fit_faces_per_s_2_threads")):
        torch.set_num_threads(threads)                         # the stage runs 1 thread per worker
        fixed.fit(tiled[:64])                                  # warm-up
        t0 = time.perf_counter()
        fixed.fit(tiled)
        out[key] = float(n_big / (time.perf_counter() - t0))
    torch.set_num_threads(1)

    # detected landmarks: dlib's points as they are, and through the landmark calibration the
    # stage uses (fit.landmark_calibration: auto finds the world's model.lmcal.npz)
    det = get_detector()
    rgbs = [np.asarray(Image.open(world / "emotionet" / k).convert("RGB")) for k in keys]
    found, dets = [], []
    t0 = time.perf_counter()
    for i, rgb in enumerate(rgbs):
        d = det.detect(rgb)
        if d is not None:
            found.append(i)
            dets.append(d)
    out["fit_detect_s_per_face"] = float((time.perf_counter() - t0) / len(rgbs))
    out["fit_detect_rate"] = float(len(found) / len(rgbs))
    cal_path, _ = resolve_calibration(cfg.get("landmark_calibration", "auto"), str(world / "model.h5"),
                                      "render")                     # the bench world's photos are renders
    cal = LandmarkCalibration.load(cal_path) if cal_path else None
    out["fit_landmark_calibration"] = 1.0 if cal is not None else 0.0
    if found:
        idx = np.array(found)
        D = np.stack(dets)
        out["fit_detect_nme"] = float(np.mean(landmark_errors(D, lm[idx])))
        rd_raw = dynamic.fit(D)
        out["fit_exp_rel_error_detected_fixed_contour_uncalibrated"] = float(
            np.mean(_rel(fixed_det.fit(D).p_exp, p_true[idx])))
        out["fit_exp_rel_error_zero_prediction"] = 1.0          # reference: predicting p = 0
        variants = [("_uncalibrated", D, rd_raw, "dynamic")]
        if cal is not None:
            Dc = cal.apply(D)
            out["fit_detect_nme_calibrated"] = float(np.mean(landmark_errors(Dc, lm[idx])))
            variants.insert(0, ("", Dc, fixed_det.fit(Dc), "fixed"))     # the stage's choice first
        else:
            variants.insert(0, ("", D, rd_raw, "dynamic"))
        # photometric refinement of the detected-landmark fits (fit.photometric), 4 faces if quick
        from fitting.photometric import PhotometricOptions, PhotometricRefiner

        n_ph = min(len(idx), 4) if ctx.quick else len(idx)
        ref = PhotometricRefiner(model, PhotometricOptions.from_config(cfg))
        out["fit_photometric_faces"] = float(n_ph)
        for suffix, L, rd, contour in variants[: 1 if cal is None else 2]:
            out[f"fit_exp_rel_error_detected{suffix}"] = float(np.mean(_rel(rd.p_exp, p_true[idx])))
            t0 = time.perf_counter()
            runs = [ref.refine(rgbs[i], L[j], rd.p_id[j], rd.p_exp[j], rd.camera[j], contour=contour)
                    for j, i in enumerate(idx[:n_ph])]
            e_ph = _rel(np.stack([r[1] for r in runs]), p_true[idx[:n_ph]])
            # the stage's gate (workflows.stages.fit.fit_gate): rows it rejects leave the shards
            lm_err = np.array([landmark_error(r[3]["lm_fitted"], L[j]) for j, r in enumerate(runs)])
            resid = np.array([r[3]["residual"] for r in runs])
            keep = np.array([fit_gate(e, r, cfg) is None for e, r in zip(lm_err, resid)])
            out[f"fit_photometric_s_per_face{suffix}"] = float((time.perf_counter() - t0) / n_ph)
            out[f"fit_exp_rel_error_detected_photometric{suffix}"] = float(np.mean(e_ph))
            out[f"fit_exp_rel_error_detected_photometric{suffix}_median"] = float(np.median(e_ph))
            out[f"fit_photometric_rejected{suffix}"] = float((~keep).sum())
            out[f"fit_photometric_residual_median{suffix}"] = float(np.median(resid))
            out[f"fit_exp_rel_error_detected_photometric{suffix}_accepted"] = (
                float(np.mean(e_ph[keep])) if keep.any() else None)
            out[f"fit_exp_rel_error_detected{suffix}_same_faces"] = float(np.mean(_rel(rd.p_exp[:n_ph], p_true[idx[:n_ph]])))
    else:
        out["fit_exp_rel_error_detected"] = None

    # the stage's chunk work in this process (sidecar landmarks)
    stage = build_stage(str(world / "emotionet"), str(world / "model.h5"), dict(cfg, landmarks="sidecar"))
    stage.process_chunk(stage.input_keys()[:4], 0)             # warm-up (model load, caches)
    t0 = time.perf_counter()
    r = stage.process_chunk(stage.input_keys(), 0)
    out["fit_stage_faces_per_s"] = float(len(r.rows["key"]) / (time.perf_counter() - t0))

    # baseline: menpo3d ITW on a few faces
    n_base = 2 if ctx.quick else 8
    try:
        from fitting.itw import ITWFitter

        itw = ITWFitter(model, cfg, landmark_fitter=fixed)
        t0 = time.perf_counter()
        rb = itw.fit(rgbs[:n_base], lm[:n_base])
        dt = time.perf_counter() - t0
        out["fit_baseline_faces_per_s"] = float(n_base / dt)
        out["fit_baseline_exp_rel_error"] = float(np.mean(_rel(rb.p_exp, p_true[:n_base])))
        out["fit_baseline_faces"] = float(n_base)
        out["fit_baseline_iterations"] = float(itw.iters)
        out["fit_exp_rel_error_same_faces"] = float(np.mean(_rel(res.p_exp[:n_base], p_true[:n_base])))
        out["fit_speedup_vs_baseline"] = out["fit_faces_per_s"] / out["fit_baseline_faces_per_s"]
    except Exception as e:  # noqa: BLE001 — the baseline is optional; say why it is missing
        out["fit_baseline_faces_per_s"] = None
        out["fit_baseline_exp_rel_error"] = None
        out["fit_baseline_error"] = f"{e.__class__.__name__}: {e}".splitlines()[0]
    torch.set_num_threads(old_threads)
    return out
