"""Protocols with hand-made networks whose outputs are known, against explicit loops."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from evaluation import ied, metrics, protocols
from evaluation.data import Unavailable, held_out_identity
from evaluation.networks import Networks, fit_width, generate, regress


class ConstG(nn.Module):
    """G(x, c): every pixel of channel k is tanh(c[:, k]) (k < 3); returns (out, colour, mask)."""

    def forward(self, x, c, c_src=None):
        v = torch.tanh(c[:, :3])[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return v, v, torch.ones_like(x[:, :1])


class IdentityG(nn.Module):
    def forward(self, x, c, c_src=None):
        return x, x, torch.zeros_like(x[:, :1])


class MeanD(nn.Module):
    """D(x) = (patch, [mean of channel 0, 1, 2, 0, ...]) in [-1, 1] units."""

    def __init__(self, E):
        super().__init__()
        self.E = E

    def forward(self, x):
        m = x.mean(dim=(2, 3))
        p = torch.zeros(len(x), self.E)
        p[:, :3] = m
        return x[:, :1], p


def nets(G, E=6):
    return Networks(name="t", variant="t", G=G, D=MeanD(E), n_params=E)


def images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def expected_const(p, size):
    """What ConstG + generate() must return for parameters p [N,E] -> [N,size,size,3] in [0,1]."""
    v = (np.tanh(p[:, :3]) + 1) / 2
    return np.broadcast_to(v[:, None, None, :], (len(p), size, size, 3))


def test_generate_and_regress_conventions():
    x = images(3)
    p = np.random.default_rng(1).uniform(-1, 1, (3, 6)).astype(np.float32)
    assert np.allclose(generate(nets(ConstG()), x, p, batch_size=2), expected_const(p, 8), atol=1e-6)
    out = generate(nets(IdentityG()), x, p)
    assert np.allclose(out, x / 255.0, atol=1e-6)          # [0,255] -> [-1,1] -> [0,1] round trip
    r = regress(nets(IdentityG()), x)
    assert np.allclose(r[:, :3], (x / 255.0 * 2 - 1).mean(axis=(1, 2)), atol=1e-5)
    assert fit_width(np.ones((2, 4)), 6)[:, 4:].sum() == 0 and fit_width(np.ones((2, 8)), 6).shape == (2, 6)


def test_same_group_pairs():
    group = np.array([0, 0, 0, 1, 2, 2])
    pairs = protocols.same_group_pairs(group, 100, seed=0)
    assert len(pairs) == 6 + 2                                # all ordered pairs within groups
    assert all(group[i] == group[j] and i != j for i, j in pairs)
    assert len({tuple(p) for p in pairs}) == len(pairs)
    few = protocols.same_group_pairs(group, 3, seed=1)
    assert len(few) == 3 and np.array_equal(few, protocols.same_group_pairs(group, 3, seed=1))
    assert len(protocols.same_group_pairs([0, 1, 2], 5)) == 0


def test_table1_ied_matches_loop():
    x = images(6, seed=2)
    p = np.random.default_rng(3).uniform(-1, 1, (6, 6)).astype(np.float32)
    group = np.array([0, 0, 1, 1, 1, 2])
    res = protocols.table1_ied(nets(ConstG()), x, p, group, n_pairs=5, seed=4)
    pairs = protocols.same_group_pairs(group, 5, seed=4)
    ref = [ied(expected_const(p[j:j + 1], 8)[0], x[j] / 255.0) for i, j in pairs]
    base = [ied(x[i] / 255.0, x[j] / 255.0) for i, j in pairs]
    assert res["ied"] == pytest.approx(np.mean(ref), rel=1e-5)
    assert res["ied_identity"] == pytest.approx(np.mean(base))
    assert res["n_pairs"] == 5
    # doing nothing scores the do-nothing baseline
    same = protocols.table1_ied(nets(IdentityG()), x, p, group, n_pairs=5, seed=4)
    assert same["ied"] == pytest.approx(same["ied_identity"], abs=1e-6)
    with pytest.raises(Unavailable):
        protocols.table1_ied(nets(ConstG()), x[:3], p[:3], [0, 1, 2], 5)


def test_real_edits_and_d_errors_match_loop():
    x = images(5, seed=5)
    p_fit = np.random.default_rng(6).uniform(-1, 1, (5, 6)).astype(np.float32)
    perm = protocols.target_permutation(5, seed=0)
    assert sorted(perm) == list(range(5)) and all(perm[i] != i for i in range(5))
    ed = protocols.real_edits(nets(ConstG()), x, p_fit, seed=0)
    got = protocols.d_errors(ed)
    fit_ref, trg_ref = [], []
    for i in range(5):
        d_in = np.zeros(6)
        d_in[:3] = (x[i] / 255.0 * 2 - 1).mean(axis=(0, 1))
        fit_ref.append(np.linalg.norm(p_fit[i] - d_in) / np.linalg.norm(p_fit[i]))
        p_t = p_fit[perm[i]]
        d_out = np.zeros(6)
        d_out[:3] = np.tanh(p_t[:3])
        trg_ref.append(np.linalg.norm(p_t - d_out) / np.linalg.norm(p_t))
    assert got["d_rel_error_fit"] == pytest.approx(np.mean(fit_ref), rel=1e-4)
    assert got["d_rel_error_trg"] == pytest.approx(np.mean(trg_ref), rel=1e-4)


def test_expression_presets_and_recognition():
    x = images(6, seed=7)
    labels = np.array([0, 0, 2, 2, 2, 5])
    net = nets(IdentityG())
    presets, have = protocols.expression_presets(net, x, labels, 7)
    assert list(have) == [True, False, True, False, False, True, False]
    r = regress(net, x)
    for c in (0, 2, 5):
        assert presets[c] == pytest.approx(r[labels == c].mean(0), abs=1e-6)
    assert not presets[1].any()

    class ByRed:
        """Predicts class floor(7 * mean red) — the class ConstG paints for a preset below."""

        def predict(self, ims):
            return np.floor(np.asarray(ims)[..., 0].mean(axis=(1, 2)) * 7).astype(int).clip(0, 6)

    cls = np.array([1, 3, 4])
    P = np.zeros((7, 6), np.float32)
    P[cls, 0] = np.arctanh(2 * (cls + 0.5) / 7 - 1)
    have = np.isin(np.arange(7), cls)
    res = protocols.expression_recognition(nets(ConstG()), ByRed(), x, P, have)
    assert res["expr_recognition_acc"] == 1.0 and res["expr_n"] == 18
    # a generator that ignores p: accuracy = share of photos the classifier already puts in each class
    res = protocols.expression_recognition(nets(IdentityG()), ByRed(), x, P, have)
    pred = ByRed().predict(x / 255.0)
    ref = np.mean([pred[i] == c for c in cls for i in range(6)])
    assert res["expr_recognition_acc"] == pytest.approx(ref)
    with pytest.raises(Unavailable):
        protocols.expression_recognition(nets(ConstG()), ByRed(), x, P, np.eye(7, dtype=bool)[0])


def test_refit_error_plumbing():
    """Detected landmarks of known faces go through the fit stage's fit (fitting.photo) with
    the run's fit: section; photos without a face are counted."""
    from tests.evaluation.evalfixtures import tiny_model
    from fitting.fit import LandmarkFitter
    from render.camera import camera_fitting_view, project

    model = tiny_model(n_speech=0)
    rng = np.random.default_rng(8)
    p_trg = rng.uniform(-1, 1, (4, 30)).astype(np.float32)
    cam = camera_fitting_view(model.mean.reshape(-1, 3), (128, 128))
    lms = [project(model.landmarks_3d(p_exp=p), cam) for p in p_trg]
    outs = np.zeros((4, 8, 8, 3), np.float32)
    outs[:, 0, 0, 0] = np.arange(4) / 255.0          # row id hidden in a pixel

    class FakeDetector:
        def detect(self, im):
            i = int(im[0, 0, 0])
            return None if i == 2 else lms[i]

    # the fake detections are exact projections of the fixed landmark vertices
    cfg = {"iterations": 5, "photometric": "none", "landmark_calibration": "none", "contour": "fixed",
           "sigma_detected": 0.01, "image_domain": "render"}     # render: the section as given, no photo_overrides
    fitter = protocols.refitter(model, cfg, detector=FakeDetector())
    assert fitter.options(1).sigma == 0.01 and fitter.options(0).sigma == fitter.cfg["sigma"]
    ed = protocols.RealEdits(inputs=None, p_fit=p_trg, p_trg=p_trg, outputs=outs, d_fit=None, d_out=None)
    res = protocols.refit_error(fitter, ed)
    assert res["refit_no_face"] == 1 and res["refit_n"] == 3
    head = protocols.refit_error(fitter, ed.head(2))             # evaluate.refit_images: the first N edits
    assert head["refit_no_face"] == 0 and head["refit_n"] == 2
    # the reference: the stage's options for detected landmarks (fit.sigma_detected)
    fit = LandmarkFitter(model, fitter.options(1)).fit(np.stack([lms[i] for i in (0, 1, 3)]))
    ref = np.mean([np.linalg.norm(p_trg[i] - fit.p_exp[k]) / np.linalg.norm(p_trg[i]) for k, i in enumerate((0, 1, 3))])
    assert res["exp_rel_error_refit"] == pytest.approx(ref, rel=1e-5)
    # the floor is the same measurement against the photos' own fits
    assert protocols.refit_floor(fitter, outs, p_trg) == pytest.approx(ref, rel=1e-5)
    nobody = protocols.refitter(model, cfg, detector=type("None", (), {"detect": lambda self, im: None})())
    with pytest.raises(Unavailable, match="no face"):
        protocols.refit_error(nobody, ed)
    assert protocols.refit_floor(nobody, outs, p_trg) is None


def test_held_out_identity_is_stable():
    ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1] * 2)
    a = held_out_identity(ids, 0.3, seed=0)
    assert not a[ids == -1].any()
    for u in range(10):
        assert len(set(a[ids == u])) == 1                  # all photos of an identity on one side
    # an identity's side does not depend on which other identities are present
    b = held_out_identity(np.array([3, 7]), 0.3, seed=0)
    assert b[0] == a[3] and b[1] == a[7]
    assert held_out_identity(np.arange(2000), 0.3).mean() == pytest.approx(0.3, abs=0.05)
    # unknown identities (real EmotioNet) are split photo by photo on the key
    keys = np.array([f"img{i}.jpg" for i in range(2000)], object)
    c = held_out_identity(np.full(2000, -1), 0.3, seed=0, keys=keys)
    assert c.mean() == pytest.approx(0.3, abs=0.05)
    assert np.array_equal(c[:10], held_out_identity(np.full(10, -1), 0.3, seed=0, keys=keys[:10]))


def test_lazy_images_and_balanced_rows(eval_run):
    from evaluation.data import balanced_rows, load_fab, load_real
    from pipeline.shards import ShardSet

    real = load_real(eval_run, 0.3, 0)
    full = ShardSet(eval_run / "fits").read("image")
    assert real.images.shape == full.shape and len(real.images) == len(full)
    idx = np.array([5, 1, 5, 23])                           # any order, repeats
    assert np.array_equal(real.images[idx], full[idx])
    assert np.array_equal(real.images[3], full[3]) and np.array_equal(real.images[2:4], full[2:4])
    fab = load_fab(eval_run)                                # split == 1 rows only
    split = ShardSet(eval_run / "4dfab-params").read("split")
    rows = np.nonzero(split == 1)[0]
    assert len(fab.images) == len(rows)
    assert np.array_equal(fab.images[[0, 2]], ShardSet(eval_run / "4dfab-params").read("image", rows[[0, 2]]))
    labels = np.array([0, 0, 0, 1, 2, 2, 0, 1])
    b = balanced_rows(labels, range(3), 2, seed=0)
    assert list(np.bincount(labels[b])) == [2, 2, 2] and list(b) == sorted(b)
    assert len(set(b)) == len(b)


def test_generate_resizes_to_the_checkpoint_size():
    """A 16-px checkpoint on 32-px images: G and D see 16 px, outputs come back at 32 px."""
    seen = []

    class SizeG(IdentityG):
        def forward(self, x, c, c_src=None):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x, c)

    class SizeD(MeanD):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    net = Networks(name="t", variant="t", G=SizeG(), D=SizeD(6), n_params=6, model_config={"image_size": 16})
    x = np.full((2, 32, 32, 3), 128, np.uint8)
    out = generate(net, x, np.zeros((2, 6)))
    assert out.shape == (2, 32, 32, 3) and np.allclose(out, 128 / 255, atol=1e-5)
    regress(net, x)
    assert seen == [(16, 16), (16, 16)]
