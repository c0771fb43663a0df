"""No orphans: kill a parent with SIGKILL while its workers run, and find none of its
descendants alive a few seconds later -- the landmark calibration's process pool
(``run_tasks(..., local_scheduler="processes")``) and a stage's Dask LocalCluster.  A plain
``ProcessPoolExecutor`` is the control: its workers survive, so the check can fail."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
GRACE = 5.0                       # seconds the descendants get to notice


def _alive(pids):
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _descendants(pid):
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _start(code):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_children(proc, n, timeout=60.0, match=None):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"parent exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        kids = []
        for pid in _descendants(proc.pid):
            try:
                if match is None or match in " ".join(psutil.Process(pid).cmdline()):
                    kids.append(pid)
            except psutil.NoSuchProcess:
                pass
        if len(kids) >= n:
            return _descendants(proc.pid)
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} workers started")


def _kill_parent_and_count_survivors(proc, kids, grace=GRACE):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t = time.monotonic()
    while _alive(kids) and time.monotonic() - t < grace:
        time.sleep(0.1)
    return _alive(kids)


def _cleanup(pids):
    for pid in pids:                      # only processes this test started
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


POOL = """
import time
from pipeline.tasks import run_tasks
run_tasks(time.sleep, [(300,)] * 2, "local", 2, False, local_scheduler="processes")
"""

PLAIN = """
import multiprocessing, time
from concurrent.futures import ProcessPoolExecutor
pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
futs = [pool.submit(time.sleep, 300) for _ in range(2)]
time.sleep(300)
"""


def test_calibration_pool_workers_die_with_their_parent():
    proc = _start(POOL)
    kids = []
    try:
        kids = _wait_children(proc, 2, match="multiprocessing")
        time.sleep(1.0)                   # the workers are inside their task (time.sleep)
        survivors = _kill_parent_and_count_survivors(proc, kids)
        assert survivors == [], f"orphans: {[psutil.Process(p).cmdline() for p in _alive(survivors)]}"
    finally:
        _cleanup(kids + [proc.pid])


def test_control_plain_pool_leaves_orphans():
    proc = _start(PLAIN)
    kids = []
    try:
        kids = _wait_children(proc, 2, match="multiprocessing.spawn")
        time.sleep(1.0)
        survivors = _kill_parent_and_count_survivors(proc, kids, grace=2.0)
        assert len(survivors) >= 2                     # what the watchdog prevents
    finally:
        _cleanup(kids + [proc.pid])


def test_stage_dask_workers_die_with_the_runner(tmp_path):
    from pipeline.testing import make_toy_inputs

    inputs = make_toy_inputs(tmp_path / "in", 24)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.testing", "toy", "--inputs", str(inputs), "--out",
                             str(tmp_path / "o"), "--chunk-size", "3", "--workers", "2", "--delay", "2",
                             "--marker-dir", str(marks), "--no-progress"],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kids = []
    try:
        t = time.monotonic()
        while len(list(marks.iterdir())) < 2:          # both workers inside a chunk
            if proc.poll() is not None or time.monotonic() - t > 120:
                raise AssertionError(f"runner: {proc.poll()} {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")
            time.sleep(0.1)
        kids = _descendants(proc.pid)
        worker_pids = {int(p.name.split("-")[1]) for p in marks.iterdir()}
        assert worker_pids <= set(kids) and len(worker_pids) == 2
        survivors = _kill_parent_and_count_survivors(proc, kids)
        assert survivors == [], f"orphans: {survivors}"
    finally:
        _cleanup(kids + [proc.pid])


def test_watch_parent_ends_a_process_whose_parent_is_gone():
    """The watchdog itself: a grandchild started with the child's pid ends once the child is killed."""
    code = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time; from pipeline.procs import watch_parent; watch_parent(int(sys.argv[1]), 0.1); time.sleep(300)",
        str(os.getpid())])
    print(child.pid, flush=True)
    time.sleep(300)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    try:
        time.sleep(1.0)
        assert _alive([grandchild]) == [grandchild]               # alive while its parent lives
        assert _kill_parent_and_count_survivors(proc, [grandchild], grace=3.0) == []
    finally:
        _cleanup([grandchild, proc.pid])
