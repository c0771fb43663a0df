"""The expression reader as the editor's transfer regressor (``--reader``; D | reader | fit)."""
from __future__ import annotations

import io
import json
import shutil
import urllib.request
import uuid

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from tests.helpers import save_checkpoint, slidergan

SID = "reader-session-0001"


def _save_reader(path, model_hash, n_params=30, seed=0):
    """An untrained reader file (the editor only needs its format and shapes)."""
    from model.reader import build_reader
    from train.reader import save_reader

    conf = {"image_size": 32, "n_params": n_params, "width": 4, "stages": 2, "head": "pool", "stem_stride": 2}
    torch.manual_seed(seed)
    net = build_reader(conf)
    with torch.no_grad():                  # an untrained head answers ~0; make the outputs distinct
        net.head[-1].bias.copy_(torch.linspace(-0.5, 0.5, n_params))
    return save_reader(path, net, conf, {"model_hash": model_hash})


@pytest.fixture(scope="module")
def reader_run(tmp_path_factory, tiny_world):
    """RUN/ with model.h5, train/rad/checkpoints/latest.pt and reader/reader.pt."""
    from fitting.model import read_model_hash

    run = tmp_path_factory.mktemp("readerserve") / "run"
    run.mkdir()
    (run / "model.h5").symlink_to(tiny_world / "model.h5")
    ckpt = save_checkpoint(run / "train" / "rad" / "checkpoints" / "latest.pt")
    _save_reader(run / "reader" / "reader.pt", read_model_hash(tiny_world / "model.h5"))
    return run, ckpt


@pytest.fixture(scope="module")
def reader_editor(reader_run):
    from workflows.editor.core import Editor

    return Editor.from_files(reader_run[1])          # reader="auto" finds RUN/reader/reader.pt


@pytest.fixture(scope="module")
def face(reader_editor, tiny_world):
    from workflows.editor.fitbridge import read_landmarks_sidecar
    from workflows.editor.imaging import read_image_file

    path = tiny_world / "emotionet" / "00001.jpg"
    return reader_editor.prepare(read_image_file(path), key="00001.jpg", landmarks=read_landmarks_sidecar(path))


def test_reader_is_found_next_to_the_run_and_reads_the_crop(reader_editor, reader_run, face):
    from train.reader import load_reader

    run, _ = reader_run
    assert reader_editor.reader is not None and reader_editor.regressors == ["D", "reader"]
    want = load_reader(run / "reader" / "reader.pt").predict(face.crop)[0]
    got = reader_editor.regress(face, "reader")
    assert got.dtype == np.float32 and got.shape == (30,) and np.allclose(got, want, atol=1e-6)
    assert not np.allclose(got, reader_editor.regress(face, "D"))
    with pytest.raises(ConfigError, match="unknown regressor"):
        reader_editor.regress(face, "fit")


def test_reader_choice_none_explicit_and_mismatch(reader_run, tmp_path, tiny_world, face):
    from workflows.editor.core import Editor

    run, ckpt = reader_run
    assert Editor.from_files(ckpt, reader="none").regressors == ["D"]
    ed = Editor.from_files(ckpt, reader=run / "reader" / "reader.pt")
    assert ed.reader is not None
    with pytest.raises(ConfigError, match="no expression reader loaded"):
        Editor.from_files(ckpt, reader=None).regress(face, "reader")
    other = _save_reader(tmp_path / "other.pt", "0123456789abcdef")
    with pytest.raises(ConfigError, match="trained for another 3DMM"):
        Editor.from_files(ckpt, reader=other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a readable reader file") as e:
        Editor.from_files(ckpt, reader=junk)
    assert "\n" not in str(e.value)
    # auto: a reader for another model next to the run is skipped with a note, not an error
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "model.h5").symlink_to(tiny_world / "model.h5")
    ck2 = run2 / "train" / "rad" / "checkpoints"
    ck2.mkdir(parents=True)
    shutil.copy(ckpt, ck2 / "latest.pt")          # a copy: the editor resolves symlinks
    _save_reader(run2 / "reader" / "reader.pt", "0123456789abcdef")
    ed2 = Editor.from_files(ck2 / "latest.pt")
    assert ed2.reader is None and "another 3DMM" in ed2.reader_note
    # a 40-wide (speech) reader feeds a 30-parameter editor its first 30 outputs
    wide = _save_reader(tmp_path / "wide.pt", None, n_params=40)
    ed3 = Editor.from_files(ckpt, reader=wide)
    assert np.allclose(ed3.regress(face, "reader"), ed3.reader.predict(face.crop)[0, :30], atol=1e-6)


def _post_form(url, fields):
    b = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    out.write(f"--{b}--\r\n".encode())
    req = urllib.request.Request(url, data=out.getvalue(),
                                 headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_api_offers_the_reader_for_transfer(reader_editor, tiny_world, face):
    from workflows.editor.app import ThreadedServer, WEB_DIR, create_app

    srv = ThreadedServer(create_app(reader_editor, tiny_world / "emotionet"))
    try:
        with urllib.request.urlopen(srv.url + "/api/info", timeout=30) as r:
            info = json.loads(r.read())
        assert info["has_reader"] is True and info["regressors"] == ["D", "reader"]
        body = _post_form(srv.url + "/api/photo", {"sid": SID, "slot": "transfer", "name": "00001.jpg"})
        assert body["p_reader"] == pytest.approx(reader_editor.regress(face, "reader").tolist(), abs=1e-3)
        assert len(body["p_regressed"]) == 30 and len(body["p_fit"]) == 30
    finally:
        srv.stop()
    page = (WEB_DIR / "index.html").read_text()
    assert 'value="reader"' in page and 'id="reader-choice"' in page
    assert "p_reader" in (WEB_DIR / "app.js").read_text()


def test_edit_cli_transfers_with_the_reader(reader_run, reader_editor, tiny_world, tmp_path):
    from PIL import Image

    from workflows.editor.fitbridge import read_landmarks_sidecar
    from workflows.editor.imaging import read_image_file

    run, ckpt = reader_run
    photo, other = tiny_world / "emotionet" / "00000.jpg", tiny_world / "emotionet" / "00001.jpg"
    out = tmp_path / "t.png"
    proc = slidergan("edit", photo, "--checkpoint", ckpt, "--params-from", other, "--out", out)
    assert "by reader" in proc.stdout
    face2 = reader_editor.prepare(read_image_file(other), landmarks=read_landmarks_sidecar(other))
    p = np.clip(reader_editor.regress(face2, "reader"), -1, 1)
    face1 = reader_editor.prepare(read_image_file(photo), landmarks=read_landmarks_sidecar(photo))
    want = reader_editor.edit(face1, p)
    assert np.abs(np.asarray(Image.open(out)).astype(int) - want.astype(int)).max() <= 1
    proc = slidergan("edit", photo, "--checkpoint", ckpt, "--params-from", other, "--regressor", "D",
                     "--reader", "none", "--out", out)
    assert "by D" in proc.stdout
    bad = slidergan("edit", photo, "--checkpoint", ckpt, "--params-from", other, "--reader", tmp_path / "no.pt",
                    "--out", out, check=False)
    assert bad.returncode == 2 and "reader file not found" in bad.stderr
