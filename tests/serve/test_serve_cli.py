"""``slidergan edit`` and ``slidergan serve`` through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, slidergan


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("edit") / "p.json"
    path.write_text(json.dumps({"smile": 0.8, "jaw_open": 0.5}))
    return path


def test_edit_pastes_the_editor_output_back(tiny_world, serve_ckpt, serve_editor, params_file, tmp_path):
    from workflows.editor.fitbridge import read_landmarks_sidecar
    from workflows.editor.imaging import read_image_file

    photo = tiny_world / "emotionet" / "00002.jpg"
    out = tmp_path / "edited.png"
    proc = slidergan("edit", photo, "--checkpoint", serve_ckpt, "--model", tiny_world / "model.h5",
                     "--params", params_file, "--out", out, "--paste-back")
    assert f"wrote {out}" in proc.stdout and "landmarks sidecar" in proc.stdout
    got = np.asarray(Image.open(out))
    face = serve_editor.prepare(read_image_file(photo), landmarks=read_landmarks_sidecar(photo))
    edited = serve_editor.edit(face, serve_editor.check_params({"smile": 0.8, "jaw_open": 0.5}))
    want = serve_editor.paste(face, edited)
    assert got.shape == face.image.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (got != face.image).any()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_edit_takes_inline_json_and_the_preset(tiny_world, serve_ckpt, params_file, tmp_path):
    """README: ``--params '{"smile": 1.0, "jaw_open": 0.5}'``; ``--config/--set`` reach the fit."""
    photo = tiny_world / "emotionet" / "00002.jpg"
    base = ["edit", photo, "--checkpoint", serve_ckpt, "--model", tiny_world / "model.h5"]
    slidergan(*base, "--params", params_file, "--out", tmp_path / "file.png")
    slidergan(*base, "--params", '{"smile": 0.8, "jaw_open": 0.5}', "--out", tmp_path / "inline.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "file.png")), np.asarray(Image.open(tmp_path / "inline.png")))
    slidergan(*base, "--params", " [" + ", ".join(["0.0"] * 30) + "]", "--out", tmp_path / "list.png")
    proc = slidergan(*base, "--params", "nothing-here.json", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 2 and "neither inline JSON" in proc.stderr
    # the fit: section of the preset is the editor's: an impossible face size rejects the photo
    proc = slidergan(*base, "--params", params_file, "--out", tmp_path / "y.png", "--config", "demo",
                     "--set", "fit.min_face_px=100000", check=False)
    assert proc.returncode == 2 and "the face is too small" in proc.stderr, proc.stderr
    assert not (tmp_path / "y.png").exists()


@pytest.mark.parametrize("case, message", [
    ("short", "expected 30 parameters, got 3"),  # needs the model: the others fail before torch loads
    ("json", "not valid JSON"),
    ("list", "expected a list of numbers or a {name: value} mapping"),
    ("image", "not an image"),
    ("ckpt", "checkpoint not found"),
    ("out", "--out must end in .png"),
])
def test_edit_errors_are_one_line_exit_2(case, message, tiny_world, serve_ckpt, tmp_path):
    photo = tiny_world / "emotionet" / "00000.jpg"
    p = tmp_path / "p.json"
    p.write_text({"short": "[1, 2, 3]", "json": "[1, 2,", "list": '"smile"'}.get(case, "[]"))
    if case == "ckpt":
        p.write_text(json.dumps([0.0] * 30))
    image = photo
    if case == "image":
        image = tmp_path / "text.jpg"
        image.write_text("hello")
    args = ["edit", image, "--checkpoint", tmp_path / "nope.pt" if case == "ckpt" else serve_ckpt,
            "--model", tiny_world / "model.h5", "--params", p, "--out", tmp_path / ("o.gif" if case == "out" else "o.png")]
    proc = slidergan(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_serve_starts_answers_and_stops(tiny_world, serve_ckpt):
    bad = slidergan("serve", "--checkpoint", serve_ckpt.parent / "missing.pt", check=False)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr
    env = dict(os.environ, PYOPENGL_PLATFORM="osmesa")
    proc = subprocess.Popen([sys.executable, "-m", "workflows", "serve", "--checkpoint", serve_ckpt,
                             "--model", tiny_world / "model.h5", "--photos", tiny_world / "emotionet",
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()  # "slidergan serve: editor at http://127.0.0.1:PORT/ ..."
        assert "editor at http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split("editor at ", 1)[1].split()[0]
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "api/info", timeout=10) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.1)
        assert info["n_params"] == 30 and "00000.jpg" in info["photos"]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"SliderGAN editor" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
