"""Sidecar landmark files follow menpo's conventions (checked with menpo's own importer)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fitting.landmarks import (LandmarkFileError, format_pts, read_ljson, read_pts, read_sidecar,
                               sidecar_path)


def _menpo_points(imported):
    """Points of menpo's import result (a dict of groups in menpo 0.11, else a PointCloud)."""
    if isinstance(imported, dict):
        imported = next(iter(imported.values()))
    return np.asarray(imported.points)


def _lm(seed=0):
    return np.random.default_rng(seed).uniform(5, 200, size=(68, 2))


def test_pts_roundtrip_and_menpo_convention(tmp_path):
    import menpo.io as mio

    lm = _lm()
    p = tmp_path / "a.pts"
    p.write_text(format_pts(lm))
    np.testing.assert_allclose(read_pts(p), lm, atol=1e-4)
    # menpo: (y, x), 0-based pixel centres -> project pixels (centre at +0.5)
    menpo_pts = _menpo_points(mio.import_landmark_file(p))
    np.testing.assert_allclose(menpo_pts[:, [1, 0]] + 0.5, lm, atol=1e-4)


def test_ljson_v1_and_v2_layouts(tmp_path):
    lm = _lm(1)
    menpo_yx = (lm - 0.5)[:, [1, 0]].tolist()
    v1 = tmp_path / "v1.ljson"
    v1.write_text(json.dumps({"version": 1, "landmarks": {"points": menpo_yx}}))
    v2 = tmp_path / "v2.ljson"
    v2.write_text(json.dumps({"version": 2, "groups": {"PTS": {"landmarks": {"points": menpo_yx}}}}))
    np.testing.assert_allclose(read_ljson(v1), lm, atol=1e-9)
    np.testing.assert_allclose(read_ljson(v2), lm, atol=1e-9)


def test_ljson_matches_menpo_importer(tmp_path):
    import menpo.io as mio
    from menpo.shape import PointCloud

    lm = _lm(2)
    p = tmp_path / "m.ljson"
    mio.export_landmark_file(PointCloud((lm - 0.5)[:, [1, 0]]), p, extension=".ljson")
    np.testing.assert_allclose(read_ljson(p), lm, atol=1e-6)


def test_sidecar_lookup_and_errors(tmp_path):
    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    assert sidecar_path(img) is None
    (tmp_path / "x.pts").write_text(format_pts(_lm()[:10]))
    assert sidecar_path(img) == tmp_path / "x.pts"
    with pytest.raises(LandmarkFileError, match="10 points"):
        read_sidecar(tmp_path / "x.pts")
    (tmp_path / "y.pts").write_text("version: 1\n{\n1 2\nfoo bar\n}\n")
    with pytest.raises(LandmarkFileError):
        read_sidecar(tmp_path / "y.pts")
    (tmp_path / "z.ljson").write_text("not json")
    with pytest.raises(LandmarkFileError):
        read_sidecar(tmp_path / "z.ljson")
