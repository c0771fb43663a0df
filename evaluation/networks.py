"""Checkpoint loading and batched inference for evaluation.

A checkpoint (docs/INTERFACES.md) is a dict with ``format``, ``variant``, ``step``,
``model_config`` (accepted by ``model.networks.build_networks``), ``G`` and ``D`` state
dicts. Images cross this module's boundary as uint8 ``[B, H, W, 3]`` or float
``[B, H, W, 3]`` in [0, 1]; the networks see float ``[B, 3, H, W]`` in [-1, 1].
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Networks:
    """An evaluated checkpoint: ``G(image, p) -> image (+ mask, colour)``, ``D(image) -> (realism, p)``."""

    name: str
    variant: str
    G: Any
    D: Any
    n_params: int
    path: str = ""
    step: int = -1
    model_config: dict = field(default_factory=dict)
    device: str = "cpu"


class PseudoNetwork:
    """A baseline that stands in for a checkpoint in every protocol (``evaluation/baselines.py``):
    :func:`generate` and :func:`regress` call its ``generate(images, p)`` / ``regress(images)``
    instead of G and D, so baselines and checkpoints go through one code path.

    Attributes as :class:`Networks` (``name``, ``variant``, ``n_params``, ``path``, ``step``,
    ``model_config``, ``device``) plus ``kind = "baseline"`` and ``note`` (what it is)."""

    kind = "baseline"
    note = ""

    def __init__(self, name: str, n_params: int, model_config: dict | None = None, device: str = "cpu"):
        self.name = self.variant = name
        self.n_params = int(n_params)
        self.path = ""
        self.step = -1
        self.model_config = dict(model_config or {})
        self.device = device

    def generate(self, images, p) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def regress(self, images) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", name: str | None = None) -> Networks:
    """Load a ``slidergan-ckpt/1`` file (or a training folder) with the one loader,
    :func:`train.checkpoint.load_checkpoint` (every check; D required), and rebuild G and D
    in eval mode on ``device``.  Problems raise ConfigError (one line)."""
    from train.checkpoint import load_checkpoint as load, load_networks, resolve_checkpoint

    p = resolve_checkpoint(path)
    ckpt = load(p, device, require=("D",))
    G, D = load_networks(ckpt, device, p)
    cfg = dict(ckpt["model_config"])
    variant = str(ckpt["variant"])
    n = int(cfg["c_dim"])  # conditioning width E (validate_model_config requires it)
    step = ckpt.get("step", -1)
    return Networks(name=name or variant, variant=variant, G=G, D=D, n_params=n, path=str(p),
                    step=int(step) if step is not None else -1, model_config=cfg, device=device)


def to_tensor(images, device: str = "cpu", size=None):
    """uint8 [B,H,W,3] (or float in [0,1]) -> torch float [B,3,H,W] in [-1, 1] (resized to
    ``size`` when given): the layout change around ``model.networks.to_network_input``."""
    import torch

    from model.networks import to_network_input

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
    return to_network_input(t, size)


def from_tensor(t) -> np.ndarray:
    """torch [B,3,H,W] in [-1, 1] -> float32 numpy [B,H,W,3] in [0, 1]."""
    x = ((t.detach().float().clamp(-1, 1) + 1.0) * 0.5).permute(0, 2, 3, 1).cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _generated(out):
    """The edited image [B,3,H,W] out of ``G(x, p) -> (output, colour, mask)``."""
    return out[0]


def _regressed(out):
    """The regressed parameters [B,E] out of ``D(x) -> (realism, params)``."""
    return out[1]


def _net_size(nets: Networks, h: int) -> int:
    return int(nets.model_config.get("image_size", h)) if nets.model_config else h


def generate(nets: Networks, images, p, p_src=None, batch_size: int = 16) -> np.ndarray:
    """G(images, p): images uint8/float [B,H,W,3], p [B,E'] -> float32 [B,H,W,3] in [0,1].

    ``p_src [B,E']``: the images' own parameters (their fit, or the exact parameters of a
    render). A generator conditioned on the change (``model_config["condition"] == "delta"``)
    needs them and raises ValueError without; the others ignore them.

    ``p`` is cut or zero-padded to the checkpoint's width E (a 30-parameter checkpoint
    ignores speech parameters; a 40-parameter one gets zero speech for a 30-vector).
    Images of another side than the checkpoint's ``image_size`` go through
    ``model.networks.apply_generator``: G sees them resized, its colour and mask are resized
    back and composed with the full-size input (pixels the mask leaves alone are the input's
    exactly; docs/INTERFACES.md, "Images for G and D"), so outputs match the inputs' size.
    """
    imgs = np.asarray(images)
    pp = fit_width(np.asarray(p, np.float32), nets.n_params)
    if len(imgs) != len(pp):
        raise ValueError(f"generate: {len(imgs)} images but {len(pp)} parameter vectors")
    ps = None if p_src is None else fit_width(np.asarray(p_src, np.float32), nets.n_params)
    if ps is not None and len(ps) != len(pp):
        raise ValueError(f"generate: {len(pp)} target but {len(ps)} source parameter vectors")
    if isinstance(nets, PseudoNetwork):
        out = np.asarray(nets.generate(imgs, pp), np.float32)
        if out.shape != imgs.shape[:3] + (3,):
            raise ValueError(f"{nets.name}.generate returned {out.shape} for images {imgs.shape}")
        return out
    import torch

    from model.networks import apply_generator

    outs = []
    with torch.no_grad():
        for s in range(0, len(imgs), batch_size):
            x = to_tensor(imgs[s:s + batch_size], nets.device)
            c = torch.from_numpy(pp[s:s + batch_size]).to(nets.device)
            cs = None if ps is None else torch.from_numpy(ps[s:s + batch_size]).to(nets.device)
            y = _generated(apply_generator(nets.G, x, c, _net_size(nets, x.shape[-2]), cs))
            outs.append(from_tensor(y))
    if not outs:
        return np.zeros((0,) + imgs.shape[1:3] + (3,), np.float32)
    return np.concatenate(outs)


def regress(nets: Networks, images, batch_size: int = 32) -> np.ndarray:
    """D's regressed parameters: images uint8/float [B,H,W,3] -> float32 [B,E] (images resized
    to the checkpoint's ``image_size`` when they differ)."""
    imgs = np.asarray(images)
    if isinstance(nets, PseudoNetwork):
        return fit_width(nets.regress(imgs), nets.n_params)
    import torch

    outs = []
    with torch.no_grad():
        for s in range(0, len(imgs), batch_size):
            x = to_tensor(imgs[s:s + batch_size], nets.device, _net_size(nets, imgs.shape[1]))
            outs.append(_regressed(nets.D(x)).detach().float().reshape(len(x), -1).cpu().numpy())
    if not outs:
        return np.zeros((0, nets.n_params), np.float32)
    return np.concatenate(outs).astype(np.float32)


def fit_width(p: np.ndarray, width: int) -> np.ndarray:
    """Cut or zero-pad the last axis of p [..., E'] to ``width`` -> float32 [..., width]."""
    p = np.asarray(p, np.float32)
    if p.shape[-1] == width:
        return p
    if p.shape[-1] > width:
        return np.ascontiguousarray(p[..., :width])
    pad = np.zeros(p.shape[:-1] + (width - p.shape[-1],), np.float32)
    return np.concatenate([p, pad], axis=-1)
