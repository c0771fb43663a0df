"""The fit benchmark's headline keys (issue 20): the path real photos take (detected
landmarks, the stage's refinement, one core) for our fitter and menpo3d's ITW on the same
photos.  No timing assertions: the keys exist and agree with each other on a tiny run (cheap
settings: the figures themselves come from ``slidergan bench --only fit``, docs/fitting.md)."""
import h5py
import numpy as np
import pytest

#: cheap settings: a couple of refinement and ITW steps (the consistency of the keys is what is tested)
CHEAP = {"photometric_iterations": 2, "photometric_search_iterations": 0, "photometric_blur": [0.0],
         "photometric_n_samples": 300, "itw_iterations": 2, "itw_samples": 200}


def realistic_keys(world, n=2):
    from pipeline.config import load_config
    from workflows.benchmarks.fit import realistic

    with h5py.File(world / "emotionet" / "truth.h5", "r") as f:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][()]]
        p_true = f["p_exp"][()]
    cfg = dict(load_config(None).section("fit"), **CHEAP)
    return realistic(world, keys, p_true, cfg, n, warm=False), keys, p_true


def check(out, n=2, need_same_faces=True):
    """The realistic keys of ``out`` exist and agree; ``need_same_faces``: both fitters kept a
    photo (else the errors may be None: a gate rejected every fit of one of them)."""
    for key in ("fit_realistic_faces_per_s", "fit_baseline_realistic_faces_per_s", "fit_realistic_speedup_vs_baseline",
                "fit_realistic_photo_domain_faces_per_s", "fit_realistic_faces_per_s_wall",
                "fit_baseline_realistic_faces_per_s_wall"):
        assert isinstance(out[key], float) and np.isfinite(out[key]) and out[key] > 0, key
    # the headline ratio is the two rates of this run
    assert out["fit_realistic_speedup_vs_baseline"] == pytest.approx(
        out["fit_realistic_faces_per_s"] / out["fit_baseline_realistic_faces_per_s"], rel=1e-12)
    assert out["fit_realistic_faces"] == n
    assert 0 <= out["fit_realistic_same_faces"] <= min(out["fit_realistic_kept"], out["fit_baseline_realistic_kept"])
    assert max(out["fit_realistic_kept"], out["fit_baseline_realistic_kept"], out["fit_realistic_photo_domain_kept"]) <= n
    # both fitters saw the tiny world's detected photos and kept some: errors over the same faces
    if not need_same_faces and out["fit_realistic_same_faces"] == 0:
        return
    assert out["fit_realistic_same_faces"] >= 1, out
    for prefix in ("fit_exp_rel_error_detected_realistic", "fit_baseline_exp_rel_error_detected",
                   "fit_vertex_rel_error_detected_realistic", "fit_baseline_vertex_rel_error_detected"):
        assert isinstance(out[prefix], float) and np.isfinite(out[prefix]) and out[prefix] >= 0, prefix
    for prefix in ("fit_exp_rel_error_detected_realistic", "fit_baseline_exp_rel_error_detected"):
        if out["fit_realistic_same_faces"] == 1:
            assert out[f"{prefix}_median"] == pytest.approx(out[prefix])


def test_realistic_keys_consistent(tiny_world):
    out, _, _ = realistic_keys(tiny_world)
    check(out)
