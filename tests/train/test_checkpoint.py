"""Checkpoint files: atomic step + latest, pruning, weights_only loading, RNG round trip,
identity training CLI."""
import random
import re

import numpy as np
import pytest
import torch

from model.identity import build_identity
from pipeline.config import ConfigError
from tests.train.tiny import TINY_TRAIN
from train import checkpoint as ck
from workflows.cli import main as cli


def test_save_prune_and_latest(tmp_path):
    for step in (5, 10, 15):
        ck.save_checkpoint(tmp_path, {"step": step, "G": {"w": torch.full((2,), float(step))}}, keep=2)
    assert ck.list_steps(tmp_path) == [10, 15]
    latest = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["step"] == 15 and latest["format"] == ck.FORMAT
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]
    # a step file newer than latest.pt (kill between the two writes) wins
    torch.save({"format": ck.FORMAT, "step": 20}, ck.step_path(tmp_path, 20))
    assert ck.latest_checkpoint(tmp_path).name == "step-0000020.pt"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        ck.load_checkpoint(tmp_path / "bad.pt")
    torch.save({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="is not a slidergan-ckpt/1 checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ck.get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({"rng": state}, tmp_path / "r.pt")
    ck.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_train_identity_cli(tiny_run, tmp_path, capsys):
    out = tmp_path / "F.pt"
    sets = []
    for s in TINY_TRAIN + ["train.identity_batch=8", "train.identity_max_steps=0"]:
        sets += ["--set", s]
    assert cli(["train-identity", "--data", str(tiny_run), "--out", str(out), "--epochs", "4", *sets]) == 0
    text = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"arcface loss ([0-9.]+)", text)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "7 classes" in text              # 4 photo identities + 3 training-split 4DFAB identities
    F = build_identity(ck.load_identity_file(out))
    e = F(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    # the embedding separates identities: warps of the same person are closer than of others
    from pipeline.shards import ShardSet
    from train.data import to_tensor_image
    w = ShardSet(tiny_run / "warps")
    ident = torch.from_numpy(w.read("identity"))
    with torch.no_grad():
        emb = F(torch.stack([to_tensor_image(w.read("image", i), 32) for i in range(len(w))]))
    cos = emb @ emb.T
    same = (ident[:, None] == ident[None, :]) & ~torch.eye(len(ident), dtype=torch.bool)
    diff = ident[:, None] != ident[None, :]
    assert cos[same].mean() > cos[diff].mean() + 0.3
    assert cli(["train-identity", "--data", str(tmp_path / "none"), "--out", str(out)]) == 2
