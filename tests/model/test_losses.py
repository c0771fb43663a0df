"""Each loss against a hand computation on tiny tensors; the gradient penalty against finite
differences; RaD vs WGAN-GP."""
import math

import pytest
import torch

from model import losses as L
from model.networks import Discriminator


def _sig(v):
    return 1 / (1 + math.exp(-v))


def test_wgp_by_hand():
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    assert L.adv_d_loss(real, fake, "wgp").item() == pytest.approx(-0.25 - 1.5)
    assert L.adv_g_loss(real, fake, "wgp").item() == pytest.approx(0.25)


def test_rad_by_hand():
    real, fake = [1.0, 2.0], [0.5, -1.0]
    mr, mf = sum(real) / 2, sum(fake) / 2
    d = (-sum(math.log(_sig(r - mf)) for r in real) / 2
         - sum(math.log(1 - _sig(f - mr)) for f in fake) / 2)
    g = (-sum(math.log(_sig(f - mr)) for f in fake) / 2
         - sum(math.log(1 - _sig(r - mf)) for r in real) / 2)
    R, F = torch.tensor(real), torch.tensor(fake)
    assert L.adv_d_loss(R, F, "rad").item() == pytest.approx(d, rel=1e-6)
    assert L.adv_g_loss(R, F, "rad").item() == pytest.approx(g, rel=1e-6)


def test_rad_patch_average_is_per_position():
    # patch maps [B,1,1,2]: the average over fakes is taken per position
    real = torch.tensor([[[[1.0, 0.0]]], [[[3.0, 0.0]]]])
    fake = torch.tensor([[[[0.0, 5.0]]], [[[2.0, 5.0]]]])
    mf = [1.0, 5.0]
    mr = [2.0, 0.0]
    terms = []
    for b in range(2):
        for j in range(2):
            terms.append(-math.log(_sig(real[b, 0, 0, j].item() - mf[j])))
            terms.append(-math.log(1 - _sig(fake[b, 0, 0, j].item() - mr[j])))
    assert L.adv_d_loss(real, fake, "rad").item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_rad_and_wgp_differ_as_specified():
    torch.manual_seed(0)
    real, fake = torch.randn(6), torch.randn(6)
    # both depend only on score differences for the critic ...
    for kind in ("rad", "wgp"):
        assert L.adv_d_loss(real + 3, fake + 3, kind).item() == pytest.approx(L.adv_d_loss(real, fake, kind).item(), abs=1e-5)
    # ... but only RaD's generator loss is relativistic (sees the real scores)
    assert L.adv_g_loss(real + 3, fake + 3, "rad").item() == pytest.approx(L.adv_g_loss(real, fake, "rad").item(), abs=1e-5)
    assert L.adv_g_loss(real + 3, fake + 3, "wgp").item() == pytest.approx(L.adv_g_loss(real, fake, "wgp").item() - 3, abs=1e-5)
    assert L.adv_g_loss(real * 0, fake, "wgp").item() == L.adv_g_loss(real, fake, "wgp").item()
    assert L.adv_g_loss(real * 0, fake, "rad").item() != pytest.approx(L.adv_g_loss(real, fake, "rad").item())
    # WGAN is linear in the scores (unbounded); RaD saturates: a huge margin costs ~0
    assert L.adv_d_loss(torch.full((4,), 100.0), torch.full((4,), -100.0), "rad").item() < 1e-6
    assert L.adv_d_loss(torch.full((4,), 100.0), torch.full((4,), -100.0), "wgp").item() == pytest.approx(-200)
    with pytest.raises(ValueError, match="adversarial kind"):
        L.adv_d_loss(real, fake, "hinge")


def test_gradient_penalty_matches_finite_differences():
    torch.manual_seed(0)
    D = Discriminator(image_size=8, conv_dim=4, c_dim=3, repeat_num=2).double()
    critic = lambda z: D(z)[0]  # noqa: E731
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gp = L.gradient_penalty(critic, x)
    eps = 1e-6
    norms = []
    with torch.no_grad():
        basis = torch.eye(3 * 64, dtype=torch.float64).view(-1, 3, 8, 8) * eps   # one bump per input
        for b in range(2):
            xb = x[b:b + 1]
            up = critic(xb + basis).flatten(1).sum(1)      # central differences, batched
            down = critic(xb - basis).flatten(1).sum(1)
            norms.append(((up - down) / (2 * eps)).norm().item())
    ref = sum((n - 1) ** 2 for n in norms) / 2
    assert gp.item() == pytest.approx(ref, rel=1e-5)
    gp.backward()                      # differentiable w.r.t. the critic (create_graph)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


def test_interpolate_lies_between():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2)
    xh = L.interpolate(real, fake, g)
    eps = 1 - xh[:, 0, 0, 0]
    assert torch.allclose(xh, (1 - eps).view(4, 1, 1, 1).expand_as(xh))
    assert (eps > 0).all() and (eps < 1).all() and eps.unique().numel() == 4


def test_regression_l1_identity_by_hand():
    pred, target = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert L.exp_loss(pred, target).item() == pytest.approx((1 + 0 + 1 + 4) / 4)
    a, b = torch.tensor([[0.5, -0.5]]), torch.tensor([[0.0, 0.5]])
    assert L.l1_loss(a, b).item() == pytest.approx(0.75)
    assert L.gen_loss(a, b, "l1").item() == pytest.approx(0.75)
    assert L.gen_loss(a, b, "l2").item() == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError, match="gen_loss kind"):
        L.gen_loss(a, b, "huber")
    e1, e2 = torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    assert L.identity_loss(e1, e2).item() == pytest.approx((1.0 + 0.0) / 2)


def test_total_variation_and_attention_by_hand():
    m = torch.rand(2, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    ref = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(4):
                if j + 1 < 4:
                    ref += abs(m[b, 0, i, j + 1].item() - m[b, 0, i, j].item())
                if i + 1 < 3:
                    ref += abs(m[b, 0, i + 1, j].item() - m[b, 0, i, j].item())
    assert L.total_variation(m).item() == pytest.approx(ref / 2, rel=1e-6)
    assert L.attention_loss(m, 0.1).item() == pytest.approx(m.mean().item() + 0.1 * ref / 2, rel=1e-6)
    s = L.mask_stats(torch.tensor([0.0, 0.01, 0.5, 0.99]).view(1, 1, 2, 2))
    assert s["mask_sat_hi"] == 0.25 and s["mask_sat_lo"] == 0.5 and s["mask_mean"] == pytest.approx(0.375)
