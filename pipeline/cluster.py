"""Dask schedulers for the runner: LocalCluster, SLURM (dask-jobqueue) or an existing one.

``--cluster local`` (default): ``distributed.LocalCluster`` with ``--workers N`` processes,
one thread each (profile ``config/cluster/local.yaml``).  ``--cluster slurm``: a
``dask_jobqueue.SLURMCluster`` built from ``config/cluster/slurm.yaml`` (or any
``--cluster FILE.yaml`` whose ``kind`` is ``slurm``/``local``), scaled to N workers.
``--cluster tcp://HOST:PORT``: connect to a running scheduler (its workers must see the
stage folder on a shared disk).

SLURM jobs can sit in the queue: when no worker has connected ``start_timeout`` seconds
after the jobs were submitted (``cluster.job_start_timeout``; default
:data:`JOB_START_TIMEOUT`, 0 = wait for ever), :class:`WorkerTimeout` is raised with a
one-line message (the stage exits 1, its jobs are cancelled when the cluster closes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from pipeline.config import ConfigError, config_dir

SLURM_KEYS = {"queue", "account", "cores", "memory", "processes", "walltime", "job_extra_directives",
              "job_script_prologue", "job_directives_skip", "local_directory", "log_directory",
              "interface", "python", "worker_extra_args", "job_name", "death_timeout", "shebang",
              "scheduler_options", "job_cpu", "job_mem", "nanny"}
LOCAL_KEYS = {"threads_per_worker", "memory_limit", "processes", "dashboard_address"}
JOB_START_TIMEOUT = 600.0         # = cluster.job_start_timeout in config/demo.yaml (tested)


class WorkerTimeout(RuntimeError):
    """No Dask worker arrived in time (a SLURM job still queued, or failing to start)."""


def wait_for_first_worker(client: Any, timeout: float | None, what: str = "--cluster slurm") -> None:
    """Return once ``client`` has a worker; raise :class:`WorkerTimeout` after ``timeout``
    seconds (None: :data:`JOB_START_TIMEOUT`; 0 or less: wait for ever)."""
    t = JOB_START_TIMEOUT if timeout is None else float(timeout)
    if t <= 0:
        return
    try:
        client.wait_for_workers(1, timeout=t)
    except TimeoutError:
        raise WorkerTimeout(f"{what}: no worker started within {t:g} s (cluster.job_start_timeout); "
                            "the jobs may still be queued (see squeue) or failing (see their logs)") from None


def profile_path(cluster: str) -> Path:
    if cluster.endswith((".yaml", ".yml")):
        p = Path(cluster)
        if not p.is_file():
            raise ConfigError(f"cluster profile not found: {cluster}")
        return p
    return config_dir() / "cluster" / f"{cluster}.yaml"


def load_profile(cluster: str) -> dict:
    """The profile for ``local``, ``slurm`` or a ``FILE.yaml``; validated (ConfigError)."""
    p = profile_path(cluster)
    if not p.is_file():
        if cluster == "local":
            return {"kind": "local"}
        raise ConfigError(f"no cluster profile {p} (use local, slurm, tcp://HOST:PORT or FILE.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    kind = data.get("kind", cluster if cluster in ("local", "slurm") else None)
    allowed = {"local": LOCAL_KEYS, "slurm": SLURM_KEYS | {"workers"}}.get(kind)
    if allowed is None:
        raise ConfigError(f"{p}: 'kind' must be local or slurm, got {kind!r}")
    unknown = sorted(set(data) - allowed - {"kind"})
    if unknown:
        raise ConfigError(f"{p}: unknown {kind} cluster key {unknown[0]!r}")
    data["kind"] = kind
    data["_path"] = str(p)
    return data


def slurm_cluster(profile: dict, **overrides: Any):
    """A ``dask_jobqueue.SLURMCluster`` from a slurm profile (starts a local scheduler)."""
    from dask_jobqueue import SLURMCluster

    kwargs = {k: v for k, v in profile.items() if k in SLURM_KEYS and v is not None}
    kwargs.setdefault("python", sys.executable)
    kwargs.update(overrides)
    try:
        return SLURMCluster(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{profile.get('_path', 'slurm profile')}: {e}") from None


# Dask's defaults suit many tiny tasks; our tasks are coarse (a chunk takes seconds to
# minutes).  Slower housekeeping cuts the idle CPU of the runner and of every worker from
# ~2.5 % to < 1 % of a core each (measured), and the worker's 10 ms stack profiler is off.
QUIET_DASK = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.scheduler.work-stealing-interval": "1s",
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


def local_cluster(workers: int, profile: dict | None = None):
    """The runner's ``LocalCluster``: ``workers`` processes, settings from the local profile."""
    import dask

    with dask.config.set(QUIET_DASK):
        return _local_cluster(profile or load_profile("local"), workers)


def _local_cluster(profile: dict, workers: int):
    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=int(profile.get("threads_per_worker", 1)),
                        processes=bool(profile.get("processes", True)),
                        memory_limit=profile.get("memory_limit", "auto"),
                        dashboard_address=profile.get("dashboard_address", ":0"),
                        silence_logs=logging.CRITICAL)


@contextlib.contextmanager
def open_client(cluster: Any = "local", workers: int | None = None,
                log: Callable[[str], None] = lambda s: None, max_workers: int | None = None,
                start_timeout: float | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``cluster`` (see module doc); closes what it opened.

    workers: Dask workers to start (default: CPU count for local, the profile's ``workers``
    for SLURM), at most ``max_workers`` (the number of tasks).  ``cluster`` may also be an
    existing ``distributed.Client`` (used as is).  start_timeout: seconds to wait for the
    first SLURM worker (see :func:`wait_for_first_worker`)."""
    cap = (lambda n: max(1, min(n, max_workers))) if max_workers else (lambda n: max(1, n))
    from distributed import Client

    if not isinstance(cluster, str):          # an existing Client
        yield cluster
        return
    if cluster.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        try:
            client = Client(cluster, timeout="20s")
        except OSError as e:
            raise ConfigError(f"cannot reach Dask scheduler {cluster}: {e}") from None
        with client:
            log(f"dashboard: {client.dashboard_link}")
            yield client
        return
    profile = load_profile(cluster)
    if profile["kind"] == "local":
        n = cap(workers or os.cpu_count() or 1)
        with local_cluster(n, profile) as lc, Client(lc) as client:
            log(f"dashboard: {client.dashboard_link}")
            yield client
        return
    n = cap(workers or int(profile.get("workers", 1)))
    import shutil

    import dask

    if shutil.which("sbatch") is None:
        raise ConfigError("--cluster slurm: 'sbatch' not found (run on a SLURM login node, "
                          "or use --cluster local / tcp://HOST:PORT)")

    with dask.config.set(QUIET_DASK):        # the scheduler runs in this process
        sc = slurm_cluster(profile)
    with sc:
        sc.scale(n=n)
        with Client(sc) as client:
            log(f"dashboard: {client.dashboard_link}  (SLURM: {n} workers requested; "
                "chunks start as jobs leave the queue)")
            wait_for_first_worker(client, start_timeout)
            yield client
