"""Robust photo loading: every input either becomes an RGB uint8 array or a reject reason
(and :func:`encode_jpeg`, the demo world's photo encoder).

The one decoder of the project: the fit stage reads files with :func:`load_image`, the
editor decodes uploads and files with :func:`decode_image` (``workflows/editor/imaging.py``
only adds its byte limit and messages), so a photo reaches G as the training crops did.

Decisions (documented in docs/fitting.md):

- The header is read first; images whose pixel count exceeds ``max_pixels`` are rejected
  as ``decompression bomb`` *before* decoding (PIL's own bomb check is also turned into an
  error).
- Grayscale, palette, 16-bit, CMYK, YCbCr/LAB and alpha images are converted to 8-bit RGB
  (16-bit: scaled by 255/65535, not clipped; alpha: composited over mid grey).
- EXIF orientation is applied (sidecar landmarks are taken in the oriented frame).
- Images with a side below ``min_side`` pixels are rejected as ``too small``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 64_000_000


class ImageReject(Exception):
    """An input that cannot be used; ``reason`` is one of the reject reasons, ``detail`` a
    one-line explanation."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _to_rgb(im) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.round(a * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, -1)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, -1)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 16) -> np.ndarray:
    """Read an image file -> ``[H, W, 3] uint8`` RGB, or raise :class:`ImageReject`.

    Reasons: ``unreadable`` (missing/empty/unreadable file, truncated data),
    ``not an image`` (unknown format), ``decompression bomb``, ``too small``.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageReject("unreadable", e.strerror or "cannot stat file") from None
    if size == 0:
        raise ImageReject("unreadable", "empty file")
    return _decode(p, max_pixels, min_side)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    """:func:`load_image` of an encoded image in memory (an upload): the same decoding, the
    same reasons (the editor turns them into its messages)."""
    import io

    if not data:
        raise ImageReject("unreadable", "empty file")
    return _decode(io.BytesIO(data), max_pixels, min_side)


def _decode(source, max_pixels: int, min_side: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im = Image.open(source)
            except UnidentifiedImageError:
                raise ImageReject("not an image", "unknown image format") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ImageReject("decompression bomb", str(e).split(".")[0]) from None
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageReject("unreadable", str(e).splitlines()[0] if str(e) else e.__class__.__name__) from None
            with im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReject("decompression bomb", f"{w}x{h} pixels exceeds limit {max_pixels}")
                if min(w, h) < min_side:
                    raise ImageReject("too small", f"{w}x{h} pixels (minimum side {min_side})")
                try:
                    im.load()
                    im = ImageOps.exif_transpose(im) or im
                    rgb = _to_rgb(im)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    raise ImageReject("decompression bomb", str(e).split(".")[0]) from None
                except (OSError, SyntaxError, ValueError, EOFError) as e:
                    msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
                    raise ImageReject("unreadable", f"cannot decode: {msg}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageReject("unreadable", f"unexpected decoded shape {rgb.shape}")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """The JPEG bytes of an RGB ``uint8 [H, W, 3]`` image at ``quality`` (PIL, default
    subsampling): how the demo world stores its photos and frames, and how the landmark
    calibration degrades its renders like them."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
