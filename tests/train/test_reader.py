"""The independent expression reader (model/reader.py, train/reader.py, slidergan train-reader).

A tiny structured world (tests/train/tiny.py: a bright band whose row is p[0] and whose
thickness is p[1]) with more warps than the trainer's fixture, and a tiny 3DMM whose
eigenvalues put the vertex motion on those two parameters, so the vertex-space error of a
reader that learned the band is well below the 1.0 of predicting zeros.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.shards import ShardSet
from pipeline.testing import make_stage
from tests.train.tiny import make_tiny_run
from train.reader import (FORMAT, heldout_warps, load_reader, load_reader_file, reader_metrics, save_reader,
                          train_reader)
from workflows.cli import main as cli

TINY_READER = ["reader.image_size=32", "reader.width=8", "reader.stages=2", "reader.steps=150",
               "reader.batch_size=16", "reader.log_every=50", "reader.lr=0.003"]


def tiny_model(E: int = 30, S: int = 10, n: int = 40, seed: int = 0):
    """A MorphableModel with n vertices whose expression motion sits on p[0] and p[1]."""
    from fitting.model import MorphableModel

    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(3 * n, E + S + 4)))
    ev = np.full(E, 1e-3)
    ev[:2] = [1.0, 0.5]
    return MorphableModel(mean=rng.normal(size=3 * n), U_id=Q[:, E + S:], ev_id=np.ones(4), U_exp=Q[:, :E],
                          ev_exp=ev, U_speech=Q[:, E:E + S], ev_speech=np.full(S, 1e-3),
                          trilist=np.array([[0, 1, 2]]), landmarks=np.arange(68) % n, source="test")


def _cfg(*extra):
    return load_config(None, TINY_READER + list(extra))


@pytest.fixture(scope="module")
def reader_run(tmp_path_factory):
    """16 photos of 8 identities, 8 warps each (128 warps, 32x32) + a tiny model.h5."""
    root = make_tiny_run(tmp_path_factory.mktemp("readerrun") / "run", faces=16, per_face=8, fab=False)
    tiny_model().save(root / "model.h5")
    return root


@pytest.fixture(scope="module")
def shuffled_run(reader_run, tmp_path_factory):
    """The same images with the warps' parameters permuted (no image-label relation)."""
    root = tmp_path_factory.mktemp("shuffled") / "run"
    root.mkdir()
    shutil.copytree(reader_run / "fits", root / "fits")
    shutil.copy(reader_run / "model.h5", root / "model.h5")
    w = ShardSet(reader_run / "warps")
    rows = {k: w.read(k) for k in ("key", "group", "source", "identity", "image", "p_exp")}
    rows["key"] = list(rows["key"])
    rows["p_exp"] = rows["p_exp"][np.random.default_rng(3).permutation(len(w))]
    make_stage(root / "warps", "warps", rows, chunk_size=7)
    return root


@pytest.fixture(scope="module")
def trained(reader_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "reader.pt"
    meta = train_reader(reader_run, out, _cfg(), echo=lambda s: None, progress=False)
    return out, meta


def test_reader_learns_and_shuffled_labels_do_not(trained, shuffled_run, tmp_path):
    path, meta = trained
    assert meta["skipped"] is False and meta["n_params"] == 30 and meta["image_size"] == 32
    assert meta["n_train"] + meta["n_heldout"] == 128 and meta["n_heldout"] > 0
    assert meta["heldout_zero_vertex_error"] == pytest.approx(1.0)
    assert meta["heldout_vertex_error"] < 0.6, meta
    assert meta["heldout_r2"][0] > 0.7 and len(meta["heldout_r2"]) == 30
    for k in ("heldout_rel_error", "n_params", "image_size", "n_train", "n_heldout", "steps", "model_hash"):
        assert meta[k] is not None
    bad = train_reader(shuffled_run, tmp_path / "shuffled.pt", _cfg(), echo=lambda s: None, progress=False)
    assert bad["heldout_vertex_error"] > meta["heldout_vertex_error"] + 0.3, (bad, meta)
    assert bad["heldout_r2"][0] < 0.3


def test_heldout_warps_are_the_trainers(reader_run):
    """The reader's held-out warps are exactly those the GAN trainer leaves out."""
    from train.trainer import Trainer

    cfg = load_config(None, ["train.holdout=true", "train.workers=0", "train.image_size=32", "train.d_repeat=3"])
    tr = Trainer(reader_run, reader_run / "t", cfg, variant="rad", echo=lambda s: None)
    tr.build_data()
    paired = next(p for p in tr.phases if p.name == "paired")
    trained_rows = set(np.asarray(paired.dataset.rows).tolist())
    held, kind, n_photos = heldout_warps(ShardSet(reader_run / "fits"), ShardSet(reader_run / "warps"), 0.17, 0)
    assert kind == "identity" and n_photos > 0 and held.any()
    assert trained_rows == set(np.nonzero(~held)[0].tolist())


def test_save_load_round_trip(trained, reader_run):
    path, meta = trained
    raw = torch.load(path, weights_only=True)          # plain values + tensors only
    assert raw["format"] == FORMAT and raw["meta"]["key"] == meta["key"]
    a, b = load_reader(path), load_reader(path)
    w = ShardSet(reader_run / "warps")
    imgs = w.read("image")                               # uint8 [N,32,32,3]
    pa, pb = a.predict(imgs), b.predict(imgs)
    assert pa.dtype == np.float32 and pa.shape == (len(w), 30) and np.array_equal(pa, pb)
    # another input size goes through the trainer's resize; one image [H,W,3] works too
    big = np.repeat(np.repeat(imgs[:4], 2, axis=1), 2, axis=2)
    assert a.predict(big).shape == (4, 30) and np.allclose(a.predict(imgs[0]), pa[:1], atol=1e-5)
    from train.data import uint8_to_float
    x = uint8_to_float(torch.from_numpy(big).permute(0, 3, 1, 2), 64)
    assert np.allclose(a.predict_tensor(x).numpy(), a.predict(big), atol=1e-5)
    # the stored held-out figures are what the loaded reader gives
    held, _, _ = heldout_warps(ShardSet(reader_run / "fits"), w, 0.17, 0)
    from fitting.model import MorphableModel
    m = reader_metrics(w.read("p_exp")[held], pa[held], MorphableModel.load(reader_run / "model.h5"))
    assert m["vertex_error"] == pytest.approx(meta["heldout_vertex_error"], abs=1e-4)
    assert m["rel_error"] == pytest.approx(meta["heldout_rel_error"], abs=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        a.predict(imgs.astype(np.float32))


def test_bad_files_are_one_line_errors(tmp_path, trained):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a torch file")
    cases = [(tmp_path / "missing.pt", "reader file not found"), (junk, "not a readable reader file")]
    other = tmp_path / "other.pt"
    torch.save({"format": "slidergan-ckpt/1"}, other)
    cases.append((other, "not a reader file"))
    broken = tmp_path / "broken.pt"
    raw = torch.load(trained[0], weights_only=True)
    raw["reader_config"]["width"] = 12                    # weights no longer fit
    torch.save(raw, broken)
    cases.append((broken, "do not fit its reader_config"))
    for path, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            load_reader(path)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        load_reader_file(junk)


def test_cli_rerun_is_a_noop_and_settings_retrain(reader_run, tmp_path, capsys):
    out = tmp_path / "r.pt"
    sets = [a for s in TINY_READER + ["reader.steps=30"] for a in ("--set", s)]
    assert cli(["train-reader", "--data", str(reader_run), "--out", str(out), *sets]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "held-out rel error" in text
    stamp = out.stat().st_mtime_ns
    assert cli(["train-reader", "--data", str(reader_run), "--out", str(out), *sets]) == 0
    assert "up to date" in capsys.readouterr().out and out.stat().st_mtime_ns == stamp
    # --steps and settings are part of the key; a corrupt file is replaced, not an error
    assert cli(["train-reader", "--data", str(reader_run), "--out", str(out), *sets, "--steps", "20"]) == 0
    assert "wrote" in capsys.readouterr().out and load_reader(out).meta["steps"] == 20
    out.write_bytes(b"garbage")
    assert cli(["train-reader", "--data", str(reader_run), "--out", str(out), *sets, "--steps", "20"]) == 0
    assert load_reader(out).meta["steps"] == 20
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # default output path and one-line usage errors
    assert cli(["train-reader", "--data", str(tmp_path / "nope")]) == 2
    assert cli(["train-reader", "--data", str(reader_run), "--set", "reader.head=max"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "run folder not found" in err[0] and "reader.head" in err[1]


def test_speech_reader_is_40_wide(reader_run, tmp_path):
    meta = train_reader(reader_run, tmp_path / "s.pt", _cfg("train.speech=true", "reader.steps=20"),
                        echo=lambda s: None, progress=False)
    assert meta["n_params"] == 40 and len(meta["heldout_r2"]) == 40
    assert all(r is None for r in meta["heldout_r2"][30:])   # zero-padded warps: nothing to explain
    rd = load_reader(tmp_path / "s.pt")
    assert rd.predict(ShardSet(reader_run / "warps").read("image", np.arange(3))).shape == (3, 40)


def test_save_reader_of_an_untrained_network(tmp_path):
    from model.reader import build_reader

    conf = {"image_size": 32, "n_params": 30, "width": 4, "stages": 2, "head": "pool", "stem_stride": 2}
    torch.manual_seed(0)
    net = build_reader(conf)
    save_reader(tmp_path / "u.pt", net, conf, {"model_hash": None})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(load_reader(tmp_path / "u.pt").predict_tensor(x), net.eval()(x))
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(1, 3, 16, 16))
