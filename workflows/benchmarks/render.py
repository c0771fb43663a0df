"""Renderer throughput: the numba fast path against pyrender (OSMesa), side by side.

Both render the *same* frames: the demo model's mesh (53k vertices, 106k triangles) with a
new random identity + expression each frame (new geometry, so nothing can be cached on
the GPU side), per-vertex albedo, a random SH light, 128x128, composited over a background.

- ``render_images_per_s``: ``render.render(..., backend="fast")`` with all buffers
  (image, mask, triangle ids, barycentrics, depth).
- ``render_baseline_images_per_s``: ``render.render(..., backend="pyrender", buffers=False)``:
  a new pyrender Mesh/Scene per frame, image + mask only (the cheapest pyrender call; the
  id pass that produces tri/bary is *not* counted against the baseline).
- ``render_baseline_full_images_per_s``: pyrender with the id pass (all buffers, like the fast path).
- ``render_speedup``: ratio of the first two.
- ``render_cpu_ms_per_image`` / ``render_baseline_cpu_ms_per_image`` / ``render_cpu_speedup``:
  CPU time per image (process time, all threads: llvmpipe rasterises on several threads,
  the fast path on one), which is what matters when the machine is shared.

Warm-up frames (JIT cache load, OpenGL context creation) are excluded for both; the two
backends alternate in blocks (A B A B) so that machine load affects both alike.
"""
from __future__ import annotations

import os
import time

import numpy as np


def _frames(ctx, n: int):
    from fitting.model import MorphableModel

    path = ctx.world / "model.h5"
    if path.exists():
        model = MorphableModel.load(path)
    else:  # no world: the demo model itself
        from fitting.demo_model import build_demo_model

        model = build_demo_model(seed=0)
    rng = np.random.default_rng(0)
    from render.camera import camera_fitting_view
    from render.lighting import random_light

    frames = []
    for _ in range(n):
        V = model.instance(rng.normal(size=model.n_id).astype(np.float32),
                           rng.uniform(-1, 1, model.n_exp).astype(np.float32))
        cam = camera_fitting_view(V, (128, 128), yaw=rng.uniform(-0.6, 0.6), pitch=rng.uniform(-0.2, 0.2))
        frames.append((V, cam, random_light(rng)))
    return model, frames


def _rates(fns, frames, rounds: int = 2) -> tuple[list[float], list[float]]:
    """Images/s (wall clock) and CPU ms per image (process time, all threads, so
    llvmpipe's worker threads count for pyrender) of each function on the same frames.

    Each function renders all frames as one block, and the blocks alternate over
    ``rounds`` (A B A B ...), so slow drifts of the machine load affect all alike.  Blocks
    rather than frame-by-frame alternation: llvmpipe's worker threads keep running for a
    moment after a pyrender call and would be charged to the next fast-path frame."""
    for fn in fns:
        fn(*frames[0])  # warm-up
    spent = [0.0] * len(fns)
    cpu = [0.0] * len(fns)
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            for f in frames:
                fn(*f)
            spent[k] += time.perf_counter() - t0
            cpu[k] += time.process_time() - c0
    n = rounds * len(frames)
    return [n / s for s in spent], [1000.0 * c / n for c in cpu]


def run(ctx) -> dict:
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    import render

    n = 5 if ctx.quick else 30
    model, frames = _frames(ctx, n)
    T = model.trilist
    C = model.texture()
    bg = np.full((128, 128, 3), 90, np.uint8)

    def fast(V, cam, light):
        return render.render(V, T, C, cam, bg, light=light, backend="fast")

    def pyr(V, cam, light):
        return render.render(V, T, C, cam, bg, light=light, backend="pyrender", buffers=False)

    def pyr_full(V, cam, light):
        return render.render(V, T, C, cam, bg, light=light, backend="pyrender", buffers=True)

    (fast_rate, base_rate), (fast_cpu, base_cpu) = _rates([fast, pyr], frames)
    (full_rate,), _ = _rates([pyr_full], frames[: max(5, n // 4)], rounds=1)
    return {
        "render_images_per_s": round(fast_rate, 2),
        "render_baseline_images_per_s": round(base_rate, 2),
        "render_baseline_full_images_per_s": round(full_rate, 2),
        "render_speedup": round(fast_rate / base_rate, 2),
        "render_cpu_ms_per_image": round(fast_cpu, 2),
        "render_baseline_cpu_ms_per_image": round(base_cpu, 2),
        "render_cpu_speedup": round(base_cpu / max(fast_cpu, 1e-9), 2),
        "render_vertices": int(model.n_vertices),
        "render_size": "128x128",
    }
