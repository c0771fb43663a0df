"""The editor glue (checkpoint, fit bridge, G/D, paste-back) and its JSON API."""
from __future__ import annotations

import io
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import ConfigError
from tests.helpers import TINY_MODEL_CONFIG, save_checkpoint
from workflows.editor.app import SessionStore
from workflows.editor.core import Editor, load_checkpoint
from workflows.editor.imaging import ImageInputError, read_image_file

SID = "test-session-0001"


@pytest.fixture(scope="module")
def demo_face(serve_editor, tiny_world):
    from workflows.editor.fitbridge import read_landmarks_sidecar

    path = tiny_world / "emotionet" / "00000.jpg"
    return serve_editor.prepare(read_image_file(path), key="00000.jpg", landmarks=read_landmarks_sidecar(path))


# ---------------------------------------------------------------- checkpoint + parameters
def test_checkpoint_errors_are_one_line(tmp_path, tiny_world):
    with pytest.raises(ConfigError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else/1"}, other)
    with pytest.raises(ConfigError, match="not a SliderGAN checkpoint"):
        load_checkpoint(other)
    bad = save_checkpoint(tmp_path / "bad.pt")
    ck = torch.load(bad, weights_only=True)
    ck["model_config"] = dict(TINY_MODEL_CONFIG, g_conv_dim=16)  # weights no longer fit
    torch.save(ck, bad)
    with pytest.raises(ConfigError, match="do not match its model_config"):
        Editor.from_files(bad, tiny_world / "model.h5")
    with pytest.raises(ConfigError, match="no 3DMM found"):
        Editor.from_files(save_checkpoint(tmp_path / "ok.pt"))


def test_model_found_next_to_a_run_checkpoint(tiny_world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.h5").symlink_to(tiny_world / "model.h5")
    ck = save_checkpoint(run / "train" / "rad" / "checkpoints" / "latest.pt")
    ed = Editor.from_files(run / "train" / "rad")  # a training folder works too
    assert ed.n_params == 30 and ed.exp_names[:2] == ["jaw_open", "smile"]
    assert load_checkpoint(ck)["variant"] == "rad"


def test_check_params(serve_editor):
    ed = serve_editor
    assert ed.check_params([0.5] * 30).tolist() == [0.5] * 30
    p = ed.check_params({"smile": 1, "jaw_open": -0.25})
    assert p[1] == 1.0 and p[0] == -0.25 and np.count_nonzero(p) == 2
    for bad, msg in [([0.1] * 29, "expected 30 parameters, got 29"), ({"grin": 1.0}, "unknown expression parameter 'grin'"),
                     ([0.0] * 29 + ["x"], "must be a number"), ([0.0] * 29 + [float("nan")], "finite"),
                     ("smile", "list of 30 numbers"), ([True] + [0.0] * 29, "must be a number")]:
        with pytest.raises(ConfigError, match=msg):
            ed.check_params(bad)


def test_prototypes_are_the_fitting_prototypes(serve_editor):
    from fitting.demo_model import expression_prototypes
    from fitting.model import EXPRESSION_NAMES

    protos = serve_editor.prototypes()
    assert list(protos) == list(EXPRESSION_NAMES)
    ref = expression_prototypes(serve_editor.model)
    for i, name in enumerate(EXPRESSION_NAMES):
        assert np.allclose(protos[name], ref[i], atol=1e-4)


# ---------------------------------------------------------------- photo -> crop -> G
def test_prepare_sees_the_photo_as_the_fit_stage_does(serve_editor, demo_face, tiny_fits):
    """The editor's crop, alignment and fitted parameters equal the fit stage's shard row,
    so G is fed exactly what it was trained on."""
    from pipeline.shards import ShardSet

    ds = ShardSet(tiny_fits)
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in ds.read("key")]
    i = keys.index("00000.jpg")
    row = ds.row(i)
    assert np.allclose(demo_face.align, row["align"], atol=1e-4)
    assert np.abs(demo_face.crop.astype(int) - row["image"].astype(int)).max() <= 1
    assert np.allclose(demo_face.p_exp, row["p_exp"], atol=1e-3)
    assert demo_face.fit_error == pytest.approx(float(row["fit_error"]), abs=1e-4)
    assert demo_face.landmark_source == "sidecar"


def test_edit_is_the_generator_output(serve_editor, demo_face):
    """G sees the 128 crop resized to its 64x64 input exactly as the trainer resizes shards."""
    from train.data import to_tensor_image

    p = np.linspace(-1, 1, 30).astype(np.float32)
    got = serve_editor.edit(demo_face, p)
    with torch.no_grad():
        x = to_tensor_image(np.array(demo_face.crop), 64)[None]
        out = serve_editor.G(x, torch.from_numpy(p)[None])[0][0]
    ref = ((out.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert demo_face.crop.shape == (128, 128, 3) and got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(float) - ref).max() <= 0.51
    assert not np.array_equal(got, serve_editor.edit(demo_face, -p))  # p matters
    assert serve_editor.fast is not None  # the cached path was the one compared
    assert np.abs(serve_editor.edit(demo_face, p, use_cache=False).astype(int) - got.astype(int)).max() <= 1


@pytest.mark.parametrize("change", [{}, {"c_dim": 40, "g_repeat": 2}, {"condition": "delta"},
                                    {"colour": "residual"}])
def test_cached_generator_equals_the_generator(change):
    from model.networks import build_networks
    from workflows.editor.cached_generator import CachedGenerator

    config = dict(TINY_MODEL_CONFIG, **change)
    torch.manual_seed(3)
    G, _ = build_networks(config)
    G.eval()
    E = config["c_dim"]
    cg = CachedGenerator(G, E, 128)
    assert cg.ok
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        feat = cg.prepare(x[:1])
        p_src = torch.rand(1, E) * 2 - 1          # the photo's own parameters (read only by "delta")
        for p in (torch.zeros(1, E), torch.ones(1, E), torch.rand(1, E) * 2 - 1):
            assert torch.allclose(cg.forward(x[:1], feat, p, p_src), G(x[:1], p, p_src)[0], atol=1e-5)
        # a first layer with a bias breaks the linearity it relies on: refused, G is used
        G.main[0].bias = torch.nn.Parameter(torch.ones(G.main[0].out_channels))
        assert not CachedGenerator(G, E, 128).ok


def test_regress_is_the_discriminator_head(serve_editor, demo_face):
    with torch.no_grad():
        from train.data import to_tensor_image

        ref = serve_editor.D(to_tensor_image(np.array(demo_face.crop), 64)[None])[1][0].numpy()
    assert np.allclose(serve_editor.regress(demo_face), ref, atol=1e-6)


def test_face_shape_is_the_model_instance(serve_editor, demo_face):
    p = np.linspace(-1, 1, 30).astype(np.float32)
    ref = serve_editor.model.instance(demo_face.p_id, p)
    assert np.allclose(serve_editor.face_shape(demo_face, p), ref, atol=1e-3)
    assert np.allclose(serve_editor.face_shape(demo_face, 0 * p), serve_editor.model.instance(demo_face.p_id, 0 * p),
                       atol=1e-3)


def test_render_face_follows_the_parameters(serve_editor, demo_face):
    a = serve_editor.render_face(demo_face, np.zeros(30))
    b = serve_editor.render_face(demo_face, np.eye(30)[0])  # jaw open
    assert a.shape == (serve_editor.render_size, serve_editor.render_size, 3)
    bg = a[0, 0].copy()
    covered = (a != bg).any(-1).mean()
    assert 0.2 < covered < 0.95  # the face fills the frame
    assert (a != b).any(-1).sum() > 50


def test_paste_puts_the_edit_into_the_photo(serve_editor, demo_face):
    edited = serve_editor.edit(demo_face, np.zeros(30))
    full = serve_editor.paste(demo_face, edited)
    assert full.shape == demo_face.image.shape
    changed = (full != demo_face.image).any(-1)
    assert 0 < changed.mean() < 1
    # the 64x64 output covers the same photo area as the 128 crop: scaled alignment
    assert np.allclose(serve_editor.net_align(demo_face), demo_face.align * 0.5, atol=1e-5)
    ys, xs = np.nonzero(changed)
    lm = demo_face.landmarks  # the change sits around the face
    assert xs.min() <= lm[:, 0].min() + 2 and xs.max() >= lm[:, 0].max() - 2


def test_no_face_is_a_clear_error(serve_editor):
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    with pytest.raises(ImageInputError, match="no face found"):
        serve_editor.prepare(noise)


def test_session_store_is_lru():
    s = SessionStore(capacity=2)
    a, b = s.get("aaaaaaaa"), s.get("bbbbbbbb")
    assert s.get("aaaaaaaa") is a  # refreshes a
    s.get("cccccccc")  # evicts b, the least recently used
    assert len(s) == 2 and s.get("bbbbbbbb", create=False) is None and s.get("aaaaaaaa", create=False) is a
    assert b is not None


# ---------------------------------------------------------------- JSON API
def test_api_errors(live_server):
    srv = live_server
    assert srv.post_json("/api/edit", {"sid": "x", "p": [0] * 30})[0] == 400  # bad session id
    st, body = srv.post_json("/api/edit", {"sid": "fresh-session-9", "seq": 1, "p": [0] * 30})
    assert st == 409 and "load a photo first" in body["error"]
    st, body = srv.post_form("/api/photo", {"sid": SID, "slot": "main", "name": "../model.h5"})
    assert st == 404 and "no photo named" in body["error"]
    st, body = srv.post_form("/api/photo", {"sid": SID, "slot": "main"})
    assert st == 400 and "choose a photo" in body["error"]
    big = bytes(2_100_000)  # over the fixture's 2 MB limit
    st, body = srv.post_form("/api/photo", {"sid": SID, "slot": "main"}, {"file": ("big.jpg", big, "image/jpeg")})
    assert st == 413 and "file too large" in body["error"]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2500, 2000), np.uint8)).save(buf, format="PNG")  # 5 Mpx > 4 Mpx limit
    st, body = srv.post_form("/api/photo", {"sid": SID, "slot": "main"},
                             {"file": ("huge.png", buf.getvalue(), "image/png")})
    assert st == 422 and "image too large" in body["error"]
    assert srv.get_json(f"/api/download?sid={SID}&kind=crop")[0] == 409
    assert srv.get_json("/api/info")[0] == 200  # still serving


def test_api_edit_transfer_and_download(live_server, serve_editor, demo_face):
    srv = live_server
    st, body = srv.post_form("/api/photo", {"sid": SID, "slot": "main", "name": "00000.jpg"})
    assert st == 200 and body["p_fit"] == pytest.approx(demo_face.p_exp, abs=1e-3)
    st, body = srv.post_json("/api/edit", {"sid": SID, "seq": 3, "p": [0.1] * 29})
    assert st == 400 and "expected 30 parameters" in body["error"]
    p = [0.25] * 30
    st, body = srv.post_json("/api/edit", {"sid": SID, "seq": 5, "p": p})
    assert st == 200 and body["seq"] == 5 and body["p"] == p
    assert set(body["ms"]) == {"generator", "render", "encode"}
    st, body = srv.post_json("/api/edit", {"sid": SID, "seq": 4, "p": [0.0] * 30})  # late, stale answer
    assert st == 200 and body.get("stale") is True
    assert srv.get_json(f"/api/state?sid={SID}")[1]["p"] == p  # the stale request did not win
    st, ctype, png = srv.request(f"/api/download?sid={SID}&kind=crop")
    assert st == 200 and ctype == "image/png"
    crop = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(crop, serve_editor.edit(demo_face, np.array(p, np.float32)))
    st, _, png = srv.request(f"/api/download?sid={SID}&kind=full")
    assert np.asarray(Image.open(io.BytesIO(png))).shape == demo_face.image.shape
    st, body = srv.post_form("/api/photo", {"sid": SID, "slot": "transfer", "name": "00001.jpg"})
    assert st == 200 and len(body["p_regressed"]) == 30 and len(body["p_fit"]) == 30
    assert srv.get_json(f"/api/state?sid={SID}")[1]["transfer"] == "00001.jpg"


def test_internal_error_is_one_line_and_the_server_keeps_serving(live_server, serve_editor, monkeypatch):
    srv = live_server
    sid = "test-session-0002"
    assert srv.post_form("/api/photo", {"sid": sid, "slot": "main", "name": "00001.jpg"})[0] == 200

    def broken(face, p):
        raise RuntimeError("renderer exploded\nsecond line")

    monkeypatch.setattr(serve_editor, "render_face", broken)
    st, body = srv.post_json("/api/edit", {"sid": sid, "seq": 1, "p": [0.0] * 30})
    assert st == 500 and body["error"] == "internal error: RuntimeError: renderer exploded"
    monkeypatch.undo()
    st, body = srv.post_json("/api/edit", {"sid": sid, "seq": 2, "p": [0.0] * 30})
    assert st == 200 and body["seq"] == 2


def test_api_upload_detects_the_face(live_server, tiny_world):
    srv = live_server
    sid = "test-session-0003"
    data = (tiny_world / "emotionet" / "00000.jpg").read_bytes()
    st, body = srv.post_form("/api/photo", {"sid": sid, "slot": "main"},
                             {"file": ('my "odd"\tname.jpg', data, "image/jpeg")})
    assert st == 200, body
    # dlib, not the sidecar; an upload is a photo (fit.image_domain), so the world's calibration, learned
    # on renders, is not applied to it
    assert body["landmarks"] == "detected" and body["fit_error"] < 0.5
    status, _, _ = srv.request(f"/api/download?sid={sid}&kind=crop")
    assert status == 200
    req = urllib.request.Request(srv.url + f"/api/download?sid={sid}&kind=full")
    with urllib.request.urlopen(req, timeout=60) as r:
        disposition = r.headers["content-disposition"]
    assert disposition == 'attachment; filename="my_odd_name-edited-full.png"'


def test_speech_checkpoint_has_40_named_sliders(tmp_path, tiny_world, demo_face):
    ck = save_checkpoint(tmp_path / "speech.pt", dict(TINY_MODEL_CONFIG, c_dim=40))
    ed = Editor.from_files(ck, tiny_world / "model.h5")
    assert ed.n_params == 40 and ed.exp_names[30] == "viseme_aa" and ed.exp_names[:30] == ed.model.exp_names
    protos = ed.prototypes()
    assert all(len(v) == 40 and not any(v[30:]) for v in protos.values())
    face = ed.prepare(demo_face.image, landmarks=demo_face.landmarks)
    assert face.p_exp.shape == (40,)
    p = np.zeros(40, np.float32)
    p[35] = 1.0
    assert ed.edit(face, p).shape == (64, 64, 3)
    assert not np.array_equal(ed.render_face(face, p), ed.render_face(face, np.zeros(40)))  # speech basis moves the mesh


def test_editor_calibrates_detections_like_the_fit_stage(serve_editor, tiny_world):
    """The editor loads the model's landmark calibration for renders (the demo world's photo
    folder) and corrects dlib's points with it, as the fit stage does there; uploads are real
    photos, for which a render-learned calibration is not used."""
    from PIL import Image

    from fitting.landmarks import LandmarkCalibration, get_detector
    from workflows.editor import fitbridge

    assert serve_editor.domain_of(tiny_world / "emotionet" / "00000.jpg") == "render"
    assert serve_editor.default_domain == "photo" and serve_editor.calibration_for("photo") is None
    cal = serve_editor.calibration_for("render")
    assert isinstance(cal, LandmarkCalibration)
    np.testing.assert_array_equal(cal.weights, LandmarkCalibration.load(tiny_world / "model.lmcal.npz").weights)
    for path in sorted((tiny_world / "emotionet").glob("*.jpg")):      # the first photo dlib finds a face in
        image = np.asarray(Image.open(path).convert("RGB"))
        raw = get_detector(2, -0.5).detect(image)
        if raw is not None:
            break
    assert raw is not None
    a = fitbridge.fit_photo(serve_editor.fitter("render"), image)
    b = fitbridge.fit_photo(serve_editor.fitter("photo"), image)
    assert a["landmark_source"] == "calibrated" and b["landmark_source"] == "detected"
    np.testing.assert_allclose(a["landmarks"], cal.apply(raw), atol=1e-4)
    np.testing.assert_allclose(b["landmarks"], raw, atol=1e-4)
    assert not np.allclose(a["align"], b["align"])


def test_editor_fit_equals_the_fit_stage_on_detected_photos(tmp_path, tiny_world, serve_editor):
    """Parity on the detected path: the editor's p_exp (and crop, camera) for a photo equal the
    fit stage's row for it: same detector, calibration, options, refinement and gate."""
    import shutil

    from PIL import Image

    from fitting.landmarks import get_detector
    from pipeline.shards import ShardSet
    from tests.helpers import slidergan

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(tiny_world / "emotionet" / "truth.h5", photos / "truth.h5")   # the demo world's folder: renders
    names = []
    for path in sorted((tiny_world / "emotionet").glob("*.jpg")):
        if get_detector(2, -0.5).detect(np.asarray(Image.open(path).convert("RGB"))) is not None:
            shutil.copy(path, photos / path.name)                              # no .pts sidecar: detected
            names.append(path.name)
        if len(names) == 2:
            break
    assert len(names) == 2
    out = tmp_path / "fits"
    slidergan("fit-emotionet", "--images", photos, "--model", tiny_world / "model.h5", "--out", out,
              "--workers", "1", "--no-progress")
    ds = ShardSet(out)
    keys = list(ds.read("key"))
    assert sorted(keys) == names
    assert set(ds.read("lm_source").tolist()) == {2}                          # detected and calibrated
    assert np.isfinite(ds.read("fit_residual")).all()                         # refined against the photo
    for name in names:
        i = keys.index(name)
        face = serve_editor.prepare(read_image_file(photos / name), key=name,
                                    domain=serve_editor.domain_of(photos / name))
        assert face.landmark_source == "calibrated"
        np.testing.assert_allclose(face.p_exp, ds.read("p_exp")[i][: face.p_exp.shape[0]], atol=1e-5)
        np.testing.assert_allclose(face.camera, ds.read("camera")[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(face.landmarks, ds.read("lm_detected")[i], atol=1e-5)
        assert np.abs(face.crop.astype(int) - ds.read("image")[i].astype(int)).max() <= 1


