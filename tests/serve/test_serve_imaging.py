"""Guarded image decoding and paste-back (against a per-pixel reference)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from workflows.editor.imaging import ImageInputError, crop_footprint, decode_image, encode_png, paste_back


def _png(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def paste_back_reference(full, crop, align, feather):
    """Obviously-correct per-pixel loop: map each photo pixel centre into the crop, sample
    bilinearly (edge pixels repeated), blend with a weight ramping over ``feather`` px."""
    H, W = full.shape[:2]
    ch, cw = crop.shape[:2]
    out = full.astype(np.float64).copy()
    for i in range(H):
        for j in range(W):
            u, v = align @ np.array([j + 0.5, i + 0.5, 1.0])
            if not (0 <= u <= cw and 0 <= v <= ch):
                continue
            w = min(max(min(u, cw - u, v, ch - v) / feather, 0.0), 1.0)
            x, y = min(max(u - 0.5, 0), cw - 1), min(max(v - 0.5, 0), ch - 1)
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            x1, y1 = min(x0 + 1, cw - 1), min(y0 + 1, ch - 1)
            fx, fy = x - x0, y - y0
            c = ((1 - fx) * (1 - fy) * crop[y0, x0] + fx * (1 - fy) * crop[y0, x1]
                 + (1 - fx) * fy * crop[y1, x0] + fx * fy * crop[y1, x1])
            out[i, j] = w * c + (1 - w) * out[i, j]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("align", [_similarity(0.7, 0.3, -2.0, 1.5), _similarity(1.6, -0.5, -8.0, 14.0),
                                   _similarity(1.0, 0.0, -3.0, -4.0)])
def test_paste_back_matches_reference(align):
    rng = np.random.default_rng(1)
    full = rng.integers(0, 256, (21, 26, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    got = paste_back(full, crop, align, feather=2.0)
    ref = paste_back_reference(full, crop, align, 2.0)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert (got != full).any()  # something was pasted


def test_paste_back_inverts_the_fit_stage_crop():
    """The crop fitting.align.warp_crop cuts, pasted back unchanged, restores the photo."""
    from fitting.align import warp_crop

    yy, xx = np.mgrid[0:90, 0:120]
    full = np.stack([xx * 2, yy * 2, (xx + yy)], -1).clip(0, 255).astype(np.uint8)  # smooth ramps
    align = _similarity(0.9, 0.2, -20.0, -15.0)
    crop = warp_crop(full, align, 48)
    back = paste_back(full, crop, align, feather=4.0)
    x0, y0, w, h = crop_footprint(align, (48, 48), full.shape[:2])
    assert w > 0 and h > 0
    assert np.abs(back.astype(int) - full.astype(int)).max() <= 2  # ramps are exact under bilinear
    # pixels outside the footprint are untouched, bit for bit
    outside = np.ones(full.shape[:2], bool)
    outside[y0:y0 + h, x0:x0 + w] = False
    assert np.array_equal(back[outside], full[outside])
    # a different crop really changes the inside
    assert np.abs(paste_back(full, 255 - crop, align).astype(int) - full.astype(int)).max() > 100


def test_decode_round_trip_and_conversions():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_png(rgb)), rgb)
    assert np.array_equal(decode_image(encode_png(rgb)), rgb)
    grey = decode_image(_png(rgb[..., 0]))
    assert grey.shape == (7, 9, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    rgba = np.dstack([rgb, np.zeros((7, 9), np.uint8)])  # fully transparent -> the stage's mid-grey background
    assert (decode_image(_png(rgba)) == 128).all()


@pytest.mark.parametrize("kind", ["rgba", "la", "16bit", "palette-transparent"])
def test_editor_and_fit_stage_decode_alike(tmp_path, kind):
    """An upload reaches G as a training photo reached the fit stage: one decoder, same array."""
    from fitting.images import load_image
    from workflows.editor.imaging import read_image_file

    rng = np.random.default_rng(3)
    if kind == "rgba":
        im = Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA")
    elif kind == "la":
        im = Image.fromarray(rng.integers(0, 256, (12, 10, 2), dtype=np.uint8), "LA")
    elif kind == "16bit":
        # a dark 16-bit photo: scaled by 255/65535, not stretched by its own maximum
        im = Image.fromarray(rng.integers(0, 20000, (12, 10), dtype=np.uint16).astype(np.uint16))
        assert im.mode.startswith("I;16")
    else:
        im = Image.fromarray(rng.integers(0, 8, (12, 10), dtype=np.uint8), "P")
        im.putpalette(list(rng.integers(0, 256, 8 * 3)))
        im.info["transparency"] = 3
    path = tmp_path / "photo.png"
    im.save(path, **({"transparency": 3} if kind == "palette-transparent" else {}))
    stage = load_image(path, min_side=1)
    editor = read_image_file(path)
    assert stage.dtype == editor.dtype == np.uint8 and stage.shape == (12, 10, 3)
    assert np.array_equal(stage, editor)
    assert np.array_equal(decode_image(path.read_bytes()), stage)
    if kind == "16bit":
        a = np.asarray(Image.open(path), np.float64)
        assert np.array_equal(stage[..., 0], np.clip(np.round(a * 255.0 / 65535.0), 0, 255).astype(np.uint8))
        assert stage.max() < 100                        # not stretched to 255
    if kind == "rgba":
        rgba = np.asarray(Image.open(path), np.float64)
        a = rgba[..., 3:] / 255.0
        want = rgba[..., :3] * a + 128 * (1 - a)
        assert np.abs(stage.astype(np.float64) - want).max() <= 1.0


def test_exif_orientation_is_applied():
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).shape == (20, 10, 3)


@pytest.mark.parametrize("data, limits, message", [
    (b"", {}, "empty file"),
    (b"hello, not an image" * 5, {}, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, {}, "not an image"),
    (bytes(3000), {"max_bytes": 1000}, "file too large"),
])
def test_bad_inputs_give_one_line_errors(data, limits, message):
    with pytest.raises(ImageInputError) as e:
        decode_image(data, name="x.jpg", **limits)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("x.jpg")


def test_truncated_image_is_rejected():
    data = _png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="could not decode"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png(np.zeros((3000, 3000), np.uint8), optimize=True)  # a few kB that decode to 9 Mpx
    assert len(bomb) < 100_000
    with pytest.raises(ImageInputError, match="image too large"):
        decode_image(bomb, max_pixels=1_000_000)
    assert decode_image(bomb, max_pixels=10_000_000).shape == (3000, 3000, 3)
