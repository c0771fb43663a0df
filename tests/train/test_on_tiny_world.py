"""The trainer on the stages the real pipeline writes (shared tiny demo world)."""
import json

import torch

from model.networks import load_from_checkpoint_state
from tests.train.tiny import TINY_TRAIN
from train.checkpoint import load_checkpoint
from workflows.cli import main as cli


def test_train_on_pipeline_stages(tiny_world, tiny_fits, tiny_warps, tiny_4dfab, tmp_path, capsys):
    out = tmp_path / "rad"
    sets = []
    for s in TINY_TRAIN + ["train.checkpoint_every=100"]:
        sets += ["--set", s]
    assert cli(["train", "--data", str(tiny_world), "--variant", "rad", "--out", str(out), "--steps", "4", *sets]) == 0
    text = capsys.readouterr().out
    assert "paired:" in text and "unpaired:" in text       # both phases on real fits + warps
    ck = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert ck["step"] == 4 and ck["phase"] == "unpaired" and ck["identity"]["path"].endswith("identity.pt")
    G, D, meta = load_from_checkpoint_state(ck)
    with torch.no_grad():
        y, _, m = G(torch.zeros(1, 3, 32, 32), torch.zeros(1, 30))
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y).all() and torch.isfinite(m).all()   # no NaN weights
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rec and all(v == v for r in rec for v in r.values() if isinstance(v, float))   # no NaN


def test_trainer_leaves_out_the_photos_evaluation_holds_out(tiny_world, tiny_fits, tiny_warps, tmp_path):
    """train.holdout: the real photos evaluate tests on (and their warps) are never trained on."""
    import numpy as np

    from evaluation.data import load_real
    from pipeline.config import load_config
    from pipeline.shards import ShardSet
    from train.trainer import Trainer

    cfg = load_config(None, [s for s in TINY_TRAIN if s != "train.holdout=false"] + ["train.holdout=true"])
    tr = Trainer(tiny_world, tmp_path / "t", cfg, variant="rad")
    tr.build_data()
    phases = {p.name: p.dataset for p in tr.phases}
    test = load_real(tiny_world, float(cfg.evaluate.test_fraction), int(cfg.seed)).test
    assert 0 < test.sum() < len(test)
    trained = set(int(r) for r in phases["unpaired"].rows)
    assert trained == set(np.nonzero(~test)[0].tolist())           # exactly the complement
    fits, warps = ShardSet(tiny_fits), ShardSet(tiny_warps)
    held_groups = set(fits.read("group")[test].tolist())
    paired_groups = set(warps.read("group")[phases["paired"].rows].tolist())
    assert paired_groups and not (paired_groups & held_groups)
    all_groups = set(warps.read("group").tolist())
    assert paired_groups == all_groups - held_groups
