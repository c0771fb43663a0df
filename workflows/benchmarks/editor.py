"""Slider editor latency: one slider move, from new parameters to both images encoded.

The generator has the demo preset's widths (``train:`` g_conv_dim, g_repeat) at the
issue's 128x128 and 30 parameters, randomly initialised (speed does not depend on the
weights); the photo is the first demo photo, fitted through its landmark sidecar.  One torch thread, as
``slidergan serve`` runs by default.  Side by side, alternating move by move:

- ``editor_update_ms``: what ``/api/edit`` does: G with the photo's share of the first
  layer cached (:class:`workflows.editor.cached_generator.CachedGenerator`) while the 3D blendshape
  render runs in a second thread, then both PNGs encoded;
- ``editor_update_baseline_ms``: the straightforward way: ``G(x, p)``, then the render,
  then the PNGs, one after the other;
- ``editor_speedup``: baseline / optimised.

Also ``editor_g_ms`` / ``editor_g_baseline_ms`` (G alone, cached vs plain),
``editor_render_ms`` (3D render alone) and ``editor_http_ms`` (a full ``/api/edit``
round trip over HTTP on 127.0.0.1, JSON and base64 included), and
``editor_update_paper_ms`` / ``editor_g_paper_cpu_ms``: the optimised update with the
paper preset's wider generator (config/paper.yaml, 128x128).  Medians; ``*_cpu_ms`` keys
give process CPU time per move, which is what the move costs on an idle machine (wall
times on a shared machine include waiting for a core).
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _editor(ctx, preset: str | None = None):
    import torch

    from fitting.model import MorphableModel
    from model.networks import build_networks, model_config_from_train
    from pipeline.config import load_config
    from workflows.editor.core import Editor

    mm = MorphableModel.load(ctx.world / "model.h5")
    train = load_config(preset).section("train")
    train.update(image_size=128, d_repeat=min(int(train["d_repeat"]), 6))
    mc = model_config_from_train(train, 30)
    torch.manual_seed(0)
    G, D = build_networks(mc)
    G.eval()
    D.eval()
    return Editor(G, D, mm, 30, image_size=mc["image_size"], variant="bench")


def _photo(ctx):
    photos = sorted((Path(ctx.world) / "emotionet").glob("*.jpg"))
    if not photos:
        raise RuntimeError(f"no demo photos under {ctx.world}/emotionet")
    return photos[0]


def _median(xs) -> float:
    return round(float(np.median(xs)), 2)


def run(ctx) -> dict:
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    import torch

    from workflows.editor.app import ThreadedServer, create_app
    from workflows.editor.fitbridge import read_landmarks_sidecar
    from workflows.editor.imaging import encode_png, read_image_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ed = _editor(ctx)
        path = _photo(ctx)
        face = ed.prepare(read_image_file(path), key=path.name, landmarks=read_landmarks_sidecar(path))
        n = 6 if ctx.quick else 20
        rng = np.random.default_rng(0)
        moves = [rng.uniform(-1, 1, ed.n_params).astype(np.float32) for _ in range(n + 2)]
        pool = ThreadPoolExecutor(max_workers=1)

        def optimised(p):
            job = pool.submit(ed.render_face, face, p)
            img = ed.edit(face, p)
            rnd = job.result()
            return encode_png(img), encode_png(rnd)

        def baseline(p):
            img = ed.edit(face, p, use_cache=False)
            rnd = ed.render_face(face, p)
            return encode_png(img), encode_png(rnd)

        timed = {k: ([], []) for k in ("opt", "base", "g", "g_base", "render")}
        jobs = {"opt": optimised, "base": baseline, "g": lambda p: ed.edit(face, p),
                "g_base": lambda p: ed.edit(face, p, use_cache=False), "render": lambda p: ed.render_face(face, p)}
        for i, p in enumerate(moves):
            for key, fn in jobs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(p)
                if i >= 2:  # warm-up moves (numba cache load, first-layer cache, allocator)
                    timed[key][0].append((time.perf_counter() - t0) * 1e3)
                    timed[key][1].append((time.process_time() - c0) * 1e3)
        paper = _editor(ctx, "paper")
        pface = paper.prepare(face.image, key=path.name, landmarks=face.landmarks)
        pwall, pcpu = [], []
        for i, p in enumerate(moves[: max(4, n // 2)]):
            t0, c0 = time.perf_counter(), time.process_time()
            job = pool.submit(paper.render_face, pface, p)
            img = paper.edit(pface, p)
            encode_png(img), encode_png(job.result())
            if i >= 1:
                pwall.append((time.perf_counter() - t0) * 1e3)
                pcpu.append((time.process_time() - c0) * 1e3)
        pool.shutdown()

        srv = ThreadedServer(create_app(ed, None), "127.0.0.1", 0)
        try:
            sid = "bench-session-0001"
            boundary = "benchboundary"
            data = open(path, "rb").read()
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="sid"\r\n\r\n{sid}\r\n'
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                    f'Content-Type: image/jpeg\r\n\r\n').encode() + data + f"\r\n--{boundary}--\r\n".encode()
            req = urllib.request.Request(srv.url + "/api/photo", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            urllib.request.urlopen(req, timeout=120).read()
            http = []
            for i, p in enumerate(moves):
                payload = json.dumps({"sid": sid, "seq": i, "p": [float(x) for x in p]}).encode()
                req = urllib.request.Request(srv.url + "/api/edit", data=payload,
                                             headers={"Content-Type": "application/json"})
                t0 = time.perf_counter()
                urllib.request.urlopen(req, timeout=120).read()
                if i >= 2:
                    http.append((time.perf_counter() - t0) * 1e3)
        finally:
            srv.stop()
    finally:
        torch.set_num_threads(threads)

    opt, base = _median(timed["opt"][0]), _median(timed["base"][0])
    return {
        "editor_update_ms": opt,
        "editor_update_baseline_ms": base,
        "editor_speedup": round(base / max(opt, 1e-9), 2),
        "editor_update_cpu_ms": _median(timed["opt"][1]),
        "editor_update_baseline_cpu_ms": _median(timed["base"][1]),
        "editor_g_ms": _median(timed["g"][0]),
        "editor_g_baseline_ms": _median(timed["g_base"][0]),
        "editor_g_cpu_ms": _median(timed["g"][1]),
        "editor_g_baseline_cpu_ms": _median(timed["g_base"][1]),
        "editor_render_ms": _median(timed["render"][0]),
        "editor_http_ms": _median(http),
        "editor_update_paper_ms": _median(pwall),
        "editor_update_paper_cpu_ms": _median(pcpu),
        "editor_threads": 1,
    }
