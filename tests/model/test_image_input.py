"""The one image conversion for G and D (model.networks.resize_images / to_network_input /
apply_generator) against a slow per-pixel reference, and bit-identity with the trainer's
historical conversion on square crops (training semantics unchanged)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.networks import apply_generator, resize_images, to_network_input


def _weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """[n_out, n_in] resampling weights, written out pixel by pixel.

    Output pixel i has its centre at (i + 0.5) * scale in input coordinates (corner origin).
    Shrinking with antialias: a triangle of radius ``scale`` over the input pixel centres,
    renormalised where it leaves the image.  Otherwise: bilinear between the two nearest
    input centres, clamped at the borders."""
    scale = n_in / n_out
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        c = (i + 0.5) * scale
        if antialias and scale > 1:
            for j in range(n_in):
                W[i, j] = max(0.0, 1.0 - abs(j + 0.5 - c) / scale)
            W[i] /= W[i].sum()
        else:
            s = max(c - 0.5, 0.0)
            j0 = min(int(math.floor(s)), n_in - 1)
            j1 = min(j0 + 1, n_in - 1)
            lam = s - j0 if j1 > j0 else 0.0
            W[i, j0] += 1.0 - lam
            W[i, j1] += lam
    return W


def _reference(img: np.ndarray, H: int, W: int) -> np.ndarray:
    """img float64 [..., C, h, w] -> [..., C, H, W]; antialiased when either side shrinks."""
    h, w = img.shape[-2:]
    aa = h > H or w > W
    return _weights(h, H, aa) @ img @ _weights(w, W, aa).T


def _historical_trainer(u8: torch.Tensor, size: int) -> torch.Tensor:
    """train.data.uint8_to_float before the conversion was unified (kept verbatim)."""
    t = u8.float().div_(127.5).sub_(1.0)
    if t.shape[-1] != size or t.shape[-2] != size:
        lead = t.shape[:-3]
        t = F.interpolate(t.reshape(-1, *t.shape[-3:]), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=t.shape[-1] > size)
        t = t.reshape(*lead, 3, size, size)
    return t


@pytest.mark.parametrize("shape,size", [((8, 8), 4), ((6, 6), 9), ((12, 12), 5), ((10, 4), 4),
                                        ((4, 10), (4, 4)), ((5, 12), (8, 6)), ((7, 7), 7)])
def test_resize_matches_the_slow_reference(shape, size):
    g = np.random.default_rng(0)
    u8 = g.integers(0, 256, (2, 3) + shape).astype(np.uint8)
    H, W = (size, size) if isinstance(size, int) else size
    want = _reference(u8.astype(np.float64) / 127.5 - 1.0, H, W)
    got = to_network_input(torch.from_numpy(u8), size)
    assert got.dtype == torch.float32 and tuple(got.shape) == (2, 3, H, W)
    assert np.abs(got.numpy() - want).max() < 2e-6


def test_scaling_of_uint8_and_float_inputs():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    exact = np.arange(256, dtype=np.float64).reshape(16, 16) / 127.5 - 1.0
    got = to_network_input(u8)
    assert got.min() == -1.0 and got.max() == 1.0
    assert np.abs(got[0, 0].numpy() - exact).max() <= 2.4e-7                 # float32 rounding only
    assert torch.equal(to_network_input(u8.float() / 255.0), got)          # float [0,1] input: 2x - 1
    assert torch.equal(to_network_input(u8, 16), got)                      # already 16x16: not resampled


@pytest.mark.parametrize("shape,size", [((2, 3, 128, 128), 64), ((3, 16, 16), 16), ((2, 3, 12, 12), 16),
                                        ((1, 2, 3, 20, 20), 8), ((4, 3, 64, 64), 128)])
def test_bit_identical_to_the_trainer_on_square_crops(shape, size):
    u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8))
    assert torch.equal(to_network_input(u8, size), _historical_trainer(u8.clone(), size))
    from train.data import uint8_to_float
    assert torch.equal(uint8_to_float(u8, size), _historical_trainer(u8.clone(), size))


class _FixedG(nn.Module):
    """G(x, p) with colour = x and a constant mask ``m`` (the composite as Generator computes it)."""

    def __init__(self, m: float):
        super().__init__()
        self.m, self.seen = m, []

    def forward(self, x, p, p_src=None):
        self.seen.append(tuple(x.shape[-2:]))
        mask = torch.full_like(x[:, :1], self.m)
        return mask * x + (1 - mask) * x, x, mask


def test_apply_generator_composes_at_the_input_size():
    g = np.random.default_rng(2)
    x64 = g.uniform(-1, 1, (2, 3, 12, 12))
    x = torch.from_numpy(x64).float()
    keep = _FixedG(0.0)
    out, colour, mask = apply_generator(keep, x, torch.zeros(2, 5), image_size=8)
    assert keep.seen == [(8, 8)] and out.shape == x.shape and mask.shape == (2, 1, 12, 12)
    assert torch.equal(out, x)                                               # mask 0: the input, exactly
    paint = _FixedG(1.0)                                                     # mask 1: G's colour, resized back
    out = apply_generator(paint, x, torch.zeros(2, 5), image_size=8)[0]
    want = _reference(_reference(x.double().numpy(), 8, 8), 12, 12)
    assert np.abs(out.numpy() - want).max() < 2e-6
    same = _FixedG(0.5)
    assert torch.equal(apply_generator(same, x, torch.zeros(2, 5), image_size=12)[0], same(x, None)[0])


def test_apply_generator_resizes_a_residual_colour_heads_change():
    """colour="residual": the full-size colour is x + resize(C - resize(x)) (a slow per-pixel
    resize as reference), so a residual G that changes nothing returns the input exactly at
    any size, under any mask (an absolute head's resized colour would blur it)."""
    from model.networks import Generator

    torch.manual_seed(0)
    G = Generator(conv_dim=4, c_dim=5, repeat_num=1, colour="residual").eval()
    x = torch.rand(2, 3, 12, 12) * 1.6 - 0.8
    p = torch.randn(2, 5)
    with torch.no_grad():
        out, colour, mask = apply_generator(G, x, p, image_size=8)
        small = resize_images(x, 8)
        _, c8, m8 = G(small, p)
    change = _reference((c8 - small).double().numpy(), 12, 12)
    want = np.clip(x.double().numpy() + change, -1, 1)
    assert np.abs(colour.double().numpy() - want).max() < 2e-6
    m = _reference(m8.double().numpy(), 12, 12).clip(0, 1)
    assert np.abs(out.double().numpy() - (m * want + (1 - m) * x.double().numpy())).max() < 2e-6
    with torch.no_grad():                       # no change painted: the input, whatever the mask
        G.colour[0].weight.zero_()
        G.mask[0].bias.fill_(3.0)
        out0, _, mask0 = apply_generator(G, x, p, image_size=8)
    assert mask0.mean() > 0.5
    assert torch.allclose(out0, x, atol=2e-6)
