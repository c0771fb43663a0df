"""evaluation.networks runs G and D through the one conversion (model.networks): images of
another size than the checkpoint's go through apply_generator, so pixels the mask leaves
alone come back exactly (the resize decision of docs/INTERFACES.md)."""
import numpy as np
import torch
import torch.nn as nn

from evaluation.networks import Networks, generate, regress, to_tensor
from model.networks import apply_generator, build_networks, to_network_input

CFG = {"image_size": 16, "c_dim": 6, "g_conv_dim": 4, "g_repeat": 1, "d_conv_dim": 4, "d_repeat": 2}


class _KeepG(nn.Module):
    """Mask 0 everywhere: G(x, p) = x, colour a constant grey."""

    def forward(self, x, c, c_src=None):
        return x, torch.zeros_like(x), torch.zeros_like(x[:, :1])


def _images(n=3, side=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3)).astype(np.uint8)


def test_to_tensor_is_the_network_input():
    imgs = _images()
    t = to_tensor(imgs)
    assert torch.equal(t, to_network_input(torch.from_numpy(imgs).permute(0, 3, 1, 2)))
    old = torch.from_numpy(imgs.astype(np.float32) / 255.0).permute(0, 3, 1, 2) * 2.0 - 1.0
    assert torch.equal(t, old)                                            # same numbers as before unifying
    assert torch.equal(to_tensor(imgs.astype(np.float32) / 255.0), t)     # float [0,1] input
    assert to_tensor(imgs, size=16).shape == (3, 3, 16, 16)


def test_mask_zero_keeps_the_input_at_any_size():
    net = Networks(name="k", variant="k", G=_KeepG(), D=None, n_params=6, model_config={"image_size": 16})
    imgs = _images()
    out = generate(net, imgs, np.zeros((3, 6)))
    assert out.shape == imgs.shape
    assert np.abs(out - imgs / 255.0).max() < 1e-6                       # no down/up-sampling blur


def test_generate_and_regress_are_the_model_functions():
    torch.manual_seed(4)
    G, D = build_networks(CFG)
    G.eval()
    D.eval()
    net = Networks(name="r", variant="rad", G=G, D=D, n_params=6, model_config=CFG)
    imgs, p = _images(seed=1), np.random.default_rng(2).uniform(-1, 1, (3, 6)).astype(np.float32)
    with torch.no_grad():
        x = to_network_input(torch.from_numpy(imgs).permute(0, 3, 1, 2))
        want = apply_generator(G, x, torch.from_numpy(p), 16)[0]
        want = ((want.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        d_want = D(to_network_input(torch.from_numpy(imgs).permute(0, 3, 1, 2), 16))[1].numpy()
    assert np.array_equal(generate(net, imgs, p), want)
    assert np.array_equal(regress(net, imgs), d_want)
    same = _images(side=16, seed=3)                                       # network size: G itself
    with torch.no_grad():
        g16 = G(to_network_input(torch.from_numpy(same).permute(0, 3, 1, 2)), torch.from_numpy(p))[0]
    assert np.array_equal(generate(net, same, p), ((g16.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())


def test_generate_passes_the_source_parameters_to_a_delta_generator():
    """A generator conditioned on the change gets each image's own parameters (cut or padded to
    its width like p); without them generate fails loudly instead of guessing a source."""
    import pytest

    cfg = dict(CFG, condition="delta")
    torch.manual_seed(5)
    G, D = build_networks(cfg)
    G.eval()
    net = Networks(name="d", variant="rad", G=G, D=D, n_params=6, model_config=cfg)
    imgs = _images(seed=6)
    rng = np.random.default_rng(7)
    p, p_src = rng.uniform(-1, 1, (3, 6)).astype(np.float32), rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    padded = np.concatenate([p_src, np.zeros((3, 2), np.float32)], 1)
    with torch.no_grad():
        x = to_network_input(torch.from_numpy(imgs).permute(0, 3, 1, 2))
        want = apply_generator(G, x, torch.from_numpy(p), 16, torch.from_numpy(padded))[0]
    want = ((want.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(generate(net, imgs, p, p_src), want)
    assert not np.allclose(generate(net, imgs, p, padded + 0.5), want, atol=1e-3)
    with pytest.raises(ValueError, match="c_src"):
        generate(net, imgs, p)
    with pytest.raises(ValueError, match="source parameter vectors"):
        generate(net, imgs, p, p_src[:2])
