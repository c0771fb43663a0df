"""render.render: backends agree, geometry lands where the camera says, visibility and
texture sampling."""
import numpy as np
import pytest

import render
from render.camera import camera_fitting_view, make_camera, project


def _colours(V):
    # smooth colour ramp so that interpolation errors show up
    c = (V - V.min(0)) / (V.max(0) - V.min(0))
    return 0.2 + 0.6 * c


@pytest.mark.parametrize("yaw,dist", [(0.0, 0.0), (0.6, 0.0), (-0.4, 6.0)])
def test_backends_agree(template, yaw, dist):
    V, T, _ = template
    C = _colours(V)
    cam = camera_fitting_view(V, (128, 128), yaw=yaw, pitch=0.1, dist=dist)
    light = render.random_light(np.random.default_rng(3))
    bg = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    a = render.render(V, T, C, cam, bg, light=light, backend="fast")
    b = render.render(V, T, C, cam, bg, light=light, backend="pyrender")
    iou = (a.mask & b.mask).sum() / (a.mask | b.mask).sum()
    assert iou > 0.99
    both = a.mask & b.mask
    err = np.abs(a.image - b.image)[both]
    assert err.mean() < 0.01 and np.quantile(err, 0.99) < 0.05
    assert (a.tri == b.tri)[both].mean() > 0.95
    np.testing.assert_allclose(a.image[~a.mask & ~b.mask], bg[~a.mask & ~b.mask] / 255.0, atol=1e-6)
    same = both & (a.tri == b.tri)
    np.testing.assert_allclose(a.bary[same], b.bary[same], atol=2e-3)
    np.testing.assert_allclose(a.depth[same], b.depth[same], atol=1e-3)


@pytest.mark.parametrize("backend", ["fast", "pyrender"])
@pytest.mark.parametrize("dist", [0.0, 5.0])
def test_buffers_reproject_to_pixel_centres(template, backend, dist):
    """The surface point tri/bary name at a pixel projects onto that pixel's centre."""
    V, T, _ = template
    cam = camera_fitting_view(V, (64, 80), yaw=0.3, dist=dist)
    r = render.render(V, T, _colours(V), cam, (64, 80), backend=backend)
    ii, jj = np.nonzero(r.mask)
    X = np.einsum("pk,pkc->pc", r.bary[ii, jj].astype(np.float64), V[T[r.tri[ii, jj]]])
    uv = project(X, cam)
    err = np.abs(uv - np.stack([jj + 0.5, ii + 0.5], 1))
    assert np.median(err) < 1e-3 and np.quantile(err, 0.99) < 0.05


def _disc(centre, radius=0.06, n=24):
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = centre + radius * np.stack([np.cos(ang), np.sin(ang), np.zeros(n)], 1)
    V = np.vstack([centre[None], ring])
    T = np.array([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    return V, T


@pytest.mark.parametrize("backend", ["fast", "pyrender"])
def test_landmarks_land_where_the_camera_says(backend):
    """Small discs centred on known 3D points: their rendered centroids sit at the
    projected points (sub-pixel) for weak and strong perspective."""
    pts = np.array([[-0.5, 0.4, 0.1], [0.45, 0.35, 0.0], [0.0, -0.5, 0.3], [0.1, 0.0, 0.6]])
    Vs, Ts = zip(*[_disc(p) for p in pts])
    V = np.vstack(Vs)
    T = np.vstack([t + 25 * i for i, t in enumerate(Ts)])
    for cam in (make_camera(0, 0, 0.1, 100.3, 90.7, 120.0, 0.0), make_camera(0, 0, 0.1, 100.3, 90.7, 120.0, 4.0)):
        r = render.render(V, T, np.ones_like(V), cam, (200, 210), backend=backend)
        want = project(pts, cam)
        tri_disc = r.tri // 24
        for k in range(len(pts)):
            ii, jj = np.nonzero(tri_disc == k)
            got = np.array([jj.mean() + 0.5, ii.mean() + 0.5])
            assert np.abs(got - want[k]).max() < 0.25, (k, got, want[k])


def test_visible_vertices(template):
    V, T, L = template
    vis = render.visible_vertices(V, T, camera_fitting_view(V, (128, 128)), (128, 128))
    assert vis[np.argmax(V[:, 2])]  # nose tip
    assert vis[L[30]] and vis[L[8]]
    assert vis.mean() > 0.6
    # turned far to the right (yaw > 0 shows the subject's right side, x < 0): the left ear hides
    cam = camera_fitting_view(V, (128, 128), yaw=np.deg2rad(80))
    vis = render.visible_vertices(V, T, cam, (128, 128))
    far = V[:, 0] > 0.8
    near = V[:, 0] < -0.8
    assert vis[far].mean() < 0.1 and vis[near].mean() > 0.5


def test_visible_vertices_two_planes():
    # a front square covering the middle of a back square
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 9)), -1).reshape(-1, 2)
    back = np.hstack([g, np.zeros((81, 1))])
    front = np.array([[-0.5, -0.5, 1], [0.5, -0.5, 1], [0.5, 0.5, 1], [-0.5, 0.5, 1.0]])
    q = np.arange(81).reshape(9, 9)
    tb = np.concatenate([np.stack([q[:-1, :-1], q[:-1, 1:], q[1:, 1:]], -1).reshape(-1, 3),
                         np.stack([q[:-1, :-1], q[1:, 1:], q[1:, :-1]], -1).reshape(-1, 3)])
    V = np.vstack([back, front])
    T = np.vstack([tb, [[81, 82, 83], [81, 83, 84]]])
    cam = make_camera(tx=50, ty=50, scale=40)
    vis = render.visible_vertices(V, T, cam, (100, 100))
    hidden = (np.abs(back[:, 0]) < 0.4) & (np.abs(back[:, 1]) < 0.4)
    outside = (np.abs(back[:, 0]) > 0.6) | (np.abs(back[:, 1]) > 0.6)
    assert not vis[:81][hidden].any()
    assert vis[:81][outside].all()
    assert vis[81:].all()


def test_sample_image_bilinear():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (10, 12, 3)).astype(np.float32)
    # pixel centres return the pixel
    ij = np.array([[2, 3], [7, 11], [0, 0]])
    got = render.sample_image(img, np.stack([ij[:, 1] + 0.5, ij[:, 0] + 0.5], 1))
    np.testing.assert_allclose(got, img[ij[:, 0], ij[:, 1]], atol=1e-6)
    # half-way between two horizontal neighbours: their mean
    got = render.sample_image(img, np.array([[4.0, 5.5]]))
    np.testing.assert_allclose(got[0], (img[5, 3] + img[5, 4]) / 2, atol=1e-6)
    u8 = (img * 255).astype(np.uint8)
    np.testing.assert_allclose(render.sample_image(u8, np.array([[3.5, 2.5]]))[0], u8[2, 3] / 255.0, atol=1e-6)


def test_sample_vertex_colours_roundtrip(template):
    """Colours sampled back from a flat-lit render equal the mesh colours at visible vertices."""
    V, T, _ = template
    C = _colours(V)
    cam = camera_fitting_view(V, (256, 256), yaw=0.2)
    img = render.render(V, T, C, cam, (256, 256)).image
    cols, vis = render.sample_vertex_colours(img, V, T, cam)
    inner = vis & render.visible_vertices(V, T, cam, (256, 256), tolerance=0.002)
    err = np.abs(cols[inner] - C[inner]).max(1)
    assert inner.sum() > 10000 and np.median(err) < 0.01


def test_bad_inputs():
    V = np.zeros((3, 3))
    T = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match="backend"):
        render.render(V, T, V, make_camera(), (4, 4), backend="opengl")
    with pytest.raises(ValueError, match="triangles"):
        render.render(V, np.array([[0, 1, 5]]), V, make_camera(), (4, 4))
    with pytest.raises(ValueError, match="light"):
        render.render(V, T, V, make_camera(), (4, 4), light=np.zeros(4))
    with pytest.raises(ValueError, match="camera"):
        render.render(V, T, V, np.zeros(6), (4, 4))
