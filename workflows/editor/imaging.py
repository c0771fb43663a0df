"""Image input/output for the editor: guarded decoding, PNG encoding, paste-back.

Pixel convention (docs/INTERFACES.md, Camera): coordinates (x, y) have their origin at the
top-left pixel's *corner*; pixel (i, j) has centre (j + 0.5, i + 0.5).  An ``align`` matrix
[2, 3] maps original-image pixel coordinates to crop pixel coordinates in that convention.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.config import ConfigError

#: default limits for decoded photos (uploads and files given on the command line)
MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000


class ImageInputError(ConfigError):
    """A photo that cannot be used (not an image, too large, no face...); one line."""


def decode_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 name: str = "image") -> np.ndarray:
    """Decode an encoded photo (JPEG, PNG, ...) to RGB with the fit stage's decoder
    (:func:`fitting.images.decode_image`: EXIF orientation, grey/palette/CMYK/16-bit/alpha
    converted as for the training crops, the pixel-count guard checked before decoding).

    Adds the upload's byte limit (``max_bytes``); every problem raises
    :class:`ImageInputError` with a one-line message starting with ``name``.
    Returns uint8 [H, W, 3].
    """
    from fitting.images import ImageReject
    from fitting.images import decode_image as decode

    if not data:
        raise ImageInputError(f"{name}: empty file")
    if len(data) > max_bytes:
        raise ImageInputError(f"{name}: file too large ({len(data) / 1e6:.1f} MB; limit {max_bytes / 1e6:.0f} MB)")
    try:
        return decode(data, max_pixels=max_pixels, min_side=1)
    except ImageReject as e:
        what = {"decompression bomb": "image too large",
                "not an image": "not an image (expected JPEG, PNG, BMP, WebP or similar)",
                "too small": "image has no pixels",
                "unreadable": "could not decode the image"}.get(e.reason, e.reason)
        detail = f" ({e.detail}; limit {max_pixels / 1e6:.0f} megapixels)" if e.reason == "decompression bomb" else (
            f" ({e.detail})" if e.detail and e.reason == "unreadable" else "")
        raise ImageInputError(f"{name}: {what}{detail}") from None


def read_image_file(path, **limits) -> np.ndarray:
    """Read and :func:`decode_image` a file; uint8 [H, W, 3]."""
    try:
        with open(path, "rb") as f:
            data = f.read(limits.get("max_bytes", MAX_BYTES) + 1)
    except OSError as e:
        raise ImageInputError(f"cannot read {path}: {e.strerror}") from None
    return decode_image(data, name=str(path), **limits)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (fast compression: the page refreshes per slider move)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def to_uint8(image) -> np.ndarray:
    """float [H, W, 3] in [0, 1] (numpy or torch) -> uint8 [H, W, 3]."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().float().cpu().numpy()
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _pixel_grid_to_normalised(align: np.ndarray, x0: int, y0: int, w: int, h: int, crop_hw):
    """Grid [1, h, w, 2] of crop coordinates, normalised for ``grid_sample(align_corners=False)``,
    for the full-image pixel centres of the box (x0, y0, w, h)."""
    import torch

    ch, cw = crop_hw
    xs = torch.arange(x0, x0 + w, dtype=torch.float64) + 0.5
    ys = torch.arange(y0, y0 + h, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    A = torch.as_tensor(align, dtype=torch.float64)
    u = A[0, 0] * gx + A[0, 1] * gy + A[0, 2]
    v = A[1, 0] * gx + A[1, 1] * gy + A[1, 2]
    # corner convention == grid_sample's align_corners=False: -1 is the left edge of pixel 0
    return torch.stack([2.0 * u / cw - 1.0, 2.0 * v / ch - 1.0], dim=-1)[None].float(), u, v


def crop_footprint(align: np.ndarray, crop_hw, full_hw) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, w, h) in the full image of the crop square mapped back by ``align``."""
    ch, cw = crop_hw
    H, W = full_hw
    M = np.vstack([np.asarray(align, np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(M)
    corners = np.array([[0, 0, 1], [cw, 0, 1], [0, ch, 1], [cw, ch, 1]], dtype=np.float64)
    pts = corners @ inv.T
    x0 = int(max(np.floor(pts[:, 0].min()) - 1, 0))
    y0 = int(max(np.floor(pts[:, 1].min()) - 1, 0))
    x1 = int(min(np.ceil(pts[:, 0].max()) + 1, W))
    y1 = int(min(np.ceil(pts[:, 1].max()) + 1, H))
    return x0, y0, max(x1 - x0, 0), max(y1 - y0, 0)


def paste_back(full: np.ndarray, crop: np.ndarray, align: np.ndarray, feather: float = 6.0) -> np.ndarray:
    """Put an (edited) aligned crop back into the photo it was cut from.

    full uint8 [H, W, 3]; crop uint8 [S, S', 3]; align float [2, 3] (full pixel coords ->
    crop pixel coords).  Every full-image pixel whose centre maps inside the crop takes the
    bilinearly sampled crop colour, blended with the original by a weight that ramps from 0
    at the crop border to 1 at ``feather`` crop pixels inside (so no seam shows).  Only the
    crop's footprint is computed.  Returns uint8 [H, W, 3]; ``full`` is not modified.
    """
    import torch
    import torch.nn.functional as F

    full = np.asarray(full)
    crop = np.asarray(crop)
    ch, cw = crop.shape[:2]
    H, W = full.shape[:2]
    out = full.copy()
    x0, y0, w, h = crop_footprint(align, (ch, cw), (H, W))
    if w == 0 or h == 0:
        return out
    grid, u, v = _pixel_grid_to_normalised(align, x0, y0, w, h, (ch, cw))
    src = torch.tensor(np.asarray(crop), dtype=torch.float32).permute(2, 0, 1)[None]
    sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    sampled = sampled.permute(1, 2, 0).numpy()  # [h, w, 3]
    dist = torch.minimum(torch.minimum(u, cw - u), torch.minimum(v, ch - v))
    weight = torch.clamp(dist / max(feather, 1e-6), 0.0, 1.0).numpy().astype(np.float32)[..., None]
    region = out[y0:y0 + h, x0:x0 + w].astype(np.float32)
    blended = weight * sampled + (1.0 - weight) * region
    out[y0:y0 + h, x0:x0 + w] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
