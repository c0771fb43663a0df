"""End to end: evaluate tiny random checkpoints on a synthetic run folder."""
import json
import re

import numpy as np
import pytest

from evaluation.report import METRIC_KEYS
from evaluation.runner import EvalOptions, evaluate

try:
    import train.reader  # noqa: F401
    HAVE_READER = True
except ImportError:                # the reader's module is not in this checkout: everything else runs
    HAVE_READER = False
needs_reader = pytest.mark.skipif(not HAVE_READER, reason="train/reader.py is not in this checkout")

OPT = dict(pairs=6, grid_params=2, grid_step=0.5, test_images=4, test_fraction=0.3, identity="pixels",
           lrw_pairs=4, figure_photos=2)


@pytest.fixture(scope="module")
def report(eval_run, checkpoints, tmp_path_factory):
    from tests.evaluation.evalfixtures import save_tiny_reader, training_folder_with_log

    root = tmp_path_factory.mktemp("eval")
    out = root / "E"
    reader = save_tiny_reader(root / "reader.pt") if HAVE_READER else None
    # the first checkpoint comes with a training log (validation at steps 4 and 8; it is at step 7)
    rad = training_folder_with_log(root / "T", checkpoints["rad"], tail='{"step": 10, "d_ex')
    logs = []
    res = evaluate([rad, checkpoints["speech"]], eval_run, out, EvalOptions(reader=str(reader or "none"), **OPT),
                   log=logs.append)
    return out, res, logs, reader


def test_metrics_json(report):
    out, res, logs, _ = report
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert set(data) == {"schema", "models", "baselines", "reader", "curves", "rad", "rad-2"}
    assert set(data["models"]) == {"rad", "rad-2"}                 # repeated variant -> -2
    assert set(data["baselines"]) == {"copy-input", "oracle-3d"}
    for name in ("rad", "rad-2"):
        assert data[name] == data["models"][name]                  # old top-level layout kept
    for name, m in list(data["models"].items()) + list(data["baselines"].items()):
        for k in METRIC_KEYS:
            assert k in m
            if m[k] is None:
                assert m["reasons"].get(k), (name, k)
        assert m["ied"] is not None and m["ied"] >= 0, (name, m["reasons"])
        assert m["d_rel_error_trg"] is not None and m["d_rel_error_trg_vertex"] is not None, (name, m["reasons"])
        assert m["identity_cos"] is not None and -1 - 1e-9 <= m["identity_cos"] <= 1 + 1e-9
        # random images: dlib finds no face in the edits -> null with a reason
        assert m["exp_rel_error_refit"] is None and "face" in m["reasons"]["exp_rel_error_refit"]
        assert m["expr_recognition_acc"] is not None and 0 <= m["expr_recognition_acc"] <= 1
    for name in ("rad", "rad-2"):
        m = data["models"][name]
        assert m["kind"] == "model"
        assert m["d_rel_error_fit"] is not None and m["d_rel_error_fit_vertex"] is not None
    assert data["rad"]["extra"]["lrw_ied"] is None
    assert "parameters" in data["rad"]["reasons"]["lrw_ied"]
    assert data["rad-2"]["extra"]["lrw_ied"] is not None
    assert data["rad-2"]["extra"]["lrw_pairs"] == 4
    # Table 3's baselines: copy-input is the ratio's denominator; the oracle warps the decoded frame a
    base = data["baselines"]
    assert base["copy-input"]["extra"]["lrw_ied_vs_copy"] == 1.0
    assert base["copy-input"]["extra"]["lrw_ied"] == pytest.approx(data["rad-2"]["extra"]["lrw_ied_identity"])
    assert base["oracle-3d"]["extra"]["lrw_ied"] is not None, base["oracle-3d"]["reasons"]
    assert base["oracle-3d"]["extra"]["lrw_ied"] != base["copy-input"]["extra"]["lrw_ied"]
    assert data["rad-2"]["extra"]["lrw_ied_vs_copy"] == pytest.approx(
        data["rad-2"]["extra"]["lrw_ied"] / base["copy-input"]["extra"]["lrw_ied"])
    assert data["rad"]["extra"]["lrw_ied_vs_copy"] is None and "parameters" in data["rad"]["reasons"]["lrw_ied_vs_copy"]


def test_copy_input_row_is_the_unedited_input(report, eval_run, checkpoints):
    """copy-input's numbers against independent computations on the unedited test photos."""
    import torch

    from evaluation.data import load_real
    from evaluation.networks import load_checkpoint, regress
    from evaluation.protocols import target_permutation

    _, data, _, _ = report
    copy = data["baselines"]["copy-input"]
    assert copy["kind"] == "baseline" and copy["regressor"] == "rad"
    # Table 1: exactly the do-nothing IED the models report, and the ratio's unit
    assert copy["ied"] == pytest.approx(data["rad"]["extra"]["ied_identity"], rel=1e-6)   # float32 vs 64
    assert copy["ied_vs_copy"] == 1.0
    for name in ("rad", "rad-2"):
        assert data[name]["ied_vs_copy"] == pytest.approx(data[name]["ied"] / copy["ied"])
    assert data["baselines"]["oracle-3d"]["ied_vs_copy"] == pytest.approx(
        data["baselines"]["oracle-3d"]["ied"] / copy["ied"])
    assert copy["identity_cos"] == pytest.approx(1.0)
    assert copy["d_rel_error_fit"] is None and "independent of the generator" in copy["reasons"]["d_rel_error_fit"]
    # Table 4 with rad's D and the reader on the unedited photos vs the targets
    real = load_real(eval_run, OPT["test_fraction"], 0)
    idx = np.nonzero(real.test)[0][: OPT["test_images"]]
    imgs, p_fit = real.images[idx], real.p_exp[idx]
    p_trg = p_fit[target_permutation(len(idx), 0)]
    torch.set_num_threads(1)
    d = regress(load_checkpoint(checkpoints["rad"]), imgs)
    ref = np.mean([np.linalg.norm(p_trg[i] - d[i]) / np.linalg.norm(p_trg[i]) for i in range(len(idx))])
    assert copy["d_rel_error_trg"] == pytest.approx(ref, rel=1e-5)


@needs_reader
def test_reader_rows(report, eval_run):
    """Every row has the reader's numbers; copy-input's against the reader on the unedited photos."""
    from evaluation.data import load_real
    from evaluation.protocols import target_permutation
    from train.reader import load_reader

    _, data, _, reader_path = report
    for name, m in list(data["models"].items()) + list(data["baselines"].items()):
        for k in ("reader_rel_error_trg", "reader_vertex_error_trg", "reader_rel_error_t1", "reader_vertex_error_t1"):
            assert m[k] is not None and m[k] >= 0, (name, k, m["reasons"])
    real = load_real(eval_run, OPT["test_fraction"], 0)
    idx = np.nonzero(real.test)[0][: OPT["test_images"]]
    imgs, p_fit = real.images[idx], real.p_exp[idx]
    p_trg = p_fit[target_permutation(len(idx), 0)]
    r = load_reader(reader_path).predict(imgs)
    ref = np.mean([np.linalg.norm(p_trg[i] - r[i]) / np.linalg.norm(p_trg[i]) for i in range(len(idx))])
    assert data["baselines"]["copy-input"]["reader_rel_error_trg"] == pytest.approx(ref, rel=1e-5)
    assert data["reader"]["heldout_vertex_error"] == 0.2 and data["reader"]["path"] == str(reader_path)


def test_training_numbers_and_curves(report):
    out, data, logs, _ = report
    m = data["rad"]["extra"]
    # the checkpoint is at step 7: the last validation record at or before it is step 4's
    assert (m["train_val_l1"], m["train_val_l1_copy"], m["train_val_l1_wrong"], m["train_val_step"]) == \
        (0.21, 0.30, 0.33, 4)
    assert data["rad-2"]["extra"]["train_val_l1"] is None
    assert "metrics.jsonl" in data["rad-2"]["reasons"]["train_val_l1"]
    assert data["curves"]["figure"] == "curves.png" and data["curves"]["runs"] == ["rad"]
    assert "1 unreadable metrics.jsonl lines skipped" in data["curves"]["note"]
    assert (out / "curves.png").is_file()
    assert "train_val_l1" not in data["baselines"]["copy-input"]["extra"]


def test_index_html_is_self_contained(report):
    out, _, _, _ = report
    page = (out / "index.html").read_text()
    srcs = re.findall(r"src='([^']+)'", page)
    assert len(srcs) >= 10
    for s in srcs:
        assert not s.startswith(("http:", "https:", "/", "file:")), s
        assert (out / s).is_file(), s
    assert "<link" not in page and "<script" not in page
    assert "Table 1" in page and "Table 4" in page and "Table 2" in page and "Table 3" in page
    assert (out / "rad-2" / "speech.png").is_file() and not (out / "rad" / "speech.png").exists()
    assert (out / "rad-2" / "speech_transfer.png").is_file() and not (out / "rad" / "speech_transfer.png").exists()
    assert "src='rad-2/speech_transfer.png'" in page
    assert page.index("src='curves.png'") < page.index("Table 1")          # curves near the top
    for table in page.split("<h2>")[1:]:
        if table.startswith(("Table", "Independent", "Identity")):
            assert "<tr class='baseline'><td class='name'>copy-input</td>" in table, table[:80]
            assert "<tr class='baseline'><td class='name'>oracle-3d</td>" in table, table[:80]
    assert not (out / "copy-input").exists()                                 # baselines have no figures


def test_rerun_is_idempotent(report, eval_run, checkpoints, tmp_path):
    """Same checkpoint + data -> the same numbers (alone, without figures, in another folder)."""
    _, res, _, reader = report
    opt = EvalOptions(reader=str(reader or "none"), figures=False, **OPT)
    again = evaluate([checkpoints["speech"]], eval_run, tmp_path, opt, log=lambda m: None)
    assert again["rad"] == res["rad-2"]
    # the baselines regress with the first checkpoint's D: the same rows up to that D's numbers
    for name in ("copy-input", "oracle-3d"):
        for k in ("ied", "identity_cos", "reader_rel_error_trg", "reader_vertex_error_t1"):
            assert again["baselines"][name][k] == res["baselines"][name][k], (name, k)


@pytest.mark.parametrize("keep", [("fits",), ("4dfab-params",)])
def test_missing_stages_give_nulls_with_reasons(eval_run, checkpoints, tmp_path, keep):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in keep:
        shutil.copytree(eval_run / name, run / name)
    opt = EvalOptions(pairs=4, grid_params=1, grid_step=1.0, test_images=3, test_fraction=0.3, identity="pixels",
                      figure_photos=2, figures=keep == ("4dfab-params",))
    data = evaluate([checkpoints["rad"]], run, tmp_path / "E", opt, log=lambda m: None)
    res = data["rad"]
    if keep == ("fits",):
        assert res["ied"] is None and "4dfab-params" in res["reasons"]["ied"]
        assert res["d_rel_error_fit"] is not None
    else:
        assert res["ied"] is not None
        for k in ("d_rel_error_fit", "d_rel_error_trg", "identity_cos", "expr_recognition_acc"):
            assert res[k] is None and "fits" in res["reasons"][k]
        assert (tmp_path / "E" / "rad" / "neutral.png").is_file()     # figures edit the 4DFAB renders
    assert res["extra"]["lrw_ied"] is None and "lrw" in res["reasons"]["lrw_ied"]
    # no model.h5: vertex twins and the oracle are null with the reason; no reader file: reader metrics too
    for k in ("d_rel_error_trg_vertex", "reader_vertex_error_trg"):
        assert res[k] is None and "3DMM" in res["reasons"][k], res["reasons"]
    # Table 2 of the oracle: the real cause (no 3DMM to render with, or no photos), not a stale
    # "no usable rows" left by the presets step
    oracle = data["baselines"]["oracle-3d"]
    cause = "3DMM" if keep == ("fits",) else "fits"
    assert oracle["expr_recognition_acc"] is None and cause in oracle["reasons"]["expr_recognition_acc"], oracle["reasons"]
    assert res["reader_rel_error_trg"] is None
    why = res["reasons"]["reader_rel_error_trg"]
    assert why == "no reader: run slidergan train-reader" if HAVE_READER else why.startswith("no reader: train.reader")
    oracle = data["baselines"]["oracle-3d"]
    key = "ied" if keep == ("4dfab-params",) else "d_rel_error_trg"
    assert oracle[key] is None and "no 3DMM" in oracle["reasons"][key], oracle["reasons"]
    assert data["baselines"]["copy-input"][key] is not None
    assert data["curves"]["figure"] is None and "unavailable" in data["curves"]["note"]
    page = (tmp_path / "E" / "index.html").read_text()
    assert "missing model: no 3DMM" in page
    assert "training curves: unavailable" in page
