"""fitting.warp (+ warp_image, warp_mesh): geometry helpers against slow references, and the Warper on a synthetic
photo whose truth is known (the tiny demo world's 3DMM rendered by the test itself)."""
from types import SimpleNamespace

import numpy as np
import pytest

from fitting.warp import Warper
from fitting.warp_image import fold_align, inpaint, is_similarity, warp_affine
from fitting.warp_mesh import MouthStretch, boundary_loops, fill_occluded, nearest_vertices
from render.camera import make_camera, project


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("dist", [0.0, 6.0])
def test_fold_align_equals_align_after_projection(dist):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    cam = make_camera(0.2, -0.4, 0.1, 50.0, 60.0, 30.0, dist)
    th, s = 0.3, 0.7
    A = np.array([[s * np.cos(th), -s * np.sin(th), 5.0], [s * np.sin(th), s * np.cos(th), -3.0]])
    direct = project(X, cam) @ A[:, :2].T + A[:, 2]
    np.testing.assert_allclose(project(X, fold_align(cam, A)), direct, atol=1e-3)
    assert not is_similarity(np.array([[1.0, 0, 0], [0, -1.0, 0]]))  # reflection
    with pytest.raises(ValueError):
        fold_align(cam, np.array([[1.0, 0.2, 0], [0, 1.0, 0]]))


def test_warp_affine_identity_and_shift():
    img = np.random.default_rng(1).uniform(size=(12, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(warp_affine(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (12, 10)), img, atol=1e-6)
    shifted = warp_affine(img, np.array([[1.0, 0, -2.0], [0, 1.0, 0]]), (12, 8))  # crop starts at column 2
    np.testing.assert_allclose(shifted, img[:, 2:10], atol=1e-6)


def _harmonic_reference(img, hole):
    """Slow, obviously-correct Laplace fill: Jacobi iterations of the 4-neighbour mean."""
    out = img.copy()
    out[hole] = img[~hole].mean(0)
    for _ in range(1200):
        p = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge")
        avg = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4
        out[hole] = avg[hole]
    return out


def test_inpaint_keeps_known_pixels_and_matches_smooth_fill():
    H = W = 24
    yy, xx = np.mgrid[:H, :W] / 23.0
    img = np.stack([xx, yy, 0.5 * (xx + yy)], -1).astype(np.float32)  # smooth ramp
    hole = (np.hypot(yy - 0.5, xx - 0.45) < 0.25)
    corrupted = img.copy()
    corrupted[hole] = [1.0, 0.0, 1.0]  # stale "face" pixels
    out = inpaint(corrupted, hole)
    np.testing.assert_array_equal(out[~hole], corrupted[~hole])
    ref = _harmonic_reference(corrupted, hole)
    assert np.abs(out[hole] - ref[hole]).mean() < 0.05
    assert np.abs(out[hole] - img[hole]).mean() < 0.06          # close to the hidden ramp
    assert np.abs(out[hole] - [1.0, 0.0, 1.0]).mean() > 0.3     # nothing of the stale pixels survives


def _grid(n=8):
    """An n x n vertex grid in the x/y plane, two triangles per cell."""
    ii, jj = np.mgrid[:n, :n]
    V = np.stack([jj.ravel(), ii.ravel(), np.zeros(n * n)], 1).astype(float)
    idx = (ii * n + jj)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    T = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return V, T


def test_boundary_loops_finds_outer_and_hole():
    V, T0 = _grid(8)
    centre = 3 * 8 + 3
    ring = set(T0[(T0 == centre).any(1)].ravel().tolist()) - {centre}
    T = T0[~(T0 == centre).any(1)]  # remove the triangles around one interior vertex -> a hole
    loops = sorted(boundary_loops(T), key=len)
    assert len(loops) == 2
    assert set(loops[0].tolist()) == ring and len(loops[0]) == len(ring)
    assert len(loops[1]) == 4 * 7
    # consecutive loop vertices share an edge
    edges = {tuple(sorted(e)) for t in T for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    for lp in loops:
        for a, b in zip(lp, np.roll(lp, -1)):
            assert tuple(sorted((int(a), int(b)))) in edges


def _idw(C, P, i, cands, k):
    near = sorted((np.linalg.norm(P[i] - P[j]), j) for j in cands)[:k]
    w = np.array([1 / max(x, 1e-9) for x, _ in near])
    return sum(wi * C[j] for wi, (_, j) in zip(w / w.sum(), near))


def _fill_reference(C, known, P, mirror, k=4, M=None, rounds=12, near_rounds=2, ignore=None):
    """Slow reference of fill_occluded: explicit loops, brute-force neighbour lists."""
    C = C.copy()
    n = len(C)
    res = known.copy()
    mean = C[known].mean(0)
    skip = np.zeros(n, bool) if ignore is None else ignore & ~known
    res_or_skip = lambda i: res[i] or skip[i]  # noqa: E731
    lists = None if M is None else [
        sorted((j for j in range(n) if j != i), key=lambda j: (np.linalg.norm(P[i] - P[j]), j))[:M] for i in range(n)]

    def grow(n_rounds):
        for _ in range(n_rounds if lists is not None else 0):
            new = {i: _idw(C, P, i, [j for j in lists[i] if res[j]], k) for i in range(n)
                   if not res_or_skip(i) and sum(res[j] for j in lists[i]) >= k}
            if not new:
                break
            for i, c in new.items():
                C[i] = c
                res[i] = True

    grow(near_rounds)
    mirrored = [i for i in range(n) if not res_or_skip(i) and mirror[i] >= 0 and res[mirror[i]]]
    for i in mirrored:
        C[i] = C[mirror[i]]
        res[i] = True
    grow(rounds)
    src = [j for j in range(n) if res[j]]
    for i in range(n):
        if not res_or_skip(i):
            C[i] = _idw(C, P, i, src, k)
    C[skip] = mean
    return C


def test_fill_occluded_matches_reference():
    rng = np.random.default_rng(2)
    P = rng.normal(size=(60, 3))
    C = rng.uniform(size=(60, 3)).astype(np.float32)
    known = rng.uniform(size=60) < 0.3
    mirror = np.where(rng.uniform(size=60) < 0.3, rng.integers(0, 60, 60), -1)
    got = fill_occluded(C, known, P, mirror)
    np.testing.assert_allclose(got, _fill_reference(C, known, P, mirror), atol=1e-5)
    for m in (6, 20):  # neighbour lists: rounds grow inwards, the rest by KD-tree
        np.testing.assert_allclose(fill_occluded(C, known, P, mirror, neighbours=nearest_vertices(P, m)),
                                   _fill_reference(C, known, P, mirror, M=m), atol=1e-5)
    np.testing.assert_array_equal(got[known], C[known])  # visible colours untouched
    ignore = rng.uniform(size=60) < 0.3
    np.testing.assert_allclose(fill_occluded(C, known, P, mirror, neighbours=nearest_vertices(P, 12), ignore=ignore),
                               _fill_reference(C, known, P, mirror, M=12, ignore=ignore), atol=1e-5)


# ----------------------------------------------------------------------------- the Warper
@pytest.fixture(scope="module")
def scene(tiny_world):
    """The tiny world's 3DMM, a Warper, and a synthetic photo with known truth: identity,
    expression, camera, texture, a uniform blue background, and the fit-style align."""
    from fitting.align import reference_shape, similarity_transform
    from fitting.model import MorphableModel
    from render import render
    from render.camera import camera_fitting_view

    m = MorphableModel.load(tiny_world / "model.h5")
    rng = np.random.default_rng(3)
    p_id = (rng.normal(size=m.n_id) * 0.7).astype(np.float32)
    p_exp = np.zeros(m.n_exp, np.float32)
    p_exp[1] = 0.5  # a slight smile
    V = m.instance(p_id, p_exp)
    H, W = 260, 240
    cam = camera_fitting_view(V, (H, W), yaw=0.25, pitch=0.05, fill=0.55)
    tex = m.texture()
    blue = np.zeros((H, W, 3), np.uint8)
    blue[..., 2] = 230
    photo = render(V, m.trilist, tex, cam, background=blue).image_uint8()
    lm = project(V[m.landmarks], cam)
    A = similarity_transform(lm, reference_shape(m.mean_shape[m.landmarks], 128))
    return SimpleNamespace(model=m, warper=Warper(m), p_id=p_id, p_exp=p_exp, cam=cam, tex=tex, photo=photo,
                           align=A, blue=blue)


def _direct(s, p_exp):
    """Direct render of the true identity/texture with p_exp in the crop (same mouth model)."""
    from render import render

    m, w = s.model, s.warper
    V = m.instance(s.p_id, p_exp)
    C = w.stretch.apply(V, s.tex, m.instance(s.p_id)) if w.stretch is not None else s.tex
    Ve, Ce = w.with_cavity(V, C)
    return render(Ve, w.triangles_ext, Ce, fold_align(s.cam, s.align), background=(128, 128))


def test_warp_to_own_expression_reproduces_photo(scene):
    from fitting.align import warp_crop

    src = scene.warper.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align)
    img, mask = scene.warper.render(src, scene.p_exp[None], return_masks=True)
    crop = warp_crop(scene.photo, scene.align, 128).astype(np.float32) / 255
    err = np.abs(img[0] / 255.0 - crop)
    assert mask[0].sum() > 2000
    assert err[mask[0]].mean() < 0.015  # measured ~0.005
    assert err[~src.footprint].max() <= 1 / 255 + 1e-6  # outside the face: the photo, untouched


def test_warp_fidelity_against_direct_render(scene):
    rng = np.random.default_rng(4)
    src = scene.warper.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align)
    P = rng.uniform(-1, 1, size=(3, scene.model.n_exp)).astype(np.float32)
    imgs, masks = scene.warper.render(src, P, return_masks=True)
    for k in range(3):
        ref = _direct(scene, P[k])
        both = masks[k] & ref.mask
        err = np.abs(imgs[k] / 255.0 - ref.image)[both].mean()
        wrong = np.abs(imgs[k] / 255.0 - _direct(scene, P[(k + 1) % 3]).image)[both].mean()
        assert err < 0.012, err     # measured ~0.004
        assert wrong > 2 * err      # the bound separates the right target from a wrong one (~0.03)
        # the silhouettes agree too
        assert (masks[k] ^ ref.mask).sum() < 0.03 * ref.mask.sum()


def test_crop_space_equals_full_resolution_render(scene):
    wf = Warper(scene.model, space="full")
    P = np.zeros((1, scene.model.n_exp), np.float32)
    P[0, 0] = 0.8
    a = scene.warper.render(scene.warper.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align), P)
    b = wf.render(wf.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align), P)
    assert np.abs(a.astype(float) - b).mean() / 255 < 0.01


def test_occluded_vertices_take_no_photo_colours(scene):
    """At strong yaw part of the face is hidden; hidden vertices project onto the nose or
    beyond the silhouette (blue background).  None of them may take blue."""
    from render import render, sample_vertex_colours
    from render.camera import camera_fitting_view

    m = scene.model
    V = m.instance(scene.p_id, scene.p_exp)
    cam = camera_fitting_view(V, (200, 200), yaw=1.0, fill=0.6)
    photo = render(V, m.trilist, scene.tex, cam, background=scene.blue[:200, :200]).image_uint8()
    raw, _ = sample_vertex_colours(photo, V, m.trilist, cam, visibility=False)
    bluish = lambda c: c[:, 2] > c[:, 0] + 0.3  # noqa: E731
    assert bluish(raw).sum() > 100        # without visibility, hidden vertices would take background
    cols, vis = scene.warper.sample_colours(photo, V, cam)
    assert (~vis).sum() > 1000
    assert bluish(cols).sum() == 0
    np.testing.assert_allclose(cols[vis], raw[vis], atol=1e-6)  # visible ones keep the photo


def test_shrinking_face_leaves_no_stale_face_pixels(scene):
    """Where the original face was but the new one is not, the inpainted background shows
    (blue here), never the old face."""
    src = scene.warper.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align)
    P = np.zeros((1, scene.model.n_exp), np.float32)
    P[0, 0] = -1.0  # jaw closes / chin moves up: the face footprint shrinks
    img, mask = scene.warper.render(src, P, return_masks=True)
    exposed = src.footprint & ~mask[0]
    assert exposed.sum() > 5
    px = img[0][exposed].astype(float)
    assert (px[:, 2] - px[:, 0]).min() > 100   # blue background, no skin


def test_open_jaw_shows_dark_mouth(scene):
    src = scene.warper.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align)
    m = scene.model
    P = np.zeros((2, m.n_exp), np.float32)
    P[1, 0] = 2.0  # jaw open
    imgs = scene.warper.render(src, P).astype(float) / 255
    # mouth region: around the projected inner-lip landmarks of the open shape
    uv = project(m.instance(scene.p_id, P[1])[m.landmarks[60:68]], src.camera)
    j0, i0 = np.floor(uv.min(0)).astype(int)
    j1, i1 = np.ceil(uv.max(0)).astype(int)
    lum = lambda x: x[i0:i1 + 1, j0:j1 + 1].mean()  # noqa: E731
    assert lum(imgs[1]) < 0.6 * lum(imgs[0])
    # and no blue background shows through the mouth
    region = imgs[1][i0:i1 + 1, j0:j1 + 1]
    assert (region[..., 2] > region[..., 0] + 0.3).sum() == 0


def test_mouth_stretch_gate_ignores_smile(scene):
    m = scene.model
    ms = MouthStretch.build(m.mean_shape, m.trilist, m.landmarks)
    rest = m.instance(scene.p_id)
    smile = np.zeros(m.n_exp, np.float32)
    smile[1] = 1.0
    jaw = np.zeros(m.n_exp, np.float32)
    jaw[0] = 1.5
    assert ms.weights(m.instance(scene.p_id, smile), rest).max() < 0.05
    assert ms.weights(m.instance(scene.p_id, jaw), rest).max() > 0.5


def test_projection_exact_on_demo_model_expression_meshes(scene):
    """Noise-free meshes of the expression model alone: the paper's projection is exact,
    and so is the joint fit (with p_id = 0)."""
    from fitting.projection import JointProjector, project_expression

    m = scene.model
    P = np.random.default_rng(5).uniform(-1, 1, size=(3, m.n_exp)).astype(np.float32)
    S = m.instance(None, P)
    np.testing.assert_allclose(project_expression(m, S), P, atol=2e-4)
    p_id, p_exp = JointProjector(m)(S)
    np.testing.assert_allclose(p_exp, P, atol=2e-3)
    assert np.abs(p_id).max() < 2e-3


def test_fast_render_path_equals_render_render(scene):
    from render import render

    w = scene.warper
    src = w.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align)
    V = w.shapes(src.shape_id, np.eye(scene.model.n_exp, dtype=np.float32)[:1])[0]
    Ve, Ce = w.with_cavity(V, src.colours)
    img, mask = w._render_fast(Ve, Ce, src.camera, src.background)
    ref = render(Ve, w.triangles_ext, Ce, src.camera, background=src.background)
    np.testing.assert_array_equal(mask, ref.mask)
    np.testing.assert_allclose(img, ref.image, atol=1e-5)


def test_mouth_cavity_closes_a_mouth_hole():
    """A flat 'face' with a hole where the mouth is: rendered plainly the background shows
    through the hole; with the cavity cap the hole is dark (below the lip colour)."""
    from fitting.warp_mesh import MouthCavity
    from render import render
    from render.camera import make_camera

    n = 21
    V, T = _grid(n)
    V = (V - (n - 1) / 2) / ((n - 1) / 2)            # [-1, 1]^2, z = 0
    centre = (n // 2) * n + n // 2
    hole = [centre - 1, centre, centre + 1]           # a 3-vertex slit
    T = T[~np.isin(T, hole).any(1)]
    lm = np.zeros(68, np.int64)
    lm[48], lm[54] = centre - 3, centre + 3           # mouth corners
    lm[60:68] = centre - 2                            # inner lip: next to the hole
    cav = MouthCavity.find(T, V, lm)
    assert cav is not None and len(cav.loop) >= 6
    C = np.full((len(V), 3), 0.8, np.float32)
    cam = make_camera(scale=40.0, tx=48.0, ty=48.0)
    blue = np.zeros((96, 96, 3), np.float32)
    blue[..., 2] = 1.0
    plain = render(V, T, C, cam, background=blue).image
    Ve = np.vstack([V, cav.vertices(V)])
    Ce = np.vstack([C, cav.colours(C)])
    capped = render(Ve, np.concatenate([T, cav.triangles()]), Ce, cam, background=blue).image
    i, j = 48, 48                                     # the centre pixel lies in the hole
    assert plain[i, j, 2] > 0.9 and plain[i, j, 0] < 0.1
    assert capped[i, j].max() < 0.8 * 0.35 + 1e-3 and capped[i, j, 2] < 0.5


def test_large_photo_texture_matches_small_photo(scene):
    """A 6x larger copy of the photo (camera and align scaled accordingly) is sampled from
    a box-reduced copy; the texture agrees with the one from the original photo."""
    from PIL import Image

    from fitting.warp_image import texture_resolution

    f = 6
    H, W = scene.photo.shape[:2]
    big = np.asarray(Image.fromarray(scene.photo).resize((W * f, H * f), Image.BILINEAR))
    cam = np.asarray(scene.cam, np.float64).copy()
    cam[3:6] *= f
    A = np.asarray(scene.align, np.float64).copy()
    A[:, :2] /= f
    small, cam_s = texture_resolution(big, cam, A)
    assert small.shape[0] < big.shape[0] // 2
    np.testing.assert_allclose(project(scene.model.mean_shape, cam_s) * (big.shape[0] / small.shape[0]),
                               project(scene.model.mean_shape, cam), rtol=1e-5, atol=1e-3)
    w = scene.warper
    a = w.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align)
    b = w.prepare(big, scene.p_id, scene.p_exp, cam, A)
    both = a.visible & b.visible
    assert both.sum() > 0.8 * a.visible.sum()
    assert np.abs(a.colours[both] - b.colours[both]).mean() < 0.02
    img_a, img_b = w.render(a, scene.p_exp[None]), w.render(b, scene.p_exp[None])
    assert np.abs(img_a.astype(float) - img_b).mean() / 255 < 0.01


def test_supersampling_softens_edges_only(scene):
    w2 = Warper(scene.model, supersample=2)
    P = np.zeros((1, scene.model.n_exp), np.float32)
    P[0, 0] = 0.7
    a, ma = scene.warper.render(scene.warper.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align),
                                P, return_masks=True)
    b, mb = w2.render(w2.prepare(scene.photo, scene.p_id, scene.p_exp, scene.cam, scene.align), P,
                      return_masks=True)
    diff = np.abs(a[0].astype(float) - b[0]) / 255
    assert diff.mean() < 0.01                       # the same image overall
    assert (ma[0] ^ mb[0]).sum() < 0.02 * ma[0].sum()
    # at the silhouette, supersampling produces blends between face and blue background
    from scipy.ndimage import binary_erosion

    skin_b = np.median(a[0][binary_erosion(ma[0], iterations=3)][:, 2].astype(float))
    edge = ma[0] & ~binary_erosion(ma[0])

    def blends(img):
        blue = img[..., 2].astype(float)
        return ((blue > skin_b + 25) & (blue < 205))[edge | (np.roll(edge, 1, 1) & ~ma[0])].sum()

    na, nb = blends(a[0]), blends(b[0])
    assert nb > 2 * na + 5, (na, nb)
