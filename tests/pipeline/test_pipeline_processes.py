"""Real processes: kill -9 the runner at several points, kill a Dask worker, run twice at
once, corrupt a shard.  The toy stage runs as ``python -m pipeline.testing toy`` on a
LocalCluster; the uninterrupted reference runs in this process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from pipeline.runner import run_stage
from pipeline.shards import ShardSet
from pipeline.testing import ToyStage, make_toy_inputs, toy_reference

ROOT = Path(__file__).resolve().parents[2]
N, CS = 24, 3                                  # 8 chunks


def _start(inputs, out, *extra, delay=0.05, workers=1):
    cmd = [sys.executable, "-m", "pipeline.testing", "toy", "--inputs", str(inputs), "--out", str(out),
           "--chunk-size", str(CS), "--workers", str(workers), "--delay", str(delay), "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    return proc.returncode, out, err


def _kill_group(proc):
    """Kill what is left of a runner we started (its own session: the runner and its workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for(cond, timeout=60, proc=None):
    t = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"runner exited early: {proc.returncode} {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def _shards(d):
    return len(list(Path(d).glob("shard-*.h5")))


def _bytes(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())
            if p.name.startswith("shard-") or p.name in ("_stage.json", "rejects.jsonl")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_toy_inputs(tmp_path_factory.mktemp("proc") / "in", N, bad=(5,))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("proc") / "ref"
    assert run_stage(ToyStage(inputs), out, chunk_size=CS, cluster="inprocess", progress=False, log=None).ok
    return _bytes(out)


def test_kill9_runner_at_several_points_then_rerun_is_identical(inputs, reference, tmp_path):
    out, markers = tmp_path / "out", tmp_path / "m"
    markers.mkdir()
    points = [                                  # (when, workers: 2 = LocalCluster, 1 = in-process)
        ("first chunk started", lambda: any(markers.iterdir()), 2),
        ("2 more shards written", None, 1),
        ("all shards but finalize pending", None, 2),
    ]
    for what, cond, workers in points:
        before = _shards(out) if out.exists() else 0
        if cond is None:
            cond = (lambda b=before, w=what: _shards(out) >= (b + 2 if w.startswith("2") else 8))
        proc = _start(inputs, out, "--marker-dir", str(markers), workers=workers)
        try:
            _wait_for(cond, proc=proc)
            proc.send_signal(signal.SIGKILL)                     # the runner only
            proc.wait(30)
        finally:
            _kill_group(proc)
        assert proc.returncode == -signal.SIGKILL, what
        # never a half shard under a final name: every listed shard opens
        for p in out.glob("shard-*.h5"):
            with h5py.File(p, "r") as f:
                assert f.attrs["schema"] == "slidergan-shard/1"
    rc, _, err = _finish(_start(inputs, out, delay=0.0))
    assert rc == 0, err
    assert "0 to compute, 8 current" in err             # resumed: nothing recomputed
    assert _bytes(out) == reference                       # shards, rejects, _stage.json
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    ds = ShardSet(out)
    assert ds.keys() == sorted(toy_reference(inputs)) and len(ds.rejects()) == 1


def test_second_concurrent_run_refused_and_stale_lock_recovered(inputs, reference, tmp_path):
    out, markers = tmp_path / "out", tmp_path / "m"
    markers.mkdir()
    first = _start(inputs, out, "--marker-dir", str(markers), delay=0.2)
    try:
        _wait_for(lambda: any(markers.iterdir()), proc=first)
        rc, _, err = _finish(_start(inputs, out, delay=0.0))
        assert rc == 2
        assert "is in use by another run" in err and f"pid {first.pid}" in err
        assert "Traceback" not in err
        first.send_signal(signal.SIGKILL)                      # leaves a stale lock file
        first.wait(30)
    finally:
        _kill_group(first)
    assert (out / ".lock").exists()
    rc, _, err = _finish(_start(inputs, out, delay=0.0))
    assert rc == 0, err
    assert _bytes(out) == reference


def test_killed_workers_do_not_lose_the_stage(inputs, reference, tmp_path):
    out, markers = tmp_path / "out", tmp_path / "m"
    markers.mkdir()
    proc = _start(inputs, out, "--marker-dir", str(markers), delay=0.1, workers=2)

    def started():      # {pid: chunk} of chunks that have started
        return {int(p.name.split("-")[1]): int(p.name.split("-")[0]) for p in markers.iterdir()}

    try:
        _wait_for(lambda: len(started()) >= 2, proc=proc)      # both workers busy
        victims = started()
        assert proc.pid not in victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)                        # every worker, mid-chunk
        rc, _, err = _finish(proc)
    finally:
        _kill_group(proc)
    assert rc == 0, err
    for pid, chunk in victims.items():
        reran = [p for p in markers.iterdir() if p.name.startswith(f"{chunk}-") and not p.name.endswith(f"-{pid}")]
        assert reran, f"chunk {chunk} of killed worker {pid} was not run again"
    assert _bytes(out) == reference


def test_cli_verify_names_a_corrupt_shard(inputs, tmp_path):
    out = tmp_path / "out"
    run_stage(ToyStage(inputs), out, chunk_size=CS, cluster="inprocess", progress=False, log=None)
    cli = [sys.executable, "-m", "workflows", "shards"]
    ok = subprocess.run(cli + ["verify", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok:" in ok.stdout and "23 rows" in ok.stdout
    info = subprocess.run(cli + ["info", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "image" in info.stdout and "unreadable: 1" in info.stdout
    victim = out / "shard-00004.h5"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = subprocess.run(cli + ["verify", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "shard-00004.h5" in bad.stderr and "shard-00003.h5" not in bad.stderr
    missing = subprocess.run(cli + ["verify", str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_failed_chunk_exit_1_names_it(inputs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.testing", "toy", "--inputs", str(inputs), "--out",
                           str(tmp_path / "o"), "--chunk-size", str(CS), "--cluster", "inprocess",
                           "--fail-chunk", "2", "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "chunks failed: 2 (RuntimeError: toy failure in chunk 2)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(list((tmp_path / "o").glob("shard-*.h5"))) == 7
