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
from pipeline.stage import ChunkResult, Stage, keys_hash, params_hash, split_chunks

STAGE_SCHEMA = "slidergan-stage/1"
HASH_CACHE = ".sha256-cache.json"


@dataclass
class StageReport:
    """What a run did.  ``exit_code``: 0 finished, 1 chunks failed or missing."""
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

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing

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
    result = stage.process_chunk(list(keys), int(chunk))
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
              log: Callable[[str], None] | None = _stderr) -> StageReport:
    """Run ``stage`` into ``out_dir`` (see module doc).  Returns a :class:`StageReport`.

    cluster: "local" | "slurm" | "tcp://HOST:PORT" | "FILE.yaml" | "inprocess" (no Dask;
    for debugging) | a ``distributed.Client``.  workers: Dask workers (default CPU count,
    at most the chunks to compute).  Raises ConfigError for bad arguments or a locked folder.
    """
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    if int(chunk_size) < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
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
        chunks = split_chunks(keys, int(chunk_size))
        phash, mhash = params_hash(stage), stage.model_hash() or ""
        khashes = [keys_hash(c) for c in chunks]
        report = StageReport(name=stage.name, out_dir=out, n_chunks=len(chunks), n_inputs=len(keys),
                             params_hash=phash)
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
        log(f"stage {stage.name}: {len(keys)} inputs, {len(chunks)} chunks of {chunk_size}, "
            f"{len(todo)} to compute, {len(report.skipped)} current")
        if todo:
            args = {i: (chunks[i], i, str(out), phash, mhash, khashes[i]) for i in todo}
            # the folder stops being a finished stage once the scheduler is up and work starts
            begin = lambda: (out / STAGE_FILE).unlink(missing_ok=True)  # noqa: E731
            results = _execute(stage, args, cluster, workers, progress, retries, log, begin)
            for i, res in results.items():
                if isinstance(res, dict):
                    report.computed.append(i)
                    try:
                        cache.put(out / res["file"], res["sha256"])
                    except OSError:
                        pass
                else:
                    report.failed[i] = res
            report.computed.sort()
            cache.save()
        _finalize(stage, out, chunks, int(chunk_size), phash, mhash, khashes, report, cache)
        cache.save()
    report.seconds = time.perf_counter() - t0
    log(report.summary())
    return report


def _execute(stage: Stage, args: dict[int, tuple], cluster: Any, workers: int | None, progress: bool,
             retries: int, log: Callable[[str], None], begin: Callable[[], Any]) -> dict[int, dict | str]:
    """Run the chunks; return {chunk: shard info dict, or a one-line error string}."""
    from tqdm import tqdm

    results: dict[int, dict | str] = {}
    bar = None
    t0 = time.perf_counter()
    items = 0

    def start_bar() -> None:
        nonlocal bar, t0
        bar = tqdm(total=len(args), unit="chunk", desc=stage.name, disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        t0 = time.perf_counter()

    def done(i: int, res: dict | str) -> None:
        nonlocal items
        results[i] = res
        items += len(args[i][0])
        bar.set_postfix_str(f"{items / max(time.perf_counter() - t0, 1e-9):.1f} items/s", refresh=False)
        bar.update(1)

    inprocess = cluster == "inprocess" or (cluster == "local" and (len(args) == 1 or workers == 1))
    try:
        if inprocess:
            begin()
            start_bar()
            for i, a in args.items():
                err = ""
                for _attempt in range(retries + 1):
                    try:
                        done(i, run_chunk(stage, *a))
                        break
                    except Exception as e:  # noqa: BLE001 — reported per chunk
                        err = _one_line(e)
                else:
                    done(i, err)
            return results
        import cloudpickle
        from distributed import as_completed

        from pipeline.cluster import open_client

        with open_client(cluster, workers, log=log, max_workers=len(args)) as client:
            begin()
            start_bar()
            tag = uuid.uuid4().hex[:8]
            # The stage travels inside every task.  Decision: not as one shared dependency —
            # Dask then places every chunk on the worker holding it (measured: all chunks on
            # one of two workers), and scattered data would be lost with its workers.  Keep
            # stages small (paths and params); a warning names a stage that is not.
            size = len(cloudpickle.dumps(stage))
            if size > 1 << 20:
                log(f"warning: stage {stage.name} pickles to {size / 2**20:.1f} MiB and is sent with "
                    "every chunk; keep large data in files and load it lazily in process_chunk")
            futures = {client.submit(run_chunk, stage, *a, key=f"{stage.name}-{tag}-chunk-{i:05d}",
                                     pure=False, retries=retries): i for i, a in args.items()}
            for fut in as_completed(futures):
                i = futures[fut]
                if fut.status == "finished":
                    done(i, fut.result())
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
    atomic_write_text(out / REJECTS_FILE, "".join(line + "\n" for line in lines))
    meta = {
        "schema": STAGE_SCHEMA, "shard_schema": SCHEMA, "name": stage.name,
        "params": stage.params(), "params_hash": phash, "model_hash": mhash,
        "code_version": str(stage.version), "attrs": stage.attrs() or {},
        "chunk_size": chunk_size, "n_chunks": len(chunks),
        "complete": report.ok, "shards": shards,
        "failed": {str(c): m for c, m in sorted(report.failed.items())},
        "missing": sorted(report.missing),
        "datasets": datasets or {},
        "counts": {"inputs": report.n_inputs, "rows": report.n_rows, "rejects": report.n_rejects,
                   "reject_reasons": dict(sorted(reasons.items()))},
    }
    atomic_write_json(out / STAGE_FILE, meta)


def run_stage_from_args(stage: Stage, args: Any, default_chunk_size: int) -> StageReport:
    """``run_stage`` with the CLI options of DESIGN.md (``workflows.common.add_stage_options``).

    Returns the report; ``int(report)`` / ``report.exit_code`` is the command's exit status
    (failed chunks are also named on stderr)."""
    chunk_size = getattr(args, "chunk_size", None) or default_chunk_size
    report = run_stage(stage, args.out, chunk_size=chunk_size, force=bool(getattr(args, "force", False)),
                       only=getattr(args, "only", None), cluster=getattr(args, "cluster", "local") or "local",
                       workers=getattr(args, "workers", None),
                       progress=not getattr(args, "no_progress", False))
    if report.failed:
        _stderr(f"error: stage {stage.name}: chunks failed: " + ", ".join(
            f"{c} ({m})" for c, m in sorted(report.failed.items())) + "; re-run to retry them")
    return report
