"""render-warps and project-4dfab end to end on the tiny demo world (shared fixtures)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.shards import ShardSet
from tests.helpers import ROOT, slidergan


def _run_inprocess(kind, inputs, model, out, chunk_size, correspondence=None, **over):
    """The stage behind the CLI, run in this process without Dask (saves a Python start)."""
    from pipeline.config import load_config
    from pipeline.runner import run_stage

    cfg = load_config()
    if kind == "warps":
        from workflows.stages.warps import build_stage

        stage = build_stage(str(inputs), str(model), {**cfg.section("warps"), **over})
    else:
        from workflows.stages.project_4dfab import build_stage

        stage = build_stage(str(inputs), str(model), cfg.section("project"), correspondence=correspondence)
    report = run_stage(stage, out, chunk_size=chunk_size, cluster="inprocess", progress=False, log=None)
    assert report.ok
    return report


def _truth(path):
    with h5py.File(path, "r") as f:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][()]]
        return keys, {n: f[n][()] for n in f if n != "key"}


# ----------------------------------------------------------------------------- warps
def test_warps_rows_pair_with_their_photos(tiny_warps, tiny_fits):
    from fitting.sampling import sample_expressions

    ds, fits = ShardSet(tiny_warps), ShardSet(tiny_fits)
    assert len(ds) == 8 * 3
    assert ds.attrs["source_stage"] == str(Path(tiny_fits).resolve())
    src, keys, k = ds.read("source"), ds.keys(), ds.read("k")
    fkeys, fgroup = fits.keys(), fits.read("group")
    assert len(set(src.tolist())) == 8
    for i in range(len(ds)):
        s = int(src[i])
        assert keys[i] == f"{fkeys[s]}#{int(k[i]):02d}"
        assert ds.read("group", i) == fgroup[s]
    np.testing.assert_array_equal(ds.read("p_id"), fits.read("p_id")[src])
    np.testing.assert_array_equal(ds.read("camera"), fits.read("camera")[src])
    np.testing.assert_array_equal(ds.read("p_exp_source"), fits.read("p_exp")[src])
    # exact target parameters: the documented deterministic draw per (key, k)
    P = ds.read("p_exp")
    for i in (0, 5, len(ds) - 1):
        ref = sample_expressions(0, fkeys[int(src[i])], 3, P.shape[1])[int(k[i])]
        np.testing.assert_array_equal(P[i], ref)
    assert np.abs(P).max() <= 1.0
    img = ds.read("image")
    assert img.shape == (24, 128, 128, 3) and img.dtype == np.uint8
    # different targets give different images of the same photo
    assert np.abs(img[0].astype(int) - img[1]).mean() > 0.5
    assert (tiny_warps / "preview.png").is_file()


def test_warp_of_fitted_photo_to_its_own_expression_reproduces_it(tiny_world, tiny_fits):
    """On a real fitted demo photo: texture from the JPEG, camera/shape from the fit."""
    from fitting.images import load_image
    from fitting.model import MorphableModel
    from fitting.warp import Warper
    from scipy.ndimage import binary_erosion

    fits = ShardSet(tiny_fits)
    w = Warper(MorphableModel.load(tiny_world / "model.h5"))
    root = Path(fits.attrs["params"]["root"])
    errs = []
    for row in range(3):
        r = fits.row(row)
        photo = load_image(root / r["key"])
        src = w.prepare(photo, r["p_id"], r["p_exp"], r["camera"], r["align"])
        img, mask = w.render(src, r["p_exp"][None], return_masks=True)
        inner = binary_erosion(mask[0], iterations=1)
        errs.append(np.abs(img[0].astype(float) - r["image"])[inner].mean() / 255)
    assert max(errs) < 0.03, errs


def test_warps_rerun_is_idempotent_and_deterministic(tiny_warps, tiny_fits, tiny_world, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_warps.glob("shard-*.h5")}
    p = slidergan("render-warps", "--fits", tiny_fits, "--model", tiny_world / "model.h5", "--out", tiny_warps,
                  "--workers", "1", "--chunk-size", "8", "--no-progress", "--set", "warps.faces=8",
                  "--set", "warps.per_face=3")
    assert "0 chunks computed" in p.stdout + p.stderr or "1 current" in p.stdout + p.stderr
    assert {q.name: q.stat().st_mtime_ns for q in tiny_warps.glob("shard-*.h5")} == before
    # a second folder with other chunking: identical rows
    out = tmp_path / "w2"
    _run_inprocess("warps", tiny_fits, tiny_world / "model.h5", out, 1, faces=2, per_face=3)
    a, b = ShardSet(tiny_warps), ShardSet(out)
    ka, kb = a.keys(), b.keys()
    common = [x for x in kb if x in ka]
    assert len(common) >= 1
    for key in common:
        np.testing.assert_array_equal(a.read("image", ka.index(key)), b.read("image", kb.index(key)))


def test_render_warps_bad_input_is_one_line_exit_2(tiny_world, tmp_path):
    p = slidergan("render-warps", "--fits", tmp_path / "nope", "--model", tiny_world / "model.h5", "--out",
                  tmp_path / "w", check=False)
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr
    p = slidergan("render-warps", "--fits", tiny_world / "fits", "--model", tiny_world / "model.h5", "--out",
                  tmp_path / "w", "--set", "warps.distribution=cauchy", check=False)
    assert p.returncode == 2 and "distribution" in p.stderr


# ----------------------------------------------------------------------------- 4DFAB
def test_project_4dfab_recovers_truth_and_joint_beats_projection(tiny_4dfab, tiny_world):
    from fitting.projection import relative_error

    ds = ShardSet(tiny_4dfab)
    keys, t = _truth(tiny_world / "4dfab" / "truth.h5")
    assert len(ds) == len(keys) == 4 * 2 * 3
    idx = [keys.index(k) for k in ds.keys()]
    E = ds.datasets["p_exp"][1][1]
    p_true = t["p_exp"][idx][:, :E]
    err_joint = relative_error(ds.read("p_exp_joint"), p_true)
    err_proj = relative_error(ds.read("p_exp_projection"), p_true)
    assert err_joint < 1e-3
    assert err_proj > 10 * err_joint
    np.testing.assert_array_equal(ds.read("p_exp"), ds.read("p_exp_joint"))  # project.method = joint
    np.testing.assert_allclose(ds.read("p_id"), t["p_id"][idx][:, :ds.read("p_id").shape[1]], atol=1e-3)


def test_project_4dfab_split_groups_cameras(tiny_4dfab):
    ds = ShardSet(tiny_4dfab)
    split, ident, group = ds.read("split"), ds.read("identity"), ds.read("group")
    sess = ds.read("session")
    assert split.dtype == np.int8 and set(split.tolist()) == {0, 1}
    for i in set(ident.tolist()):
        assert len(set(split[ident == i].tolist())) == 1       # split is by identity
    pairs = {(int(i), str(s)) for i, s in zip(ident, sess)}
    assert len(set(group.tolist())) == len(pairs) == 8           # one group per identity+session
    cams = ds.read("camera")
    for g in set(group.tolist()):
        assert np.ptp(cams[group == g], axis=0).max() == 0       # one camera per group
    assert len({tuple(c) for c in cams}) == 8
    img = ds.read("image")
    assert img.shape[1:] == (128, 128, 3)
    centre = img[:, 40:100, 40:90].astype(float)
    assert np.abs(centre - 128).mean() > 10                     # a face, not just background
    assert (tiny_4dfab / "preview.png").is_file()


def test_project_4dfab_rejects_and_correspondence(tiny_world, tmp_path):
    from fitting.meshio import read_mesh
    from fitting.meshwrite import write_obj

    src = sorted((tiny_world / "4dfab").rglob("*.obj"))[0]
    mesh = read_mesh(src)
    meshes = tmp_path / "meshes"
    (meshes / "id900" / "s00").mkdir(parents=True)
    (meshes / "id901" / "s00").mkdir(parents=True)
    # a re-ordered copy of a mesh: rejected without a map, accepted with it
    rng = np.random.default_rng(0)
    perm = rng.permutation(mesh.n_vertices)              # file vertex j = model vertex perm[j]
    inv = np.argsort(perm)                               # model vertex i = file vertex inv[i]
    write_obj(meshes / "id900" / "s00" / "000.obj", mesh.vertices[perm], inv[mesh.triangles],
              colours=mesh.colours[perm])
    write_obj(meshes / "id901" / "s00" / "000.obj", mesh.vertices[:100], np.array([[0, 1, 2]]))
    (meshes / "id901" / "s00" / "001.obj").write_text("v 0 0 0\nf 1 2 3\n")
    out = tmp_path / "p"
    _run_inprocess("4dfab", meshes, tiny_world / "model.h5", out, 64)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["key"]: r["reason"] for r in rejects}
    assert reasons["id901/s00/000"] == "vertex count mismatch"
    assert reasons["id901/s00/001"] == "unreadable mesh"
    # with the correspondence map (model vertex i -> file vertex inv[i]) the re-ordered mesh works
    np.save(tmp_path / "map.npy", inv)
    out2 = tmp_path / "p2"
    _run_inprocess("4dfab", meshes, tiny_world / "model.h5", out2, 64, correspondence=str(tmp_path / "map.npy"))
    ds2 = ShardSet(out2)
    assert ds2.keys() == ["id900/s00/000"]
    from fitting.model import MorphableModel
    from fitting.projection import fit_joint

    m = MorphableModel.load(tiny_world / "model.h5")
    _, p_ref = fit_joint(m, mesh.vertices)
    np.testing.assert_allclose(ds2.read("p_exp_joint")[0], p_ref, atol=1e-4)
    # a bad map file is a usage error (ConfigError -> exit 2)
    from pipeline.config import ConfigError
    from workflows.stages.project_4dfab import build_stage

    (tmp_path / "bad.txt").write_text("1 2 x\n")
    with pytest.raises(ConfigError, match="correspondence"):
        build_stage(str(meshes), str(tiny_world / "model.h5"), {"method": "joint", "test_fraction": 0.2},
                    correspondence=str(tmp_path / "bad.txt"))
    with pytest.raises(ConfigError, match="project.method"):
        build_stage(str(meshes), str(tiny_world / "model.h5"), {"method": "magic"})


def test_projection_bits_do_not_depend_on_thread_count(tiny_world):
    """Stages promise byte-identical datasets whatever the worker layout: the projections
    must not depend on how many BLAS threads a process runs."""
    code = ("import sys, numpy as np; from fitting.model import MorphableModel; "
            "from fitting.projection import JointProjector, project_expression; "
            "m = MorphableModel.load(sys.argv[1]); rng = np.random.default_rng(0); "
            "S = m.instance(rng.normal(size=m.n_id).astype(np.float32), rng.uniform(-1, 1, m.n_exp).astype(np.float32)); "
            "a, b = JointProjector(m)(S); sys.stdout.write((np.r_[a, b, project_expression(m, S)]).tobytes().hex())")
    outs = []
    for t in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
        p = subprocess.run([sys.executable, "-c", code, str(tiny_world / "model.h5")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-1000:]
        outs.append(p.stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 100


def test_missing_photos_are_rejects_not_failures(tiny_fits, tiny_world, tmp_path):
    import shutil

    from pipeline.config import load_config
    from pipeline.runner import run_stage
    from workflows.stages.warps import build_stage

    fits = ShardSet(tiny_fits)
    keys = fits.keys()[:3]
    images = tmp_path / "images"
    images.mkdir()
    src_root = Path(fits.attrs["params"]["root"])
    shutil.copy(src_root / keys[0], images / keys[0])
    (images / keys[1]).write_bytes(b"not a jpeg")
    cfg = {**load_config().section("warps"), "faces": 100, "per_face": 2}
    stage = build_stage(str(tiny_fits), str(tiny_world / "model.h5"), cfg, images=str(images))
    stage.keys = keys                                  # three photos: present, corrupt, missing
    out = tmp_path / "w"
    rep = run_stage(stage, out, chunk_size=3, cluster="inprocess", progress=False, log=None)
    assert rep.ok and rep.n_rows == 2
    rejects = {r["key"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {keys[1], keys[2]}
    assert all(r["reason"].startswith("photo") for r in rejects.values())
    assert ShardSet(out).keys() == [f"{keys[0]}#00", f"{keys[0]}#01"]


def test_render_warps_refuses_another_model(tiny_fits, tmp_path):
    from fitting.demo_model import build_demo_model
    from pipeline.config import ConfigError
    from workflows.stages.warps import build_stage

    other = tmp_path / "other.h5"
    build_demo_model(seed=1, n_id=4, n_exp=3, n_speech=0, texture=False).save(other)
    with pytest.raises(ConfigError, match="another model"):
        build_stage(str(tiny_fits), str(other), {"faces": 2, "per_face": 1})


def _speech_warps(tiny_world, tiny_fits, out, per_face, **over):
    """A 40-wide speech-warps stage of 2 photos -> (stage, fits, p_exp, source rows, draw index, fit keys)."""
    _run_inprocess("warps", tiny_fits, tiny_world / "model.h5", out, 2, faces=2, per_face=per_face, speech=10, **over)
    ds, fits = ShardSet(out), ShardSet(tiny_fits)
    P = ds.read("p_exp")
    assert P.shape == (2 * per_face, 40)
    return ds, fits, P, ds.read("source"), ds.read("k"), fits.keys()


def test_speech_warps_draw_speech_beside_the_expression(tiny_world, tiny_fits, tmp_path):
    """warps.speech 10: the 30 expression draws are the paper warps' own, 10 speech draws
    follow (their own stream, warps.speech_scale), the source has zero speech, and the image is
    the warper's render of the 40-vector (a warp with the speech part zeroed differs from it)."""
    from fitting.images import load_image
    from fitting.model import MorphableModel
    from fitting.sampling import sample_expressions
    from fitting.warp import Warper
    from pipeline.config import ConfigError

    ds, fits, P, src, k, keys = _speech_warps(tiny_world, tiny_fits, tmp_path / "ws", 2, speech_scale=0.5)
    model = MorphableModel.load(tiny_world / "model.h5")
    w = Warper(model)
    for i in range(len(ds)):
        key = keys[int(src[i])]
        np.testing.assert_array_equal(P[i, :30], sample_expressions(0, key, 2, 30)[int(k[i])])
        np.testing.assert_array_equal(P[i, 30:], sample_expressions(0, f"{key}#speech", 2, 10, "uniform", 0.5)[int(k[i])])
        np.testing.assert_array_equal(ds.read("p_exp_source", i),
                                      np.concatenate([fits.read("p_exp", int(src[i])), np.zeros(10, np.float32)]))
    assert np.abs(P[:, 30:]).max() <= 0.5 and np.abs(P[:, 30:]).max() > 0.1
    r = fits.row(int(src[0]))
    s = w.prepare(load_image(Path(fits.attrs["params"]["root"]) / r["key"]), r["p_id"], r["p_exp"], r["camera"],
                  r["align"])
    np.testing.assert_array_equal(ds.read("image", 0), w.render(s, P[:1])[0])
    silent = w.render(s, np.concatenate([P[:1, :30], np.zeros((1, 10), np.float32)], 1))[0]
    assert np.abs(silent.astype(int) - ds.read("image", 0)).mean() > 0.05
    # the paper's warps keep their params hash (the new keys only count when speech is on)
    from workflows.stages.warps import build_stage
    from pipeline.config import load_config
    cfg = load_config().section("warps")
    plain = build_stage(str(tiny_fits), str(tiny_world / "model.h5"), cfg).params()
    assert not {"speech", "speech_scale", "around_source"} & set(plain["warps"])
    with pytest.raises(ConfigError, match="around_source must be >= 0"):
        build_stage(str(tiny_fits), str(tiny_world / "model.h5"), dict(cfg, around_source=-0.1))
    with pytest.raises(ConfigError, match="the model has 10 speech components"):
        build_stage(str(tiny_fits), str(tiny_world / "model.h5"), dict(cfg, speech=11))


def test_warps_around_source_draw_small_changes_of_the_photo_expression(tiny_world, tiny_fits, tmp_path):
    """warps.around_source s: each draw's expression is the photo's fitted p_exp plus the draw of
    scale s that the independent draws would have made at scale s (the same stream), so every
    warp lies within s of its photo in each parameter; the speech part is drawn as before."""
    from fitting.sampling import sample_expressions

    ds, fits, P, src, k, keys = _speech_warps(tiny_world, tiny_fits, tmp_path / "wa", 3, around_source=0.25)
    for i in range(len(ds)):
        key, p_fit = keys[int(src[i])], fits.read("p_exp", int(src[i]))
        want = p_fit + sample_expressions(0, key, 3, 30, "uniform", 0.25)[int(k[i])]
        np.testing.assert_allclose(P[i, :30], want, rtol=0, atol=1e-6)
        assert np.abs(P[i, :30] - p_fit).max() <= 0.25 + 1e-6
        np.testing.assert_array_equal(P[i, 30:], sample_expressions(0, f"{key}#speech", 3, 10, "uniform", 0.7)[int(k[i])])
    assert np.abs(P[:, :30] - fits.read("p_exp")[src]).max() > 0.05     # the draws do move the expression


def test_residual_warps_are_the_photo_crop_plus_the_render_change(tiny_world, tiny_fits, tmp_path):
    """warps.residual: every image is the photo's aligned crop plus R(p_k) - R(p_fit), computed
    here pixel by pixel from two separate float renders; where the two renders agree the
    photo's own crop pixel comes back exactly; the key is out of the params hash when off."""
    from fitting.images import load_image
    from fitting.model import MorphableModel
    from fitting.warp import Warper
    from fitting.warp_image import crop_photo
    from pipeline.config import ConfigError, load_config
    from workflows.stages.warps import build_stage

    ds, fits, P, src, k, keys = _speech_warps(tiny_world, tiny_fits, tmp_path / "wr", 2, around_source=0.3,
                                              residual=True)
    w = Warper(MorphableModel.load(tiny_world / "model.h5"))
    for i in (0, 3):
        r = fits.row(int(src[i]))
        photo = load_image(Path(fits.attrs["params"]["root"]) / r["key"])
        s = w.prepare(photo, r["p_id"], r["p_exp"], r["camera"], r["align"])
        crop = np.clip(np.round(crop_photo(photo, r["align"], 128) * 255.0), 0, 255)
        new, _ = w.render_float(s, P[i:i + 1])
        old, _ = w.render_float(s, ds.read("p_exp_source", i)[None])
        got = ds.read("image", i).astype(np.float64)
        for (y, x) in [(0, 0), (64, 64), (90, 64), (100, 40), (127, 127)]:
            want = np.clip(np.round((crop[y, x] / 255.0 + new[0, y, x] - old[0, y, x]) * 255.0), 0, 255)
            np.testing.assert_allclose(got[y, x], want, atol=1.0)
        same = np.all(new[0] == old[0], axis=-1)
        assert same.mean() > 0.3 and not same.all()          # the edit changes part of the face only
        np.testing.assert_array_equal(got[same], crop[same])
        assert np.abs(got[~same] - crop[~same]).mean() > 0.5  # and there it does change the photo
    cfg = load_config().section("warps")
    assert "residual" not in build_stage(str(tiny_fits), str(tiny_world / "model.h5"), cfg).params()["warps"]
    on = build_stage(str(tiny_fits), str(tiny_world / "model.h5"), dict(cfg, residual=True)).params()["warps"]
    assert on["residual"] is True
    with pytest.raises(ConfigError, match="warps.residual must be true or false"):
        build_stage(str(tiny_fits), str(tiny_world / "model.h5"), dict(cfg, residual="yes"))
