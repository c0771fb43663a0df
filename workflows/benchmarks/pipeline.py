"""Pipeline overhead: the same CPU-bound toy stage (pipeline.testing.BusyStage) run

- ``pipeline_direct_loop_s``: a plain loop calling ``process_chunk`` + ``write_shard``;
- ``pipeline_1_worker_s`` / ``pipeline_2_workers_s``: ``run_stage`` through Dask on an
  already started LocalCluster of 1 / 2 workers (processes, 1 thread each) — locking, skip
  checks, scheduling, shard hashing and ``_stage.json`` included;
- ``pipeline_1_worker_cold_s`` / ``pipeline_2_workers_cold_s``: the same with
  ``cluster="local"``, i.e. including LocalCluster start-up and shutdown (a fixed cost of
  about a second or two per stage run, reported apart so it does not hide the per-chunk
  overhead);
- ratios ``pipeline_1_worker_overhead`` (1 worker / direct - 1) and
  ``pipeline_2_workers_speedup`` (1 worker / 2 workers).

Warm timings are the best of ``repeats`` runs (the machine may be shared).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def run(ctx=None, n_items: int | None = None, work: int | None = None, repeats: int | None = None) -> dict:
    from distributed import Client, LocalCluster

    from pipeline.runner import run_stage
    from pipeline.shards import shard_name, write_shard
    from pipeline.stage import params_hash, split_chunks
    from pipeline.testing import BusyStage

    quick = bool(getattr(ctx, "quick", False))
    tmp = Path(getattr(ctx, "tmp", None) or tempfile.mkdtemp()) / "pipeline"
    tmp.mkdir(parents=True, exist_ok=True)
    n_items = n_items or (16 if quick else 48)
    work = work or (300_000 if quick else 1_000_000)
    repeats = repeats or (1 if quick else 2)
    chunk_size = 4
    stage = BusyStage(n_items=n_items, work=work)
    kw = dict(chunk_size=chunk_size, progress=False, log=None, retries=0)

    def direct() -> float:
        out = _fresh(tmp / "direct")
        out.mkdir()
        t = time.perf_counter()
        ph = params_hash(stage)
        for i, keys in enumerate(split_chunks(sorted(stage.input_keys()), chunk_size)):
            res = stage.process_chunk(keys, i)
            write_shard(out / shard_name(i), res.rows, stage=stage.name, chunk=i, params_hash=ph)
        return time.perf_counter() - t

    def through(cluster, workers=None) -> float:
        out = _fresh(tmp / "runner")
        t = time.perf_counter()
        rep = run_stage(stage, out, cluster=cluster, workers=workers, **kw)
        dt = time.perf_counter() - t
        if not rep.ok or len(rep.computed) != rep.n_chunks:
            raise RuntimeError(rep.summary())
        return dt

    res: dict = {}
    res["pipeline_direct_loop_s"] = min(direct() for _ in range(repeats))
    for n, key in ((1, "pipeline_1_worker_s"), (2, "pipeline_2_workers_s")):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as lc, Client(lc) as client:
            through(client)                                     # warm the workers' imports
            res[key] = min(through(client) for _ in range(repeats))
    res["pipeline_1_worker_cold_s"] = through("local", 1)
    res["pipeline_2_workers_cold_s"] = through("local", 2)
    res["pipeline_1_worker_overhead"] = res["pipeline_1_worker_s"] / res["pipeline_direct_loop_s"] - 1.0
    res["pipeline_2_workers_speedup"] = res["pipeline_1_worker_s"] / res["pipeline_2_workers_s"]
    res["pipeline_items"] = float(n_items)
    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(type("Ctx", (), {"quick": "--quick" in sys.argv, "tmp": None})()), indent=2))
