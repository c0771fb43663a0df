"""Pipeline overhead: the same CPU-bound toy stage (pipeline.testing.BusyStage) run

- ``pipeline_direct_loop_s``: a plain loop calling ``process_chunk`` + ``write_shard``;
- ``pipeline_1_worker_s`` / ``pipeline_2_workers_s``: ``run_stage`` through Dask on an
  already started LocalCluster of 1 / 2 workers (``pipeline.cluster.local_cluster``: the
  runner's processes, 1 thread each, quiet housekeeping) — locking, skip
  checks, scheduling, shard hashing and ``_stage.json`` included;
- ``pipeline_2_workers_cold_s``: the same with ``cluster="local"``, i.e. including
  LocalCluster start-up and shutdown (a fixed cost of a second or more per stage run,
  reported apart so it does not hide the per-chunk overhead);
- ``pipeline_workers_1_local_s``: ``cluster="local", workers=1``, which the runner runs in
  its own process (no cluster to start);
- ratios ``pipeline_1_worker_overhead`` (1 worker / direct - 1) and
  ``pipeline_2_workers_speedup`` (1 worker / 2 workers);
- ``*_cpu_s``: CPU seconds (user + sys) of the runner process and its Dask workers during
  the same runs, and ``pipeline_1_worker_cpu_overhead`` — on a shared machine wall time
  mostly measures the neighbours, CPU time measures the pipeline.

Warm timings are the best of ``repeats`` interleaved runs (the machine may be shared).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def run(ctx=None, n_items: int | None = None, work: int | None = None, repeats: int | None = None) -> dict:
    import psutil
    from distributed import Client

    from pipeline.cluster import local_cluster

    from pipeline.runner import run_stage
    from pipeline.shards import shard_name, write_shard
    from pipeline.stage import params_hash, split_chunks
    from pipeline.testing import BusyStage

    quick = bool(getattr(ctx, "quick", False))
    tmp = Path(getattr(ctx, "tmp", None) or tempfile.mkdtemp()) / "pipeline"
    tmp.mkdir(parents=True, exist_ok=True)
    n_items = n_items or (16 if quick else 48)
    work = work or (300_000 if quick else 1_000_000)
    repeats = repeats or (1 if quick else 3)
    chunk_size = 4
    stage = BusyStage(n_items=n_items, work=work)
    kw = dict(chunk_size=chunk_size, progress=False, log=None, retries=0)

    def direct() -> float:
        out = _fresh(tmp / "direct")
        out.mkdir()
        c = time.process_time()
        t = time.perf_counter()
        ph = params_hash(stage)
        for i, keys in enumerate(split_chunks(sorted(stage.input_keys()), chunk_size)):
            res = stage.process_chunk(keys, i)
            write_shard(out / shard_name(i), res.rows, stage=stage.name, chunk=i, params_hash=ph)
        cpu["direct"].append(time.process_time() - c)
        return time.perf_counter() - t

    def through(cluster, workers=None, st=stage) -> float:
        out = _fresh(tmp / "runner")
        t = time.perf_counter()
        rep = run_stage(st, out, cluster=cluster, workers=workers, **kw)
        dt = time.perf_counter() - t
        if not rep.ok or len(rep.computed) != rep.n_chunks:
            raise RuntimeError(rep.summary())
        return dt

    def warm(n: int) -> float:
        """Time the stage on a started n-worker LocalCluster (workers warmed by a tiny stage).
        No cluster lives in this process while the direct loop runs: its scheduler thread
        would compete for the GIL with the loop."""
        with local_cluster(n, {"kind": "local", "dashboard_address": ":0"}) as lc, Client(lc) as client:
            through(client, st=BusyStage(n_items=2 * chunk_size * n, work=10))   # 2 chunks a worker
            procs = [psutil.Process()] + [psutil.Process(p) for p in client.run(os.getpid).values()]
            c0 = sum(sum(p.cpu_times()[:2]) for p in procs)
            dt = through(client)
            cpu[str(n)].append(sum(sum(p.cpu_times()[:2]) for p in procs) - c0)
            return dt

    runs: dict[str, list[float]] = {"direct": [], "1": [], "2": []}
    cpu: dict[str, list[float]] = {"direct": [], "1": [], "2": []}
    for _ in range(repeats):                                # interleaved: load drifts hit all three
        runs["direct"].append(direct())
        runs["1"].append(warm(1))
        runs["2"].append(warm(2))
    res: dict = {}
    res["pipeline_direct_loop_s"] = min(runs["direct"])
    res["pipeline_1_worker_s"] = min(runs["1"])
    res["pipeline_2_workers_s"] = min(runs["2"])
    res["pipeline_workers_1_local_s"] = through("local", 1)    # what --workers 1 does: in-process
    res["pipeline_2_workers_cold_s"] = through("local", 2)
    res["pipeline_1_worker_overhead"] = res["pipeline_1_worker_s"] / res["pipeline_direct_loop_s"] - 1.0
    res["pipeline_2_workers_speedup"] = res["pipeline_1_worker_s"] / res["pipeline_2_workers_s"]
    # CPU seconds (user+sys; runner + workers) are far less sensitive to a shared machine
    res["pipeline_direct_loop_cpu_s"] = min(cpu["direct"])
    res["pipeline_1_worker_cpu_s"] = min(cpu["1"])
    res["pipeline_2_workers_cpu_s"] = min(cpu["2"])
    res["pipeline_1_worker_cpu_overhead"] = res["pipeline_1_worker_cpu_s"] / res["pipeline_direct_loop_cpu_s"] - 1.0
    res["pipeline_items"] = float(n_items)
    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(type("Ctx", (), {"quick": "--quick" in sys.argv, "tmp": None})()), indent=2))
