"""Run a :class:`~pipeline.stage.Stage` into a stage folder, resumably, on Dask.

Algorithm (docs/pipeline.md):

1. lock the folder (:mod:`pipeline.lock`; a second run is refused), remove temp files of
   killed writers;
2. sort the input keys, split them into fixed chunks; a chunk is *current* when
   ``shard-XXXXX.h5`` exists and its attributes match (schema, stage, params_hash — which
   covers params and code version —, model_hash, keys_hash of the chunk's keys);
3. if anything must be computed, remove ``_stage.json`` (the folder is no longer a finished
   stage), then run each chunk as one Dask task (retried ``retries`` times; a lost worker
   reschedules it).  Each task writes its shard, with the chunk's rejects inside it, to a
   temp name and renames it, so a shard and its rejects appear together or not at all;
4. merge all chunks' rejects into ``rejects.jsonl`` (atomically) and write ``_stage.json``
   last (atomically).  Failed chunks are listed there (``complete: false``) and named in
   the report; the other chunks are kept, so the re-run computes only the failed ones.

Failures fail loudly: only :class:`~pipeline.stage.BadInput` raised by the stage becomes a
reject.  Any other exception fails its chunk (retried, then exit 1 naming the chunk and the
error); a :class:`~pipeline.config.ConfigError` raised in a chunk (e.g. a corrupt model file,
the same for every chunk) stops the stage and is re-raised (exit 2).  A stage whose rejects
exceed ``max_reject_fraction`` of its inputs is not complete (exit 1, with the reject
summary by reason).  Chunks: ``chunk_size`` is an upper bound, lowered so that every worker
gets at least 4 chunks (:func:`~pipeline.stage.plan_chunk_size`).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from pipeline.config import ConfigError
from pipeline.lock import StageLock
from pipeline.shards import (REJECTS_FILE, SCHEMA, STAGE_FILE, describe_datasets, read_shard_attrs,
                             read_shard_rejects, sha256_file, shard_name, write_shard)
from pipeline.stage import ChunkResult, Stage, keys_hash, params_hash, plan_chunk_size, split_chunks

STAGE_SCHEMA = "slidergan-stage/1"
HASH_CACHE = ".sha256-cache.json"


@dataclass
class StageReport:
    """What a run did.  ``exit_code``: 0 finished, 1 chunks failed or missing, or more rejects
    than ``max_reject_fraction`` of the inputs."""
    name: str
    out_dir: Path
    n_chunks: int = 0
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    n_inputs: int = 0
    n_rows: int = 0
    n_rejects: int = 0
    seconds: float = 0.0
    params_hash: str = ""
    chunk_size: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    max_reject_fraction: float | None = None

    @property
    def too_many_rejects(self) -> bool:
        """More rejects than ``max_reject_fraction`` of the inputs (None: no limit)."""
        lim = self.max_reject_fraction
        return lim is not None and self.n_inputs > 0 and self.n_rejects > float(lim) * self.n_inputs

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing and not self.too_many_rejects

    def reject_summary(self) -> str:
        """``"3 of 60 inputs rejected (5.0%): no face 2, unreadable 1"``; reasons by count."""
        s = f"{self.n_rejects} of {self.n_inputs} inputs rejected"
        if self.n_inputs:
            s += f" ({100.0 * self.n_rejects / self.n_inputs:.1f}%)"
        if self.reject_reasons:
            s += ": " + ", ".join(f"{r} {n}" for r, n in sorted(self.reject_reasons.items(),
                                                                 key=lambda kv: (-kv[1], kv[0])))
        return s

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def __int__(self) -> int:
        return self.exit_code

    def summary(self) -> str:
        s = (f"stage {self.name}: {self.n_rows} rows, {self.n_rejects} rejects, "
             f"{len(self.computed)} chunks computed, {len(self.skipped)} current -> {self.out_dir} "
             f"({self.seconds:.1f} s)")
        if self.failed:
            s += "; FAILED chunks " + ", ".join(f"{c} ({m})" for c, m in sorted(self.failed.items()))
        if self.missing:
            s += "; missing chunks " + ", ".join(map(str, self.missing)) + " (run without --only)"
        if self.too_many_rejects:
            s += f"; TOO MANY REJECTS (> pipeline.max_reject_fraction={self.max_reject_fraction:g})"
        return s


def _stderr(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _attr_scalar(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def run_chunk(stage: Stage, keys: list[str], chunk: int, out_dir: str, phash: str, mhash: str,
              khash: str) -> dict:
    """Compute one chunk and commit its shard (runs on a Dask worker).  Returns shard info."""
    t0 = time.perf_counter()
    try:
        result = stage.process_chunk(list(keys), int(chunk))
    except ConfigError as e:                      # the same for every chunk: not retried
        return {"fatal": _first_line(e)}
    if not isinstance(result, ChunkResult):
        raise TypeError(f"{type(stage).__name__}.process_chunk must return a ChunkResult")
    attrs = {k: _attr_scalar(v) for k, v in (stage.attrs() or {}).items()}
    attrs.update(keys_hash=khash, code_version=str(stage.version))
    try:
        info = write_shard(Path(out_dir) / shard_name(chunk), result.rows, stage=stage.name, chunk=chunk,
                           params_hash=phash, model_hash=mhash, rejects=result.rejects, attrs=attrs,
                           compression=stage.compression)
    except ValueError as e:
        raise ValueError(f"chunk {chunk}: {e}") from None
    info["n_inputs"] = len(keys)
    info["seconds"] = time.perf_counter() - t0
    return info


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else exc.__class__.__name__


def _one_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip().splitlines()[0][:300]


def _shard_current(path: Path, stage: Stage, chunk: int, phash: str, mhash: str, khash: str) -> bool:
    if not path.is_file():
        return False
    a = read_shard_attrs(path)
    return bool(a) and (a.get("stage") == stage.name and a.get("chunk") == chunk
                        and a.get("params_hash") == phash and a.get("model_hash") == mhash
                        and a.get("keys_hash") == khash)


class _HashCache:
    """sha256 of shards keyed by (size, mtime_ns, inode), so a re-run does not re-hash
    unchanged shards, and does notice a shard whose bytes changed since it was written
    (it is then recomputed).  A private speed-up; _stage.json holds the authoritative hashes."""

    def __init__(self, folder: Path, listed: dict[str, str]):
        self.path = folder / HASH_CACHE
        self.listed = listed                      # file -> sha256 from the previous _stage.json
        try:
            self.data = json.loads(self.path.read_text())
            assert isinstance(self.data, dict)
        except (OSError, ValueError, AssertionError):
            self.data = {}

    @staticmethod
    def _sig(p: Path) -> list:
        st = p.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def put(self, p: Path, sha: str) -> None:
        self.data[p.name] = self._sig(p) + [sha]

    def get(self, p: Path) -> str:
        sig = self._sig(p)
        hit = self.data.get(p.name)
        if hit and hit[:3] == sig:
            return hit[3]
        sha = sha256_file(p)
        self.data[p.name] = sig + [sha]
        return sha

    def intact(self, p: Path) -> bool:
        """False when the shard's bytes differ from what this runner wrote or last listed."""
        hit = self.data.get(p.name)
        expected = hit[3] if hit else self.listed.get(p.name)
        if expected is None:
            return True
        if hit and hit[:3] == self._sig(p):
            return True
        sha = sha256_file(p)
        if sha != expected:
            return False
        self.data[p.name] = self._sig(p) + [sha]
        return True

    def save(self) -> None:
        try:
            atomic_write_json(self.path, self.data)
        except OSError:
            pass


def _listed_hashes(out: Path) -> dict[str, str]:
    try:
        meta = json.loads((out / STAGE_FILE).read_text(encoding="utf-8"))
        return {s["file"]: s["sha256"] for s in meta.get("shards", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def run_stage(stage: Stage, out_dir: str | os.PathLike, chunk_size: int = 64, force: bool = False,
              only: int | None = None, cluster: Any = "local", workers: int | None = None,
              progress: bool = True, retries: int = 2,
              log: Callable[[str], None] | None = _stderr, max_reject_fraction: float | None = None,
              job_start_timeout: float | None = None) -> StageReport:
    """Run ``stage`` into ``out_dir`` (see module doc).  Returns a :class:`StageReport`.

    cluster: "local" | "slurm" | "tcp://HOST:PORT" | "FILE.yaml" | "inprocess" (no Dask;
    for debugging) | a ``distributed.Client``.  workers: Dask workers (default CPU count,
    at most the chunks to compute).  chunk_size: the most inputs per chunk (see
    :func:`~pipeline.stage.plan_chunk_size`).  max_reject_fraction: the stage fails (exit 1)
    when more of its inputs are rejected (None: no limit; the CLI passes
    ``pipeline.max_reject_fraction``).  job_start_timeout: seconds to wait for the first SLURM
    worker (None: the default of :mod:`pipeline.cluster`).  Raises ConfigError for bad
    arguments, a locked folder, or a ConfigError raised in a chunk (e.g. a corrupt model).
    """
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    if int(chunk_size) < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if max_reject_fraction is not None and not 0.0 <= float(max_reject_fraction) <= 1.0:
        raise ConfigError(f"pipeline.max_reject_fraction must be in [0, 1], got {max_reject_fraction}")
    if isinstance(cluster, str) and cluster != "inprocess" and "://" not in cluster:
        from pipeline.cluster import load_profile
        load_profile(cluster)                      # fail early on a bad profile (ConfigError)
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")
    with StageLock(out):
        remove_stale_temps(out)
        keys = list(stage.input_keys())
        if any(not isinstance(k, str) for k in keys):
            raise TypeError(f"stage {stage.name!r}: input keys must be str")
        if len(set(keys)) != len(keys):
            dup = next(k for i, k in enumerate(sorted(keys)[1:]) if k == sorted(keys)[i])
            raise ConfigError(f"stage {stage.name}: duplicate input key {dup!r}")
        keys = sorted(keys)
        size = plan_chunk_size(len(keys), int(chunk_size), planned_workers(cluster, workers))
        chunks = split_chunks(keys, size)
        phash, mhash = params_hash(stage), stage.model_hash() or ""
        khashes = [keys_hash(c) for c in chunks]
        report = StageReport(name=stage.name, out_dir=out, n_chunks=len(chunks), n_inputs=len(keys),
                             params_hash=phash, chunk_size=size,
                             max_reject_fraction=None if max_reject_fraction is None else float(max_reject_fraction))
        if only is not None and not 0 <= int(only) < len(chunks):
            raise ConfigError(f"--only {only}: stage {stage.name} has chunks 0..{len(chunks) - 1}")
        cache = _HashCache(out, _listed_hashes(out))
        todo = []
        for i in range(len(chunks)):
            path = out / shard_name(i)
            current = (_shard_current(path, stage, i, phash, mhash, khashes[i])
                       and (force or cache.intact(path)))
            if only is not None:
                if i == int(only):
                    todo.append(i)
                elif not current:
                    report.missing.append(i)
                else:
                    report.skipped.append(i)
            elif force or not current:
                todo.append(i)
            else:
                report.skipped.append(i)
        log(f"stage {stage.name}: {len(keys)} inputs, {len(chunks)} chunks of {size}"
            + (f" (--chunk-size {chunk_size}, lowered to give every worker 4 chunks)" if size < int(chunk_size) else "")
            + f", {len(todo)} to compute, {len(report.skipped)} current")
        fatal = None
        if todo:
            args = {i: (chunks[i], i, str(out), phash, mhash, khashes[i]) for i in todo}
            # the folder stops being a finished stage once the scheduler is up and work starts
            begin = lambda: (out / STAGE_FILE).unlink(missing_ok=True)  # noqa: E731
            results = _execute(stage, args, cluster, workers, progress, retries, log, begin, job_start_timeout)
            for i, res in results.items():
                if isinstance(res, dict) and "fatal" in res:
                    fatal = fatal or (i, res["fatal"])
                    report.failed[i] = res["fatal"]
                elif isinstance(res, dict):
                    report.computed.append(i)
                    try:
                        cache.put(out / res["file"], res["sha256"])
                    except OSError:
                        pass
                else:
                    report.failed[i] = res
            report.computed.sort()
            cache.save()
        _finalize(stage, out, chunks, size, phash, mhash, khashes, report, cache)
        cache.save()
    report.seconds = time.perf_counter() - t0
    if fatal is not None:
        raise ConfigError(f"stage {stage.name}, chunk {fatal[0]}: {fatal[1]}")
    log(report.summary())
    if report.n_rejects:
        log(f"stage {stage.name}: {report.reject_summary()}")
    return report


def planned_workers(cluster: Any, workers: int | None) -> int:
    """How many workers the chunks are planned for: ``workers`` when given; else 1 in process,
    the CPU count for ``local``, the profile's ``workers`` for SLURM, the connected workers of
    a ``distributed.Client``, and 1 for a ``tcp://`` scheduler (pass --workers N there)."""
    if cluster == "inprocess":
        return 1
    if workers is not None:
        return max(1, int(workers))
    if not isinstance(cluster, str):
        try:
            return max(1, len(cluster.scheduler_info().get("workers", {})))
        except Exception:  # noqa: BLE001 — planning only
            return 1
    if "://" in cluster:
        return 1
    if cluster == "local":
        return os.cpu_count() or 1
    from pipeline.cluster import load_profile

    prof = load_profile(cluster)
    if prof["kind"] == "local":
        return os.cpu_count() or 1
    return max(1, int(prof.get("workers", 1) or 1))


def _execute(stage: Stage, args: dict[int, tuple], cluster: Any, workers: int | None, progress: bool,
             retries: int, log: Callable[[str], None], begin: Callable[[], Any],
             job_start_timeout: float | None = None) -> dict[int, dict | str]:
    """Run the chunks; return {chunk: shard info dict, ``{"fatal": message}``, or a one-line
    error string}.  A fatal chunk (a ConfigError) stops the rest: they are not run."""
    from pipeline.progress import Progress

    results: dict[int, dict | str] = {}
    bar: Progress | None = None
    n_items = sum(len(a[0]) for a in args.values())

    def start_bar() -> None:
        nonlocal bar
        bar = Progress(len(args), stage.name, unit="chunk", total_items=n_items, enabled=progress,
                       file=sys.stderr)

    def done(i: int, res: dict | str) -> None:
        results[i] = res
        bar.update(1, items=len(args[i][0]))

    def stopped(msg: str) -> None:
        for j in args:
            results.setdefault(j, f"not run: the stage stopped ({msg})")

    inprocess = cluster == "inprocess" or (cluster == "local" and (len(args) == 1 or workers == 1))
    try:
        if inprocess:
            begin()
            start_bar()
            for i, a in args.items():
                err = ""
                for _attempt in range(retries + 1):
                    try:
                        res = run_chunk(stage, *a)
                        break
                    except Exception as e:  # noqa: BLE001 — reported per chunk
                        err = _one_line(e)
                else:
                    res = err
                done(i, res)
                if isinstance(res, dict) and "fatal" in res:
                    stopped(res["fatal"])
                    break
            return results
        import cloudpickle
        from distributed import as_completed

        from pipeline.cluster import open_client

        with open_client(cluster, workers, log=log, max_workers=len(args),
                         start_timeout=job_start_timeout) as client:
            begin()
            start_bar()
            tag = uuid.uuid4().hex[:8]
            # The stage travels inside every task, cut to the task's chunk (Stage.for_chunk: a
            # stage holding every input's path would otherwise make each task, and the
            # driver's graph, grow with the input count).  Decision: not as one shared
            # dependency — Dask then places every chunk on the worker holding it (measured: all
            # chunks on one of two workers), and scattered data would be lost with its workers.
            # A warning names a stage whose per-task copy is still large.
            first = next(iter(args.values()))
            size = len(cloudpickle.dumps(stage.for_chunk(list(first[0]))))
            if size > 1 << 20:
                log(f"warning: stage {stage.name} pickles to {size / 2**20:.1f} MiB and is sent with "
                    "every chunk; keep large data in files and load it lazily in process_chunk")
            futures = {client.submit(run_chunk, stage.for_chunk(list(a[0])), *a,
                                     key=f"{stage.name}-{tag}-chunk-{i:05d}",
                                     pure=False, retries=retries): i for i, a in args.items()}
            for fut in as_completed(futures):
                i = futures[fut]
                if fut.status == "finished":
                    res = fut.result()
                    done(i, res)
                    if isinstance(res, dict) and "fatal" in res:
                        client.cancel([f for f in futures if f is not fut])
                        stopped(res["fatal"])
                        break
                else:
                    try:
                        exc = fut.exception()
                        msg = _one_line(exc) if exc is not None else fut.status
                    except Exception as e:  # noqa: BLE001 — cancelled/lost
                        msg = _one_line(e)
                    done(i, msg)
                fut.release()
            bar.close()                             # before the cluster's shutdown
    finally:
        if bar is not None:
            bar.close()
    return results


def _finalize(stage: Stage, out: Path, chunks: list[list[str]], chunk_size: int, phash: str, mhash: str,
              khashes: list[str], report: StageReport, cache: _HashCache) -> None:
    """Write rejects.jsonl then _stage.json (both atomic), from the shards on disk."""
    for p in out.glob("shard-*.h5"):                       # shards of a longer earlier run
        try:
            if int(p.stem.split("-")[1]) >= len(chunks):
                p.unlink()
        except (ValueError, IndexError):
            pass
    shards, lines, datasets, first = [], [], None, None
    bad = set(report.failed) | set(report.missing)
    for i in range(len(chunks)):
        if i in bad:
            continue
        path = out / shard_name(i)
        attrs = read_shard_attrs(path)
        if attrs is None:
            report.missing.append(i)
            continue
        if (attrs.get("params_hash"), attrs.get("model_hash"), attrs.get("keys_hash")) != (phash, mhash, khashes[i]):
            # e.g. a straggler worker of a killed run with other params renamed over it
            report.failed[i] = "shard was replaced by another writer; re-run the stage"
            continue
        rej = read_shard_rejects(path)
        lines += [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rej]
        n = int(attrs["n"])
        if n > 0:
            ds = describe_datasets(path)
            if datasets is None:
                datasets, first = ds, i
            elif ds != datasets:
                report.failed[i] = f"datasets differ from chunk {first}"
                continue
        shards.append({"file": path.name, "chunk": i, "n": n, "n_rejects": len(rej),
                       "sha256": cache.get(path)})
    report.n_rows = sum(s["n"] for s in shards)
    report.n_rejects = len(lines)
    reasons: dict[str, int] = {}
    for line in lines:
        r = json.loads(line)["reason"]
        reasons[r] = reasons.get(r, 0) + 1
    report.reject_reasons = dict(sorted(reasons.items()))
    atomic_write_text(out / REJECTS_FILE, "".join(line + "\n" for line in lines))
    meta = {
        "schema": STAGE_SCHEMA, "shard_schema": SCHEMA, "name": stage.name,
        "params": stage.params(), "params_hash": phash, "model_hash": mhash,
        "code_version": str(stage.version), "attrs": stage.attrs() or {},
        "chunk_size": chunk_size, "n_chunks": len(chunks),
        "complete": report.ok, "shards": shards,
        "failed": {str(c): m for c, m in sorted(report.failed.items())},
        "missing": sorted(report.missing),
        "too_many_rejects": (f"{report.reject_summary()} > pipeline.max_reject_fraction="
                             f"{report.max_reject_fraction:g}") if report.too_many_rejects else None,
        "datasets": datasets or {},
        "counts": {"inputs": report.n_inputs, "rows": report.n_rows, "rejects": report.n_rejects,
                   "reject_reasons": dict(sorted(reasons.items()))},
    }
    atomic_write_json(out / STAGE_FILE, meta)


def stage_settings(args: Any) -> dict:
    """``pipeline.max_reject_fraction`` and ``cluster.job_start_timeout`` from the command's
    preset and ``--set`` overrides (``args.config``, ``args.overrides``)."""
    from pipeline.config import load_config

    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None) or [])
    pipe = cfg.section("pipeline") if "pipeline" in cfg else {}
    clus = cfg.section("cluster") if "cluster" in cfg else {}
    out = {}
    if "max_reject_fraction" in pipe:
        out["max_reject_fraction"] = pipe["max_reject_fraction"]
    if "job_start_timeout" in clus:
        out["job_start_timeout"] = clus["job_start_timeout"]
    return out


def run_stage_from_args(stage: Stage, args: Any, default_chunk_size: int) -> StageReport:
    """``run_stage`` with the stage options of docs/INTERFACES.md (``workflows.common.add_stage_options``)
    and the preset's ``pipeline.max_reject_fraction`` / ``cluster.job_start_timeout``.

    Returns the report; ``int(report)`` / ``report.exit_code`` is the command's exit status
    (failed chunks, and too many rejects with their summary, are also named on stderr)."""
    chunk_size = getattr(args, "chunk_size", None) or default_chunk_size
    report = run_stage(stage, args.out, chunk_size=chunk_size, force=bool(getattr(args, "force", False)),
                       only=getattr(args, "only", None), cluster=getattr(args, "cluster", "local") or "local",
                       workers=getattr(args, "workers", None),
                       progress=not getattr(args, "no_progress", False), **stage_settings(args))
    if report.failed:
        _stderr(f"error: stage {stage.name}: chunks failed: " + ", ".join(
            f"{c} ({m})" for c, m in sorted(report.failed.items())) + "; re-run to retry them")
    if report.too_many_rejects:
        _stderr(f"error: stage {stage.name}: {report.reject_summary()}, more than "
                f"pipeline.max_reject_fraction={report.max_reject_fraction:g}; the stage is not complete "
                f"(see {report.out_dir / REJECTS_FILE}; re-run with --set pipeline.max_reject_fraction=F to accept)")
    return report
