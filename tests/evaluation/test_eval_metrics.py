"""Metrics against explicit per-row loops."""
import math

import numpy as np
import pytest

from evaluation import metrics


def test_relative_errors_match_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    a[3] = 0.0  # ||p_ref|| = 0 is left out
    ref = [math.sqrt(sum((a[i, k] - b[i, k]) ** 2 for k in range(5))) / math.sqrt(sum(a[i, k] ** 2 for k in range(5)))
           for i in range(9) if i != 3]
    got = metrics.relative_errors(a, b)
    assert got == pytest.approx(ref)
    assert metrics.mean_relative_error(a, b) == pytest.approx(sum(ref) / len(ref))
    assert metrics.mean_relative_error(np.zeros((2, 3)), b[:2, :3]) is None
    # a wider estimate is compared on the reference's columns
    wide = np.concatenate([b, rng.normal(size=(9, 4))], 1)
    assert metrics.relative_errors(a, wide) == pytest.approx(ref)
    with pytest.raises(ValueError):
        metrics.relative_errors(a, b[:4])


def test_cosine_and_accuracy_match_loop():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    ref = [sum(a[i] * b[i]) / math.sqrt(sum(a[i] ** 2) * sum(b[i] ** 2)) for i in range(6)]
    assert metrics.cosine_similarity(a, b) == pytest.approx(ref)
    assert metrics.accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert metrics.accuracy([], []) is None


def test_pixel_embedder_identity_cos():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    emb = metrics.PixelEmbedder()
    assert metrics.identity_cos(emb, x, x) == pytest.approx(1.0)
    y = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    fx, fy = emb.embed(x), emb.embed(y)
    ref = np.mean([fx[i] @ fy[i] / (np.linalg.norm(fx[i]) * np.linalg.norm(fy[i])) for i in range(3)])
    assert metrics.identity_cos(emb, x, y) == pytest.approx(ref)
    assert metrics.identity_cos(emb, x[:0], y[:0]) is None


def test_dlib_embedder_on_a_real_face():
    """menpo3d's james.jpg: the face and a slightly shifted crop are the same person."""
    from pathlib import Path

    import importlib.util

    from PIL import Image

    pkg = Path(importlib.util.find_spec("menpo3d").submodule_search_locations[0])  # no menpo import
    img = np.asarray(Image.open(pkg / "data" / "james.jpg").convert("RGB"))
    h, w = img.shape[:2]
    s = min(h, w)
    a = np.asarray(Image.fromarray(img[:s, :s]).resize((160, 160)))
    b = np.asarray(Image.fromarray(img[6:s, 6:s]).resize((160, 160)))
    f = metrics.DlibEmbedder().embed(np.stack([a, b]))
    assert f.shape == (2, 128)
    assert metrics.cosine_similarity(f[:1], f[1:])[0] > 0.95


def test_expression_classifier_with_given_features():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 5)
    images = np.zeros((15, 8, 8, 3), np.uint8)
    images[..., 0] = (labels * 80 + 20)[:, None, None] + rng.integers(0, 10, (15, 8, 8))
    clf = metrics.ExpressionClassifier(features=lambda ims: np.asarray(ims, float).mean(axis=(1, 2)))
    clf.fit(images, labels)
    assert (clf.predict(images) == labels).all()
    with pytest.raises(ValueError, match="two"):
        metrics.ExpressionClassifier(features=lambda ims: np.ones((len(ims), 1))).fit(images[:5], labels[:5])


def test_landmark_features_shape_and_normalisation():
    rng = np.random.default_rng(4)
    ims = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    f, found = metrics.landmark_features(ims)
    assert f.shape == (2, 136) and found.shape == (2,)
    lm = f.reshape(2, 68, 2)
    assert np.abs(lm.mean(1)).max() < 1e-9
    assert np.linalg.norm(lm[:, 45] - lm[:, 36], axis=1) == pytest.approx([1.0, 1.0])


def test_identity_embedder_selection(tmp_path):
    """auto picks train-identity weights next to the checkpoint's training folder, else dlib."""
    import torch

    from evaluation.options import EvalOptions, make_identity_embedder
    from model.identity import IdentityEmbedder

    run = tmp_path / "run"
    run.mkdir()
    ckpt = tmp_path / "T" / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    assert isinstance(make_identity_embedder(EvalOptions(identity="auto"), run, [ckpt]), metrics.DlibEmbedder)
    assert isinstance(make_identity_embedder(EvalOptions(identity="pixels"), run, [ckpt]), metrics.PixelEmbedder)
    cfg = {"layers": [1, 1, 1, 1], "width": 4, "input_size": 32, "num_features": 8}
    net = IdentityEmbedder(cfg)
    torch.save({"format": "slidergan-identity/1", "config": net.config, "state_dict": net.net.state_dict()},
               tmp_path / "T" / "identity.pt")
    emb = make_identity_embedder(EvalOptions(identity="auto", device="cpu"), run, [ckpt])
    assert isinstance(emb, metrics.TorchEmbedder)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    f = emb.embed(x)
    assert f.shape == (3, 8) and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        make_identity_embedder(EvalOptions(identity=str(tmp_path / "nope.pt")), run, [ckpt])


def test_hog_matches_pixel_loop():
    """Each cell's histogram = sum over its pixels of |grad| into the orientation bin, L2-normalised."""
    rng = np.random.default_rng(5)
    im = rng.integers(0, 256, (1, 20, 24, 3), dtype=np.uint8)
    got = metrics.hog_features(im, cell=8, bins=6)
    from PIL import Image

    a = np.asarray(Image.fromarray(im[0]).convert("L"), np.float64)
    gy, gx = np.gradient(a)
    ref = []
    for ci in range(20 // 8):
        for cj in range(24 // 8):
            h = np.zeros(6)
            for i in range(ci * 8, ci * 8 + 8):
                for j in range(cj * 8, cj * 8 + 8):
                    ang = math.atan2(gy[i, j], gx[i, j]) % math.pi
                    h[min(int(ang / math.pi * 6), 5)] += math.hypot(gx[i, j], gy[i, j])
            ref.append(h / (np.linalg.norm(h) + 1e-6))
    assert got.shape == (1, 2 * 3 * 6)
    assert got[0] == pytest.approx(np.concatenate(ref))


def test_vertex_errors_match_meshes():
    """The vertex-space twin against meshes built by model.instance (slow, obviously right)."""
    from tests.evaluation.evalfixtures import tiny_model

    from evaluation import protocols

    model = tiny_model()
    # vertex_rel_errors assumes jointly orthonormal expression + speech columns (true of the demo
    # model; the fixture draws the two bases independently)
    q, _ = np.linalg.qr(np.concatenate([model.U_exp, model.U_speech], 1).astype(np.float64))
    model.U_exp, model.U_speech = q[:, :30], q[:, 30:]
    rng = np.random.default_rng(9)
    ref, est = rng.uniform(-1, 1, (6, 40)), rng.uniform(-1, 1, (6, 40))
    ref[2] = 0.0                                            # the neutral face draws no motion: left out
    neutral = model.instance(p_exp=np.zeros(40))

    def slow(a, b):
        out = []
        for i in range(len(a)):
            motion = model.instance(p_exp=a[i]) - neutral
            if np.linalg.norm(motion) < 1e-9:
                continue
            out.append(np.linalg.norm(model.instance(p_exp=b[i]) - model.instance(p_exp=a[i])) / np.linalg.norm(motion))
        return np.mean(out)

    assert metrics.mean_vertex_error(model, ref, est) == pytest.approx(slow(ref, est), rel=1e-5)
    # a 30-column reference is compared on the expression columns only (speech ignored)
    assert metrics.mean_vertex_error(model, ref[:, :30], est) == pytest.approx(
        slow(ref[:, :30], est[:, :30]), rel=1e-5)
    assert metrics.mean_vertex_error(None, ref, est) is None
    assert metrics.mean_vertex_error(model, np.zeros((2, 30)), est[:2, :30]) is None
    # the protocols' twins: Table 4 and the reader
    ed = protocols.RealEdits(inputs=None, p_fit=ref[:, :30], p_trg=est[:, :30], outputs=np.zeros((6, 4, 4, 3)),
                             d_fit=est[:, :30], d_out=ref[:, :30])
    got = protocols.d_errors(ed, model)
    assert got["d_rel_error_fit_vertex"] == pytest.approx(slow(ref[:, :30], est[:, :30]), rel=1e-5)
    assert got["d_rel_error_trg_vertex"] == pytest.approx(slow(est[:, :30], ref[:, :30]), rel=1e-5)
    assert got["d_rel_error_fit"] == pytest.approx(metrics.mean_relative_error(ref[:, :30], est[:, :30]))
    assert protocols.d_errors(ed)["d_rel_error_trg_vertex"] is None

    class Reader:
        def predict(self, ims):
            assert ims.dtype == np.uint8
            return est[: len(ims), :30].astype(np.float32)

    r = protocols.reader_errors(Reader(), np.zeros((6, 4, 4, 3)), ref[:, :30], model, "t1")
    assert r["reader_vertex_error_t1"] == pytest.approx(slow(ref[:, :30], est[:, :30]), rel=1e-5)
    assert r["reader_rel_error_t1"] == pytest.approx(metrics.mean_relative_error(ref[:, :30], est[:, :30]), rel=1e-6)
