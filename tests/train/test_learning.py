"""Learning is real: a short paired run on the tiny band world (tests/train/tiny.py, where
p[0] moves a bright band and p[1] sets its thickness) ends with G closer to the target warps
than copying the source, and G given another pair's target does worse than G given the true
one.  Both assertions fail when the trainer is broken (no L_gen, targets ignored, G frozen)."""
import json

import pytest
import torch

from pipeline.config import load_config
from tests.train.tiny import TINY_TRAIN, make_tiny_run
from train.trainer import Trainer

LEARN = ["train.epochs_unpaired=0", "train.epochs_paired=60", "train.n_critic=1", "train.lr_g=0.001",
         "train.lr_d=0.0002", "train.lambda_id=0.0", "train.g_repeat=2", "train.g_conv_dim=16",
         "train.lambda_adv=1.0", "train.lambda_adv_d=1.0", "train.lambda_exp=10.0", "train.lambda_gen=100.0",
         "train.mask_bias_init=0.0", "train.eval_every=25", "train.log_every=25", "train.val_pairs=24",
         "train.lr_decay_fraction=0.0", "train.checkpoint_every=100000", "train.tensorboard=false",
         "train.g_ramp_start=0", "train.g_ramp_steps=300"]        # the full objective, ramped from step 0


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("condition", ["target", "delta"])
def test_short_run_beats_copy_and_uses_its_target(tmp_path, condition):
    """Both conditionings learn (delta: G also gets p_trg - p_src; validation then gives the
    wrong target with the true source, so a wrong change is what it is scored on)."""
    run = make_tiny_run(tmp_path / "run", faces=8, per_face=4)
    cfg = load_config(None, TINY_TRAIN + LEARN + [f"train.condition={condition}"])
    out = tmp_path / "t"
    Trainer(run, out, cfg, variant="rad-no-id", steps=200, echo=lambda s: None).run()
    mc = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["model_config"]
    assert mc.get("condition", "target") == condition
    val = [r for r in _records(out) if "val_l1" in r]
    assert len(val) == 8 and val[-1]["step"] == 200
    first, last = val[0], val[-1]
    assert last["val_l1"] < 0.8 * last["val_l1_copy"], last        # better than doing nothing
    assert last["val_l1_wrong"] > 1.05 * last["val_l1"], last      # and the target matters
    assert last["val_l1"] < first["val_l1"]                        # it got there by training


def test_a_frozen_generator_does_not_pass_the_bar(tmp_path):
    """The same run with G's learning rate at 0 stays at its initial output: the bar above is not
    met by an untrained network (the assertions can fail)."""
    run = make_tiny_run(tmp_path / "run", faces=8, per_face=4)
    cfg = load_config(None, TINY_TRAIN + LEARN + ["train.lr_g=0.0"])
    out = tmp_path / "t"
    Trainer(run, out, cfg, variant="rad-no-id", steps=50, echo=lambda s: None).run()
    last = [r for r in _records(out) if "val_l1" in r][-1]
    assert not (last["val_l1"] < 0.8 * last["val_l1_copy"] and last["val_l1_wrong"] > 1.05 * last["val_l1"])
