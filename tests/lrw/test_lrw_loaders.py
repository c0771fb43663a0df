"""fitting/lrw.py: LRW videos (PyAV) and LRW-3D speech files in every accepted layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from fitting.lrw import (LrwInputError, LrwReject, SpeechSource, encode_video, landmarks_path, read_video,
                         read_video_landmarks, read_word_txt, scan_videos, word_txt, write_video)
from tests.lrw.helpers_lrw import moving_frames, write_lrw_tree


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_video_round_trip(tmp_path, codec):
    fr = moving_frames(9, 64)
    p = tmp_path / "v.mp4"
    write_video(p, fr, codec=codec)
    back = read_video(p)
    assert back.shape == fr.shape and back.dtype == np.uint8
    err = np.abs(back.astype(float) - fr.astype(float)).mean()
    assert err < 4.0, err                                       # lossy, but the same pictures
    # frame order kept: each decoded frame is closest to its own source frame
    d = np.abs(back[:, None].astype(float) - fr[None].astype(float)).mean((2, 3, 4))
    assert (d.argmin(1) == np.arange(len(fr))).all()
    assert not list(tmp_path.glob("*.tmp*"))


def test_encoding_is_deterministic_and_checks_frames():
    fr = moving_frames(4, 32)
    assert encode_video(fr) == encode_video(fr)
    with pytest.raises(ValueError):
        encode_video(fr[:, :31])                                # odd side: yuv420p cannot hold it
    with pytest.raises(ValueError):
        encode_video(fr[:0])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "middle", "empty"])
def test_corrupt_video_is_a_reject(tmp_path, damage):
    good = encode_video(moving_frames(12, 64))
    if damage == "truncate":
        data = good[: len(good) // 2]
    elif damage == "garbage":
        data = b"not a video" * 100
    elif damage == "middle":
        b = bytearray(good)
        mid = len(b) // 2
        b[mid:mid + 3000] = bytes(3000)
        data = bytes(b)
    else:
        data = b""
    p = tmp_path / "bad.mp4"
    p.write_bytes(data)
    with pytest.raises(LrwReject) as e:
        read_video(p)
    assert e.value.reason == "bad video" and "bad.mp4" in e.value.detail


def test_scan_videos_layout(tmp_path):
    write_lrw_tree(tmp_path / "lipread_mp4", {"ABOUT/train/ABOUT_00001": 3, "ABOUT/test/ABOUT_00001": 3,
                                              "WORLD/val/WORLD_00007": 3})
    (tmp_path / "lipread_mp4/ABOUT/other").mkdir()
    (tmp_path / "lipread_mp4/ABOUT/other/x.mp4").write_bytes(b"")      # not a split folder: ignored
    (tmp_path / "lipread_mp4/stray.mp4").write_bytes(b"")              # wrong depth: ignored
    for root in (tmp_path, tmp_path / "lipread_mp4"):                  # the folder or its parent
        v = scan_videos(root)
        assert v.keys == ["ABOUT/test/ABOUT_00001", "ABOUT/train/ABOUT_00001", "WORLD/val/WORLD_00007"]
        assert v.split["ABOUT/test/ABOUT_00001"] == "test" and v.word["WORLD/val/WORLD_00007"] == "WORLD"
        assert v.paths["WORLD/val/WORLD_00007"].endswith("lipread_mp4/WORLD/val/WORLD_00007.mp4")
    assert read_word_txt(tmp_path / "lipread_mp4/WORLD/val/WORLD_00007.txt")["Text"] == "WORLD"
    with pytest.raises(LrwInputError):
        scan_videos(tmp_path / "lipread_mp4/ABOUT/train")                # no <WORD>/<split>/ below
    with pytest.raises(LrwInputError):
        scan_videos(tmp_path / "missing")


def test_word_txt_duration(tmp_path):
    (tmp_path / "a.txt").write_text(word_txt("ABOUT", 29))
    t = read_word_txt(tmp_path / "a.txt")
    assert t["Text"] == "ABOUT" and t["Duration"] == "1.16 seconds"
    assert read_word_txt(tmp_path / "missing.txt") == {}


def _speech(n=6, s=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, s)).astype(np.float32)


def test_speech_tree_npy_and_csv(tmp_path):
    a, b = _speech(6, 12, 0), _speech(5, 10, 1)
    (tmp_path / "ABOUT/train").mkdir(parents=True)
    np.save(tmp_path / "ABOUT/train/ABOUT_00001.npy", a)
    np.savetxt(tmp_path / "ABOUT/train/ABOUT_00002.csv", b, delimiter=",", header="s0,s1,s2,s3,s4,s5,s6,s7,s8,s9",
               comments="", fmt="%.7g")
    src = SpeechSource(tmp_path, 10)
    assert src.kind == "tree"
    got = src.get("ABOUT/train/ABOUT_00001", 6)
    assert got.shape == (6, 10) and got.dtype == np.float32 and np.array_equal(got, a[:, :10])   # first 10 of 12
    np.testing.assert_allclose(src.get("ABOUT/train/ABOUT_00002", 5), b, rtol=1e-6, atol=1e-6)
    with pytest.raises(LrwReject) as e:
        src.get("ABOUT/train/ABOUT_00001", 7)
    assert e.value.reason == "frame count mismatch" and "6 speech frames" in e.value.detail
    with pytest.raises(LrwReject) as e:
        src.get("ABOUT/train/ABOUT_00003", 6)
    assert e.value.reason == "no speech"


@pytest.mark.parametrize("kind", ["h5", "npz"])
def test_speech_single_file(tmp_path, kind):
    a, b = _speech(6, 10, 0), _speech(4, 16, 1)
    path = tmp_path / f"lrw3d.{kind}"
    entries = {"ABOUT/train/ABOUT_00001": a, "WORLD_00002": b}      # a full id and a bare basename
    if kind == "h5":
        with h5py.File(path, "w") as f:
            for k, v in entries.items():
                f[k] = v
    else:
        np.savez(path, **entries)
    src = SpeechSource(path, 10)
    assert src.kind == kind
    assert np.array_equal(src.get("ABOUT/train/ABOUT_00001", 6), a)
    assert np.array_equal(src.get("WORLD/test/WORLD_00002", 4), b[:, :10])
    with pytest.raises(LrwReject) as e:
        src.get("ABOUT/train/ABOUT_00001", 29)
    assert e.value.reason == "frame count mismatch"
    with pytest.raises(LrwReject) as e:
        src.get("ABOUT/val/ABOUT_00009", 6)
    assert e.value.reason == "no speech"


def test_bad_speech_values(tmp_path):
    (tmp_path / "W/test").mkdir(parents=True)
    np.save(tmp_path / "W/test/W_1.npy", _speech(4, 8))                       # S = 8 < 10
    bad = _speech(4, 10)
    bad[2, 3] = np.nan
    np.save(tmp_path / "W/test/W_2.npy", bad)
    np.save(tmp_path / "W/test/W_3.npy", np.zeros(10))                        # not [frames, S]
    (tmp_path / "W/test/W_4.csv").write_text("1,2,3\n4,5\n")                  # ragged
    src = SpeechSource(tmp_path, 10)
    for vid, words in (("W/test/W_1", "need >= 10"), ("W/test/W_2", "non-finite"), ("W/test/W_3", "shape"),
                       ("W/test/W_4", "ragged")):
        with pytest.raises(LrwReject) as e:
            src.get(vid, 4)
        assert e.value.reason == "bad speech" and words in e.value.detail, (vid, e.value.detail)


def test_speech_source_errors(tmp_path):
    with pytest.raises(LrwInputError):
        SpeechSource(tmp_path / "none")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(LrwInputError):
        SpeechSource(tmp_path / "x.txt")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(LrwInputError):
        SpeechSource(tmp_path / "broken.h5")


def test_landmark_sidecar(tmp_path):
    v = tmp_path / "ABOUT_00001.mp4"
    side = landmarks_path(v)
    assert side.name == "ABOUT_00001.landmarks.npy"
    lm = np.random.default_rng(0).uniform(0, 64, (5, 68, 2)).astype(np.float32)
    np.save(side, lm)
    np.testing.assert_array_equal(read_video_landmarks(side, 5), lm)
    with pytest.raises(LrwReject) as e:
        read_video_landmarks(side, 6)
    assert e.value.reason == "frame count mismatch"
    np.save(side, lm[:, :60])
    with pytest.raises(LrwReject) as e:
        read_video_landmarks(side, 5)
    assert e.value.reason == "bad landmarks"
