"""Shard datasets: pairs stay within a face group, deterministic and resumable order."""
import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.shards import ShardSet
from train.data import (PairedDataset, ResumableBatchSampler, UnpairedDataset, params_to_width,
                        to_tensor_image, to_uint8_chw, uint8_to_float)


def _paired(run, seed=0):
    fits, warps = ShardSet(run / "fits"), ShardSet(run / "warps")
    return PairedDataset(fits, fits.read("p_exp"), warps, warps.read("p_exp"), 32, seed=seed), fits, warps


def test_pairs_stay_within_group_and_use_exact_params(tiny_run):
    ds, fits, warps = _paired(tiny_run)
    fg, wg = fits.read("group"), warps.read("group")
    wp, fp = warps.read("p_exp"), fits.read("p_exp")
    kinds = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s, r = ds.source_of(i)
            kinds.add(s)
            assert (fg[r] if s == 0 else wg[r]) == wg[i]
            assert not (s == 1 and r == i)
            item = ds[i]
            assert np.array_equal(item["p_trg"].numpy(), wp[i])
            assert np.array_equal(item["p"].numpy(), fp[r] if s == 0 else wp[r])
            src_img = (fits if s == 0 else warps).read("image", r)
            assert torch.equal(item["image"], to_uint8_chw(src_img))
            assert torch.equal(item["target"], to_uint8_chw(warps.read("image", i)))
    assert kinds == {0, 1}                    # both (photo, warp) and (warp, warp) pairs occur


def test_pairing_is_deterministic_per_epoch(tiny_run):
    a, _, _ = _paired(tiny_run)
    b, _, _ = _paired(tiny_run)
    b.set_epoch(1)
    a.set_epoch(1)
    assert [a.source_of(i) for i in range(len(a))] == [b.source_of(i) for i in range(len(b))]
    a.set_epoch(2)
    assert [a.source_of(i) for i in range(len(a))] != [b.source_of(i) for i in range(len(b))]


def test_unpaired_item_and_resize(tiny_run):
    fits = ShardSet(tiny_run / "fits")
    ds = UnpairedDataset(fits, fits.read("p_exp"), 16)
    item = ds[3]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32) and item["p"].shape == (30,)
    raw = fits.read("image", 3)
    assert torch.equal(item["image"].permute(1, 2, 0), torch.from_numpy(raw))
    full = to_tensor_image(raw, 32)
    assert full[0, 5, 7].item() == pytest.approx(raw[5, 7, 0] / 127.5 - 1, abs=1e-6)
    small = uint8_to_float(torch.stack([item["image"]] * 2), 16)      # batched, on the device
    assert small.shape == (2, 3, 16, 16) and small.min() >= -1 and small.max() <= 1
    # antialiased down-sampling keeps the colour balance and is close to 2x2 box averaging
    assert torch.allclose(small[0].mean((1, 2)), full.mean((1, 2)), atol=0.02)
    assert (small[0] - torch.nn.functional.avg_pool2d(full[None], 2)[0]).abs().mean() < 0.05


def test_sampler_resumes_and_shards_ranks():
    full = ResumableBatchSampler(23, 4, seed=3, epoch=1).batches()
    assert len(full) == 5 and all(len(b) == 4 for b in full)
    assert len({i for b in full for i in b}) == 20
    assert ResumableBatchSampler(23, 4, seed=3, epoch=1, start=2).batches() == full[2:]
    assert ResumableBatchSampler(23, 4, seed=3, epoch=2).batches() != full
    r0 = ResumableBatchSampler(23, 4, seed=3, epoch=1, rank=0, world=2).batches()
    r1 = ResumableBatchSampler(23, 4, seed=3, epoch=1, rank=1, world=2).batches()
    assert r0 == full[0:4:2] and r1 == full[1:4:2]


def test_params_width_rules():
    p30 = np.ones((2, 30), np.float32)
    assert params_to_width(p30, 30, "fits", False) is not None
    padded = params_to_width(p30, 40, "warps", True)
    assert padded.shape == (2, 40) and (padded[:, 30:] == 0).all() and (padded[:, :30] == 1).all()
    with pytest.raises(ConfigError, match="width 40 disagrees with the conditioning width 30"):
        params_to_width(np.ones((2, 40)), 30, "fits", False)
    with pytest.raises(ConfigError, match="width 31"):
        params_to_width(np.ones((2, 31)), 40, "fits", True)
