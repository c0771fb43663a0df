"""The fit-lrw stage end to end on the tiny demo world's LRW videos (and on broken inputs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import slidergan

OPTS = ("--workers", "1", "--no-progress", "--cluster", "local")


def _run(world: Path, out: Path, *extra, videos=None, speech=None, check=True):
    return slidergan("fit-lrw", "--videos", videos or world / "lrw" / "lipread_mp4",
                     "--speech", speech or world / "lrw" / "lrw3d", "--model", world / "model.h5",
                     "--out", out, *OPTS, *extra, check=check)


@pytest.fixture(scope="module")
def lrw_fits(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lrwfits") / "fits"
    _run(tiny_world, out, "--chunk-size", "1")
    return out


def _truth(world):
    with h5py.File(world / "lrw/truth.h5", "r") as f:
        return {k: (f[k].asstr()[()] if k in ("key", "video") else f[k][()]) for k in f}


def test_rows_layout_and_speech(tiny_world, lrw_fits):
    from fitting.lrw import scan_videos
    from pipeline.shards import ShardSet

    ds = ShardSet(lrw_fits)
    vids = scan_videos(tiny_world / "lrw" / "lipread_mp4")
    t = _truth(tiny_world)
    F = int(t["frame"].max()) + 1
    assert len(vids.keys) == len(set(t["video"])) >= 2
    assert len(ds) == len(vids.keys) * F and not ds.rejects()
    assert ds.datasets["p_exp"][1][1:] == (40,) and ds.datasets["image"][1][1:] == (128, 128, 3)
    video, split, frame = ds.read("video").astype(str), ds.read("split").astype(str), ds.read("frame")
    assert set(video) == set(vids.keys)
    assert all(s == v.split("/")[1] for s, v in zip(split, video))          # the LRW split of the path
    assert {"train", "test"} <= set(split)
    assert all(k == f"{v}#{f:03d}" for k, v, f in zip(ds.keys(), video, frame))
    group, ident = ds.read("group"), ds.read("identity")
    for v in vids.keys:
        sel = video == v
        assert len(set(group[sel])) == 1 and sorted(frame[sel]) == list(range(F))
        truth_id = set(t["identity"][t["video"] == v])
        assert set(ident[sel]) == truth_id                                  # carried from truth.h5
    assert len(set(group)) == len(vids.keys)
    p = ds.read("p_exp")
    for v in vids.keys:                                                     # the speech part is the file's
        sp = np.load(tiny_world / "lrw" / "lrw3d" / f"{v}.npy")
        rows = np.flatnonzero(video == v)
        rows = rows[np.argsort(frame[rows])]
        assert np.array_equal(p[rows, 30:], sp[:, :10])
    assert (ds.read("lm_source") == 0).all()                                # the demo's landmark sidecars
    img = ds.read("image", 0)
    assert img.std() > 10                                                   # a face, not a blank crop
    meta = json.loads((lrw_fits / "_stage.json").read_text())
    assert meta["complete"] is True


def test_video_fit_against_the_demo_truth(tiny_world, lrw_fits):
    """The fitted expression (first 30) against the demo world's exact parameters."""
    from fitting.model import MorphableModel
    from pipeline.shards import ShardSet

    ds = ShardSet(lrw_fits)
    t = _truth(tiny_world)
    row = {(v, int(f)): i for i, (v, f) in enumerate(zip(t["video"], t["frame"]))}
    idx = [row[(str(v), int(f))] for v, f in zip(ds.read("video"), ds.read("frame"))]
    truth = t["p_exp"][idx]
    model = MorphableModel.load(tiny_world / "model.h5")
    E = model.n_exp
    p = ds.read("p_exp")
    rel = np.linalg.norm(p[:, :E] - truth[:, :E], axis=1) / np.linalg.norm(truth[:, :E], axis=1)
    assert rel.mean() < 0.5, rel.mean()                                     # predicting 0 scores 1.0
    sp = ds.read("speech_fitted")
    rel_sp = np.linalg.norm(sp - truth[:, E:], axis=1) / np.linalg.norm(truth[:, E:], axis=1)
    assert rel_sp.mean() < 0.4, rel_sp.mean()                               # the fit agrees with the files
    assert float(np.median(ds.read("fit_error"))) < 0.01
    cams = ds.read("camera")
    tc = t["camera"][idx]
    assert np.abs(cams[:, 1] - tc[:, 1]).max() < 0.05                       # yaw
    assert np.abs(cams[:, 5] / tc[:, 5] - 1).max() < 0.05                   # scale


def test_rerun_is_current_and_params_recompute(tiny_world, lrw_fits):
    before = {p.name: p.stat().st_mtime_ns for p in lrw_fits.glob("shard-*.h5")}
    proc = _run(tiny_world, lrw_fits, "--chunk-size", "1")
    assert "0 to compute" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in lrw_fits.glob("shard-*.h5")} == before
    proc = _run(tiny_world, lrw_fits, "--chunk-size", "1", "--set", "lrw.smooth_camera=0.0")
    assert f"{len(before)} to compute" in proc.stderr
    _run(tiny_world, lrw_fits, "--chunk-size", "1")                        # back to the fixture's params


def test_bad_inputs_are_rejects(tiny_world, tmp_path):
    """A corrupt video, a speech file with another frame count and a video without speech are
    rejects with their reasons; the good videos still give their rows."""
    from pipeline.shards import ShardSet

    src_v, src_s = tiny_world / "lrw" / "lipread_mp4", tiny_world / "lrw" / "lrw3d"
    videos, speech = tmp_path / "lipread_mp4", tmp_path / "lrw3d"
    shutil.copytree(src_v, videos)
    shutil.copytree(src_s, speech)
    good = sorted(str(p.relative_to(videos))[:-4] for p in videos.rglob("*.mp4"))
    F = len(np.load(speech / f"{good[0]}.npy"))

    def add(vid, data=None, speech_rows=None):
        p = videos / f"{vid}.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(videos / f"{good[0]}.mp4", p)
        shutil.copy(videos / f"{good[0]}.landmarks.npy", p.with_name(p.stem + ".landmarks.npy"))
        if data is not None:
            p.write_bytes(data)
        if speech_rows is not None:
            (speech / vid).parent.mkdir(parents=True, exist_ok=True)
            np.save(speech / f"{vid}.npy", np.zeros((speech_rows, 10), np.float32))

    raw = (videos / f"{good[0]}.mp4").read_bytes()
    add("BROKEN/test/BROKEN_00001", data=raw[: len(raw) // 3], speech_rows=F)
    add("SHIFT/train/SHIFT_00001", speech_rows=F + 3)
    add("SILENT/val/SILENT_00001")
    out = tmp_path / "fits"
    proc = _run(tiny_world, out, "--set", "pipeline.max_reject_fraction=0.9", videos=videos, speech=speech)
    assert proc.returncode == 0
    rej = {r["key"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert rej["BROKEN/test/BROKEN_00001"]["reason"] == "bad video"
    assert rej["SHIFT/train/SHIFT_00001"]["reason"] == "frame count mismatch"
    assert f"{F + 3} speech frames, video has {F}" in rej["SHIFT/train/SHIFT_00001"]["detail"]
    assert rej["SILENT/val/SILENT_00001"]["reason"] == "no speech"
    assert len(rej) == 3
    ds = ShardSet(out)
    assert set(ds.read("video").astype(str)) == set(good) and len(ds) == len(good) * F


def test_detected_landmarks(tiny_world, tmp_path):
    """Without sidecars the stage detects every frame (dlib + the model's calibration)."""
    from pipeline.shards import ShardSet

    out = tmp_path / "fits"
    _run(tiny_world, out, "--landmarks", "detect")
    ds = ShardSet(out)
    assert len(ds) > 0
    src = ds.read("lm_source")
    assert set(np.unique(src)) <= {1, 2, 3} and (src == 2).any()        # calibrated detections
    assert np.isfinite(ds.read("p_exp")).all()


@pytest.mark.parametrize("what", ["speech", "videos"])
def test_missing_inputs_are_one_line_errors(tiny_world, tmp_path, what):
    kw = {what: tmp_path / "nothing"}
    proc = _run(tiny_world, tmp_path / "o", check=False, **kw)
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
