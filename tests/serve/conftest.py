"""Fixtures for the slider editor: a tiny randomly-initialised checkpoint in the real
checkpoint format (``tests.helpers.save_checkpoint``), an Editor on the tiny demo world, a
live server on a free 127.0.0.1 port (uvicorn in a thread) and a headless system Chromium
driven by Selenium."""
from __future__ import annotations

import io
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers import save_checkpoint

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


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
