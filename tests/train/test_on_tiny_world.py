"""The trainer on the stages the real pipeline writes (shared tiny demo world)."""
import json

import torch

from model.networks import load_from_checkpoint_state
from tiny import TINY_TRAIN
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
    assert y.shape == (1, 3, 32, 32) and 0 <= float(m.min()) and float(m.max()) <= 1
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rec and all(v == v for r in rec for v in r.values() if isinstance(v, float))   # no NaN
