"""Worker processes that die with their parent (docs/pipeline.md, No orphans).

A pool worker blocked on its task queue does not notice that its parent was killed with
SIGKILL (the OOM killer, a job's timeout): the queue's pipe stays open because the workers
themselves hold it.  Every process pool of the project is therefore made by
:func:`process_pool` (or gets :func:`watch_parent` as its initializer): a daemon thread in
each worker polls ``os.getppid()`` and ends the worker with ``os._exit`` as soon as its parent
is gone.  Dask's distributed workers (LocalCluster) already end with their parent (their
``parent_alive_pipe``), and the runner's tests check both.

Decision: no ``prctl(PR_SET_PDEATHSIG)``.  Linux sends that signal when the *thread* that
started the child ends, and pools start workers from helper threads (the executor's
manager thread), so a worker would be killed while its parent lives on.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Callable, Optional

POLL_SECONDS = 0.5
EXIT_STATUS = 70                 # a worker that found its parent gone

_watching: Optional[int] = None


def _watch(parent: int, interval: float) -> None:
    import time

    while True:
        if os.getppid() != parent:
            os._exit(EXIT_STATUS)
        time.sleep(interval)


def watch_parent(parent: Optional[int] = None, interval: float = POLL_SECONDS) -> None:
    """Start (once per process) the thread that ends this process when ``parent`` (default:
    the current parent) is no longer its parent.  Pass the parent's pid from the parent
    (``initargs=(os.getpid(),)``): a worker whose parent died before it started then ends too."""
    global _watching
    parent = os.getppid() if parent is None else int(parent)
    if _watching == parent:
        return
    if os.getppid() != parent:
        os._exit(EXIT_STATUS)
    _watching = parent
    threading.Thread(target=_watch, args=(parent, float(interval)), name="parent-watchdog", daemon=True).start()


def _init(parent: int, initializer: Optional[Callable], initargs: tuple) -> None:
    watch_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def worker_initializer(initializer: Optional[Callable] = None, initargs: tuple = ()) -> Callable[[], None]:
    """A picklable initializer for a pool started by this process: the parent watchdog, then
    ``initializer(*initargs)``."""
    return functools.partial(_init, os.getpid(), initializer, tuple(initargs))


def process_pool(workers: int, initializer: Optional[Callable] = None, initargs: tuple = (),
                 context: str = "spawn"):
    """A ``concurrent.futures.ProcessPoolExecutor`` whose workers die with this process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context(context),
                               initializer=worker_initializer(initializer, initargs))
