"""The offline demo world built by ``slidergan make-demo`` (the session's ``tiny_world``)."""
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import TINY_WORLD, slidergan

SIZES = dict(s.split("=") for s in TINY_WORLD)
N_FACES = int(SIZES["demo.faces"])
N_MESHES = int(SIZES["demo.identities_4dfab"]) * int(SIZES["demo.sessions_4dfab"]) * int(SIZES["demo.frames_4dfab"])
N_LRW = int(SIZES["demo.lrw_sequences"]) * int(SIZES["demo.lrw_frames"])


def _truth(path):
    with h5py.File(path, "r") as h:
        return {k: (np.array([s.decode() if isinstance(s, bytes) else s for s in h[k][:]]) if k == "key" else h[k][:])
                for k in h}


@pytest.fixture(scope="module")
def model(tiny_world):
    from fitting.model import MorphableModel

    return MorphableModel.load(tiny_world / "model.h5")


def test_layout_and_counts(tiny_world):
    for p in ("model.h5", "preview.png", "_demo.json", "emotionet/truth.h5", "4dfab/truth.h5", "lrw/truth.h5"):
        assert (tiny_world / p).is_file(), p
    marker = json.loads((tiny_world / "_demo.json").read_text())
    assert marker["counts"] == {"emotionet": N_FACES, "4dfab": N_MESHES, "lrw": N_LRW}
    assert len(list((tiny_world / "emotionet").glob("*.jpg"))) == N_FACES
    assert len(list((tiny_world / "emotionet").glob("*.pts"))) == N_FACES
    assert len(list((tiny_world / "4dfab").rglob("*.obj"))) == N_MESHES
    assert not list(tiny_world.rglob("*.tmp-*"))


def test_truth_schema(tiny_world, model):
    t = _truth(tiny_world / "emotionet/truth.h5")
    n = N_FACES
    assert t["p_id"].shape == (n, model.n_id) and t["p_exp"].shape == (n, model.n_exp)
    assert t["camera"].shape == (n, 7) and t["landmarks"].shape == (n, 68, 2) and t["size"].shape == (n, 2)
    assert t["identity"].dtype == np.int64 and t["label"].dtype == np.int64
    assert set(t["label"]) <= set(range(-1, 7)) and (t["label"] >= 0).any() and (t["label"] == -1).any()
    assert len(set(t["identity"])) == int(SIZES["demo.identities"])
    assert (t["size"] >= 160).all() and (t["size"] <= 400).all()
    assert np.abs(np.rad2deg(t["camera"][:, 1])).max() <= 45.0
    m = _truth(tiny_world / "4dfab/truth.h5")
    assert list(m["key"][:2]) == ["id000/s00/000", "id000/s00/001"]
    assert m["p_exp"].shape == (N_MESHES, model.n_exp) and m["session"].shape == (N_MESHES,)
    lr = _truth(tiny_world / "lrw/truth.h5")
    assert lr["p_exp"].shape == (N_LRW, model.n_exp + model.n_speech)
    assert lr["key"][0] == "seq000/000.jpg"


def test_pts_load_with_menpo_and_match_truth(tiny_world):
    import menpo.io as mio
    from PIL import Image

    t = _truth(tiny_world / "emotionet/truth.h5")
    for i in (0, 5, N_FACES - 1):
        key = t["key"][i]
        groups = mio.import_landmark_file(tiny_world / "emotionet" / key.replace(".jpg", ".pts"))
        pts = next(iter(groups.values())).points  # menpo: (y, x), 0-based pixel centres
        np.testing.assert_allclose(pts[:, ::-1] + 0.5, t["landmarks"][i], atol=1e-3)
        w, h = Image.open(tiny_world / "emotionet" / key).size
        assert (h, w) == tuple(t["size"][i])
        lm = t["landmarks"][i]
        assert (lm >= 0).all() and (lm[:, 0] <= w).all() and (lm[:, 1] <= h).all()


def test_truth_matches_rendering(tiny_world, model):
    """Re-projecting the true shape with the true camera gives the stored landmarks, and
    re-rendering the face from the truth reproduces the JPEG inside the face mask."""
    import render
    from PIL import Image

    t = _truth(tiny_world / "emotionet/truth.h5")
    for i in (1, 7):
        V = model.instance(t["p_id"][i], t["p_exp"][i])
        lm = render.project(V[model.landmarks], t["camera"][i])
        np.testing.assert_allclose(lm, t["landmarks"][i], atol=1e-3)
        photo = np.asarray(Image.open(tiny_world / "emotionet" / t["key"][i]).convert("RGB"), np.float32) / 255
        r = render.render(V, model.trilist, model.texture(t["p_tex"][i]), t["camera"][i],
                          background=tuple(int(s) for s in t["size"][i]), light=t["light"][i])
        inner = r.mask & np.roll(r.mask, 2, 0) & np.roll(r.mask, -2, 0) & np.roll(r.mask, 2, 1) & np.roll(r.mask, -2, 1)
        assert inner.sum() > 1000
        assert np.abs(photo[inner] - r.image[inner]).mean() < 0.03
    lr = _truth(tiny_world / "lrw/truth.h5")
    V = model.instance(lr["p_id"][3], lr["p_exp"][3])
    np.testing.assert_allclose(render.project(V[model.landmarks], lr["camera"][3]), lr["landmarks"][3], atol=1e-3)


def test_meshes_load_with_trimesh(tiny_world, model):
    import trimesh

    m = _truth(tiny_world / "4dfab/truth.h5")
    i = N_MESHES - 1
    mesh = trimesh.load(tiny_world / "4dfab" / f"{m['key'][i]}.obj", process=False)
    np.testing.assert_allclose(mesh.vertices, model.instance(m["p_id"][i], m["p_exp"][i]), atol=2e-6)
    np.testing.assert_array_equal(mesh.faces, model.trilist)
    cols = mesh.visual.vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(cols, model.texture(m["p_tex"][i]), atol=1 / 255 + 1e-4)


def test_sessions_ramp_and_sequences_smooth(tiny_world):
    m = _truth(tiny_world / "4dfab/truth.h5")
    first = (m["identity"] == m["identity"][0]) & (m["session"] == 0)
    norms = np.linalg.norm(m["p_exp"][first], axis=1)
    assert norms[-1] > norms[0]  # neutral -> apex
    assert len(set(map(tuple, m["p_id"][first]))) == 1
    lr = _truth(tiny_world / "lrw/truth.h5")
    seq = lr["sequence"] == 0
    p = lr["p_exp"][seq]
    assert np.abs(np.diff(p, axis=0)).max() < 0.5  # smooth from frame to frame
    assert np.ptp(p, axis=0).max() > 0.05  # and actually moving
    assert len(set(map(tuple, lr["camera"][seq]))) == 1


def test_items_do_not_depend_on_chunking(tiny_world, tmp_path):
    """Re-generating two photos and a mesh as a different chunk in a fresh folder gives
    byte-identical files (determinism for a seed, independent of chunking/process)."""
    from workflows.demoworld.chunks import run_chunk
    from workflows.demoworld.params import params_hash

    marker = json.loads((tiny_world / "_demo.json").read_text())
    params = marker["params"]
    shutil.copy(tiny_world / "model.h5", tmp_path / "model.h5")
    run_chunk(str(tmp_path), "emotionet", 7, [3, 11], params, params_hash(params))
    run_chunk(str(tmp_path), "4dfab", 7, [(1, 1, 2)], params, params_hash(params))
    for rel in ("emotionet/00003.jpg", "emotionet/00011.pts", "4dfab/id001/s01/002.obj"):
        a = hashlib.sha256((tiny_world / rel).read_bytes()).hexdigest()
        b = hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
        assert a == b, rel


def test_rerun_is_noop(tiny_world):
    before = {p: p.stat().st_mtime_ns for p in tiny_world.rglob("*") if p.is_file() and p.name != ".lock"}
    args = []
    for s in TINY_WORLD:
        args += ["--set", s]
    proc = slidergan("make-demo", "--out", tiny_world, *args)
    assert "up to date" in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in tiny_world.rglob("*") if p.is_file() and p.name != ".lock"}
    assert {p: after[p] for p in before} == before


@pytest.mark.parametrize("override,msg", [("demo.max_yaw=120", "max_yaw"), ("demo.faces=abc", "demo.faces"),
                                          ("demo.min_size=500", "min_size")])
def test_bad_config_is_one_line_exit_2(tmp_path, override, msg):
    proc = slidergan("make-demo", "--out", tmp_path / "w", "--set", override, check=False)
    assert proc.returncode == 2
    assert msg in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_preview_sheet(tiny_world):
    from PIL import Image

    im = np.asarray(Image.open(tiny_world / "preview.png"))
    # 24 photos -> 3 rows of 8, then 8 mesh renders -> 1 row, 96 px tiles
    assert im.shape == (4 * 96, 8 * 96, 3)
    assert im[:96].std() > 20  # not blank


def test_killed_run_resumes_only_missing_chunks(tiny_world, tmp_path):
    """A run that stopped after some chunks (no _demo.json) is completed by the next run,
    which regenerates only the missing chunk, identically."""
    from workflows.demoworld import params as dwp
    from workflows.stages import demo_world as dw

    params = json.loads((tiny_world / "_demo.json").read_text())["params"]
    params.update(faces=4, identities=2, identities_4dfab=1, sessions_4dfab=1, frames_4dfab=1,
                  lrw_sequences=1, lrw_frames=2)
    P = dwp.WorldParams(**{k: v for k, v in params.items() if k != "generator"})
    out = tmp_path / "w"
    (out / dwp.CHUNKS).mkdir(parents=True)
    # the model of these params is the tiny world's (same seed and sizes): reuse it
    shutil.copy(tiny_world / "model.h5", out / "model.h5")
    (out / dwp.CHUNKS / "params_hash").write_text(dwp.params_hash(P.to_dict()) + "\n")
    dw.build_world(out, P, chunk_size=2, progress=False, log=lambda *a: None)
    assert json.loads((out / "_demo.json").read_text())["counts"] == {"emotionet": 4, "4dfab": 1, "lrw": 2}
    photo = (out / "emotionet/00003.jpg").read_bytes()
    keep = out / "emotionet/00000.jpg"
    mtime = keep.stat().st_mtime_ns
    # "kill": the marker was never written and the second photo chunk never finished
    (out / "_demo.json").unlink()
    (out / dwp.CHUNKS / "emotionet-00001.npz").unlink()
    (out / "emotionet/00003.jpg").unlink()
    dw.build_world(out, P, chunk_size=2, progress=False, log=lambda *a: None)
    assert (out / "emotionet/00003.jpg").read_bytes() == photo
    assert keep.stat().st_mtime_ns == mtime
    assert (out / "_demo.json").is_file()
    assert len(_truth(out / "emotionet/truth.h5")["key"]) == 4


def test_perspective_photos(tiny_world, model):
    """demo.camera_dist > 0 gives true-perspective photos whose landmarks are the
    perspective projection of the true shape, inside the image."""
    import render
    from workflows.demoworld import params as dwp
    from workflows.demoworld import scene as dws

    params = json.loads((tiny_world / "_demo.json").read_text())["params"]
    params["camera_dist"] = 4.0
    P = dwp.WorldParams(**{k: v for k, v in params.items() if k != "generator"})
    from fitting.demo_model import expression_prototypes

    row, img = dws.render_photo(model, expression_prototypes(model), P, 2)
    assert row["camera"][6] == 4.0 and img.shape[:2] == tuple(row["size"])
    V = model.instance(row["p_id"], row["p_exp"])
    np.testing.assert_allclose(render.project(V[model.landmarks], row["camera"]), row["landmarks"], atol=1e-3)
    weak = row["camera"].copy()
    weak[6] = 0
    assert np.abs(render.project(V[model.landmarks], weak) - row["landmarks"]).max() > 1.0
    H, W = row["size"]
    assert (row["landmarks"] >= 0).all() and (row["landmarks"][:, 0] <= W).all() and (row["landmarks"][:, 1] <= H).all()


def test_flags_override_config():
    import argparse

    from workflows.commands import make_demo

    p = argparse.ArgumentParser()
    make_demo.add_arguments(p)
    args = p.parse_args(["--out", "x", "--set", "demo.faces=10", "--set", "demo.identities_4dfab=5",
                         "--faces", "3", "--seed", "7"])
    P, chunk = make_demo.params_from_args(args)
    assert (P.faces, P.identities_4dfab, P.seed) == (3, 5, 7)
    from pipeline.config import load_config

    assert chunk == load_config().demo.chunk_size


def test_landmark_calibration_of_the_demo_model(tiny_world, model):
    """make-demo learns model.lmcal.npz from renders that are not demo photos; on its held-out
    renders the calibrated detections are nearer the model's landmarks than dlib's own."""
    from fitting.demo_model import expression_prototypes
    from fitting.landmarks import LandmarkCalibration
    from workflows.demoworld import params as dwp
    from workflows.demoworld import scene as dws

    cal = LandmarkCalibration.load(tiny_world / "model.lmcal.npz")
    m = cal.meta
    assert m["renders"] == 60 and 40 <= m["detected"] <= 60 and m["held_out"] >= 1
    assert m["fitted_on"] == m["detected"] > m["held_out"] and m["model_hash"] == model.hash
    assert m["nme_calibrated"] < m["nme_raw"]
    params = json.loads((tiny_world / "_demo.json").read_text())["params"]
    P = dwp.WorldParams(**{k: v for k, v in params.items() if k != "generator"})
    truth = _truth(tiny_world / "emotionet/truth.h5")
    protos = expression_prototypes(model)
    for i in range(3):
        row, _ = dws.render_photo(model, protos, P, i, domain="calib")
        assert not np.allclose(row["p_exp"], truth["p_exp"][i]) and not np.allclose(row["p_id"], truth["p_id"][i])


def test_calibrate_landmarks_command(tiny_world, tmp_path):
    """slidergan calibrate-landmarks: a re-run with the same inputs does nothing; bad input is
    one line and exit 2."""
    from fitting.landmarks import LandmarkCalibration

    out = tmp_path / "c.lmcal.npz"
    first = slidergan("calibrate-landmarks", "--model", tiny_world / "model.h5", "--out", out, "--faces", "30",
                      "--workers", "1", "--no-progress")
    assert "written" in first.stdout and LandmarkCalibration.load(out).meta["renders"] == 30
    mtime = out.stat().st_mtime_ns
    again = slidergan("calibrate-landmarks", "--model", tiny_world / "model.h5", "--out", out, "--faces", "30",
                      "--workers", "1", "--no-progress")
    assert "up to date" in again.stdout and out.stat().st_mtime_ns == mtime
    from tests.fitting.fit_helpers import tiny_model      # a model without a texture model

    tiny_model().save(tmp_path / "plain.h5")
    for args, msg in ((["--model", tmp_path / "none.h5"], "model file not found"),
                      (["--model", tiny_world / "model.h5", "--faces", "5"], "at least 20"),
                      (["--model", tmp_path / "plain.h5"], "no texture model")):
        proc = slidergan("calibrate-landmarks", *args, "--out", tmp_path / "x.npz", "--no-progress", check=False)
        assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()
