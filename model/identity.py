"""Identity embedder F (frozen during GAN training) and the ArcFace loss that trains it.

The network is InsightFace's ``iresnet`` (arcface_torch), written out here with the same
module names so a published ArcFace ``state_dict`` (iresnet18/34/50/100) loads unchanged.
It is hand-written because no installed package ships it (torchvision is excluded and
InsightFace's pip package carries only ONNX models).  Two generalisations that keep the
published layout when left at their defaults: ``width`` (channels of the first stage, 64
in ArcFace) and ``input_size`` (112 in ArcFace; the fc layer sees ``(input_size/16)^2``
positions).  Our own small embedder (``slidergan train-identity``) uses e.g. width 16,
input 64.

Input convention: ``IdentityEmbedder(x [B,3,H,W] in [-1,1], RGB) -> [B,F]`` L2-normalised
embeddings; images are resized to ``input_size`` (bilinear, antialiased), which matches
ArcFace's ``(img/255 - 0.5)/0.5`` normalisation.

This module never reads files: callers pass loaded state dicts.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = {"iresnet18": [2, 2, 2, 2], "iresnet34": [3, 4, 6, 3], "iresnet50": [3, 4, 14, 3],
         "iresnet100": [3, 13, 30, 3], "iresnet200": [6, 26, 60, 6]}


class IdentityWeightsError(ValueError):
    """Weights that do not fit the iresnet layout (one-line message)."""


class IBasicBlock(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus (downsampled) identity. [B,Ci,H,W] -> [B,Co,H/s,W/s]."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """InsightFace iresnet. ``forward(x [B,3,S,S]) -> [B,num_features]`` (not normalised)."""

    def __init__(self, layers=(3, 4, 14, 3), width: int = 64, input_size: int = 112,
                 num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        if input_size % 16:
            raise IdentityWeightsError(f"identity input_size {input_size} must be a multiple of 16")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-05)
        self.prelu = nn.PReLU(width)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1])
        self.layer3 = self._make_layer(width * 4, layers[2])
        self.layer4 = self._make_layer(width * 8, layers[3])
        self.bn2 = nn.BatchNorm2d(width * 8, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(width * 8 * (input_size // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class IdentityEmbedder(nn.Module):
    """F: images [B,3,H,W] in [-1,1] -> L2-normalised embeddings [B,num_features]."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.config = normalise_identity_config(config)
        c = self.config
        self.net = IResNet(c["layers"], c["width"], c["input_size"], c["num_features"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config["input_size"]
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > s)
        return F.normalize(self.net(x).float(), dim=1)


def normalise_identity_config(config: Mapping[str, Any]) -> dict:
    c = dict(config)
    arch = c.get("arch")
    if "layers" not in c:
        if arch not in ARCHS:
            raise IdentityWeightsError(f"unknown identity arch {arch!r} (known: {sorted(ARCHS)})")
        c["layers"] = ARCHS[arch]
    c["layers"] = [int(v) for v in c["layers"]]
    c.setdefault("arch", "iresnet-custom")
    c.setdefault("width", 64)
    c.setdefault("input_size", 112)
    c.setdefault("num_features", 512)
    return c


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "net.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def infer_identity_config(state: Mapping[str, torch.Tensor]) -> dict:
    """The iresnet layout (layers, width, input_size, num_features) of a raw ``state_dict``.

    Works for InsightFace's published weights (optionally with a ``module.`` prefix).
    Raises :class:`IdentityWeightsError` when the keys are not an iresnet's."""
    state = _strip_prefix(state)
    need = ("conv1.weight", "fc.weight", "features.running_mean")
    missing = [k for k in need if k not in state]
    if missing:
        raise IdentityWeightsError(f"identity weights are not an iresnet state_dict (missing {missing[0]!r})")
    layers = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m}
        if not idx:
            raise IdentityWeightsError(f"identity weights are not an iresnet state_dict (no layer{i})")
        layers.append(max(idx) + 1)
    width = int(state["conv1.weight"].shape[0])
    fc_in = int(state["fc.weight"].shape[1])
    side = math.isqrt(fc_in // (width * 8))
    if side * side * width * 8 != fc_in:
        raise IdentityWeightsError(f"identity weights: fc input {fc_in} does not fit width {width}")
    arch = next((a for a, l in ARCHS.items() if l == layers and width == 64), "iresnet-custom")
    return {"arch": arch, "layers": layers, "width": width, "input_size": side * 16,
            "num_features": int(state["fc.weight"].shape[0])}


def build_identity(state: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> IdentityEmbedder:
    """A frozen (eval, no grad) embedder from loaded weights.

    ``state`` is either our ``train-identity`` file (``{"format": "slidergan-identity/1",
    "config": {...}, "state_dict": {...}}``) or a raw InsightFace iresnet ``state_dict``
    (layout inferred from its keys unless ``config`` is given).  Mismatched keys or shapes
    raise :class:`IdentityWeightsError` naming the first offending key."""
    if isinstance(state, Mapping) and "state_dict" in state and "config" in state:
        config, sd = state["config"], state["state_dict"]
    else:
        sd = state
    if not isinstance(sd, Mapping) or not sd:
        raise IdentityWeightsError("identity weights: expected a state_dict (a mapping of tensors)")
    sd = _strip_prefix(sd)
    if config is None:
        config = infer_identity_config(sd)
    emb = IdentityEmbedder(config)
    own = emb.net.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        first = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}")
        raise IdentityWeightsError(f"identity weights do not fit {emb.config['arch']}: "
                                   f"{len(missing)} missing, {len(unexpected)} unexpected keys ({first})")
    for k, v in own.items():
        if k not in sd:
            sd[k] = v  # BatchNorm step counters: absent in some published weights, unused in eval
        elif tuple(sd[k].shape) != tuple(v.shape):
            raise IdentityWeightsError(f"identity weights: {k!r} has shape {tuple(sd[k].shape)}, "
                                       f"expected {tuple(v.shape)}")
    emb.net.load_state_dict(sd)
    return freeze(emb)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ArcMarginHead(nn.Module):
    """ArcFace additive angular margin classifier (Deng et al. 2019).

    ``forward(emb [B,F], labels [B]) -> logits [B,n_classes]`` equal to
    ``s * cos(theta_j)`` for every class j except the true one, which gets
    ``s * cos(theta_y + m)``; train with cross-entropy.  (When theta_y + m > pi the
    monotone fallback ``cos(theta) - m*sin(m)`` of the reference code is used.)"""

    def __init__(self, in_features: int, n_classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos * cos)
        cos_m = cos * math.cos(self.m) - sin * math.sin(self.m)
        th = math.cos(math.pi - self.m)
        cos_m = torch.where(cos > th, cos_m, cos - math.sin(math.pi - self.m) * self.m)
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return self.s * torch.where(onehot, cos_m, cos)
