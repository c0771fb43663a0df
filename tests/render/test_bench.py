"""The render benchmark runs and reports its keys (no timing assertions)."""
from types import SimpleNamespace


def test_render_benchmark_keys(tiny_world, tmp_path):
    from workflows.benchmarks import render as bench

    out = bench.run(SimpleNamespace(world=tiny_world, tmp=tmp_path, quick=True))
    for key in ("render_images_per_s", "render_baseline_images_per_s", "render_speedup",
                "render_cpu_ms_per_image", "render_baseline_cpu_ms_per_image"):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["render_vertices"] == 53349
