"""SliderGAN losses (paper Eqs. 5-14); the choices where the printed equations are ambiguous
are listed in docs/training.md.

Shapes: critic scores ``[B,1,h,w]`` (PatchGAN) or ``[B]``; parameters ``[B,E]``; images
``[B,3,H,W]`` in [-1, 1]; masks ``[B,1,H,W]`` in [0, 1]; embeddings ``[B,F]``.
Every function returns a scalar tensor (mean over the batch).

Adversarial objectives (``kind``):

* ``"wgp"`` (WGAN-GP, SliderGAN-WGP and the GANimation baseline)
  ``L_D = E[C(fake)] - E[C(real)]``, ``L_G = -E[C(fake)]``.
* ``"rad"`` (relativistic average discriminator, SliderGAN-RaD), with
  ``D_ra(a, b) = sigmoid(C(a) - E_b[C(b)])``:
  ``L_D = -E_real[log D_ra(real, fake)] - E_fake[log(1 - D_ra(fake, real))]``,
  ``L_G = -E_fake[log D_ra(fake, real)] - E_real[log(1 - D_ra(real, fake))]``.
  The average ``E_b[C(b)]`` is taken over the batch separately at every patch position.

Both add the same gradient penalty ``lambda_gp * E[(||grad_x C(x_hat)||_2 - 1)^2]`` to the
critic loss (``gradient_penalty``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ADV_KINDS = ("rad", "wgp")


def _check_kind(kind: str) -> None:
    if kind not in ADV_KINDS:
        raise ValueError(f"adversarial kind must be one of {ADV_KINDS}, got {kind!r}")


def adv_d_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Critic loss (to minimise) from scores on real ``[B,...]`` and generated ``[B,...]`` images."""
    _check_kind(kind)
    real, fake = real.float(), fake.float()
    if kind == "wgp":
        return fake.mean() - real.mean()
    d_real = real - fake.mean(dim=0, keepdim=True)
    d_fake = fake - real.mean(dim=0, keepdim=True)
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def adv_g_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator adversarial loss (to minimise).  ``real`` is only used by ``rad`` (it may be
    detached: the generator does not change the real scores; ``None`` for ``wgp``)."""
    _check_kind(kind)
    if kind == "wgp":
        return -fake.float().mean()
    real, fake = real.float(), fake.float()
    d_real = real - fake.mean(dim=0, keepdim=True)
    d_fake = fake - real.mean(dim=0, keepdim=True)
    return (F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
            + F.binary_cross_entropy_with_logits(d_real, torch.zeros_like(d_real)))


def interpolate(real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_hat = eps * real + (1 - eps) * fake`` with ``eps ~ U(0,1)`` per sample. [B,3,H,W]."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device="cpu").to(real.device, real.dtype)
    return eps * real.detach() + (1.0 - eps) * fake.detach()


def gradient_penalty(critic, x_hat: torch.Tensor) -> torch.Tensor:
    """``E[(||d sum(C(x_hat)) / d x_hat||_2 - 1)^2]`` (Gulrajani et al. 2017).

    ``critic(x [B,3,H,W]) -> scores [B,...]`` (a patch map is summed per sample, as StarGAN and
    GANimation do with ``grad_outputs=ones``).  The norm is over all of a sample's pixels.
    Differentiable (``create_graph=True``) so it can be back-propagated into the critic.
    """
    x_hat = x_hat.detach().requires_grad_(True)
    scores = critic(x_hat)
    grad = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)[0]
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def exp_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_exp: mean squared error between regressed [B,E] and wanted [B,E] parameters.

    The paper prints a squared L2 norm; we average over parameters as well as the batch
    (MSE), so lambda_exp does not depend on E (docs/training.md)."""
    return F.mse_loss(pred.float(), target.float())


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (L_rec cycle loss and L_gen paired loss). [B,3,H,W] x2."""
    return (a.float() - b.float()).abs().mean()


GEN_LOSSES = ("l1", "l2")


def gen_loss(a: torch.Tensor, b: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L_gen, the paired loss: ``l1`` (the paper's mean absolute difference) or ``l2`` (mean
    squared difference). [B,3,H,W] x2 -> scalar. Under L1 the best output for an edit G cannot
    predict exactly is the per-pixel median, for small uncertain edits the input itself; under
    L2 it is the mean, the optimum of the squared measure IED (docs/training.md)."""
    if kind == "l1":
        return l1_loss(a, b)
    if kind == "l2":
        return (a.float() - b.float()).pow(2).mean()
    raise ValueError(f"gen_loss kind must be one of {GEN_LOSSES}, got {kind!r}")


def identity_loss(emb_gen: torch.Tensor, emb_org: torch.Tensor) -> torch.Tensor:
    """L_id = E[1 - cos(F(I_gen), F(I_org))]; embeddings [B,F] (need not be normalised)."""
    return (1.0 - F.cosine_similarity(emb_gen.float(), emb_org.float(), dim=1, eps=1e-8)).mean()


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation summed over a sample's pixels, averaged over the batch.

    ``mask [B,1,H,W]`` -> scalar ``E_b[ sum |m(i,j+1)-m(i,j)| + sum |m(i+1,j)-m(i,j)| ]``
    (GANimation's smoothness term, per sample instead of over the whole batch)."""
    m = mask.float()
    dx = (m[:, :, :, 1:] - m[:, :, :, :-1]).abs().flatten(1).sum(1)
    dy = (m[:, :, 1:, :] - m[:, :, :-1, :]).abs().flatten(1).sum(1)
    return (dx + dy).mean()


def attention_loss(mask: torch.Tensor, tv_weight: float) -> torch.Tensor:
    """L_att for one mask [B,1,H,W]: ``E[mean(M)] + tv_weight * TV(M)``.

    The mean term keeps the mask from saturating to 1 (painting everything); TV keeps it
    smooth.  Applied to both the forward and the cycle mask by the trainer."""
    return mask.float().mean() + tv_weight * total_variation(mask)


def mask_stats(mask: torch.Tensor, lo: float = 0.05, hi: float = 0.95) -> dict[str, float]:
    """Mask diagnostics for logging: mean, fraction of pixels > hi (saturated, copy of the
    colour head) and < lo (collapsed, copy of the input). mask [B,1,H,W]."""
    m = mask.detach().float()
    return {"mask_mean": float(m.mean()), "mask_sat_hi": float((m > hi).float().mean()),
            "mask_sat_lo": float((m < lo).float().mean())}
