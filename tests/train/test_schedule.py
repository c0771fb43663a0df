"""Targets for unpaired samples, learning-rate decay, step -> (phase, epoch, batch), caps."""
import pytest
import torch

from pipeline.config import load_config
from train.schedule import Phase, cap_phase_steps
from train.trainer import Trainer


def _trainer(tmp_path, sets=()):
    return Trainer(tmp_path, tmp_path / "out", load_config(None, list(sets)), variant="rad")


def test_shuffle_targets_are_other_samples_plus_bounded_noise(tmp_path):
    tr = _trainer(tmp_path, ["train.target_noise=0.1"])
    tr.gen = torch.Generator().manual_seed(0)
    p = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 30)        # row i == i
    t = tr.sample_targets(p)
    base = t.round()
    assert (t - base).abs().max() <= 0.1 + 1e-6 and (t - base).abs().max() > 0.01
    assert sorted(base[:, 0].tolist()) == list(range(8))                    # a permutation of the batch
    assert (base == base[:, :1]).all()                                      # whole parameter vectors move
    tr.gen = torch.Generator().manual_seed(0)
    assert torch.equal(tr.sample_targets(p), t)                             # seeded, reproducible


@pytest.mark.parametrize("mode", ["uniform", "normal"])
def test_sampled_targets_lie_in_range(tmp_path, mode):
    tr = _trainer(tmp_path, [f"train.target={mode}"])
    tr.gen = torch.Generator().manual_seed(0)
    t = tr.sample_targets(torch.zeros(256, 30))
    assert t.shape == (256, 30) and t.min() >= -1 and t.max() <= 1 and t.std() > 0.2


def _with_phases(tr, steps_cap, sizes):
    tr.max_steps = steps_cap
    tr.phases = [Phase(name, epochs, None, bpe) for name, epochs, bpe in sizes]
    total = sum(p.steps for p in tr.phases)
    for p in tr.phases:
        p.run_steps = p.steps
    tr.total_steps = total
    return tr


def test_lr_is_constant_then_decays_linearly_to_zero(tmp_path):
    tr = _with_phases(_trainer(tmp_path, ["train.lr_decay_fraction=0.25"]), 0, [("unpaired", 10, 10)])
    assert tr.lr_factor(0) == 1.0 and tr.lr_factor(74) == 1.0
    assert tr.lr_factor(75) == pytest.approx(1.0)
    assert tr.lr_factor(90) == pytest.approx(10 / 25)
    assert tr.lr_factor(100) == 0.0


def test_position_walks_phases_and_epochs(tmp_path):
    tr = _with_phases(_trainer(tmp_path), 0, [("paired", 2, 3), ("unpaired", 2, 4)])
    assert [tr.position(s) for s in (0, 2, 3, 5, 6, 9, 10, 13)] == [
        (0, 0, 0), (0, 0, 2), (0, 1, 0), (0, 1, 2), (1, 0, 0), (1, 0, 3), (1, 1, 0), (1, 1, 3)]


def test_step_cap_shortens_phases_in_proportion():
    assert cap_phase_steps([600, 30], 0) == [600, 30]
    assert cap_phase_steps([600, 30], 1000) == [600, 30]
    assert cap_phase_steps([600, 30], 100) == [95, 5]
    assert cap_phase_steps([12, 10], 20) == [10, 10]
    assert cap_phase_steps([1000, 2], 10) == [9, 1]          # every phase keeps a step
    assert cap_phase_steps([5, 100], 50) == [2, 48]
    assert sum(cap_phase_steps([7, 3, 9], 11)) == 11


def test_bad_device_is_a_config_error(tmp_path):
    from pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="train.device must be"):
        _trainer(tmp_path, ["train.device=gpu0"])
    with pytest.raises(ConfigError, match="train.gen_loss must be l1.l2"):
        _trainer(tmp_path, ["train.gen_loss=huber"])


def test_ramp_waits_g_ramp_start_steps_after_the_warm_up(tmp_path):
    tr = _trainer(tmp_path, ["train.d_warmup_steps=10", "train.g_ramp_start=20", "train.g_ramp_steps=40"])
    assert [tr.g_ramp(s) for s in (0, 29, 30, 50, 70, 500)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    jump = _trainer(tmp_path, ["train.g_ramp_start=5", "train.g_ramp_steps=0"])
    assert [jump.g_ramp(s) for s in (0, 4, 5, 6)] == [0.0, 0.0, 1.0, 1.0]
    for v in ("ganimation", "rad-no-gen"):        # no L_gen: nothing to learn before the GAN terms
        other = Trainer(tmp_path, tmp_path / v, load_config(None, ["train.g_ramp_start=20", "train.g_ramp_steps=40"]),
                        variant=v)
        assert other.g_ramp(0) == 0.0 and other.g_ramp(20) == 0.5
    paper = _trainer(tmp_path, ["train.g_ramp_start=0", "train.g_ramp_steps=0"])
    assert paper.g_ramp(0) == 1.0


def test_paired_mix_interleaves_one_warp_batch_after_every_n_own_batches():
    ph = Phase("unpaired", 2, None, 6, mix=3)
    assert ph.steps == 12 + 4
    naive_own, naive_mixed, kinds = 0, 0, []
    for s in range(ph.steps):                        # the definition, step by step
        paired = (s + 1) % 4 == 0
        assert ph.split(s) == (naive_own, naive_mixed, paired)
        kinds.append(paired)
        naive_mixed += paired
        naive_own += not paired
    assert kinds.count(True) == 4 and naive_own == 12
    assert Phase("unpaired", 2, None, 6).split(7) == (7, 0, False)


def test_position_of_a_mixed_phase_counts_its_own_batches(tmp_path):
    tr = _with_phases(_trainer(tmp_path), 0, [("paired", 1, 3), ("unpaired", 2, 4)])
    tr.phases[1].mix = 2
    for p in tr.phases:
        p.run_steps = p.steps
    tr.total_steps = sum(p.run_steps for p in tr.phases)
    assert tr.phases[1].steps == 12
    # unpaired steps 0,1 own; 2 paired; 3,4 own; 5 paired; 6,7 own (epoch 1 starts at own batch 4)
    assert [tr.position(3 + s) for s in (0, 1, 3, 4, 6, 7)] == [
        (1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 0, 3), (1, 1, 0), (1, 1, 1)]
