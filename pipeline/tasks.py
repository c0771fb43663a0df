"""A plain parallel map for work that is not a :class:`pipeline.stage.Stage`: the demo
world's chunks and the landmark calibration's renders (docs/pipeline.md).

:func:`run_tasks` runs ``fn(*args)`` for every argument tuple in a thread pool, a process
pool whose workers die with this process (:func:`pipeline.procs.process_pool`) or on the
pipeline's Dask client (:func:`pipeline.cluster.open_client`), retries a failed task, and
names the task of the first error that survives its retries.  Results come back in input
order, so callers are deterministic whatever the scheduling.
"""
from __future__ import annotations

import os


def run_tasks(fn, arg_tuples: list, cluster: str, workers: int | None, progress: bool,
              local_scheduler: str = "threads", retries: int = 1, desc: str | None = None) -> list:
    """``[fn(*args) for args in arg_tuples]`` in parallel: for ``cluster="local"`` a thread pool
    or (``local_scheduler="processes"``) a process pool whose workers die with this process
    (:func:`pipeline.procs.process_pool`), else the pipeline's Dask client (SLURM profile or a
    scheduler).  A task that raises is retried ``retries`` times; then a RuntimeError names
    the task and its error.  Progress: :class:`pipeline.progress.Progress` (a bar on a
    terminal, a line every 30 s in a log)."""
    if not arg_tuples:
        return []
    from pipeline.progress import Progress

    n = len(arg_tuples)
    desc = desc or getattr(fn, "__name__", "tasks")
    nw = max(1, min(n, workers or os.cpu_count() or 1))
    with Progress(n, desc, unit="task", enabled=progress) as bar:
        if cluster == "local":
            return _run_local(fn, arg_tuples, nw, local_scheduler, retries, bar)
        return _run_dask(fn, arg_tuples, cluster, workers, retries, bar)


def _task_error(i: int, n: int, fn, e: BaseException) -> RuntimeError:
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    return RuntimeError(f"{getattr(fn, '__name__', 'task')} task {i} of {n} failed: {e.__class__.__name__}: {msg}")


def _run_local(fn, arg_tuples: list, nw: int, scheduler: str, retries: int, bar) -> list:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    n = len(arg_tuples)
    out: list = [None] * n
    if nw == 1:
        for i, args in enumerate(arg_tuples):
            for attempt in range(retries + 1):
                try:
                    out[i] = fn(*args)
                    break
                except Exception as e:  # noqa: BLE001 — retried, then named
                    if attempt == retries:
                        raise _task_error(i, n, fn, e) from e
            bar.update(1)
        return out
    if scheduler == "processes":
        from pipeline.procs import process_pool

        pool = process_pool(nw)
    else:
        pool = ThreadPoolExecutor(nw)
    try:
        pending = {pool.submit(fn, *args): (i, 0) for i, args in enumerate(arg_tuples)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i, attempt = pending.pop(fut)
                try:
                    out[i] = fut.result()
                except Exception as e:  # noqa: BLE001 — retried, then named
                    if attempt >= retries:
                        raise _task_error(i, n, fn, e) from e
                    pending[pool.submit(fn, *arg_tuples[i])] = (i, attempt + 1)
                    continue
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _run_dask(fn, arg_tuples: list, cluster: str, workers: int | None, retries: int, bar) -> list:
    from distributed import as_completed

    from pipeline.cluster import open_client

    n = len(arg_tuples)
    with open_client(cluster, workers, max_workers=n) as client:
        futures = {client.submit(fn, *args, pure=False, retries=retries): i for i, args in enumerate(arg_tuples)}
        out: list = [None] * n
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                out[i] = fut.result()
            except Exception as e:  # noqa: BLE001 — Dask retried it already
                raise _task_error(i, n, fn, e) from e
            bar.update(1)
        return out
