"""``slidergan bench --only fit-scale`` (issue 20, item 3) at tiny sizes: 12 and 24 photos of
the session's tiny world, 1 and 2 workers (a real Dask LocalCluster), through the real CLI.
No timing assertions: every key agrees with what is on disk (shards, rejects, file times) and
with the other keys it is derived from (docs/fitting.md, "Scale", has the real sizes)."""
import json

import h5py
import numpy as np
import pytest

from tests.helpers import slidergan

SIZES, WORKERS = (12, 24), (1, 2)


@pytest.mark.slow
def test_fit_scale_keys_match_the_shards(tiny_world, tmp_path):
    from workflows.benchmarks import fit_scale

    out = tmp_path / "bench"
    slidergan("bench", "--out", out, "--world", tiny_world, "--only", "fit-scale",
              "--fit-scale-faces", ",".join(map(str, SIZES)), "--fit-scale-workers", ",".join(map(str, WORKERS)),
              "--fit-scale-chunk-size", "4", timeout=900)
    assert json.loads((out / "bench_errors.json").read_text()) == {}
    assert not (out / "world").exists()                       # the area needs no bench world
    b = json.loads((out / "bench.json").read_text())
    with h5py.File(tiny_world / "emotionet" / "truth.h5", "r") as f:
        all_keys = sorted(k.decode() for k in f["key"][()])
    steady, wall = {}, {}
    for n in SIZES:
        for w in WORKERS:
            k = lambda name: b[f"fit_scale_{n}_{w}w_{name}"]  # noqa: E731
            stage = out / "tmp" / "fit-scale" / f"fits-{n}-{w}w"
            shards = sorted(stage.glob("shard-*.h5"))
            rows = []
            for s in shards:
                with h5py.File(s, "r") as f:
                    rows += [x.decode() for x in f["key"][()]]
            rejects = [json.loads(line)["key"] for line in (stage / "rejects.jsonl").read_text().splitlines()]
            # the fitted photos are the world's first n, every one a row or a reject
            assert sorted(rows + rejects) == all_keys[:n]
            assert k("faces") == n and k("rows") == len(rows) == n - len(rejects) and k("rejects") == len(rejects)
            assert k("chunks") == len(shards)
            # the worker processes sampled: the command itself, or (at least) the w Dask workers
            assert k("worker_processes") == 1 if w == 1 else k("worker_processes") >= w
            assert k("chunk_size") == json.loads((stage / "_stage.json").read_text())["chunk_size"]
            assert k("stage_pickle_kb") > 0
            assert k("shard_mb") == pytest.approx(sum(s.stat().st_size for s in shards) / 2**20)
            # throughput = faces / the measured seconds; the stage's seconds lie inside the command's
            assert 0 < k("seconds") <= k("command_seconds")
            assert k("faces_per_s") == pytest.approx(n / k("seconds"), rel=1e-12)
            assert k("faces_per_s_per_worker") == pytest.approx(n / k("seconds") / w, rel=1e-12)
            assert k("faces_per_cpu_s") == pytest.approx(n / k("cpu_seconds"), rel=1e-12)
            assert 0 < k("worker_cpu_seconds") <= k("cpu_seconds") * 1.05 + 0.1
            assert (k("cluster_start_s") > 0) == (w > 1)
            # sampled peaks of the workers: real processes (torch + the model), within the kernel's
            # peak of the whole tree (ru_maxrss: the largest single process)
            assert 50 < k("peak_rss_mb_per_worker") <= k("peak_rss_mb_tree") * 1.02
            if w > 1:
                assert k("peak_rss_mb_driver") <= k("peak_rss_mb_tree") * 1.02
            # steady throughput, recomputed from the shards' completion times
            meta = json.loads((stage / "_stage.json").read_text())
            done = sorted(((stage / s["file"]).stat().st_mtime_ns, s["n"] + s["n_rejects"]) for s in meta["shards"])
            if len(done) > w:
                faces, secs = sum(m for _, m in done[w:]), (done[-1][0] - done[w - 1][0]) / 1e9
                # (the bench subtracts unix times as floats: ~1e-7 s apart from the integer ns here)
                assert k("steady_faces") == faces and k("steady_seconds") == pytest.approx(secs, abs=1e-5)
                assert k("steady_faces_per_s") == pytest.approx(faces / secs, rel=1e-4)
                assert k("steady_faces_per_s_per_worker") == pytest.approx(faces / secs / w, rel=1e-4)
                # the workers' CPU in the window: part of what they spent in the whole run
                assert 0 < k("steady_worker_cpu_seconds") <= k("worker_cpu_seconds") + 0.05
                assert k("steady_faces_per_worker_cpu_s") == pytest.approx(faces / k("steady_worker_cpu_seconds"))
                assert (k("steady_driver_cpu_seconds") is not None) == (w > 1)
            else:
                assert k("steady_faces_per_s") is None and k("steady_faces_per_worker_cpu_s") is None
            steady[n, w] = k("steady_faces_per_worker_cpu_s")
            wall[n, w] = k("steady_faces_per_s_per_worker")
    small, large = SIZES
    assert b["fit_scale_small_faces"] == small and b["fit_scale_large_faces"] == large
    assert b["fit_scale_throughput_ratio_4k_vs_1k"] == pytest.approx(
        min(steady[large, w] / steady[small, w] for w in WORKERS), rel=1e-12)
    assert b["fit_scale_throughput_ratio_4k_vs_1k_wall"] == pytest.approx(
        min(wall[large, w] / wall[small, w] for w in WORKERS), rel=1e-12)
    per = lambda n, w, name: b[f"fit_scale_{n}_{w}w_{name}"]  # noqa: E731
    assert b["fit_scale_throughput_ratio_4k_vs_1k_end_to_end"] == pytest.approx(
        min(per(large, w, "faces_per_s_per_worker") / per(small, w, "faces_per_s_per_worker") for w in WORKERS))
    assert b["fit_scale_peak_rss_ratio_4k_vs_1k"] == pytest.approx(
        max(per(large, w, "peak_rss_mb_per_worker") / per(small, w, "peak_rss_mb_per_worker") for w in WORKERS))
    assert b["fit_scale_peak_rss_mb_per_worker"] == max(per(n, w, "peak_rss_mb_per_worker")
                                                        for n in SIZES for w in WORKERS)
    assert b["fit_scale_2_worker_efficiency"] == pytest.approx(steady[large, 2] / steady[large, 1])
    assert b["fit_scale_2_worker_efficiency_wall"] == pytest.approx(wall[large, 2] / wall[large, 1])
    assert b["fit_scale_driver_cpu_s_per_face"] == pytest.approx(
        per(large, 2, "steady_driver_cpu_seconds") / per(large, 2, "steady_faces"))
    # the 250k extrapolation: the realistic per-core cost (no fit area ran: the documented figure)
    # plus the measured machinery per face, over N cores
    assert b["fit_scale_realistic_faces_per_s"] == fit_scale.DOCUMENTED_REALISTIC
    mach = b["fit_scale_machinery_s_per_face"]
    assert mach == pytest.approx(1.0 / steady[large, 2])
    for c in fit_scale.CORES:
        assert b[f"fit_scale_250k_hours_{c}_cores"] == pytest.approx(
            250_000 * (1 / fit_scale.DOCUMENTED_REALISTIC + mach) / c / 3600)
        assert b[f"fit_scale_250k_hours_{c}_cores_landmark_path"] == pytest.approx(250_000 * mach / c / 3600)
    assert b["fit_scale_driver_rss_ratio_4k_vs_1k"] == pytest.approx(
        per(large, 2, "peak_rss_mb_driver") / per(small, 2, "peak_rss_mb_driver"))
    # a task's stage is cut to its chunk: the same size for 12 and 24 listed photos (chunks of 4)
    ratio = per(large, 1, "stage_pickle_kb") / per(small, 1, "stage_pickle_kb")
    assert b["fit_scale_stage_pickle_ratio_4k_vs_1k"] == pytest.approx(ratio) and ratio == pytest.approx(1, abs=0.02)
    assert b["fit_scale_250k_stage_pickle_mb"] == pytest.approx(per(large, 1, "stage_pickle_kb") / 1024)
    assert b["fit_scale_250k_chunks"] == -(-250_000 // per(large, 2, "chunk_size"))
    assert b["fit_scale_250k_task_payload_gb"] == pytest.approx(
        b["fit_scale_250k_stage_pickle_mb"] * b["fit_scale_250k_chunks"] / 1024)
    assert b["fit_scale_shard_bytes_per_face"] == pytest.approx(
        per(large, 2, "shard_mb") * 2**20 / per(large, 2, "rows"))
    assert np.isfinite(b["fit_scale_250k_shard_gb"]) and b["fit_scale_250k_shard_gb"] > 0


def test_fit_scale_is_opt_in_and_its_sizes_are_checked(tmp_path):
    from workflows.commands.bench import AREAS, EXTRA_AREAS

    assert "fit-scale" in EXTRA_AREAS and "fit-scale" not in AREAS    # make bench does not run it
    r = slidergan("bench", "--out", tmp_path / "b", "--world", tmp_path, "--only", "fit-scale",
                  "--fit-scale-faces", "16", check=False, timeout=300)
    assert r.returncode == 1
    assert "at least two sizes" in json.loads((tmp_path / "b" / "bench_errors.json").read_text())["fit-scale"]
