"""Image-side helpers of the 3D warps (:mod:`fitting.warp`): the 2x3 alignment folded into
the camera, resampling into the crop, push-pull inpainting of the original face's footprint,
and the photo resolution the texture is sampled at."""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- geometry
def is_similarity(align, tol: float = 1e-4) -> bool:
    """Whether a 2x3 affine ``align`` is a rotation + uniform scale + shift (no reflection)."""
    A = np.asarray(align, np.float64)
    a, b = A[0, 0], A[1, 0]
    s = max(np.hypot(a, b), 1e-12)
    return bool(abs(A[1, 1] - a) <= tol * s and abs(A[0, 1] + b) <= tol * s and s > 1e-12)


def fold_align(camera, align) -> np.ndarray:
    """Camera ``[7]`` whose projection equals ``align`` applied to ``camera``'s projection.

    For ``align = [[a, -b, c0], [b, a, c1]]`` (``a = s cos t``, ``b = s sin t``): roll -> roll - t,
    scale -> scale * s, (tx, ty) -> align @ (tx, ty, 1).  The image-plane rotation is a rotation
    about the optical axis, which leaves camera-frame depth (and so perspective) unchanged."""
    A = np.asarray(align, np.float64)
    if not is_similarity(A):
        raise ValueError("align is not a similarity transform; cannot fold it into the camera")
    cam = np.asarray(camera, np.float64).copy()
    a, b = A[0, 0], A[1, 0]
    s, t = np.hypot(a, b), np.arctan2(b, a)
    tx, ty = cam[3], cam[4]
    cam[2] = cam[2] - t
    cam[5] = cam[5] * s
    cam[3] = a * tx - b * ty + A[0, 2]
    cam[4] = b * tx + a * ty + A[1, 2]
    return cam.astype(np.float32)


def warp_affine(image, align, size: tuple[int, int]) -> np.ndarray:
    """Resample ``image [H, W, C]`` (uint8 or float) into ``size = (h, w)`` such that output
    pixel centre ``q`` shows the input at ``align^-1 q`` (pixel-corner origin, centres at
    ``+0.5``, bilinear, black outside the input like the fit's crops).  Returns float32
    [h, w, C] (uint8 input scaled to [0, 1])."""
    from scipy.ndimage import map_coordinates

    img = np.asarray(image)
    imgf = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    A = np.vstack([np.asarray(align, np.float64), [0, 0, 1]])
    Ai = np.linalg.inv(A)
    h, w = size
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    u = Ai[0, 0] * jj + Ai[0, 1] * ii + Ai[0, 2]
    v = Ai[1, 0] * jj + Ai[1, 1] * ii + Ai[1, 2]
    coords = np.stack([v - 0.5, u - 0.5])
    out = [map_coordinates(imgf[..., c], coords, order=1, mode="constant", cval=0.0) for c in range(imgf.shape[2])]
    return np.stack(out, -1).astype(np.float32)


def crop_photo(photo, align, size: int) -> np.ndarray:
    """The fit stage's aligned crop (``fitting.align.warp_crop``: bilinear, box-reduced first
    when shrinking by more than 2x) as float32 ``[size, size, 3]`` in [0, 1], so warps and
    fitted photos share pixels exactly outside the face."""
    try:
        from fitting.align import warp_crop
    except ImportError:  # pragma: no cover - fit part absent
        return warp_affine(photo, align, (size, size))
    return warp_crop(photo, align, size).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- inpainting
def _pool2(x: np.ndarray) -> np.ndarray:
    """Sum 2x2 blocks of ``x [H, W, C]`` (odd sizes padded with zeros) -> ``[ceil(H/2), ceil(W/2), C]``."""
    H, W = x.shape[:2]
    if H % 2 or W % 2:
        x = np.pad(x, ((0, H % 2), (0, W % 2), (0, 0)))
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x.reshape(h, 2, w, 2, -1).sum((1, 3))


def _upsample(x: np.ndarray, shape) -> np.ndarray:
    """Bilinear upsampling by 2 of ``x [h, w, C]`` cropped to ``shape = (H, W)`` (pixel
    centres aligned as in an image pyramid)."""
    from scipy.ndimage import zoom

    H, W = shape
    up = zoom(x, (2, 2, 1), order=1, mode="nearest", grid_mode=True)
    return up[:H, :W]


def inpaint(image, hole) -> np.ndarray:
    """Fill ``hole [H, W] bool`` of ``image [H, W, C]`` float from its surroundings.

    Push-pull (Gortler et al. 1996): average the known pixels down an image pyramid until
    every coarse cell has support, then fill each level's unknown pixels from the bilinearly
    upsampled coarser level.  Smooth, no seams, O(HW).  Hand-written because OpenCV is not
    installed; plain numpy block sums (torch pooling was slower for 128x128 because of
    thread start-up under load)."""
    img = np.asarray(image, np.float32)
    hole = np.asarray(hole, bool)
    if not hole.any():
        return img.copy()
    if hole.all():
        return np.full_like(img, 0.5)
    w = (~hole).astype(np.float32)[..., None]
    levels = [(img * w, w)]
    while min(levels[-1][1].shape[:2]) > 1 and (levels[-1][1] <= 0).any():
        c, w = levels[-1]
        levels.append((_pool2(c), _pool2(w)))
    c, w = levels[-1]
    filled = c / np.maximum(w, 1e-8)
    for c, w in reversed(levels[:-1]):
        up = _upsample(filled, c.shape[:2])
        alpha = np.clip(w, 0, 1)
        filled = c / np.maximum(w, 1e-8) * alpha + up * (1 - alpha)
    return np.where(hole[..., None], filled, img).astype(np.float32)


def texture_resolution(photo, camera, align, oversample: float = 2.0):
    """The photo (and camera) to sample the texture from: when the crop shrinks the face by
    more than ``2 x oversample``, the photo is box-reduced by the integer factor
    ``k = floor(1 / (oversample * s))`` (``s`` = the align's scale) and the camera's scale
    and shift divided by ``k`` (exact: reduced pixel ``u'`` covers ``u = k u'``).  The same
    rule as the fit's crop (``fitting.align.warp_crop``): a crop pixel still spans
    ``oversample`` photo pixels, the texture is anti-aliased, and a 6000-pixel photo does
    not cost two full-size z-buffers.  Returns ``(photo uint8 [h, w, 3], camera [7])``."""
    A = np.asarray(align, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))
    k = int(np.floor(1.0 / (oversample * scale))) if scale > 0 else 1
    if k < 2:
        return photo, camera
    from PIL import Image

    small = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).reduce(k))
    cam = np.asarray(camera, np.float64).copy()
    cam[3:6] /= k
    return small, cam.astype(np.float32)
