"""Fit stage at scale (``slidergan bench --only fit-scale``; issue 20, item 3).

Runs the real ``slidergan fit-emotionet`` command, one subprocess per run, over the first
``n`` photos of a generated demo world for every size ``n`` and worker count ``w``
(``--workers``; 1 worker runs the chunks in the command's own process, more start a Dask
``LocalCluster`` of ``w`` processes).  The world is ``ctx.world`` (``--world``, or the bench's
own) when it has enough photos, else ``make-demo --faces max(sizes)`` built once under
``B/fit-scale-world-<max>`` and reused; generation is setup, never timed.  Sizes, worker counts and the chunk
size are parameters (``slidergan bench --fit-scale-faces 1000,4000 --fit-scale-workers 1,2
--fit-scale-chunk-size N``; defaults 1000,4000 / 1,2 / the stage's ``fit.chunk_size``; with
``--quick`` 64,256).

What is measured is the stage machinery (inputs, chunking, Dask scheduling, the fit of a
chunk, shard writing, memory) on the cheap landmark path: ``fit.landmarks=sidecar``,
``fit.photometric=none`` (true landmarks from the ``.pts`` sidecars, no refinement).  The
path real photos take costs ~10 s per face (``fit_realistic_faces_per_s`` of the ``fit``
area), so 4000 faces of it would take hours; the 250k extrapolation combines that per-core
cost with the machinery measured here (below).

Per run (``<n>`` photos, ``<w>`` workers; every key is prefixed ``fit_scale_<n>_<w>w_``):

- ``faces``, ``rows``, ``rejects``     inputs, shard rows and rejects (``_stage.json``)
- ``seconds``         the stage's wall clock as the bench sees it on the command's stderr: from
                      the runner's plan line (``stage fit: N inputs, ...``) to its summary line
                      (lock, chunking, cluster start, every chunk, ``_stage.json``)
- ``command_seconds`` the whole command (interpreter start and imports too)
- ``cluster_start_s`` plan line to the ``dashboard:`` line (w > 1: the LocalCluster's start)
- ``faces_per_s`` = faces / seconds; ``faces_per_s_per_worker`` = that / w
- ``steady_faces`` / ``steady_seconds`` from the shards' completion times (their mtimes): the
                      inputs of the chunks that finished after the first w chunks, and the time
                      from the w-th to the last completion (no cluster start, no imports, no
                      worker warm-up; None with fewer than w + 1 chunks);
                      ``steady_faces_per_s`` (``_per_worker``) their ratio (wall clock)
- ``steady_worker_cpu_seconds``  CPU time the worker processes spent in that window (their
                      sampled CPU times, interpolated at its two ends);
                      ``steady_faces_per_worker_cpu_s`` = steady_faces / that: faces per second
                      of one worker on a core of its own, whatever else the machine runs;
                      ``steady_driver_cpu_seconds`` (w > 1) the command's process (scheduler and
                      client) in the window
- ``cpu_seconds``     CPU time (user + system) of the command's whole process tree (the kernel's
                      ``wait4`` rusage, every reaped descendant included);
                      ``faces_per_cpu_s`` = faces / that
- ``worker_cpu_seconds``, ``faces_per_worker_cpu_s``  the same over the worker processes only
                      (sampled; with 1 worker the command's process)
- ``peak_rss_mb_per_worker``  the largest peak RSS (``VmHWM`` in ``/proc/PID/status``,
                      sampled every 0.1 s in a thread over the command's process tree, found
                      with psutil) of a worker process: the Dask worker processes, or the
                      command's own process with 1 worker; ``peak_rss_mb_driver`` the
                      command's process (scheduler + client) with w > 1;
                      ``peak_rss_mb_tree`` the kernel's ``ru_maxrss`` of the tree (largest
                      single process, sampled or not: an upper bound of the sampled peaks)
- ``worker_processes`` worker processes seen; ``chunks`` shards written, ``chunk_size`` the
                      runner's (``_stage.json``); ``shard_mb`` their size
- ``load_avg``        the machine's 1-minute load average when the run started
- ``stage_pickle_kb`` the pickled stage the runner sends with a chunk (``Stage.for_chunk``: the
                      stage cut to the chunk's photos; before, it held all ``n`` photos)

Headline (``small`` / ``large``: the smallest and the largest size; 1000 and 4000 by default):

- ``fit_scale_throughput_ratio_4k_vs_1k``  min over worker counts of the steady per-worker
                      throughput (``steady_faces_per_worker_cpu_s``) at ``large`` over that at
                      ``small`` (goal: >= 0.9, i.e. flat within 10%); ``..._wall`` the same with
                      the wall clock (``steady_faces_per_s_per_worker``: on a shared machine it
                      measures the machine's other load too), ``..._end_to_end`` with
                      ``faces_per_s_per_worker`` (fixed costs favour the large size)
- ``fit_scale_peak_rss_ratio_4k_vs_1k``  max over worker counts of the per-worker peak RSS at
                      ``large`` over ``small`` (memory bounded: ~1); ``fit_scale_peak_rss_mb_per_worker``
                      the largest per-worker peak of every run
- ``fit_scale_2_worker_efficiency``  ``steady_faces_per_worker_cpu_s`` with the most workers over
                      that with the fewest, at ``large`` (``..._wall``: the wall-clock twin)
- ``fit_scale_driver_rss_ratio_4k_vs_1k``  the same for the command's process with w > 1 (the
                      scheduler and client: what the tasks it holds cost)
- ``fit_scale_stage_pickle_ratio_4k_vs_1k``, ``fit_scale_250k_stage_pickle_mb``,
                      ``fit_scale_250k_chunks``, ``fit_scale_250k_task_payload_gb``  the per-task
                      stage pickle at ``large`` over ``small`` (1 when a task's size does not grow
                      with the photos), that size (it does not depend on the input count), and
                      that times the chunks of 250k photos (at the large run's chunk size): what
                      the runner serialises and holds for the tasks
- ``fit_scale_driver_cpu_s_per_face``, ``fit_scale_250k_driver_cpu_hours``  the scheduler's and
                      client's CPU per face (most workers, ``large``): one process whatever the
                      worker count, so the serial part of the stage
- ``fit_scale_realistic_faces_per_s``  per-core cost of the realistic path: the ``fit`` area's
                      ``fit_realistic_faces_per_s`` from ``B/bench.json`` when present, else
                      :data:`DOCUMENTED_REALISTIC` (docs/fitting.md); ``fit_scale_realistic_source``
- ``fit_scale_machinery_s_per_face``  1 / ``steady_faces_per_worker_cpu_s`` of the landmark path
                      at ``large`` and the most workers: a worker's CPU seconds per face (read,
                      fit, crop, shard writing, task handling: an upper bound of what the stage
                      adds to a realistic fit, which does the read, fit and crop itself)
- ``fit_scale_250k_hours_<N>_cores`` = 250000 * (1 / realistic + machinery) / N / 3600 for N in
                      :data:`CORES` (one worker per core, linear scaling); ``..._landmark_path``
                      = 250000 * machinery / N / 3600 (the cheap path itself)
- ``fit_scale_shard_bytes_per_face``, ``fit_scale_250k_shard_gb``  disk of the fit shards
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

#: ``slidergan bench`` need not build its 64-photo world for this area alone
NEEDS_WORLD = False
DEFAULT_FACES = (1000, 4000)
QUICK_FACES = (64, 256)
DEFAULT_WORKERS = (1, 2)
CORES = (1, 2, 16, 64, 256)
TARGET = 250_000
#: ``fit_realistic_faces_per_s`` of docs/fitting.md (2026-12-03, 8 photos, one core), used when
#: ``B/bench.json`` holds no ``fit`` run
DOCUMENTED_REALISTIC = 0.097
#: the cheap landmark path the scale runs take (the stage machinery, not the realistic fit)
STAGE_SETS = ("fit.landmarks=sidecar", "fit.photometric=none")
SAMPLE_S = 0.1
_PLAN = re.compile(r"^stage fit: (\d+) inputs, ")
_SUMMARY = re.compile(r"^stage fit: (\d+) rows, (\d+) rejects, .*\(([\d.]+) s\)")


def world_sets(n: int) -> list[str]:
    """``make-demo --set`` values of the scale world with ``n`` photos (photos only: one mesh,
    one 2-frame sequence, no landmark calibration: the sidecar path needs none)."""
    return [f"demo.faces={int(n)}", f"demo.identities={max(2, min(64, int(n) // 4))}",
            "demo.identities_4dfab=1", "demo.sessions_4dfab=1", "demo.frames_4dfab=1",
            "demo.lrw_sequences=1", "demo.lrw_frames=2", "demo.calibration_faces=0"]


def build_world(folder: Path, n: int, workers: int = 2) -> Path:
    """The scale world (``make-demo``; reuses a finished one).  Not timed."""
    cmd = [sys.executable, "-m", "workflows", "make-demo", "--out", str(folder), "--workers", str(workers),
           "--no-progress"]
    for s in world_sets(n):
        cmd += ["--set", s]
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError(f"building the fit-scale world ({n} photos) failed")
    return folder


def photo_keys(world: Path) -> list[str]:
    import h5py

    with h5py.File(world / "emotionet" / "truth.h5", "r") as f:
        return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in f["key"][()])


def _has_photos(world: Path, n: int) -> bool:
    """``world`` is a finished demo world with at least ``n`` photos (then it is used as is)."""
    try:
        return (world / "_demo.json").is_file() and (world / "model.h5").is_file() and len(photo_keys(world)) >= n
    except (OSError, KeyError):
        return False


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _role(cmdline: list[str], is_root: bool) -> str:
    """driver (the command's process), other (multiprocessing's resource tracker / forkserver)
    or worker (any other descendant: the Dask worker processes; the command starts no others)."""
    if is_root:
        return "driver"
    text = " ".join(cmdline)
    return "other" if "resource_tracker" in text or "forkserver" in text else "worker"


class TreeSampler(threading.Thread):
    """Samples, every ``interval`` s, the peak RSS (``VmHWM``) and CPU time of process ``pid``
    and of all its descendants (psutil).  ``procs[pid]`` = {role, hwm_kb, cpu_s, series: [(unix
    time, cpu_s)]}."""

    def __init__(self, pid: int, interval: float = SAMPLE_S):
        super().__init__(name="fit-scale-rss", daemon=True)
        self.pid, self.interval = int(pid), float(interval)
        self.procs: dict[int, dict] = {}
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            tree = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        for p in tree:
            try:
                now = time.time()
                t = p.cpu_times()
            except psutil.Error:
                continue
            try:
                cmd = p.cmdline()
            except psutil.Error:
                cmd = []
            hwm = _status_kb(p.pid, "VmHWM")
            d = self.procs.setdefault(p.pid, {"role": "other", "hwm_kb": 0, "cpu_s": 0.0, "series": []})
            d["role"] = _role(cmd, p.pid == self.pid)
            if hwm is not None:
                d["hwm_kb"] = max(d["hwm_kb"], hwm)
            d["cpu_s"] = max(d["cpu_s"], float(t.user + t.system))
            d["series"].append((now, d["cpu_s"]))

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)


def _steady(out: Path, workers: int):
    """(inputs, t0, t1): the inputs of the chunks that completed after the first ``workers``
    ones, the unix times of the ``workers``-th and of the last completion (the shards' mtimes;
    inputs = rows + rejects per shard of ``_stage.json``); None when there are too few chunks."""
    meta = json.loads((out / "_stage.json").read_text())
    done = sorted((os.stat(out / s["file"]).st_mtime_ns, s["n"] + s["n_rejects"]) for s in meta["shards"])
    if len(done) <= workers:
        return None
    return sum(k for _, k in done[workers:]), done[workers - 1][0] / 1e9, done[-1][0] / 1e9


def _cpu_at(series, t: float) -> float:
    """CPU seconds of a sampled process at unix time ``t`` (linear between samples, clamped)."""
    if not series:
        return 0.0
    ts = np.array([a for a, _ in series])
    cs = np.array([b for _, b in series])
    return float(np.interp(t, ts, cs))


def measure(world: Path, n: int, workers: int, out: Path, list_path: Path, chunk_size: int | None = None) -> dict:
    """One ``fit-emotionet`` run over the first ``n`` photos (``list_path``) into ``out``
    (recomputed: ``--force``); the per-run figures of the module doc, unprefixed."""
    keys = photo_keys(world)[:int(n)]
    list_path.parent.mkdir(parents=True, exist_ok=True)
    list_path.write_text("".join(k + "\n" for k in keys))
    emo = world / "emotionet"
    cmd = [sys.executable, "-m", "workflows", "fit-emotionet", "--images", str(list_path), "--root", str(emo),
           "--metadata", str(emo / "truth.h5"), "--model", str(world / "model.h5"), "--out", str(out),
           "--workers", str(int(workers)), "--no-progress", "--force"]
    if chunk_size:
        cmd += ["--chunk-size", str(int(chunk_size))]
    for s in STAGE_SETS:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    load = os.getloadavg()[0]
    stamps: dict[str, float] = {}
    lines: list[str] = []
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()

    def read_err() -> None:
        for line in proc.stderr:
            t = time.perf_counter()
            lines.append(line.rstrip("\n"))
            if _PLAN.match(line):
                stamps.setdefault("plan", t)
            elif line.startswith("dashboard:"):
                stamps.setdefault("dashboard", t)
            elif _SUMMARY.match(line):
                stamps.setdefault("summary", t)

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    _, status, ru = os.wait4(proc.pid, 0)
    t_end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    sampler.stop()
    proc.stderr.close()
    if proc.returncode != 0 or "plan" not in stamps or "summary" not in stamps:
        raise RuntimeError(f"fit-emotionet ({n} photos, {workers} workers) exited {proc.returncode}: "
                           + " | ".join(lines[-5:]))
    meta = json.loads((out / "_stage.json").read_text())
    counts = meta["counts"]
    seconds = stamps["summary"] - stamps["plan"]
    root = sampler.procs.get(proc.pid, {"hwm_kb": 0, "cpu_s": 0.0, "series": []})
    workers_seen = [d for d in sampler.procs.values() if d["role"] == "worker"]
    if int(workers) <= 1:
        workers_seen = [root]
    cpu = float(ru.ru_utime + ru.ru_stime)
    wcpu = float(sum(d["cpu_s"] for d in workers_seen))
    r = {
        "faces": float(counts["inputs"]), "rows": float(counts["rows"]), "rejects": float(counts["rejects"]),
        "seconds": float(seconds), "command_seconds": float(t_end - t_start),
        "cluster_start_s": float(stamps["dashboard"] - stamps["plan"]) if "dashboard" in stamps else 0.0,
        "faces_per_s": float(counts["inputs"] / seconds),
        "faces_per_s_per_worker": float(counts["inputs"] / seconds / int(workers)),
        "cpu_seconds": cpu, "faces_per_cpu_s": float(counts["inputs"] / max(cpu, 1e-9)),
        "worker_cpu_seconds": wcpu, "faces_per_worker_cpu_s": float(counts["inputs"] / max(wcpu, 1e-9)),
        "peak_rss_mb_per_worker": float(max(d["hwm_kb"] for d in workers_seen) / 1024.0) if workers_seen else None,
        "peak_rss_mb_driver": float(root["hwm_kb"] / 1024.0),
        "peak_rss_mb_tree": float(ru.ru_maxrss / 1024.0),
        "worker_processes": float(len(workers_seen)),
        "chunks": float(len(meta["shards"])), "chunk_size": float(meta["chunk_size"]),
        "shard_mb": float(sum((out / s["file"]).stat().st_size for s in meta["shards"]) / 2**20),
        "load_avg": float(load),
    }
    st = _steady(out, int(workers))
    for k in ("steady_faces", "steady_seconds", "steady_faces_per_s", "steady_faces_per_s_per_worker",
              "steady_worker_cpu_seconds", "steady_faces_per_worker_cpu_s", "steady_driver_cpu_seconds"):
        r[k] = None
    if st is not None and st[2] > st[1]:
        n_st, t0, t1 = st
        wc = sum(_cpu_at(d["series"], t1) - _cpu_at(d["series"], t0) for d in workers_seen)
        r.update(steady_faces=float(n_st), steady_seconds=float(t1 - t0),
                 steady_faces_per_s=float(n_st / (t1 - t0)),
                 steady_faces_per_s_per_worker=float(n_st / (t1 - t0) / int(workers)),
                 steady_worker_cpu_seconds=float(wc),
                 steady_faces_per_worker_cpu_s=float(n_st / wc) if wc > 0 else None)
        if int(workers) > 1:
            r["steady_driver_cpu_seconds"] = float(_cpu_at(root.get("series", []), t1)
                                                   - _cpu_at(root.get("series", []), t0))
    return r


def stage_pickle_bytes(world: Path, list_path: Path, chunk_size: int = 64) -> int:
    """Bytes of the fit stage the runner sends with a chunk (``cloudpickle.dumps(stage.for_chunk(keys))``
    for the first chunk of ``chunk_size`` keys, as ``pipeline.runner`` measures it for its
    warning), for the photos of ``list_path``."""
    import cloudpickle

    from pipeline.config import load_config
    from workflows.stages.fit import build_stage

    emo = world / "emotionet"
    cfg = load_config(None, list(STAGE_SETS)).section("fit")
    stage = build_stage(str(list_path), str(world / "model.h5"), cfg, root=str(emo), metadata=str(emo / "truth.h5"))
    return len(cloudpickle.dumps(stage.for_chunk(stage.input_keys()[:chunk_size])))


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else float(a / b)


def _realistic_rate(bench_json: Path) -> tuple[float, str]:
    try:
        v = json.loads(bench_json.read_text()).get("fit_realistic_faces_per_s")
        if isinstance(v, (int, float)) and v > 0:
            return float(v), f"{bench_json} (fit area)"
    except (OSError, ValueError):
        pass
    return DOCUMENTED_REALISTIC, "docs/fitting.md (fit_realistic_faces_per_s, 2026-12-03)"


def summarise(runs: dict, sizes, workers, realistic: float, source: str) -> dict:
    """The headline keys of the module doc from ``runs[(n, w)]`` (per-run dicts)."""
    small, large = min(sizes), max(sizes)
    out: dict = {"fit_scale_sizes": ",".join(map(str, sizes)), "fit_scale_workers": ",".join(map(str, workers)),
                 "fit_scale_small_faces": float(small), "fit_scale_large_faces": float(large),
                 "fit_scale_landmark_path": " ".join(STAGE_SETS)}
    for (n, w), r in runs.items():
        out.update({f"fit_scale_{n}_{w}w_{k}": v for k, v in r.items()})

    def worst(key, pick):
        vals = [_ratio(runs[(large, w)][key], runs[(small, w)][key]) for w in workers]
        return None if any(v is None for v in vals) else float(pick(vals))

    out["fit_scale_throughput_ratio_4k_vs_1k"] = worst("steady_faces_per_worker_cpu_s", min)
    out["fit_scale_throughput_ratio_4k_vs_1k_wall"] = worst("steady_faces_per_s_per_worker", min)
    out["fit_scale_throughput_ratio_4k_vs_1k_end_to_end"] = worst("faces_per_s_per_worker", min)
    out["fit_scale_peak_rss_ratio_4k_vs_1k"] = worst("peak_rss_mb_per_worker", max)
    multi = [w for w in workers if w > 1]
    out["fit_scale_driver_rss_ratio_4k_vs_1k"] = (float(max(
        _ratio(runs[(large, w)]["peak_rss_mb_driver"], runs[(small, w)]["peak_rss_mb_driver"]) for w in multi))
        if multi else None)
    peaks = [r["peak_rss_mb_per_worker"] for r in runs.values() if r["peak_rss_mb_per_worker"] is not None]
    out["fit_scale_peak_rss_mb_per_worker"] = float(max(peaks)) if peaks else None
    wmax, wmin = max(workers), min(workers)
    big, one = runs[(large, wmax)], runs[(large, wmin)]
    if all("stage_pickle_kb" in runs[(n, workers[0])] for n in (small, large)):
        a, b = runs[(small, workers[0])]["stage_pickle_kb"], runs[(large, workers[0])]["stage_pickle_kb"]
        # a task carries the stage cut to its chunk (Stage.for_chunk): the same size at any
        # input count (before, it held every photo and grew ~67 kB per 1000 photos)
        out["fit_scale_stage_pickle_ratio_4k_vs_1k"] = _ratio(b, a)
        at = b
        out["fit_scale_250k_stage_pickle_mb"] = float(at / 1024)
        chunks = -(-TARGET // int(big["chunk_size"]))
        out["fit_scale_250k_chunks"] = float(chunks)
        out["fit_scale_250k_task_payload_gb"] = float(at * chunks / 2**20)
    out["fit_scale_2_worker_efficiency"] = _ratio(big["steady_faces_per_worker_cpu_s"],
                                                  one["steady_faces_per_worker_cpu_s"])
    out["fit_scale_2_worker_efficiency_wall"] = _ratio(big["steady_faces_per_s_per_worker"],
                                                       one["steady_faces_per_s_per_worker"])
    rate = big["steady_faces_per_worker_cpu_s"] or big["faces_per_worker_cpu_s"]
    machinery = 1.0 / rate
    out["fit_scale_machinery_s_per_face"] = float(machinery)
    drv = big["steady_driver_cpu_seconds"]
    out["fit_scale_driver_cpu_s_per_face"] = (float(drv / big["steady_faces"])
                                              if drv is not None and big["steady_faces"] else None)
    if out["fit_scale_driver_cpu_s_per_face"] is not None:
        out["fit_scale_250k_driver_cpu_hours"] = float(TARGET * out["fit_scale_driver_cpu_s_per_face"] / 3600.0)
    out["fit_scale_realistic_faces_per_s"] = float(realistic)
    out["fit_scale_realistic_source"] = source
    for c in CORES:
        out[f"fit_scale_250k_hours_{c}_cores"] = float(TARGET * (1.0 / realistic + machinery) / c / 3600.0)
        out[f"fit_scale_250k_hours_{c}_cores_landmark_path"] = float(TARGET * machinery / c / 3600.0)
    per_face = big["shard_mb"] * 2**20 / max(big["rows"], 1.0)
    out["fit_scale_shard_bytes_per_face"] = float(per_face)
    out["fit_scale_250k_shard_gb"] = float(per_face * TARGET / 2**30)
    return out


def _ints(v, default) -> tuple[int, ...]:
    if v is None or v == "":
        return tuple(default)
    vals = tuple(int(x) for x in str(v).split(",") if x.strip())
    if not vals or min(vals) < 1:
        from pipeline.config import ConfigError

        raise ConfigError(f"fit-scale: sizes and worker counts must be positive integers, got {v!r}")
    return vals


def run(ctx) -> dict:
    opts = getattr(ctx, "options", None) or {}
    sizes = tuple(sorted(set(_ints(opts.get("fit_scale_faces"), QUICK_FACES if ctx.quick else DEFAULT_FACES))))
    workers = tuple(sorted(set(_ints(opts.get("fit_scale_workers"), DEFAULT_WORKERS))))
    if len(sizes) < 2:
        from pipeline.config import ConfigError

        raise ConfigError("fit-scale: give at least two sizes (--fit-scale-faces SMALL,LARGE)")
    chunk = opts.get("fit_scale_chunk_size")
    world = Path(ctx.world)
    if not _has_photos(world, max(sizes)):
        world = build_world(Path(ctx.out) / f"fit-scale-world-{max(sizes)}", max(sizes))
    tmp = Path(ctx.tmp) / "fit-scale"
    runs = {}
    for n in sizes:
        for w in workers:
            print(f"bench: fit-scale {n} photos, {w} worker(s) ...", file=sys.stderr, flush=True)
            runs[(n, w)] = measure(world, n, w, tmp / f"fits-{n}-{w}w", tmp / f"photos-{n}.txt", chunk)
            if w == workers[0]:                                 # not timed; the same for every w
                pickle_kb = stage_pickle_bytes(world, tmp / f"photos-{n}.txt",
                                               int(runs[(n, w)]["chunk_size"])) / 1024.0
            runs[(n, w)]["stage_pickle_kb"] = pickle_kb
            (tmp / f"run-{n}-{w}w.json").write_text(json.dumps(runs[(n, w)], indent=1, sort_keys=True) + "\n")
    realistic, source = _realistic_rate(Path(ctx.out) / "bench.json")
    return summarise(runs, sizes, workers, realistic, source)
