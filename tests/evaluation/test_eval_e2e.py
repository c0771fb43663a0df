"""End to end: evaluate tiny random checkpoints on a synthetic run folder."""
import json
import re
from pathlib import Path

import pytest

from evaluation.report import METRIC_KEYS
from evaluation.runner import EvalOptions, evaluate


@pytest.fixture(scope="module")
def report(eval_run, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    opt = EvalOptions(pairs=6, grid_params=2, grid_step=0.5, test_images=4, test_fraction=0.3,
                      identity="pixels", lrw_pairs=4, figure_photos=2)
    logs = []
    res = evaluate([checkpoints["rad"], checkpoints["speech"]], eval_run, out, opt, log=logs.append)
    return out, res, logs


def test_metrics_json(report):
    out, res, logs = report
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert set(data) == {"rad", "rad-2"}                 # repeated variant -> -2
    for name, m in data.items():
        for k in METRIC_KEYS:
            assert k in m
            if m[k] is None:
                assert m["reasons"].get(k), (name, k)
        assert m["ied"] is not None and m["ied"] >= 0
        assert m["d_rel_error_fit"] is not None and m["d_rel_error_trg"] is not None
        assert m["identity_cos"] is not None and -1 <= m["identity_cos"] <= 1
        # random images: dlib finds no face in the edits -> null with a reason
        assert m["exp_rel_error_refit"] is None and "face" in m["reasons"]["exp_rel_error_refit"]
        assert m["expr_recognition_acc"] is not None and 0 <= m["expr_recognition_acc"] <= 1
    assert data["rad"]["extra"]["lrw_ied"] is None
    assert "parameters" in data["rad"]["reasons"]["lrw_ied"]
    assert data["rad-2"]["extra"]["lrw_ied"] is not None
    assert data["rad-2"]["extra"]["lrw_pairs"] == 4


def test_index_html_is_self_contained(report):
    out, _, _ = report
    page = (out / "index.html").read_text()
    srcs = re.findall(r"src='([^']+)'", page)
    assert len(srcs) >= 10
    for s in srcs:
        assert not s.startswith(("http:", "https:", "/", "file:")), s
        assert (out / s).is_file(), s
    assert "<link" not in page and "<script" not in page
    assert "Table 1" in page and "Table 4" in page and "Table 2" in page and "Table 3" in page
    assert (out / "rad-2" / "speech.png").is_file() and not (out / "rad" / "speech.png").exists()


def test_rerun_is_idempotent(report, eval_run, checkpoints, tmp_path):
    """Same checkpoint + data -> the same numbers (alone, without figures, in another folder)."""
    _, res, _ = report
    opt = EvalOptions(pairs=6, grid_params=2, grid_step=0.5, test_images=4, test_fraction=0.3,
                      identity="pixels", lrw_pairs=4, figure_photos=2, figures=False)
    again = evaluate([checkpoints["speech"]], eval_run, tmp_path, opt, log=lambda m: None)
    assert again["rad"] == res["rad-2"]


@pytest.mark.parametrize("keep", [("fits",), ("4dfab-params",)])
def test_missing_stages_give_nulls_with_reasons(eval_run, checkpoints, tmp_path, keep):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in keep:
        shutil.copytree(eval_run / name, run / name)
    opt = EvalOptions(pairs=4, grid_params=1, grid_step=1.0, test_images=3, test_fraction=0.3, identity="pixels",
                      figure_photos=2, figures=keep == ("4dfab-params",))
    res = evaluate([checkpoints["rad"]], run, tmp_path / "E", opt, log=lambda m: None)["rad"]
    if keep == ("fits",):
        assert res["ied"] is None and "4dfab-params" in res["reasons"]["ied"]
        assert res["d_rel_error_fit"] is not None
    else:
        assert res["ied"] is not None
        for k in ("d_rel_error_fit", "d_rel_error_trg", "identity_cos", "expr_recognition_acc"):
            assert res[k] is None and "fits" in res["reasons"][k]
        assert (tmp_path / "E" / "rad" / "neutral.png").is_file()     # figures edit the 4DFAB renders
    assert res["extra"]["lrw_ied"] is None and "lrw" in res["reasons"]["lrw_ied"]
    page = (tmp_path / "E" / "index.html").read_text()
    assert "missing model: no 3DMM" in page
