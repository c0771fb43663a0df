"""Image Euclidean Distance (IED; Wang, Zhang & Feng, "On the Euclidean distance of
images", TPAMI 2005) — the paper's Table 1 / Table 3 metric.

Definition (the published one; the SliderGAN paper's Eq. 15 drops the minus sign in the
exponent and writes a product of norms, which is not a distance):

    d^2(x, y) = sum_{i,j} g_ij (x_i - y_i)^T (x_j - y_j),
    g_ij = 1 / (2 pi sigma^2) * exp(-|P_i - P_j|^2 / (2 sigma^2)),

with P_i the (row, column) position of pixel i and x_i its RGB vector. Because g_ij only
depends on P_i - P_j and factorises over rows and columns, the inner sum over j is a
separable Gaussian filter (zero outside the image): with D = x - y,

    d^2 = sum_i D_i^T (k * D)_i,      k(dr, dc) = g(dr) g(dc),  g(d) = exp(-d^2/2s^2)/sqrt(2 pi s^2)

which costs O(HW * radius) instead of O((HW)^2). ``scipy.ndimage.correlate1d`` does the
two 1-D passes (the kernel is symmetric, so correlation = convolution); the kernel is
*not* renormalised after truncation (``scipy.ndimage.gaussian_filter`` would renormalise
it, which changes g_ij), and it is truncated at 6 sigma, where exp(-18) ~ 1.5e-8.

Normalisation (so that numbers are comparable with the paper's ~1e-2): pixel values in
[0, 1], sigma = 1 pixel, and the value returned is the per-pixel mean d^2 / (H W).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["ied", "ied_squared_sum", "gaussian_kernel_1d"]


def gaussian_kernel_1d(sigma: float, radius: int) -> np.ndarray:
    """g(d) = exp(-d^2 / (2 sigma^2)) / sqrt(2 pi sigma^2) for d = -radius..radius -> [2r+1]."""
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.exp(-(d * d) / (2.0 * sigma * sigma)) / math.sqrt(2.0 * math.pi * sigma * sigma)


def _as_float_images(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.uint8:
        raise ValueError(f"ied: {name} is uint8; pass float images in [0, 1] (divide by 255)")
    a = a.astype(np.float64, copy=False)
    if a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"ied: {name} must be [H, W, 3] or [B, H, W, 3], got shape {a.shape}")
    return a


def ied_squared_sum(x, y, sigma: float = 1.0) -> np.ndarray:
    """Unnormalised d^2 = sum_ij g_ij (x_i - y_i)^T (x_j - y_j).

    x, y: [H, W, 3] or [B, H, W, 3] float -> scalar array [] or [B] (float64).
    """
    from scipy.ndimage import correlate1d

    a = _as_float_images(x, "x")
    b = _as_float_images(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"ied: shapes differ: {a.shape} vs {b.shape}")
    if sigma <= 0:
        raise ValueError(f"ied: sigma must be > 0, got {sigma}")
    batched = a.ndim == 4
    diff = a - b
    if not batched:
        diff = diff[None]
    _, h, w, _ = diff.shape
    radius = int(min(math.ceil(6.0 * sigma), max(h, w) - 1))
    k = gaussian_kernel_1d(sigma, radius)
    f = correlate1d(diff, k, axis=1, mode="constant", cval=0.0)
    f = correlate1d(f, k, axis=2, mode="constant", cval=0.0)
    d2 = np.einsum("bhwc,bhwc->b", diff, f)
    d2 = np.maximum(d2, 0.0)  # the Gaussian Gram matrix is positive definite; clip rounding
    return d2 if batched else d2[0]


def ied(x, y, sigma: float = 1.0):
    """IED between RGB images in [0, 1]: per-pixel mean d^2 / (H W).

    x, y: float arrays [H, W, 3] -> float, or [B, H, W, 3] -> float64 array [B].
    """
    d2 = ied_squared_sum(x, y, sigma)
    h, w = np.asarray(x).shape[-3:-1]
    out = d2 / float(h * w)
    return float(out) if np.ndim(out) == 0 else out
