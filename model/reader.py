"""The independent expression reader: a small CNN regressor from an aligned face crop to the
normalised expression parameters.

It is trained (``train/reader.py``, ``slidergan train-reader``) on the 3D warps of the
training photos, whose parameters are exact, then frozen.  G's training never sees it; the
evaluation uses it to read G's edits ("does the edited face show the target expression?")
and the editor offers it for expression transfer beside D's regression head (the paper's
Sect. 5.8 suggests a separate regressor instead of D for transfer).

Shapes: input ``x [B, 3, S, S]`` in [-1, 1] (``S = image_size``, a multiple of 16), output
``[B, E]`` (E = 30, or 40 with speech).

Architecture (ResNet-ish, BatchNorm, ReLU)::

    stem     3x3 conv, stride s (1 or 2)  [B, w,   S/s,   S/s]     (w = width)
    stage 1  residual block, stride 2     [B, w,   S/2s,  S/2s]
    stage 2  residual block, stride 2     [B, 2w,  S/4s,  S/4s]
    stage 3  residual block, stride 2     [B, 4w,  S/8s,  S/8s]
    head     "flatten": linear over the whole [4w, S/8s, S/8s] map -> E
             "pool":    global average pool -> [B, 4w] -> linear -> E

``stages`` sets how many stride-2 residual stages follow the stem (default 3).  ``pool``
is the demo preset's head: ``flatten`` keeps *where* a feature fires (the crops are
aligned), but over-fitted the demo world's ~50 training identities more (docs/training.md).

``build_reader(config)`` builds it from the plain dict stored in the reader file
(``reader_config``); this module reads no files (``train/reader.py`` does).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

READER_CONFIG_KEYS = ("image_size", "n_params", "width", "stages", "head", "stem_stride")


class ReaderConfigError(ValueError):
    """A reader configuration that cannot build a network (one-line message)."""


class _Block(nn.Module):
    """Residual block: conv3x3(stride)-BN-ReLU-conv3x3-BN + (1x1 stride conv)-BN shortcut.
    [B, cin, H, W] -> [B, cout, H/stride, W/stride]."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.main(x) + self.skip(x))


class ExpressionReader(nn.Module):
    """``forward(x [B,3,S,S] in [-1,1]) -> [B,E]`` normalised expression parameters."""

    def __init__(self, image_size: int = 64, n_params: int = 30, width: int = 16, stages: int = 3,
                 head: str = "flatten", stem_stride: int = 2):
        super().__init__()
        self.image_size, self.n_params, self.head_kind = int(image_size), int(n_params), head
        n_out = self.n_params
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        cur = width
        for i in range(stages):
            nxt = width * 2 ** i
            layers.append(_Block(cur, nxt, 2))
            cur = nxt
        self.features = nn.Sequential(*layers)
        side = image_size // (stem_stride * 2 ** stages)
        self.out_side, self.out_channels = side, cur
        if head == "flatten":
            self.head = nn.Sequential(nn.Flatten(1), nn.Linear(cur * side * side, n_out))
        else:
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cur, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"reader expects [B,3,{self.image_size},{self.image_size}], got {list(x.shape)}")
        return self.head(self.features(x))


def validate_reader_config(cfg: Mapping[str, Any]) -> dict:
    """The checked reader config dict (ReaderConfigError with one line otherwise)."""
    if not isinstance(cfg, Mapping):
        raise ReaderConfigError(f"reader config must be a mapping, got {type(cfg).__name__}")
    cfg = dict(cfg)
    cfg.setdefault("stem_stride", 2)
    missing = [k for k in READER_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ReaderConfigError(f"reader config misses keys {missing}")
    for k in ("image_size", "n_params", "width", "stages", "stem_stride"):
        v = cfg[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ReaderConfigError(f"reader config {k!r} must be a positive int, got {v!r}")
    if cfg["head"] not in ("flatten", "pool"):
        raise ReaderConfigError(f"reader head must be flatten or pool, got {cfg['head']!r}")
    if cfg["stem_stride"] not in (1, 2):
        raise ReaderConfigError(f"reader stem_stride must be 1 or 2, got {cfg['stem_stride']!r}")
    div = cfg["stem_stride"] * 2 ** cfg["stages"]
    if cfg["image_size"] % div:
        raise ReaderConfigError(f"reader image_size {cfg['image_size']} must be a multiple of "
                                f"stem_stride * 2^stages = {div}")
    return {k: cfg[k] for k in READER_CONFIG_KEYS}


def build_reader(config: Mapping[str, Any]) -> ExpressionReader:
    """An untrained :class:`ExpressionReader` from a reader config dict
    (``image_size, n_params, width, stages, head, stem_stride``)."""
    c = validate_reader_config(config)
    return ExpressionReader(c["image_size"], c["n_params"], c["width"], c["stages"], c["head"], c["stem_stride"])
