"""Shared fixtures: a tiny demo world and the stages built on it, made once per session
through the real CLI (``python -m workflows ...``), so every downstream test uses the
same data the pipeline really produces."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_WORLD, sets, slidergan


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A tiny demo world: model.h5, emotionet/, 4dfab/, lrw/ (see TINY_WORLD)."""
    root = tmp_path_factory.mktemp("world")
    slidergan("make-demo", "--out", root, *sets(TINY_WORLD))
    return root


@pytest.fixture(scope="session")
def tiny_fits(tiny_world) -> Path:
    """fit-emotionet on the tiny world (true landmarks from the .pts sidecars)."""
    out = tiny_world / "fits"
    slidergan("fit-emotionet", "--images", tiny_world / "emotionet", "--model", tiny_world / "model.h5",
              "--out", out, "--workers", "1", "--chunk-size", "12", "--no-progress",
              "--set", "fit.landmarks=sidecar")
    return out


@pytest.fixture(scope="session")
def tiny_warps(tiny_world, tiny_fits) -> Path:
    out = tiny_world / "warps"
    slidergan("render-warps", "--fits", tiny_fits, "--model", tiny_world / "model.h5", "--out", out,
              "--workers", "1", "--chunk-size", "8", "--no-progress",
              "--set", "warps.faces=8", "--set", "warps.per_face=3")
    return out


@pytest.fixture(scope="session")
def tiny_4dfab(tiny_world) -> Path:
    out = tiny_world / "4dfab-params"
    slidergan("project-4dfab", "--meshes", tiny_world / "4dfab", "--model", tiny_world / "model.h5",
              "--out", out, "--workers", "1", "--no-progress")
    return out
