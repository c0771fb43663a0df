"""Evaluation of SliderGAN checkpoints: metrics (IED, regression error, identity
similarity, expression accuracy), protocols (the paper's Tables 1-4), figures and the
HTML report. Heavy dependencies (torch, scipy, matplotlib) load lazily."""
from __future__ import annotations

__all__ = ["ied"]


def ied(x, y, sigma: float = 1.0):
    """Image Euclidean Distance, see :func:`evaluation.image_distance.ied`.

    x, y: float [H, W, 3] in [0, 1] -> float, or [B, H, W, 3] -> [B].
    """
    from evaluation.image_distance import ied as _ied

    return _ied(x, y, sigma)
