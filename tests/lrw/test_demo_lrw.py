"""The demo world's LRW-style videos and LRW-3D-style speech files (make-demo)."""
from __future__ import annotations

import h5py
import numpy as np


def test_videos_speech_and_landmarks_match_the_truth(tiny_world):
    from PIL import Image

    from fitting.lrw import SpeechSource, landmarks_path, read_video, read_video_landmarks, read_word_txt, scan_videos
    from fitting.model import MorphableModel
    from workflows.demoworld.params import lrw_video_id

    model = MorphableModel.load(tiny_world / "model.h5")
    with h5py.File(tiny_world / "lrw/truth.h5", "r") as f:
        key, video = f["key"].asstr()[()], f["video"].asstr()[()]
        seq, frame, p_exp, lms = f["sequence"][()], f["frame"][()], f["p_exp"][()], f["landmarks"][()]
    vids = scan_videos(tiny_world / "lrw")                          # the parent of lipread_mp4/ works too
    assert vids.keys == sorted(set(video))
    assert [lrw_video_id(s) for s in range(2)] == ["ABOUT/train/ABOUT_00001", "WORLD/test/WORLD_00002"]
    speech = SpeechSource(tiny_world / "lrw" / "lrw3d", 10)
    for s in sorted(set(seq)):
        rows = np.flatnonzero(seq == s)
        rows = rows[np.argsort(frame[rows])]
        vid = lrw_video_id(int(s))
        assert set(video[rows]) == {vid}
        frames = read_video(vids.paths[vid])
        assert frames.shape == (len(rows), 256, 256, 3)
        for i, r in enumerate(rows):                                 # the video shows the jpg frames
            jpg = np.asarray(Image.open(tiny_world / "lrw" / key[r]).convert("RGB"), np.float64)
            assert np.abs(frames[i] - jpg).mean() < 4.0
        np.testing.assert_array_equal(speech.get(vid, len(rows)), p_exp[rows, model.n_exp:])
        np.testing.assert_array_equal(read_video_landmarks(landmarks_path(vids.paths[vid]), len(rows)), lms[rows])
        assert read_word_txt(vids.paths[vid][:-4] + ".txt")["Text"] == vid.split("/")[0]
    assert not list((tiny_world / "lrw").rglob("*.tmp*"))


def test_lrw_files_do_not_depend_on_chunking(tiny_world, tmp_path):
    """Sequence 1 generated alone in a fresh folder gives byte-identical video and speech files."""
    import hashlib
    import json
    import shutil

    from workflows.demoworld.chunks import run_chunk
    from workflows.demoworld.params import lrw_video_id, params_hash

    params = json.loads((tiny_world / "_demo.json").read_text())["params"]
    shutil.copy(tiny_world / "model.h5", tmp_path / "model.h5")
    run_chunk(str(tmp_path), "lrw", 9, [1], params, params_hash(params))
    vid = lrw_video_id(1)
    for rel in (f"lrw/lipread_mp4/{vid}.mp4", f"lrw/lipread_mp4/{vid}.landmarks.npy", f"lrw/lrw3d/{vid}.npy",
                f"lrw/lipread_mp4/{vid}.txt"):
        a = hashlib.sha256((tiny_world / rel).read_bytes()).hexdigest()
        b = hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
        assert a == b, rel
