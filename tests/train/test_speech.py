"""train.speech: phase 1 on the warps with zero speech, phase 2 (``speech``) on the training
split of the fit-lrw stage (RUN/lrw-fits) with 40-wide random targets; the preset; errors."""
import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.testing import make_stage
from tests.train.tiny import TINY_TRAIN, face_image, make_tiny_run
from train.trainer import Trainer
from workflows.cli import main as cli

SPLITS = {"W/train/W_00001": "train", "W/test/W_00002": "test", "W/train/W_00003": "train", "W/val/W_00004": "val"}


def add_lrw_fits(run, width=40, frames=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("key", "video", "split", "group", "frame", "image", "p_exp")}
    for g, (vid, split) in enumerate(SPLITS.items()):
        for f in range(frames):
            p = rng.uniform(-1, 1, width).astype(np.float32)
            rows["key"].append(f"{vid}#{f:03d}"), rows["video"].append(vid), rows["split"].append(split)
            rows["group"].append(g), rows["frame"].append(f), rows["p_exp"].append(p)
            rows["image"].append(face_image(g, p, size))
    data = {k: (np.stack(v) if k in ("group", "frame", "image", "p_exp") else v) for k, v in rows.items()}
    data["group"] = data["group"].astype(np.int64)
    return make_stage(run / "lrw-fits", "fit-lrw", data, chunk_size=5)


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    run = make_tiny_run(tmp_path_factory.mktemp("speech") / "run", faces=4, fab=False)
    add_lrw_fits(run)
    return run


def _cfg(*extra):
    return load_config(None, list(TINY_TRAIN) + ["train.speech=true", "train.batch_size=2", *extra])


def test_phases_data_and_targets(speech_run, tmp_path):
    tr = Trainer(speech_run, tmp_path / "t", _cfg("train.epochs_speech=3"), variant="rad-no-id", echo=lambda m: None)
    tr.gen = torch.Generator().manual_seed(0)
    tr.build_data()
    assert [(p.name, p.epochs) for p in tr.phases] == [("paired", 1), ("speech", 3)]
    paired, speech = tr.phases[0].dataset, tr.phases[1].dataset
    # phase 1: the warps' 30 parameters with zero speech
    item = paired[0]
    assert item["p_trg"].shape == (40,) and torch.all(item["p_trg"][30:] == 0) and torch.any(item["p_trg"][:30] != 0)
    # phase 2: exactly the 8 training frames (2 train videos x 4), each with its own 40-vector and crop
    from pipeline.shards import ShardSet
    lrw = ShardSet(speech_run / "lrw-fits")
    split = np.array([s.decode() if isinstance(s, bytes) else s for s in lrw.read("split")])
    p_all = lrw.read("p_exp")
    assert len(speech) == 8 and tr.phases[1].batches_per_epoch == 4
    seen = set()
    for j in range(len(speech)):
        it = speech[j]
        r = int(speech.rows[j])
        assert split[r] == "train"
        np.testing.assert_array_equal(it["p"].numpy(), p_all[r])
        np.testing.assert_array_equal(it["image"].permute(1, 2, 0).numpy(), lrw.read("image", r))
        seen.add(r)
    assert seen == set(np.nonzero(split == "train")[0].tolist())
    # random targets: another frame's 40-vector (speech part included) + U(-0.1, 0.1)
    p = torch.stack([speech[j]["p"] for j in range(4)])
    trg = tr.sample_targets(p)
    assert trg.shape == (4, 40)
    d = (trg[:, None, :] - p[None, :, :]).abs().amax(-1)          # [target, source]
    assert torch.all(d.min(1).values <= 0.1 + 1e-6)               # each target is some frame's vector + noise
    assert torch.any(d.diagonal() > 0.1)                           # not (all) the frame's own


def test_paired_speech_adds_training_frames_paired_within_their_video(speech_run, tmp_path):
    """train.paired_speech=N: the paired set is the warps followed by N copies of the training
    LRW frames, each a target with its own 40-vector and crop and a source that is another
    frame of the same video; test/val frames never appear; off without train.speech."""
    from pipeline.shards import ShardSet
    lrw = ShardSet(speech_run / "lrw-fits")
    split = np.array([s.decode() if isinstance(s, bytes) else s for s in lrw.read("split")])
    group, p_all = lrw.read("group"), lrw.read("p_exp")
    base = Trainer(speech_run, tmp_path / "b", _cfg(), variant="rad-no-id", echo=lambda m: None)
    base.build_data()
    said = []
    tr = Trainer(speech_run, tmp_path / "t", _cfg("train.paired_speech=2"), variant="rad-no-id", echo=said.append)
    tr.build_data()
    n_w, train_rows = len(base.paired_set), np.nonzero(split == "train")[0]
    assert len(tr.paired_set) == n_w + 2 * len(train_rows)
    assert any("8 training LRW frames x 2" in m for m in said)
    seen = []
    for j in range(n_w, len(tr.paired_set)):
        item = tr.paired_set[j]
        r = int(tr.paired_set.parts[1].rows[j - n_w])
        assert split[r] == "train"
        np.testing.assert_array_equal(item["p_trg"].numpy(), p_all[r])
        np.testing.assert_array_equal(item["target"].permute(1, 2, 0).numpy(), lrw.read("image", r))
        src = [k for k in range(len(lrw)) if np.array_equal(p_all[k], item["p"].numpy())]
        assert len(src) == 1 and src[0] != r and group[src[0]] == group[r]     # another frame of its video
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), lrw.read("image", src[0]))
        seen.append(r)
    assert sorted(seen) == sorted(train_rows.tolist() * 2)
    for j in range(n_w):                                                       # the warps first, unchanged
        assert tr.paired_set[j]["index"] == base.paired_set[j]["index"]
    off = load_config(None, list(TINY_TRAIN) + ["train.batch_size=2", "train.paired_speech=2"])
    t30 = Trainer(speech_run, tmp_path / "o", off, variant="rad-no-id", echo=lambda m: None)
    t30.build_data()                                                           # 30 parameters: no LRW pairs
    assert len(t30.paired_set) == n_w
    with pytest.raises(ConfigError, match="paired_speech must be >= 0"):
        Trainer(speech_run, tmp_path / "n", _cfg("train.paired_speech=-1"), echo=lambda m: None).build_data()


def test_trains_40_parameters_through_both_phases(speech_run, tmp_path, capsys):
    from tests.train.tiny import TINY_TRAIN as T
    sets = []
    for s in list(T) + ["train.speech=true", "train.batch_size=2", "train.epochs_speech=1"]:
        sets += ["--set", s]
    out = tmp_path / "t"
    assert cli(["train", "--data", str(speech_run), "--variant", "rad-no-id", "--out", str(out), "--steps", "6",
                *sets]) == 0
    text = capsys.readouterr().out
    assert "speech phase: 8 training frames of 2 videos" in text and "speech: 1 epochs x 4 batches" in text
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert ck["model_config"]["c_dim"] == 40 and ck["phase"] == "speech"
    assert [p[0] for p in ck["data_order"]["phases"]] == ["paired", "speech"]


def test_errors(tmp_path, speech_run):
    bare = make_tiny_run(tmp_path / "bare", faces=4, warps=False, fab=False)
    with pytest.raises(ConfigError, match="no fit-lrw stage here.*fit-lrw"):
        Trainer(bare, tmp_path / "t", _cfg(), echo=lambda m: None).build_data()
    narrow = make_tiny_run(tmp_path / "narrow", faces=4, warps=False, fab=False)
    add_lrw_fits(narrow, width=30)
    with pytest.raises(ConfigError, match=r"p_exp is \[30\] wide; train.speech needs 40"):
        Trainer(narrow, tmp_path / "t", _cfg(), echo=lambda m: None).build_data()
    with pytest.raises(ConfigError, match="epochs_speech must be >= 0"):
        Trainer(speech_run, tmp_path / "t", _cfg("train.epochs_speech=-1"), echo=lambda m: None).build_data()


def test_paper_speech_preset():
    cfg = load_config("paper-speech", [])
    paper = load_config("paper", [])
    t, tp = cfg.section("train"), paper.section("train")
    assert t["speech"] is True and t["speech_data"] == "lrw-fits"
    assert {k: v for k, v in t.items() if k not in ("speech", "speech_data", "epochs_speech")} == \
        {k: v for k, v in tp.items() if k not in ("speech", "speech_data", "epochs_speech")}
    assert load_config(None, []).section("train")["speech"] is False


def test_demo_speech_preset_differs_from_the_demo_only_by_the_speech_recipe():
    """config/demo-speech.yaml (slidergan demo's rad-speech and its speech warps): the demo preset
    plus exactly the keys its header names; the paper's warps and the demo's other runs keep theirs."""
    cfg, demo = load_config("demo-speech", []), load_config("demo", [])
    diff = {s: {k: v for k, v in cfg.section(s).items() if demo.section(s).get(k) != v} for s in ("warps", "train")}
    assert diff["warps"] == {"speech": 10, "around_source": 0.3}
    assert diff["train"] == {"speech": True, "warps": "warps-speech", "paired_speech": 3, "paired_4dfab": 0,
                             "epochs_paired": 10, "epochs_speech": 0, "condition": "delta", "gen_loss": "l2",
                             "lambda_gen": 1000.0, "g_ramp_start": 100000, "g_ema_halflife": 100,
                             "lr_g": 0.001, "demo_speech_steps": 1200}
    assert all(cfg.section(s) == demo.section(s) for s in ("fit", "demo", "evaluate", "model"))


def test_init_from_a_30_parameter_run_starts_the_speech_model_from_its_weights(speech_run, tmp_path, capsys):
    """train.init_from: a 30-parameter run's G and D start the 40-parameter run (step 0, fresh
    optimisers): before any step G edits as the 30-parameter G did, whatever the speech inputs."""
    from model.networks import load_from_checkpoint_state
    from tests.train.tiny import TINY_TRAIN as T
    base = tmp_path / "base"
    sets = [a for s in T for a in ("--set", s)]
    assert cli(["train", "--data", str(speech_run), "--variant", "rad-no-id", "--out", str(base), "--steps", "3",
                *sets, "--set", "train.batch_size=2"]) == 0
    ck30 = torch.load(base / "checkpoints" / "latest.pt", weights_only=True)
    assert ck30["model_config"]["c_dim"] == 30
    tr = Trainer(speech_run, tmp_path / "t", _cfg(f"train.init_from={base / 'checkpoints' / 'latest.pt'}"),
                 variant="rad-no-id", echo=print).setup()
    assert "init: G and D from" in capsys.readouterr().out and tr.G.c_dim == 40
    G30, D30, _ = load_from_checkpoint_state(ck30)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.randn(2, 30)
    with torch.no_grad():
        want = G30(x, c)[0]
        got = tr.G.eval()(x, torch.cat([c, torch.randn(2, 10)], 1))[0]
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ConfigError, match="train.init_from .*g_conv_dim"):
        Trainer(speech_run, tmp_path / "t2", _cfg(f"train.init_from={base / 'checkpoints' / 'latest.pt'}",
                                                  "train.g_conv_dim=16"), variant="rad-no-id",
                echo=lambda m: None).setup()


def _speech_warps_stage(run, name: str, seed: int):
    """A 40-wide copy ``run/<name>`` of ``run/warps`` (random speech parameters) -> (group, p_exp)."""
    from pipeline.shards import ShardSet

    w = ShardSet(run / "warps")
    g = w.read("group").astype(np.int64)
    P = np.concatenate([w.read("p_exp"), np.random.default_rng(seed).uniform(-0.7, 0.7, (len(w), 10))], 1)
    make_stage(run / name, "warps", {"key": list(w.keys()), "group": g, "source": w.read("source"),
                                     "identity": w.read("identity"), "image": w.read("image"),
                                     "p_exp": P.astype(np.float32)}, chunk_size=7)
    return g, P


def test_speech_warps_join_the_paired_set_without_held_out_photos(speech_run, tmp_path):
    """train.speech_warps: a 40-wide warps stage of RUN joins the paired set (targets its exact
    40-vectors, sources the photos with zero speech), minus the warps of held-out photos; an
    absent stage is a note, a 30-wide one a one-line error."""
    from train.data import ConcatPaired, RowSubset

    g, P = _speech_warps_stage(speech_run, "ws", seed=1)
    said = []
    tr = Trainer(speech_run, tmp_path / "t", _cfg("train.speech_warps=ws", "train.holdout=true",
                                                  "evaluate.test_fraction=0.5"), echo=said.append)
    tr.build_data()
    held = set(np.asarray(tr._holdout(tr.fits)[1]).tolist())
    assert held, "the split holds some photos out"
    assert isinstance(tr.paired_set, ConcatPaired)
    part = [d for d in tr.paired_set.parts if isinstance(d, RowSubset) and d.ds.warps.dir.name == "ws"]
    assert len(part) == 1
    rows = part[0].rows
    assert not set(g[rows].tolist()) & held and len(rows) == int((~np.isin(g, list(held))).sum())
    item = part[0][0]
    np.testing.assert_allclose(np.asarray(item["p_trg"]), P[rows[0]], atol=1e-6)
    src = np.asarray(item["p"])
    assert src.shape == (40,) and (np.all(src[30:] == 0) or any(np.allclose(src, q, atol=1e-6) for q in P))
    assert any("speech warps of" in m for m in said)
    said.clear()
    Trainer(speech_run, tmp_path / "t", _cfg("train.speech_warps=nothing"), echo=said.append).build_data()
    assert any("train.speech_warps adds nothing" in m for m in said)
    with pytest.raises(ConfigError, match=r"p_exp \[30\] wide; train.speech needs 40"):
        Trainer(speech_run, tmp_path / "t", _cfg("train.speech_warps=warps"), echo=lambda m: None).build_data()


def test_train_warps_names_the_paired_stage(speech_run, tmp_path):
    """train.warps: the paired phase (and its validation pairs) read that stage of RUN instead of
    RUN/warps; its held-out photos stay out of the training rows; an absent stage is a note."""
    from train.data import RowSubset

    g, P = _speech_warps_stage(speech_run, "ws2", seed=2)
    tr = Trainer(speech_run, tmp_path / "t", _cfg("train.warps=ws2", "train.holdout=true", "train.paired_speech=0",
                                                  "evaluate.test_fraction=0.5"), echo=lambda m: None)
    tr.build_data()
    held = set(np.asarray(tr._holdout(tr.fits)[1]).tolist())
    ds = tr.paired_set
    assert isinstance(ds, RowSubset) and ds.ds.warps.dir.name == "ws2"
    assert not set(g[ds.rows].tolist()) & held
    np.testing.assert_allclose(np.asarray(ds[0]["p_trg"]), P[ds.rows[0]], atol=1e-6)   # the 40-vectors of ws2
    said = []
    tr2 = Trainer(speech_run, tmp_path / "t2", _cfg("train.warps=absent", "train.epochs_speech=1"), echo=said.append)
    tr2.build_data()
    assert tr2.paired_set is None and any("absent has no shard stage" in m for m in said)
