"""Fixtures of the render tests."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def template():
    """menpo3d's mean face scaled to a half-width of ~1: (vertices [N,3], triangles [T,3], landmarks [68])."""
    from fitting.demo_model import load_template

    V, T, L = load_template()
    V = V - V[L].mean(0)
    V = V / np.abs(V[:, 0]).max()
    return V, T, L
