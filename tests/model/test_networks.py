"""Generator / discriminator shapes, attention composition, config round trip."""
import math

import pytest
import torch
import torch.nn as nn

from model.networks import (Discriminator, Generator, ModelConfigError, build_networks, compose,
                            load_from_checkpoint_state, widen_into)
from tests.helpers import checkpoint_state

CFG = {"image_size": 32, "c_dim": 5, "g_conv_dim": 8, "g_repeat": 2, "d_conv_dim": 8, "d_repeat": 3}


def test_generator_shapes_and_heads():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=5, repeat_num=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.randn(2, 5) * 3
    out, colour, mask = G(x, c)
    assert out.shape == (2, 3, 32, 32) and colour.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
    # the heads written out: c tiled over the image and concatenated, tanh colour, logistic mask
    h = G.main(torch.cat([x, c[:, :, None, None].expand(-1, -1, 32, 32)], 1))
    conv_c, conv_m = G.colour[0], G.mask[0]
    z = torch.nn.functional.conv2d(h, conv_c.weight, padding=3)
    want_colour = (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z))
    want_mask = 1 / (1 + torch.exp(-torch.nn.functional.conv2d(h, conv_m.weight, conv_m.bias, padding=3)))
    assert torch.allclose(colour, want_colour, atol=1e-6) and torch.allclose(mask, want_mask, atol=1e-6)
    assert torch.allclose(out, mask * colour + (1 - mask) * x)
    assert not torch.allclose(G(x, -c)[0], out, atol=1e-3)            # the parameters reach the output
    # mask_bias_init is the mask's logit where the head's weights are zero
    G3 = Generator(conv_dim=8, c_dim=5, repeat_num=1, mask_bias_init=-3.0)
    torch.nn.init.zeros_(G3.mask[0].weight)
    assert torch.allclose(G3(x, c)[2], torch.full((2, 1, 32, 32), 1 / (1 + math.exp(3.0))))
    with pytest.raises(ValueError, match="c of shape"):
        G(x, torch.randn(2, 4))


def test_delta_generator_sees_target_and_change():
    """condition "delta": the tiled vector is [p_trg, p_trg - p_src] (written out by hand here);
    no source is a loud error; the change, not only the target, reaches the output."""
    torch.manual_seed(4)
    G = Generator(conv_dim=8, c_dim=5, repeat_num=1, condition="delta")
    assert G.needs_source and G.main[0].in_channels == 3 + 10
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    c, c_src = torch.randn(2, 5), torch.randn(2, 5)
    out, colour, mask = G(x, c, c_src)
    cond = torch.stack([torch.cat([c[b], c[b] - c_src[b]]) for b in range(2)])
    h = G.main(torch.cat([x, cond[:, :, None, None].expand(-1, -1, 16, 16)], 1))
    assert torch.allclose(colour, G.colour(h), atol=1e-6) and torch.allclose(mask, G.mask(h), atol=1e-6)
    assert torch.allclose(out, compose(x, colour, mask))
    assert not torch.allclose(G(x, c, c_src + 1)[0], out, atol=1e-3)     # the source reaches the output
    with pytest.raises(ValueError, match="c_src"):
        G(x, c)
    with pytest.raises(ValueError, match="c_src must have the shape"):
        G(x, c, c_src[:, :4])
    with pytest.raises(ModelConfigError, match="condition"):
        Generator(conv_dim=8, c_dim=5, repeat_num=1, condition="relative")
    # the paper's generator ignores a source it is given
    Gt = Generator(conv_dim=8, c_dim=5, repeat_num=1)
    assert not Gt.needs_source and torch.equal(Gt(x, c)[0], Gt(x, c, c_src)[0])


def test_residual_colour_head_starts_from_the_input():
    """colour "residual": C = tanh(atanh(x) + z) with z the colour conv (written out here); z = 0
    gives back the input's colours, so an open mask alone changes nothing."""
    torch.manual_seed(6)
    G = Generator(conv_dim=8, c_dim=5, repeat_num=1, colour="residual")
    x = torch.rand(2, 3, 16, 16) * 1.8 - 0.9
    c = torch.randn(2, 5)
    out, colour, mask = G(x, c)
    h = G.main(torch.cat([x, c[:, :, None, None].expand(-1, -1, 16, 16)], 1))
    z = torch.nn.functional.conv2d(h, G.colour[0].weight, padding=3)
    want = torch.tanh(0.5 * torch.log((1 + x) / (1 - x)) + z)
    assert torch.allclose(colour, want, atol=1e-5) and torch.allclose(out, compose(x, colour, mask))
    torch.nn.init.zeros_(G.colour[0].weight)
    out0, colour0, _ = G(x, c)
    assert torch.allclose(colour0, x, atol=1e-6) and torch.allclose(out0, x, atol=1e-6)
    with pytest.raises(ModelConfigError, match="colour"):
        Generator(conv_dim=8, c_dim=5, repeat_num=1, colour="additive")


def test_condition_travels_in_model_config():
    from model.networks import model_config_from_train

    train = {"image_size": 32, "g_conv_dim": 8, "g_repeat": 1, "d_conv_dim": 8, "d_repeat": 3}
    assert "condition" not in model_config_from_train(train, 5)            # paper default: dict unchanged
    mc = model_config_from_train(dict(train, condition="delta"), 5)
    assert mc["condition"] == "delta"
    G, D = build_networks(mc)
    G2, _, meta = load_from_checkpoint_state({"model_config": mc, "G": G.state_dict(), "D": D.state_dict()})
    assert G2.needs_source and meta["model_config"]["condition"] == "delta"
    with pytest.raises(ModelConfigError, match="condition"):
        build_networks(dict(mc, condition="absolute"))
    assert "colour" not in model_config_from_train(train, 5)
    mc = model_config_from_train(dict(train, colour="residual"), 5)
    assert mc["colour"] == "residual" and build_networks(mc)[0].colour_mode == "residual"
    with pytest.raises(ModelConfigError, match="colour"):
        build_networks(dict(mc, colour="relative"))


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


@pytest.mark.parametrize("condition", ["target", "delta"])
def test_widen_into_keeps_the_old_model_on_zero_extra_parameters(condition):
    """train.init_from: a 5-parameter checkpoint in an 8-parameter model. With the 3 new
    parameters at zero (target and source) G's output is the old G's, bit for bit in the
    arithmetic (the new channels' weights are 0), D's first 5 regression outputs and its patch
    scores are the old ones; the new channels then act once they are non-zero."""
    old_cfg = dict(CFG, condition=condition) if condition != "target" else CFG
    ckpt = checkpoint_state(old_cfg, seed=3)
    G0, D0, _ = load_from_checkpoint_state(ckpt)
    new_cfg = dict(old_cfg, c_dim=8)
    torch.manual_seed(9)
    G, D = build_networks(new_cfg)
    assert widen_into(G, D, new_cfg, ckpt) == 5
    G.eval()
    D.eval()
    x, c, cs = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 5), torch.randn(2, 5)
    pad = torch.zeros(2, 3)
    with torch.no_grad():
        out0 = G0(x, c, cs if condition == "delta" else None)[0]
        out = G(x, torch.cat([c, pad], 1), torch.cat([cs, pad], 1) if condition == "delta" else None)[0]
        assert torch.allclose(out, out0, atol=1e-5)
        moved = G(x, torch.cat([c, torch.ones(2, 3)], 1), torch.cat([cs, pad], 1) if condition == "delta" else None)[0]
        assert torch.allclose(moved, out0, atol=1e-5)     # zero weight: the speech inputs do nothing yet
        patch0, r0 = D0(x)
        patch, r = D(x)
        assert torch.allclose(patch, patch0, atol=1e-5) and torch.allclose(r[:, :5], r0, atol=1e-5)
        assert r.shape == (2, 8) and r[:, 5:].abs().sum() > 0   # fresh rows, not zeros
    # the naive reference: the new first conv is the old one with zero columns inserted per block
    w0, w = G0.main[0].weight, G.main[0].weight
    blocks = 2 if condition == "delta" else 1
    ref = [w0[:, :3]]
    for b in range(blocks):
        ref += [w0[:, 3 + 5 * b:3 + 5 * (b + 1)], torch.zeros(w0.shape[0], 3, 7, 7)]
    assert torch.equal(w, torch.cat(ref, 1))


def test_widen_into_refuses_other_architectures():
    ckpt = checkpoint_state(CFG)
    G, D = build_networks(dict(CFG, c_dim=3))
    with pytest.raises(ModelConfigError, match="cannot start a 3-parameter model from a 5-parameter"):
        widen_into(G, D, dict(CFG, c_dim=3), ckpt)
    cfg = dict(CFG, c_dim=8, g_conv_dim=16)
    G, D = build_networks(cfg)
    with pytest.raises(ModelConfigError, match="g_conv_dim=8 differs from this run's 16"):
        widen_into(G, D, cfg, ckpt)
