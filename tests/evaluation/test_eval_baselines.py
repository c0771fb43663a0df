"""Baselines (copy-input, oracle-3d) as pseudo-networks through the real protocol functions."""
import numpy as np
import pytest

from evaluation import ied, protocols
from evaluation.baselines import IDENTITY_ALIGN, CopyInput, WarpFit, WarpOracle, make_warper, warps_options
from evaluation.data import Unavailable
from evaluation.networks import Networks, generate, regress


def images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class MeanD:
    """D(x) = (patch, [mean of channels 0..2, 0, ...]) (torch)."""

    def __init__(self, E):
        self.E = E

    def __call__(self, x):
        import torch

        p = torch.zeros(len(x), self.E)
        p[:, :3] = x.mean(dim=(2, 3))
        return x[:, :1], p


def test_copy_input_through_the_protocols():
    x = images(5, seed=1)
    d = Networks(name="rad", variant="rad", G=None, D=MeanD(6), n_params=6)
    copy = CopyInput(8, regressor=d)
    p = np.random.default_rng(2).uniform(-1, 1, (5, 6)).astype(np.float32)
    assert np.array_equal(generate(copy, x, p), x.astype(np.float32) / 255)
    r = regress(copy, x)                       # the named checkpoint's D, padded to the baseline's width
    assert r.shape == (5, 8) and np.allclose(r[:, :6], regress(d, x)) and not r[:, 6:].any()
    res = protocols.table1_ied(copy, x, p, [0, 0, 1, 1, 1], n_pairs=4, seed=0)
    assert res["ied"] == pytest.approx(res["ied_identity"], rel=1e-6)
    ed = protocols.real_edits(copy, x, p, seed=0)
    perm = protocols.target_permutation(5, 0)
    ref = np.mean([np.linalg.norm(p[perm[i]] - regress(d, x[i:i + 1])[0]) / np.linalg.norm(p[perm[i]])
                   for i in range(5)])
    assert protocols.d_errors(ed)["d_rel_error_trg"] == pytest.approx(ref, rel=1e-5)
    with pytest.raises(Unavailable, match="no discriminator"):
        regress(CopyInput(6), x)


def smooth_model():
    """A 20x20 sheet whose expression components are rigid moves (x, y shift) and a z bump,
    so a warp with the target expression must reproduce a render of it."""
    from fitting.model import MorphableModel

    g = 20
    y, x = np.meshgrid(np.linspace(1, -1, g), np.linspace(-1, 1, g), indexing="ij")
    z = 0.3 * np.exp(-(x ** 2 + y ** 2))
    V = (np.stack([x, y, z], -1).reshape(-1, 3) * 80.0)
    N = len(V)
    tris = []
    for i in range(g - 1):
        for j in range(g - 1):
            a, b, c, d = i * g + j, i * g + j + 1, (i + 1) * g + j, (i + 1) * g + j + 1
            tris += [[a, c, b], [b, c, d]]
    ex = np.zeros((N, 3))
    ex[:, 0] = 1
    ey = np.zeros((N, 3))
    ey[:, 1] = 1
    bump = np.zeros((N, 3))
    bump[:, 2] = np.exp(-((x.ravel() - 0.3) ** 2 + y.ravel() ** 2) / 0.1)
    U = np.stack([e.ravel() / np.linalg.norm(e) for e in (ex, ey, bump)], 1)
    U_id = bump.ravel()[:, None] / np.linalg.norm(bump)
    scale = np.array([12.0, 12.0, 20.0]) * np.linalg.norm(ex)      # p = 1: 12 model units of shift
    lm = np.arange(68) % 3                                          # landmarks in a corner: no mouth
    return MorphableModel(mean=V.reshape(-1), U_id=U_id.astype(np.float32), ev_id=np.array([100.0]),
                          U_exp=U.astype(np.float32), ev_exp=scale ** 2, U_speech=None, ev_speech=None,
                          trilist=np.array(tris), landmarks=lm.astype(np.int64), source="smooth test model")


def test_oracle_warps_a_render_to_the_target_render():
    """A render of (p_id, p_src) warped by the oracle to p_trg ~ the render of (p_id, p_trg);
    unregistered images make the protocol unavailable with the recorded reason."""
    from render import render
    from render.camera import camera_fitting_view

    model = smooth_model()
    S = 64
    mean = model.mean.reshape(-1, 3)
    cam = camera_fitting_view(mean, (S, S), fill=0.6).astype(np.float32)
    cols = np.stack([0.5 + 0.4 * np.sin(mean[:, 0] / 15), 0.5 + 0.4 * np.cos(mean[:, 1] / 12),
                     np.full(len(mean), 0.4)], 1).astype(np.float32)
    bg = np.full((S, S, 3), 60, np.uint8)
    p_id = np.array([0.5], np.float32)

    def shot(p):
        return render(model.instance(p_id=p_id, p_exp=p), model.trilist, cols, cam, background=bg).image_uint8()

    p_src = np.array([0.0, 0.0, 0.3], np.float32)
    p_trg = np.array([[1.0, -0.5, 0.8], [-0.8, 0.6, -0.5]], np.float32)
    src = shot(p_src)
    targets = np.stack([shot(p) for p in p_trg]).astype(np.float64) / 255
    opts, _ = warps_options(__import__("pathlib").Path("/nonexistent"), {"space": "crop", "mouth": True})
    oracle = WarpOracle(3, lambda size: make_warper(model, size, opts))
    oracle.register(src[None], [WarpFit(src, p_id, p_src, cam, IDENTITY_ALIGN)])
    out = generate(oracle, np.stack([src, src]), p_trg)
    d_oracle = ied(out, targets)
    d_copy = ied(np.stack([src, src]) / 255.0, targets)
    assert (d_oracle < 0.2 * d_copy).all(), (d_oracle, d_copy)
    # the same calls the warps stage makes, by hand
    w = make_warper(model, S, opts)
    ref = w.render(w.prepare(src, p_id, p_src, cam, IDENTITY_ALIGN), p_trg)
    assert np.array_equal(np.round(out * 255).astype(np.uint8), ref)
    other = images(1, S, seed=3)
    with pytest.raises(Unavailable, match="no 3D fit"):
        generate(oracle, other, p_trg[:1])
    oracle.unavailable(other, "oracle-3d: stage lacks camera")
    with pytest.raises(Unavailable, match="lacks camera"):
        protocols.table1_ied(oracle, np.concatenate([other, other]), np.zeros((2, 3)), [0, 0], 2)


def test_warps_options_prefer_the_warps_stage(tmp_path):
    import json

    (tmp_path / "warps").mkdir()
    (tmp_path / "warps" / "_stage.json").write_text(json.dumps(
        {"params": {"backend": "fast", "warps": {"space": "full", "mouth": False, "supersample": 2}}}))
    opts, where = warps_options(tmp_path, {"space": "crop"})
    assert opts == {"space": "full", "mouth": False, "supersample": 2, "backend": "fast"} and "_stage.json" in where
    opts, where = warps_options(tmp_path / "none", {"space": "crop"})
    assert opts == {"space": "crop"} and "config" in where


def test_gap_left_is_the_share_of_copy_to_oracle_still_to_go():
    from evaluation.baselines import COPY, ORACLE
    from evaluation.registry import Result as _Result
    from evaluation.tables import gap_left as _gap_left

    def row(name, v):
        r = _Result(type("N", (), {"name": name})())
        if v is not None:
            r.metrics["reader_vertex_error_trg"] = v
        else:
            r.fail(["reader_vertex_error_trg"], "no reader")
        return r

    models = {"good": row("good", 0.9), "bad": row("bad", 1.7), "none": row("none", None)}
    base = {COPY: row(COPY, 1.5), ORACLE: row(ORACLE, 0.7)}
    _gap_left(models, base, "reader_vertex_error_trg")
    k = "reader_vertex_error_trg_gap"
    assert models["good"].metrics[k] == pytest.approx((0.9 - 0.7) / (1.5 - 0.7))
    assert models["bad"].metrics[k] == pytest.approx(1.25)
    assert base[COPY].metrics[k] == pytest.approx(1.0) and base[ORACLE].metrics[k] == pytest.approx(0.0)
    assert models["none"].metrics[k] is None and models["none"].reasons[k] == "no reader"
    flat = {COPY: row(COPY, 0.7), ORACLE: row(ORACLE, 0.7)}
    _gap_left({"m": row("m", 0.8)}, flat, "reader_vertex_error_trg")
    assert flat[COPY].reasons[k] == "oracle-3d is no better than copy-input"
