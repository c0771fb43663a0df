"""The numba rasteriser against a slow per-pixel reference, and the shading kernels
against their numpy references."""
import numpy as np
import pytest

from render.lighting import (AMBIENT, random_light, sh_basis, shade, shade_reference, vertex_normals,
                             vertex_normals_reference)
from render.raster import rasterize, rasterize_reference


def _random_mesh(rng, n_tri=6, size=12):
    uv = rng.uniform(-2, size + 2, (3 * n_tri, 2))
    z = rng.uniform(-1, 1, 3 * n_tri)
    tris = np.arange(3 * n_tri).reshape(-1, 3)
    return uv, z, tris


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("persp", [False, True])
def test_rasterize_matches_reference(seed, persp):
    rng = np.random.default_rng(seed)
    uv, z, tris = _random_mesh(rng)
    w = (4.0 - z) if persp else np.ones_like(z)
    tri, bary, depth = rasterize(uv, z, w, tris, (12, 14))
    rtri, rbary, rdepth = rasterize_reference(uv, z, w, tris, (12, 14))
    assert (tri >= 0).sum() > 10  # the test covers pixels
    # ids agree except where two triangles are within float noise of each other
    agree = tri == rtri
    assert agree.mean() > 0.97
    np.testing.assert_allclose(bary[agree], rbary[agree], atol=1e-5)
    cov = tri >= 0
    np.testing.assert_allclose(depth[cov], rdepth[cov], atol=1e-5)
    assert np.all(np.isneginf(depth[~cov]))
    np.testing.assert_allclose(bary[cov].sum(-1), 1.0, atol=1e-5)


def test_pixel_centre_rule():
    # a square covering pixel centres 0.5..2.5 exactly on its edges
    uv = np.array([[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    tri, _, _ = rasterize(uv, np.zeros(4), np.ones(4), tris, (4, 4))
    assert ((tri >= 0) == np.pad(np.ones((3, 3), bool), ((0, 1), (0, 1)))).all()


def test_nearest_wins():
    uv = np.array([[0, 0], [8, 0], [0, 8]] * 2, float)
    z = np.array([0, 0, 0, 1, 1, 1.0])
    tri, _, depth = rasterize(uv, z, np.ones(6), np.array([[0, 1, 2], [3, 4, 5]]), (8, 8))
    assert (tri[0, :3] == 1).all() and np.allclose(depth[0, 0], 1.0)


def test_normals_and_shading_match_reference(template):
    V, T, _ = template
    n = vertex_normals(V, T)
    np.testing.assert_allclose(n, vertex_normals_reference(V, T), atol=1e-9)
    assert n[np.argmax(V[:, 2]), 2] > 0.9  # nose tip faces the viewer (outward normals)
    rng = np.random.default_rng(0)
    C = rng.uniform(0, 1, V.shape)
    L = random_light(rng)
    np.testing.assert_allclose(shade(C, n, L), shade_reference(C, n, L), atol=1e-6)


def test_ambient_light_is_identity():
    n = np.random.default_rng(0).normal(size=(50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    np.testing.assert_allclose(sh_basis(n) @ AMBIENT, 1.0, atol=1e-5)
    C = np.random.default_rng(1).uniform(0, 1, (50, 3))
    np.testing.assert_allclose(shade(C, n, AMBIENT), C, atol=1e-5)


def test_directional_light_is_lambertian():
    # ambient + band-1 light along +z: brighter facing the light, dimmer facing away
    L = AMBIENT.copy() * 0.5
    L[2] = 0.5 / (2 * np.pi / 3 * 0.488603)
    n = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 0, -1.0]])
    s = sh_basis(n) @ L
    np.testing.assert_allclose(s, [1.0, 0.5, 0.0], atol=1e-5)


def test_non_finite_vertices_are_skipped():
    uv = np.array([[0, 0], [8, 0], [0, 8], [np.nan, 1], [8, 8.0]])
    tris = np.array([[3, 1, 2], [1, 4, 2]])
    tri, _, _ = rasterize(uv, np.zeros(5), np.ones(5), tris, (8, 8))
    assert set(np.unique(tri)) == {-1, 1}  # ids keep their original numbering
