"""Generator / discriminator shapes, attention composition, config round trip."""
import pytest
import torch
import torch.nn as nn

from model.networks import (Discriminator, Generator, ModelConfigError, build_networks, compose,
                            load_from_checkpoint_state)
from tests.helpers import checkpoint_state

CFG = {"image_size": 32, "c_dim": 5, "g_conv_dim": 8, "g_repeat": 2, "d_conv_dim": 8, "d_repeat": 3}


def test_generator_shapes_and_ranges():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=5, repeat_num=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out, colour, mask = G(x, torch.randn(2, 5) * 3)
    assert out.shape == (2, 3, 32, 32) and colour.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
    assert mask.min() >= 0 and mask.max() <= 1
    assert colour.min() >= -1 and colour.max() <= 1
    assert torch.allclose(out, mask * colour + (1 - mask) * x)
    with pytest.raises(ValueError, match="c of shape"):
        G(x, torch.randn(2, 4))


class _HalfMask(nn.Module):
    """Mask 0 on the left half, 1 on the right half: [B,C,H,W] -> [B,1,H,W]."""

    def forward(self, h):
        m = torch.zeros(h.shape[0], 1, h.shape[2], h.shape[3])
        m[..., h.shape[3] // 2:] = 1
        return m


def test_output_equals_input_where_mask_is_zero():
    torch.manual_seed(1)
    G = Generator(conv_dim=8, c_dim=5, repeat_num=1)
    G.mask = _HalfMask()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    out, colour, _ = G(x, torch.randn(3, 5))
    assert torch.equal(out[..., :8], x[..., :8])           # mask 0: the input pixel, exactly
    assert torch.allclose(out[..., 8:], colour[..., 8:])    # mask 1: the colour head
    assert not torch.allclose(out[..., 8:], x[..., 8:])


def test_compose_convention_by_hand():
    x = torch.tensor([0.2]).view(1, 1, 1, 1).expand(1, 3, 1, 1)
    c = torch.tensor([-0.6]).view(1, 1, 1, 1).expand(1, 3, 1, 1)
    m = torch.tensor([0.25]).view(1, 1, 1, 1)
    assert torch.allclose(compose(x, c, m), torch.full((1, 3, 1, 1), 0.25 * -0.6 + 0.75 * 0.2))


def test_discriminator_heads():
    D = Discriminator(image_size=32, conv_dim=8, c_dim=5, repeat_num=3)
    patch, params = D(torch.randn(2, 3, 32, 32))
    assert patch.shape == (2, 1, 4, 4) and params.shape == (2, 5)
    # GANimation layout: six stride-2 convs at 128 -> 2x2 patches, regression kernel 2
    D6 = Discriminator(image_size=128, conv_dim=4, c_dim=30, repeat_num=6)
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in D6.main) == 6
    assert D6.regress.kernel_size == (2, 2) and D6.patch.kernel_size == (3, 3)
    assert all(m.negative_slope == 0.01 for m in D6.main if isinstance(m, nn.LeakyReLU))


def test_build_networks_validates():
    G, D = build_networks(CFG)
    assert G.c_dim == 5
    with pytest.raises(ModelConfigError, match="d_repeat"):
        build_networks(dict(CFG, d_repeat=6))
    with pytest.raises(ModelConfigError, match="misses"):
        build_networks({"image_size": 32})


def test_load_from_checkpoint_state_round_trip():
    ckpt = checkpoint_state(CFG, step=7, seed=2)
    G, _ = build_networks(CFG)
    G.load_state_dict(ckpt["G"])
    G2, D2, meta = load_from_checkpoint_state(ckpt)
    x, c = torch.randn(1, 3, 32, 32), torch.randn(1, 5)
    G.eval()
    assert torch.equal(G(x, c)[0], G2(x, c)[0])
    assert meta["step"] == 7 and meta["variant"] == "rad" and meta["model_config"]["c_dim"] == 5
    bad = dict(ckpt, model_config=dict(CFG, g_conv_dim=16))
    with pytest.raises(ModelConfigError, match="do not fit"):
        load_from_checkpoint_state(bad)


def test_apply_generator_resizes_and_keeps_unmasked_pixels():
    from model.networks import apply_generator
    torch.manual_seed(3)
    G = Generator(conv_dim=8, c_dim=5, repeat_num=1)
    G.mask = _HalfMask()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out, colour, mask = apply_generator(G, x, torch.randn(2, 5), image_size=16)
    assert out.shape == x.shape and mask.shape == (2, 1, 32, 32)
    assert torch.equal(out[..., :14], x[..., :14])       # mask 0 (away from the resized edge): input kept
    same = apply_generator(G, x, torch.zeros(2, 5), image_size=32)[0]
    assert torch.equal(same, G(x, torch.zeros(2, 5))[0])
