"""Training curves from metrics.jsonl, and the reader option."""
import json

import numpy as np
import pytest

from evaluation import curves
from tests.evaluation.evalfixtures import SYNTHETIC_LOG


def write_log(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_read_and_final_values(tmp_path):
    p = write_log(tmp_path / "metrics.jsonl", list(reversed(SYNTHETIC_LOG)), tail='[1, 2]\n{"step": 9, "val_')
    recs, bad = curves.read_metrics_jsonl(p)
    assert bad == 2 and [r["step"] for r in recs] == [2, 4, 6, 8]        # sorted by step
    assert curves.series(recs, "val_l1") == ([4.0, 8.0], [0.21, 0.15])
    assert curves.series(recs, "d_exp")[1] == [0.9, 0.7, 0.5, 0.4]
    last = curves.final_values(recs)
    assert last == {"train_val_l1": 0.15, "train_val_l1_copy": 0.30, "train_val_l1_wrong": 0.31, "train_val_step": 8}
    assert curves.final_values(recs, max_step=5)["train_val_l1"] == 0.21
    assert curves.final_values(recs, max_step=3) == {"train_val_l1": None, "train_val_l1_copy": None,
                                                     "train_val_l1_wrong": None, "train_val_step": None}
    assert curves.final_values(recs, max_step=-1)["train_val_step"] == 8    # unknown checkpoint step: all
    assert curves.training_folder(tmp_path / "T" / "checkpoints" / "latest.pt") == (tmp_path / "T").resolve()


def test_plot_curves(tmp_path):
    from PIL import Image

    other = [dict(r, step=r["step"] * 2) for r in SYNTHETIC_LOG]
    assert curves.plot_curves({"rad": SYNTHETIC_LOG, "wgp": other}, tmp_path / "c.png")
    im = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert im.shape[1] > 2 * im.shape[0]                                  # three panels side by side
    third = im.shape[1] // 3
    for k in range(3):                                                   # every panel has coloured lines
        panel = im[:, k * third:(k + 1) * third].astype(int)
        assert (np.abs(panel[..., 0] - panel[..., 2]) > 60).sum() > 50, k
    # records without any plotted key: no figure
    assert not curves.plot_curves({"rad": [{"step": 1, "loss_g": 2.0}]}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_reader_option(tmp_path):
    pytest.importorskip("train.reader", reason="train/reader.py is not in this checkout")
    from tests.evaluation.evalfixtures import save_tiny_reader

    from evaluation.options import EvalOptions, load_reader_option
    from pipeline.config import ConfigError

    assert load_reader_option(EvalOptions(reader="none"), tmp_path) == (None, "disabled (evaluate.reader=none)")
    assert load_reader_option(EvalOptions(), tmp_path) == (None, "no reader: run slidergan train-reader")
    with pytest.raises(ConfigError, match="not found"):
        load_reader_option(EvalOptions(reader=str(tmp_path / "missing.pt")), tmp_path)
    save_tiny_reader(tmp_path / "reader" / "reader.pt")                  # auto finds RUN/reader/reader.pt
    r, why = load_reader_option(EvalOptions(), tmp_path)
    assert why is None and r.meta["heldout_vertex_error"] == 0.2
    assert r.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 30)
