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
                                 (secondary: the landmark-only core with *true* landmarks, a
                                 path no real photo takes)

Headline, the path real photos take (:func:`realistic`; the first 8 photos, 2 if quick, the
baseline's photos): the fit stage's chunk work (``workflows.stages.fit``, i.e.
``fitting.photo.PhotoFitter``) with ``fit.landmarks=detect``: read JPEG, dlib detection, the
world's landmark calibration, landmark fit, the default ``fit.photometric`` refinement, gate,
align and crop, one torch and one BLAS thread (one core), timed end to end per input photo
(rejected photos count) in CPU seconds of the process (one thread: one core's work, robust to
a busy machine; ``..._faces_per_s_wall`` the wall clock), after one warm-up photo outside the
set (none if quick):

- ``fit_realistic_faces_per_s``  our fitter (``fit.fitter=landmarks``) on that path
- ``fit_baseline_realistic_faces_per_s``  menpo3d ITW on the same path (``fit.fitter=itw``:
                                 same photos, same detections and calibration, same gate)
- ``fit_realistic_speedup_vs_baseline``  the ratio of the two
- ``fit_exp_rel_error_detected_realistic`` / ``fit_baseline_exp_rel_error_detected``  mean
                                 relative expression error of the rows each keeps, over the
                                 photos both keep (``fit_realistic_same_faces`` of
                                 ``fit_realistic_faces``; kept: ``fit_realistic_kept``,
                                 ``fit_baseline_realistic_kept``); ``..._median`` too
- ``fit_vertex_rel_error_detected_realistic`` / ``fit_baseline_vertex_rel_error_detected``
                                 the same in vertex space (``evaluation.metrics.mean_vertex_error``)
- ``fit_realistic_photo_domain_faces_per_s`` (``_kept``), ``fit_exp_rel_error_detected_realistic_photo_domain``
                                 (``_median``, vertex twin) our fitter with ``fit.image_domain=photo``,
                                 the defaults real photos get (``fit.photo_overrides``: no
                                 refinement, no render calibration), over the rows it keeps;
                                 on these renders it only shows that path's cost
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _rel(a, b):
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


def realistic(world, keys, p_true, cfg: dict, n: int, warm: bool = True) -> dict:
    """The headline keys (module doc): the fit stage's chunk work with detected landmarks on
    ``keys[:n]`` (``p_true`` their true expressions, rows of ``keys``) with our fitter, with
    menpo3d's ITW (``fit.fitter=itw``) and with the photo-domain defaults, one core.  Each
    run loads its model and detector first and, with ``warm``, fits ``keys[n]`` untimed
    (fitter caches).  Times are the process's CPU seconds (one thread: one core's work,
    whatever else the machine runs); ``..._wall`` keys give the wall clock beside them."""
    import torch

    from evaluation.metrics import mean_vertex_error
    from fitting.model import MorphableModel
    from pipeline.threads import one_blas_thread
    from workflows.stages.fit import build_stage

    world = Path(world)
    model = MorphableModel.load(world / "model.h5")
    keys = list(keys)
    n = min(int(n), len(keys))
    truth = {k: np.asarray(p, np.float64)[: model.n_exp] for k, p in zip(keys, p_true)}
    timed, warm_keys = keys[:n], keys[n:n + 1] if warm else []
    out: dict = {"fit_realistic_faces": float(n)}
    runs = {"ours": dict(fitter="landmarks"), "itw": dict(fitter="itw"),
            "photo": dict(fitter="landmarks", image_domain="photo")}
    fits, rates, walls = {}, {}, {}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for name, over in runs.items():
            stage = build_stage(str(world / "emotionet"), str(world / "model.h5"),
                                dict(cfg, landmarks="detect", threads=1, **over))
            with one_blas_thread():
                stage._photo_fitter().detector()                # model and dlib loaded untimed,
                import fitting.photometric                       # noqa: F401  and the fitters' modules
                if over["fitter"] == "itw":
                    import menpo3d.morphablemodel                # noqa: F401
                if warm_keys:
                    stage.process_chunk(warm_keys, 0)
                t0, c0 = time.perf_counter(), time.process_time()
                r = stage.process_chunk(timed, 0)
                c1, t1 = time.process_time(), time.perf_counter()
            rates[name] = n / max(c1 - c0, 1e-9)
            walls[name] = n / max(t1 - t0, 1e-9)
            fits[name] = {k: np.asarray(p, np.float64) for k, p in zip(r.rows["key"], r.rows["p_exp"])}
    finally:
        torch.set_num_threads(old)
    out["fit_realistic_faces_per_s"] = float(rates["ours"])
    out["fit_baseline_realistic_faces_per_s"] = float(rates["itw"])
    out["fit_realistic_speedup_vs_baseline"] = float(rates["ours"] / rates["itw"])
    out["fit_realistic_photo_domain_faces_per_s"] = float(rates["photo"])
    out["fit_realistic_faces_per_s_wall"] = float(walls["ours"])
    out["fit_baseline_realistic_faces_per_s_wall"] = float(walls["itw"])
    out["fit_realistic_kept"] = float(len(fits["ours"]))
    out["fit_baseline_realistic_kept"] = float(len(fits["itw"]))
    out["fit_realistic_photo_domain_kept"] = float(len(fits["photo"]))
    both = [k for k in timed if k in fits["ours"] and k in fits["itw"]]
    out["fit_realistic_same_faces"] = float(len(both))
    for prefix, name, rows in (("fit_exp_rel_error_detected_realistic", "ours", both),
                               ("fit_baseline_exp_rel_error_detected", "itw", both),
                               ("fit_exp_rel_error_detected_realistic_photo_domain", "photo",
                                [k for k in timed if k in fits["photo"]])):
        vprefix = prefix.replace("exp_rel_error", "vertex_rel_error")
        if not rows:
            out[prefix] = out[vprefix] = None
            continue
        ref = np.stack([truth[k] for k in rows])
        est = np.stack([fits[name][k][: model.n_exp] for k in rows])
        e = _rel(est, ref)
        out[prefix] = float(np.mean(e))
        out[f"{prefix}_median"] = float(np.median(e))
        out[vprefix] = mean_vertex_error(model, ref, est)
    return out


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
    # the headline: the path real photos take, ours and the baseline's, on those photos
    out.update(realistic(world, keys, p_true, cfg, n_base, warm=not ctx.quick))
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
