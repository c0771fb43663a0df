"""Photo loading: conversions and reject reasons."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fitting.images import ImageReject, load_image

from tests.fitting.fit_helpers import write_bad_inputs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    return d, write_bad_inputs(d)


def test_bad_files_get_their_reason(folder):
    d, expect = folder
    for name, reason in expect.items():
        if reason in (None, "no face"):
            continue
        with pytest.raises(ImageReject) as e:
            load_image(d / name, max_pixels=64_000_000)
        assert e.value.reason == reason, (name, e.value)
        assert "\n" not in str(e.value)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageReject, match="unreadable"):
        load_image(tmp_path / "nope.jpg")


def test_bomb_limit_is_configurable(tmp_path):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageReject, match="decompression bomb"):
        load_image(tmp_path / "a.png", max_pixels=9_999)


def test_conversions_to_rgb_uint8(folder):
    d, _ = folder
    for name in ("plain.jpg", "cmyk.jpg", "gray16.png", "alpha.png", "visage_é_日本.jpg", "sub/gray.bmp"):
        a = load_image(d / name)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
    g16 = load_image(d / "gray16.png")
    assert g16[0, 0, 0] == 0 and g16[-1, -1, 0] == 255          # scaled, not clipped
    assert 120 <= g16[100, 100, 0] <= 135 and np.all(g16[..., 0] == g16[..., 2])
    src = np.asarray(Image.open(d / "alpha.png"))[..., :3].astype(float)
    out = load_image(d / "alpha.png").astype(float)               # 50% alpha over mid grey
    np.testing.assert_allclose(out, 0.5 * src + 0.5 * 128, atol=1.5)
    cmyk = load_image(d / "cmyk.jpg").astype(float)
    plain = load_image(d / "plain.jpg").astype(float)
    assert np.abs(cmyk - plain).mean() < 8


def test_rgba_fully_transparent_becomes_grey(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[..., 0] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    assert np.all(load_image(tmp_path / "t.png") == 128)
