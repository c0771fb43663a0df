"""SliderGAN generator and discriminator.

Conventions (all tensors NCHW, images in [-1, 1]):

* ``B`` batch, ``H``/``W`` image side (``image_size``), ``E`` conditioning width
  (30 expression parameters, or 40 with speech).
* Generator attention convention (the paper's): ``M`` is the attention mask G_m,
  ``C`` the colour image G_i, and

      I_gen = M * C + (1 - M) * I_org

  so ``M == 0`` keeps the input pixel and ``M == 1`` paints the generator's colour.
  GANimation's code uses the reverse (``A * real + (1 - A) * colour``); a mask from that
  code equals ``1 - M`` here.

``build_networks(model_config)`` builds both networks from the plain dict stored in every
checkpoint (``ckpt["model_config"]``); ``load_from_checkpoint_state(ckpt)`` also loads their
weights.  This module never reads files: ``train/checkpoint.py`` (or the caller) does
``torch.load(path, weights_only=True)``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

MODEL_CONFIG_KEYS = ("image_size", "c_dim", "g_conv_dim", "g_repeat", "d_conv_dim", "d_repeat")
MASK_CONVENTION = "I_gen = M * C + (1 - M) * I_org"
CONDITIONS = ("target", "delta")
COLOURS = ("absolute", "residual")


class ModelConfigError(ValueError):
    """A model configuration that cannot build networks (one-line message)."""


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus identity (CycleGAN/StarGAN). [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, dim: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(dim, affine=True, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(dim, affine=True, track_running_stats=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """StarGAN/GANimation ResNet generator with colour and attention heads.

    7x7 conv (conv_dim) -> 2 stride-2 4x4 down-samplings -> ``repeat`` residual blocks ->
    2 stride-2 4x4 transposed-conv up-samplings -> two 7x7 heads: colour (3 ch, tanh) and
    mask (1 ch, sigmoid).  Instance norm everywhere (affine, no running stats).

    ``forward(x [B,3,H,W], c [B,E], c_src [B,E] | None) -> (out [B,3,H,W], colour [B,3,H,W],
    mask [B,1,H,W])`` with ``out = mask * colour + (1 - mask) * x``.  H and W must be multiples of 4.

    ``condition`` says what is tiled next to the image: ``"target"`` (the paper's G(I, p_trg):
    E channels; ``c_src`` is ignored) or ``"delta"`` (2E channels: ``p_trg`` and the change
    ``p_trg - p_src``, the relative conditioning of STGAN/RelGAN; ``c_src``, the source's own
    parameters, is then required, so "no change" is an input G sees rather than infers).
    """

    def __init__(self, conv_dim: int = 64, c_dim: int = 30, repeat_num: int = 6, mask_bias_init: float = 0.0,
                 condition: str = "target", colour: str = "absolute"):
        super().__init__()
        if condition not in CONDITIONS:
            raise ModelConfigError(f"generator condition must be one of {CONDITIONS}, got {condition!r}")
        if colour not in COLOURS:
            raise ModelConfigError(f"generator colour must be one of {COLOURS}, got {colour!r}")
        self.c_dim = c_dim
        self.condition = condition
        self.colour_mode = colour
        n_cond = c_dim * (2 if condition == "delta" else 1)
        layers = [
            nn.Conv2d(3 + n_cond, conv_dim, 7, 1, 3, bias=False),
            nn.InstanceNorm2d(conv_dim, affine=True, track_running_stats=False),
            nn.ReLU(inplace=True),
        ]
        cur = conv_dim
        for _ in range(2):
            layers += [
                nn.Conv2d(cur, cur * 2, 4, 2, 1, bias=False),
                nn.InstanceNorm2d(cur * 2, affine=True, track_running_stats=False),
                nn.ReLU(inplace=True),
            ]
            cur *= 2
        layers += [ResidualBlock(cur) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(cur, cur // 2, 4, 2, 1, bias=False),
                nn.InstanceNorm2d(cur // 2, affine=True, track_running_stats=False),
                nn.ReLU(inplace=True),
            ]
            cur //= 2
        self.main = nn.Sequential(*layers)
        self.colour = nn.Sequential(nn.Conv2d(cur, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.mask = nn.Sequential(nn.Conv2d(cur, 1, 7, 1, 3, bias=True), nn.Sigmoid())
        # Initial mask level: mask_bias_init = -3 starts close to "keep the input" (mask ~ 0.05),
        # so short runs return the photo rather than noise; 0 starts at 0.5 like GANimation.
        nn.init.constant_(self.mask[0].bias, float(mask_bias_init))

    @property
    def needs_source(self) -> bool:
        """True when forward needs the source's parameters (``condition == "delta"``)."""
        return self.condition == "delta"

    def conditioning(self, c: torch.Tensor, c_src: torch.Tensor | None) -> torch.Tensor:
        """The per-image conditioning vector [B,E] or [B,2E] (see the class docstring)."""
        if self.condition == "target":
            return c
        if c_src is None:
            raise ValueError("this generator is conditioned on the change p_trg - p_src (condition 'delta'): "
                             "pass the source's parameters c_src")
        if c_src.shape != c.shape:
            raise ValueError(f"c_src must have the shape of c {list(c.shape)}, got {list(c_src.shape)}")
        return torch.cat([c, c - c_src.to(c.dtype)], dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, c_src: torch.Tensor | None = None):
        if c.dim() != 2 or c.shape[1] != self.c_dim or c.shape[0] != x.shape[0]:
            raise ValueError(f"generator expects c of shape [{x.shape[0]},{self.c_dim}], got {list(c.shape)}")
        cond = self.conditioning(c, c_src)
        tiled = cond.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        h = self.main(torch.cat([x, tiled], dim=1))
        colour, mask = self.heads(h, x)
        return compose(x, colour, mask), colour, mask

    def heads(self, h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour [B,3,H,W] and mask [B,1,H,W] from the trunk's features h [B,C,H,W] and the
        input x [B,3,H,W] (read by the residual colour head only)."""
        if self.colour_mode == "residual":      # C = tanh(atanh(x) + z): the input's own colour where z = 0
            colour = torch.tanh(torch.atanh(x.clamp(-RESIDUAL_CLIP, RESIDUAL_CLIP)) + self.colour[0](h))
        else:
            colour = self.colour(h)
        return colour, self.mask(h)


RESIDUAL_CLIP = 0.999       # |x| bound before atanh in the residual colour head (atanh(0.999) = 3.8)


def compose(x: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * colour + (1 - mask) * x``: x, colour [B,3,H,W], mask [B,1,H,W] -> [B,3,H,W]."""
    return mask * colour + (1.0 - mask) * x


class Discriminator(nn.Module):
    """GANimation/StarGAN PatchGAN critic with a parameter-regression head.

    ``repeat`` 4x4 stride-2 convs (conv_dim, doubling), LeakyReLU(0.01), no normalisation
    (the gradient penalty forbids batch norm).  Heads on the [B, conv_dim*2^(repeat-1),
    H/2^repeat, W/2^repeat] features:

    * patch realism: 3x3 conv -> ``[B,1,H/2^repeat,W/2^repeat]`` (unbounded critic scores);
    * regression: conv with kernel ``H/2^repeat`` -> ``[B,E]`` (estimated parameters).

    ``forward(x [B,3,H,W]) -> (patch [B,1,h,w], params [B,E])``.
    """

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 30, repeat_num: int = 6):
        super().__init__()
        kernel = image_size // (2 ** repeat_num)
        if kernel < 1 or image_size % (2 ** repeat_num):
            raise ModelConfigError(
                f"image_size {image_size} is not divisible by 2^d_repeat = {2 ** repeat_num}")
        layers = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        cur = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(cur, cur * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            cur *= 2
        self.main = nn.Sequential(*layers)
        self.patch = nn.Conv2d(cur, 1, 3, 1, 1, bias=False)
        self.regress = nn.Conv2d(cur, c_dim, kernel, 1, 0, bias=False)

    def forward(self, x: torch.Tensor):
        h = self.main(x)
        return self.patch(h), self.regress(h).flatten(1)


def model_config_from_train(train: Mapping[str, Any], c_dim: int) -> dict:
    """The checkpoint's ``model_config`` dict from the ``train:`` config section (``condition``
    only when it is not the paper's ``"target"``, so older checkpoints keep their dict)."""
    cond = str(train.get("condition", "target"))
    colour = str(train.get("colour", "absolute"))
    return {
        "image_size": int(train["image_size"]),
        "c_dim": int(c_dim),
        "g_conv_dim": int(train["g_conv_dim"]),
        "g_repeat": int(train["g_repeat"]),
        "d_conv_dim": int(train["d_conv_dim"]),
        "d_repeat": int(train["d_repeat"]),
        "mask_convention": MASK_CONVENTION,
        **({"condition": cond} if cond != "target" else {}),
        **({"colour": colour} if colour != "absolute" else {}),
    }


def validate_model_config(cfg: Mapping[str, Any]) -> dict:
    missing = [k for k in MODEL_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ModelConfigError(f"model_config misses keys {missing}")
    out = dict(cfg)
    for k in MODEL_CONFIG_KEYS:
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise ModelConfigError(f"model_config[{k!r}] must be a positive int, got {cfg[k]!r}")
    size = cfg["image_size"]
    if size % 4:
        raise ModelConfigError(f"image_size {size} must be a multiple of 4 (two down-samplings)")
    if size % (2 ** cfg["d_repeat"]):
        raise ModelConfigError(
            f"image_size {size} is not divisible by 2^d_repeat = {2 ** cfg['d_repeat']}; "
            f"lower train.d_repeat to at most {int(math.log2(size & -size))}")
    if out.get("condition", "target") not in CONDITIONS:
        raise ModelConfigError(f"model_config['condition'] must be one of {CONDITIONS}, got {out['condition']!r}")
    if out.get("colour", "absolute") not in COLOURS:
        raise ModelConfigError(f"model_config['colour'] must be one of {COLOURS}, got {out['colour']!r}")
    return out


def build_networks(model_config: Mapping[str, Any], mask_bias_init: float = 0.0) -> tuple[Generator, Discriminator]:
    """Build ``(G, D)`` (randomly initialised) from a checkpoint's ``model_config`` dict;
    ``mask_bias_init`` sets the initial attention-mask level (training only)."""
    cfg = validate_model_config(model_config)
    G = Generator(cfg["g_conv_dim"], cfg["c_dim"], cfg["g_repeat"], mask_bias_init, cfg.get("condition", "target"),
                  cfg.get("colour", "absolute"))
    D = Discriminator(cfg["image_size"], cfg["d_conv_dim"], cfg["c_dim"], cfg["d_repeat"])
    return G, D


def widen_into(G: Generator, D: Discriminator, model_config: Mapping[str, Any], ckpt: Mapping[str, Any]) -> int:
    """Copy a checkpoint's weights into ``G`` and ``D`` built from ``model_config`` whose
    ``c_dim`` E is at least the checkpoint's E0 (``train.init_from``: a 30-parameter model
    starts a 40-parameter speech run). Every weight is copied as is except G's input
    convolution, whose conditioning channels 0..E0-1 (of each block: target, and change for
    ``condition: delta``) take the old ones while the new E0..E-1 are zero, and D's regression
    rows E0..E-1, which keep their fresh initialisation. So ``G_new(x, [c, 0])`` equals
    ``G_old(x, c)`` exactly and D's first E0 outputs equal the old ones. Uses ``G_ema`` when
    the checkpoint has it (as inference does). Returns E0; :class:`ModelConfigError` (one line)
    when the two model configs differ in anything but ``c_dim``."""
    old, new = validate_model_config(ckpt["model_config"]), validate_model_config(model_config)
    E, E0 = new["c_dim"], old["c_dim"]
    if E < E0:
        raise ModelConfigError(f"cannot start a {E}-parameter model from a {E0}-parameter checkpoint")
    for k in sorted(set(old) | set(new)):
        if k != "c_dim" and old.get(k) != new.get(k):
            raise ModelConfigError(f"checkpoint model_config {k}={old.get(k)!r} differs from this run's {new.get(k)!r}")
    g_state = dict(ckpt["G_ema"] if ckpt.get("G_ema") is not None else ckpt["G"])
    w0 = g_state["main.0.weight"]                       # [conv_dim, 3 + blocks * E0, 7, 7]
    w = torch.zeros_like(G.main[0].weight)
    w[:, :3] = w0[:, :3]
    for b in range(2 if G.condition == "delta" else 1):
        w[:, 3 + b * E:3 + b * E + E0] = w0[:, 3 + b * E0:3 + (b + 1) * E0]
    g_state["main.0.weight"] = w
    G.load_state_dict(g_state)
    if ckpt.get("D") is not None:
        d_state = dict(ckpt["D"])
        r = D.regress.weight.detach().clone()
        r[:E0] = d_state["regress.weight"]
        d_state["regress.weight"] = r
        D.load_state_dict(d_state)
    return E0


def load_from_checkpoint_state(ckpt: Mapping[str, Any]) -> tuple[Generator, Discriminator, dict]:
    """``(G, D, meta)`` from a loaded checkpoint dict (``torch.load(..., weights_only=True)``).

    G and D are in eval mode on the CPU; G holds ``G_ema`` (the weight average,
    ``train.g_ema_halflife``) when the checkpoint has it, else ``G``; ``meta`` holds
    ``variant``, ``step``, ``phase``, ``model_config``, ``format`` and ``generator_weights``
    (which of the two).  Raises :class:`ModelConfigError` on a dict that is not a SliderGAN
    checkpoint or whose weights do not fit the stored ``model_config``.
    """
    if not isinstance(ckpt, Mapping) or "model_config" not in ckpt or "G" not in ckpt:
        raise ModelConfigError("not a SliderGAN checkpoint (no model_config/G)")
    G, D = build_networks(ckpt["model_config"])
    g_key = "G_ema" if "G_ema" in ckpt else "G"        # the weight average, when the run kept one
    for name, net in ((g_key, G), ("D", D)):
        if name not in ckpt:
            continue
        try:
            net.load_state_dict(ckpt[name])
        except RuntimeError as e:
            raise ModelConfigError(f"checkpoint {name} weights do not fit model_config: "
                                   f"{str(e).splitlines()[0]}") from None
    G.eval()
    D.eval()
    meta = {k: ckpt.get(k) for k in ("format", "variant", "step", "phase")}
    meta["generator_weights"] = g_key
    meta["model_config"] = dict(ckpt["model_config"])
    return G, D, meta


def resize_images(t: torch.Tensor, size) -> torch.Tensor:
    """The one resize of images for G and D (trainer, reader, evaluation, editor):
    ``t [..., C, h, w]`` float -> ``[..., C, H, W]`` with ``size`` an int (square) or ``(H, W)``.

    Bilinear with ``align_corners=False`` (pixel centres, corner-origin), antialiased when
    either side shrinks (torch's separable triangle filter widened by the scale factor);
    ``t`` itself is returned when it already has that size.  For square inputs this is bit
    for bit the trainer's historical conversion (antialias iff the width shrinks)."""
    import torch.nn.functional as F

    H, W = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list, torch.Size)) else (int(size),) * 2
    h, w = t.shape[-2:]
    if (h, w) == (H, W):
        return t
    lead = t.shape[:-3]
    out = F.interpolate(t.reshape(-1, *t.shape[-3:]), size=(H, W), mode="bilinear", align_corners=False,
                        antialias=bool(h > H or w > W))
    return out.reshape(*lead, t.shape[-3], H, W)


def to_network_input(images: torch.Tensor, size=None) -> torch.Tensor:
    """Images -> what G and D see: float32 ``[..., 3, S, S]`` in [-1, 1].

    ``images [..., 3, h, w]``: uint8 (``x / 127.5 - 1``) or float in [0, 1] (``2 x - 1``),
    resized to ``size`` (int or ``(H, W)``; None keeps h, w) by :func:`resize_images`."""
    if images.dtype == torch.uint8:
        t = images.float().div_(127.5).sub_(1.0)
    else:
        t = images.float() * 2.0 - 1.0
    return t if size is None else resize_images(t, size)


def apply_generator(G: Generator, x: torch.Tensor, p: torch.Tensor, image_size: int,
                    p_src: torch.Tensor | None = None) -> tuple:
    """Run G on images of any size: resize ``x [B,3,H,W]`` (in [-1,1]) to the network's
    ``image_size`` (:func:`resize_images`), edit with ``p [B,E]`` (and the source's ``p_src
    [B,E]``, which a ``"delta"`` generator needs), resize G's colour and mask
    back to H x W (same function) and compose them with the full-size input. A residual
    colour head (``colour="residual"``: the input's colour plus a change) has its change
    resized instead: colour = clamp(x + resize(C - resize(x))), so where it changes nothing
    the full-size input comes back even under an open mask.

    Returns ``(out [B,3,H,W], colour [B,3,H,W], mask [B,1,H,W])``.  Where the mask is 0
    ``out`` is the input exactly, at any size (the paper's ``I_gen = M * C + (1 - M) * I_org``
    at the image's resolution: resampling only touches what G paints).  When
    H == W == image_size nothing is resized and this is ``G(x, p)``."""
    H, W = x.shape[-2:]
    if (H, W) == (image_size, image_size):
        return G(x, p, p_src)
    small = resize_images(x, image_size)
    _, colour, mask = G(small, p, p_src)
    if getattr(G, "colour_mode", "absolute") == "residual":
        # a residual colour head paints the input's own colour plus a change: the *change* is
        # what is resized, so the full-size input's detail stays where G changes nothing
        colour = (x + resize_images(colour - small, (H, W))).clamp(-1, 1)
    else:
        colour = resize_images(colour, (H, W))
    mask = resize_images(mask, (H, W)).clamp(0, 1)
    return compose(x, colour, mask), colour, mask
