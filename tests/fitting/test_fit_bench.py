"""The fit benchmark runs end to end in quick mode and reports every key with a value
(no timing assertions; accuracy bounds are loose, the figures go in docs/fitting.md)."""
from types import SimpleNamespace


def test_fit_benchmark_keys(tiny_world, tmp_path):
    from workflows.benchmarks import fit as bench

    out = bench.run(SimpleNamespace(world=tiny_world, tmp=tmp_path, quick=True))
    assert not [k for k in out if k.endswith("_error") and isinstance(out[k], str)], out   # no stage failed
    for key in ("fit_faces_per_s", "fit_faces_per_s_2_threads", "fit_stage_faces_per_s", "fit_baseline_faces_per_s",
                "fit_speedup_vs_baseline", "fit_photometric_s_per_face", "fit_exp_rel_error",
                "fit_baseline_exp_rel_error", "fit_exp_rel_error_detected", "fit_exp_rel_error_detected_photometric",
                "fit_exp_rel_error_detected_photometric_accepted", "fit_photometric_residual_median"):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["fit_exp_rel_error"] < 0.5
    assert out["fit_photometric_faces"] == 4                   # quick mode: the first 4 detected faces
    # the refinement improves on the landmark-only fit of the same detections
    assert out["fit_exp_rel_error_detected_photometric"] < out["fit_exp_rel_error_detected_same_faces"]
    assert out["fit_photometric_residual_median"] < 0.05
    # the world's landmark calibration is used, and reported beside the raw detections
    assert out["fit_landmark_calibration"] == 1.0
    assert out["fit_detect_nme_calibrated"] < out["fit_detect_nme"]
    for key in ("fit_exp_rel_error_detected_uncalibrated", "fit_exp_rel_error_detected_photometric_uncalibrated",
                "fit_photometric_s_per_face_uncalibrated"):
        assert isinstance(out[key], float) and out[key] > 0, key
    # the headline keys (issue 20): the path real photos take, ours and menpo3d's, in this run
    from tests.fitting.test_fit_bench_realistic import check

    check(out, need_same_faces=False)           # full settings: the gate may reject a fit of 2
