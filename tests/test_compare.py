"""slidergan compare: the seed summary against a naive reference, and the job runner."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from workflows.commands.compare import markdown, summarise
from workflows.jobs import last_line, run_parallel


def _metrics(tmp_path: Path, values: dict[str, list[float]]):
    models, runs = {}, {}
    for v, ieds in values.items():
        for seed, ied in enumerate(ieds):
            ck = tmp_path / f"{v}-s{seed}" / "checkpoints" / "latest.pt"
            models[f"{v}-{seed}"] = {"checkpoint": str(ck), "ied": ied, "ied_vs_copy": ied / 0.01,
                                     "extra": {"train_val_l1": ied * 2}, "identity_cos": None}
            runs[str(ck)] = (v, seed)
    return {"models": models, "baselines": {"copy-input": {"ied": 0.01}, "oracle-3d": {"ied": 0.004}}}, runs


def test_summary_matches_naive_mean_and_sample_std(tmp_path):
    values = {"rad": [0.0061, 0.0072, 0.0058], "wgp": [0.0081, 0.0069, 0.0090], "ganimation": [0.011]}
    metrics, runs = _metrics(tmp_path, values)
    s = summarise(metrics, runs)
    for v, ieds in values.items():
        got = s["variants"][v]["ied"]
        assert got["n"] == len(ieds)
        assert got["mean"] == pytest.approx(statistics.fmean(ieds), rel=1e-12)
        if len(ieds) > 1:
            assert got["std"] == pytest.approx(statistics.stdev(ieds), rel=1e-12)
        else:
            assert got["std"] is None
        assert s["variants"][v]["extra.train_val_l1"]["mean"] == pytest.approx(2 * statistics.fmean(ieds))
        assert "identity_cos" not in s["variants"][v]          # None is not a value
        assert s["seeds"][v] == list(range(len(ieds)))
    assert s["baselines"]["copy-input"] == {"ied": 0.01}
    table = markdown(s)
    assert "| rad | 0,1,2 |" in table and "| copy-input | - |" in table
    assert f"{statistics.fmean(values['wgp']):.4g} ± {statistics.stdev(values['wgp']):.2g}" in table


def test_summary_refuses_a_run_the_evaluation_lacks(tmp_path):
    metrics, runs = _metrics(tmp_path, {"rad": [0.006]})
    runs[str(tmp_path / "missing.pt")] = ("wgp", 0)
    with pytest.raises(RuntimeError, match="no entry"):
        summarise(metrics, runs)


def test_run_parallel_limits_names_failures_and_logs(tmp_path):
    jobs = {"ok-1": (["--help"], tmp_path / "ok1.log"), "bad": (["no-such-command"], tmp_path / "bad.log"),
            "ok-2": (["--help"], tmp_path / "ok2.log")}
    with pytest.raises(RuntimeError) as e:
        run_parallel(jobs, max_jobs=1, every=0.5)
    assert "bad (exit" in str(e.value) and "ok-1" not in str(e.value) and "ok-2" not in str(e.value)
    for f in ("ok1.log", "ok2.log", "bad.log"):          # every job ran, the failure did not stop the rest
        assert (tmp_path / f).stat().st_size > 0
    assert "slidergan" in (tmp_path / "ok1.log").read_text()


def test_last_line_splits_carriage_return_redraws(tmp_path):
    f = tmp_path / "log"
    f.write_text("start\nstep 1/9\rstep 2/9\rstep 3/9\n\n")
    assert last_line(f) == "step 3/9"
    assert last_line(tmp_path / "absent") == "(no output yet)"
