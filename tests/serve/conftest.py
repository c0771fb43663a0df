"""Fixtures for the slider editor: a tiny randomly-initialised checkpoint in the real
checkpoint format, an Editor on the tiny demo world, a live server on a free 127.0.0.1
port (uvicorn in a thread) and a headless system Chromium driven by Selenium."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

# tests/<part>/ folders are named like the packages they test; with tests/ on sys.path
# (pytest's rootdir conftest) ``import render`` can resolve to tests/render as a namespace
# package.  Put the repository root first so the real packages win.
_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[0] != _ROOT:
    sys.path.insert(0, _ROOT)
for _name in ("render", "fitting", "model", "train"):
    if _name in sys.modules and getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]

# 64x64 like the demo preset's network (shard crops are 128: the editor resizes as the trainer does)
TINY_MODEL_CONFIG = {"image_size": 64, "c_dim": 30, "g_conv_dim": 8, "g_repeat": 1, "d_conv_dim": 8,
                     "d_repeat": 2}
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def save_checkpoint(path: Path, model_config: dict = TINY_MODEL_CONFIG, seed: int = 0) -> Path:
    """A randomly initialised (G, D) saved as ``slidergan-ckpt/1`` (docs/INTERFACES.md)."""
    import torch

    from model.networks import build_networks

    torch.manual_seed(seed)
    G, D = build_networks(model_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "slidergan-ckpt/1", "variant": "rad", "step": 0, "phase": 1,
                "model_config": dict(model_config), "G": G.state_dict(), "D": D.state_dict()}, path)
    return path


ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m workflows ARGS`` from the repository root (text output)."""
    env = dict(os.environ, PYOPENGL_PLATFORM="osmesa")
    proc = subprocess.run([sys.executable, "-m", "workflows", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"slidergan {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


# helpers handed to the tests as fixtures (test modules import nothing from conftest files)
@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    return dict(TINY_MODEL_CONFIG)


@pytest.fixture(scope="session")
def make_checkpoint():
    return save_checkpoint


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def serve_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("serve") / "train" / "rad" / "checkpoints" / "latest.pt")


@pytest.fixture(scope="session")
def serve_editor(tiny_world, serve_ckpt):
    from workflows.editor.core import Editor

    return Editor.from_files(serve_ckpt, tiny_world / "model.h5")


class LiveServer:
    """The editor app on a free 127.0.0.1 port (uvicorn in a thread); urllib client helpers."""

    def __init__(self, app):
        from workflows.editor.app import ThreadedServer

        self._srv = ThreadedServer(app, "127.0.0.1", 0)
        self.url = self._srv.url

    def stop(self):
        self._srv.stop()

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        """-> (status, content-type, body bytes); HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.headers.get("content-type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("content-type", ""), e.read()

    def get_json(self, path: str):
        status, _, body = self.request(path)
        return status, json.loads(body)

    def post_json(self, path: str, obj):
        status, _, body = self.request(path, json.dumps(obj).encode(), {"Content-Type": "application/json"})
        return status, json.loads(body)

    def post_form(self, path: str, fields: dict, files: dict | None = None):
        """multipart/form-data POST; files: {field: (filename, bytes, content type)}."""
        b = uuid.uuid4().hex
        out = io.BytesIO()
        for k, v in fields.items():
            out.write(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        for k, (fn, data, ct) in (files or {}).items():
            out.write(f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{fn}"\r\n'
                      f'Content-Type: {ct}\r\n\r\n'.encode() + data + b"\r\n")
        out.write(f"--{b}--\r\n".encode())
        status, _, body = self.request(path, out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={b}"})
        return status, json.loads(body)


@pytest.fixture(scope="session")
def live_server(serve_editor, tiny_world):
    from workflows.editor.app import create_app

    srv = LiveServer(create_app(serve_editor, tiny_world / "emotionet", max_bytes=2_000_000, max_pixels=4_000_000))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium (never a self-downloading browser build)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are required: apt-get install -y chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="slidergan-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
