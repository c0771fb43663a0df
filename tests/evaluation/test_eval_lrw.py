"""Table 3's material from a fit-lrw stage: aligning frame b to the output (against slow
references), the test split, the Fig. 14 material, the 30-parameter reason."""
import numpy as np
import pytest

from tests.evaluation.evalfixtures import SIZE, build_lrw_fits, smooth_images, tiny_model


def _sim(angle_deg, scale, tx, ty, centre=SIZE / 2):
    """Similarity rotating/scaling about the crop centre, then translating: [2, 3]."""
    a = np.deg2rad(angle_deg)
    R = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([centre, centre])
    return np.concatenate([R, (c - R @ c + [tx, ty])[:, None]], 1)


def _lstsq_similarity(src, dst):
    """Slow reference of fitting.align.similarity_transform: the 4 unknowns (a, b, tx, ty) of
    [[a, -b, tx], [b, a, ty]] by a generic least-squares solve."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_align_target_matches_slow_bilinear_reference():
    from evaluation.lrw import align_target, align_target_slow

    img = smooth_images(np.random.default_rng(3), 1, SIZE)[0]
    for M in (_sim(6.0, 1.07, 1.3, -0.8), _sim(-3.0, 0.95, -2.2, 0.4), _sim(0.0, 1.0, 0.5, 0.25)):
        fast, slow = align_target(img, M).astype(int), align_target_slow(img, M).astype(int)
        # compare where the preimage of the pixel centre lies inside the crop by more than a pixel
        from fitting.align import invert_affine
        jj, ii = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)
        q = np.stack([jj, ii, np.ones_like(jj)], -1) @ invert_affine(M).T
        inside = ((q > 1.5) & (q < SIZE - 1.5)).all(-1)
        assert inside.sum() > 0.7 * SIZE * SIZE
        assert np.abs(fast - slow)[inside].max() <= 2                  # PIL's fixed-point bilinear
        assert np.abs(fast - img.astype(int))[inside].mean() > 3       # and the map did move the image
    # the identity is a no-op (no resampling)
    assert align_target(img, np.eye(2, 3)) is img


def _stage_align(model, p_id, cam):
    """The fit-lrw stage's crop similarity: the neutral face under cam onto the reference shape."""
    from fitting.align import reference_shape, similarity_transform
    from render.camera import project

    ref = reference_shape(model.mean_shape[model.landmarks], SIZE)
    return similarity_transform(project(model.landmarks_3d(p_id), cam.astype(np.float64)), ref)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _two_frames(model, cam_b_change=None, perturb=None):
    from evaluation.lrw import LrwSet
    from render.camera import camera_fitting_view

    p_id = np.random.default_rng(1).normal(size=5).astype(np.float32) * 0.3
    cam = camera_fitting_view(model.mean.reshape(-1, 3), (SIZE, SIZE), fill=0.6).astype(np.float64)
    cam_b = cam.copy()
    if cam_b_change:
        for i, d in cam_b_change.items():
            cam_b[i] += d
    A = [_stage_align(model, p_id, c) for c in (cam, cam_b)]
    if perturb is not None:                                # crop b made by another aligner
        A[1] = np.concatenate([perturb[:, :2] @ A[1][:, :2], (perturb[:, :2] @ A[1][:, 2] + perturb[:, 2])[:, None]], 1)
    return LrwSet(None, None, np.arange(2), np.array(["v", "v"], object), np.arange(2),
                  np.zeros((2, 40), np.float32), np.stack([p_id, p_id]), np.stack([cam, cam_b]).astype(np.float32),
                  np.stack(A), None)


def test_target_alignment_is_identity_for_neutral_face_crops(model):
    from evaluation.lrw import neutral_landmarks_in_crop, target_alignment

    # the same camera (the demo), and a head that rolled and moved in the image plane: the stage's
    # crops already put both neutral faces on the reference shape, so b needs no further map
    for change in (None, {2: 0.2, 3: 5.0, 4: -3.0}):
        lrw = _two_frames(model, change)
        M = target_alignment(model, lrw, 0, 1)
        assert np.abs(M - np.eye(2, 3)).max() < 1e-3, M
    # a crop b not aligned on the neutral face (here: off by a known similarity T) is brought back by T^-1
    T = _sim(4.0, 1.06, 1.5, -1.0)
    lrw = _two_frames(model, {2: 0.1}, perturb=T)
    M = target_alignment(model, lrw, 0, 1)
    from fitting.align import invert_affine
    assert np.abs(M - invert_affine(T)).max() < 2e-3 * SIZE, (M, invert_affine(T))
    # and M is the least-squares similarity of b's neutral landmarks onto a's (a generic solve)
    la = neutral_landmarks_in_crop(model, lrw.p_id[0], lrw.camera[0], lrw.align[0])
    lb = neutral_landmarks_in_crop(model, lrw.p_id[1], lrw.camera[1], lrw.align[1])
    np.testing.assert_allclose(M, _lstsq_similarity(lb, la), atol=1e-6)


def test_lrw_pairs_realign_misaligned_crops(tmp_path, model):
    """End to end through the stage rows: frame b = frame a, but crop b was made with align T@A:
    after the alignment crop b equals crop a again (inside the crop), while unaligned it does not."""
    from evaluation.lrw import lrw_pairs
    from fitting.align import warp_crop
    from pipeline.testing import make_stage
    from render.camera import camera_fitting_view

    rng = np.random.default_rng(0)
    frame = smooth_images(rng, 1, SIZE)[0]
    cam = camera_fitting_view(model.mean.reshape(-1, 3), (SIZE, SIZE), fill=0.6).astype(np.float32)
    p_id = np.zeros(5, np.float32)
    A = _stage_align(model, p_id, cam)
    T = _sim(5.0, 1.05, 1.0, 0.5)
    TA = np.concatenate([T[:, :2] @ A[:, :2], (T[:, :2] @ A[:, 2] + T[:, 2])[:, None]], 1)
    crops = np.stack([warp_crop(frame, A, SIZE), warp_crop(frame, TA, SIZE)])
    make_stage(tmp_path / "lrw-fits", "fit-lrw", {
        "key": ["W/test/W_1#000", "W/test/W_1#001"], "video": ["W/test/W_1"] * 2, "split": ["test"] * 2,
        "group": np.zeros(2, np.int64), "frame": np.arange(2, dtype=np.int16), "image": crops,
        "p_exp": rng.uniform(-1, 1, (2, 40)).astype(np.float32), "p_id": np.stack([p_id] * 2),
        "camera": np.stack([cam] * 2), "align": np.stack([A, TA]).astype(np.float32)}, chunk_size=4)
    pairs = lrw_pairs(model, tmp_path / "lrw-fits", 2, seed=0)
    assert len(pairs) == 2 and pairs.moved == 2
    assert pairs.fits_a is None and "not readable" in pairs.oracle_reason     # no videos: oracle says why
    i = int(np.nonzero((pairs.crops_a == crops[0]).all(axis=(1, 2, 3)))[0][0])  # the pair (a=0, b=1)
    m = slice(4, SIZE - 4)
    before = np.abs(crops[1].astype(int) - crops[0].astype(int))[m, m].mean()
    after = np.abs(pairs.crops_b[i].astype(int) - crops[0].astype(int))[m, m].mean()
    assert after < 0.3 * before, (before, after)
    assert pairs.fig_input is not None and len(pairs.fig_targets) == 1 and pairs.fig_video == "W/test/W_1"


def test_only_test_split_and_30_parameter_reason(tmp_path, model, checkpoints):
    from evaluation.data import Unavailable
    from evaluation.lrw import load_lrw, lrw_pairs, table3_ied
    from evaluation.networks import load_checkpoint

    build_lrw_fits(tmp_path, model, np.random.default_rng(0))
    lrw = load_lrw(tmp_path / "lrw-fits")
    assert set(lrw.video) == {"A/test/A_00002", "B/test/B_00003"} and len(lrw.rows) == 8
    pairs = lrw_pairs(model, tmp_path / "lrw-fits", 50, seed=0)
    assert all(str(v).split("/")[1] == "test" for v in pairs.videos) and len(pairs) == 24   # 2 x 4 x 3 ordered
    assert pairs.fits_a is not None and pairs.moved == 0
    with pytest.raises(Unavailable, match="checkpoint has 30 parameters"):
        table3_ied(load_checkpoint(checkpoints["rad"]), model, tmp_path / "lrw-fits", 4)
    got = table3_ied(load_checkpoint(checkpoints["speech"]), model, tmp_path / "lrw-fits", 4, pairs=pairs)
    assert got["lrw_pairs"] == 24 and got["lrw_ied"] > 0 and got["lrw_ied_identity"] > 0
    with pytest.raises(Unavailable, match="no fit-lrw stage"):
        load_lrw(tmp_path / "nothing")
    only_train = tmp_path / "t"
    build_lrw_fits(only_train, model, np.random.default_rng(0), videos=("A/train/A_00001",))
    with pytest.raises(Unavailable, match="no test-split videos"):
        load_lrw(only_train / "lrw-fits")
