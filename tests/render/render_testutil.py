"""Shared helpers of the render tests (not a conftest.py: a second module named
``conftest`` would shadow ``from conftest import ...`` in other test folders)."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

# This folder is named like the package it tests; with tests/ on sys.path (pytest's
# rootdir conftest) ``import render`` could resolve to it as a namespace package.  Put the
# repository root on sys.path so the real package (a regular package) always wins.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if "render" in sys.modules and getattr(sys.modules["render"], "__file__", None) is None:
    del sys.modules["render"]
ROOT_ON_PATH = True


@pytest.fixture(scope="session")
def template():
    """menpo3d's mean face scaled to a half-width of ~1: (vertices [N,3], triangles [T,3], landmarks [68])."""
    from fitting.demo_model import load_template

    V, T, L = load_template()
    V = V - V[L].mean(0)
    V = V / np.abs(V[:, 0]).max()
    return V, T, L
