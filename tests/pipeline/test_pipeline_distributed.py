"""A real distributed run (issue 20): ``dask scheduler`` and two ``dask worker`` processes on
localhost, ``slidergan fit-emotionet --cluster tcp://127.0.0.1:PORT`` over a tiny photo set,
one worker SIGKILLed while it holds a chunk; the stage still completes and its shards equal
a local (in-process) run's: every dataset and attribute exactly, rejects.jsonl byte for
byte, _stage.json field for field but the shards' checksums (the LZF-compressed bytes may
differ: see the end of the test).

Every process here is started in its own session and killed (SIGKILL to its group) in a
``finally``; the workers run without a nanny (the killed worker stays dead, so the other one
must take its chunk over) and with ``--death-timeout`` (they exit if the scheduler goes)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fitting.fit_helpers import synthetic_faces, tiny_model
from tests.helpers import ROOT, slidergan

N = 16                         # photos; chunk size 1: 16 chunks
#: seconds any one wait may take; generous for a loaded machine (an idle one needs ~30 s in all)
TIMEOUT = float(os.environ.get("SLIDERGAN_TEST_TIMEOUT", 300))
DASK = Path(sys.executable).with_name("dask")
SHARD = re.compile(r"^shard-\d{5}\.h5$")
FIT_ARGS = ["--chunk-size", "1", "--no-progress", "--set", "fit.landmarks=sidecar"]


def _env():
    e = dict(os.environ)
    e.setdefault("PYOPENGL_PLATFORM", "osmesa")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [e.get("PYTHONPATH")] if p])
    return e


def _popen(cmd, log: Path):
    fh = open(log, "w")
    try:
        return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env=_env(), start_new_session=True)
    finally:
        fh.close()


def _kill(proc):
    """SIGKILL a process we started and its group (its own session), then reap it."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _wait(cond, what, procs=(), timeout=TIMEOUT, step=0.05):
    t = time.monotonic()
    while True:
        v = cond()
        if v:
            return v
        for p, log in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: {p.args[:3]} exited {p.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() - t > timeout:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        time.sleep(step)


def _write_photos(folder: Path, model) -> None:
    """N smooth 200x200 JPEGs, each with a ``.pts`` sidecar of one synthetic face's exact landmarks."""
    from PIL import Image

    from fitting.landmarks import format_pts

    folder.mkdir(parents=True)
    _, _, _, lms = synthetic_faces(model, N, seed=5, max_yaw=0.3)
    yy, xx = np.mgrid[0:200, 0:200] / 200.0
    for i, lm in enumerate(lms):
        a = i / N
        rgb = np.dstack([40 + 180 * xx * (1 - a), 60 + 150 * yy, 200 - 120 * xx * yy * a]).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:03d}.jpg", quality=90)
        (folder / f"{i:03d}.pts").write_text(format_pts(lm - lm.mean(0) + 100.0))


def _address(sched_file: Path):
    """The scheduler's address from its ``--scheduler-file``, None until it is written."""
    try:
        return json.loads(sched_file.read_text()).get("address")
    except (OSError, ValueError):
        return None


def _shards(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if SHARD.match(p.name)}


def _contents(d: Path) -> dict:
    """``{shard name: (attributes, {dataset: array})}`` of a stage folder."""
    import h5py

    out = {}
    for p in sorted(d.iterdir()):
        if SHARD.match(p.name):
            with h5py.File(p, "r") as f:
                out[p.name] = ({k: repr(v) for k, v in f.attrs.items()}, {k: f[k][()] for k in f})
    return out


def _no_sha(x):
    if isinstance(x, dict):
        return {k: _no_sha(v) for k, v in x.items() if "sha256" not in k}
    if isinstance(x, list):
        return [_no_sha(v) for v in x]
    return x


def _stage_json(d: Path) -> dict:
    return json.loads((d / "_stage.json").read_text())


def test_fit_stage_on_a_real_scheduler_survives_a_killed_worker(tmp_path):
    from distributed import Client

    from pipeline.shards import ShardSet

    model = tiny_model()
    mfile = tmp_path / "model.h5"
    model.save(mfile)
    photos = tmp_path / "photos"
    _write_photos(photos, model)

    # the local reference: the same command, one worker, in process
    ref = tmp_path / "ref"
    slidergan("fit-emotionet", "--images", photos, "--model", mfile, "--out", ref, "--workers", "1",
              *FIT_ARGS, timeout=TIMEOUT)
    expect = _shards(ref)
    assert len(expect) == N

    sched_file, scratch = tmp_path / "scheduler.json", tmp_path / "dask"
    scratch.mkdir()
    sched = stage = client = None
    workers: list = []
    out = tmp_path / "dist"
    try:
        slog = tmp_path / "scheduler.log"
        sched = _popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                        "--scheduler-file", sched_file, "--idle-timeout", str(int(2 * TIMEOUT))], slog)
        addr = _wait(lambda: _address(sched_file), "the scheduler's address", [(sched, slog)])
        assert addr.startswith("tcp://127.0.0.1:")
        for w in range(2):
            wlog = tmp_path / f"worker{w}.log"
            workers.append((_popen([DASK, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                                    "--no-dashboard", "--name", f"w{w}", "--local-directory", scratch,
                                    "--death-timeout", str(int(TIMEOUT))], wlog), wlog))
        client = Client(addr, timeout=f"{int(TIMEOUT)}s")
        client.wait_for_workers(2, timeout=TIMEOUT)
        ours = {p.pid for p, _ in workers}
        pids = client.run(os.getpid)                                # {worker address: pid}
        assert set(pids.values()) == ours                           # the scheduler sees our two workers

        stage_log = tmp_path / "stage.log"
        stage = _popen([sys.executable, "-m", "workflows", "fit-emotionet", "--images", photos, "--model", mfile,
                        "--out", out, "--cluster", addr, "--workers", "2", *FIT_ARGS], stage_log)
        watched = [(stage, stage_log)] + workers

        def busy_worker():
            """Freeze a worker that holds an unwritten chunk while at least one shard is done;
            -> (pid, chunk) frozen, or None."""
            if not out.is_dir() or not any(SHARD.match(p.name) for p in out.iterdir()):
                return None
            for a, keys in client.processing().items():
                chunks = [int(m.group(1)) for k in keys if (m := re.search(r"-chunk-(\d+)$", str(k)))]
                pid = pids.get(a)
                if pid not in ours or not chunks:
                    continue
                os.kill(pid, signal.SIGSTOP)                        # no shard can appear while we look
                todo = [c for c in chunks if not (out / f"shard-{c:05d}.h5").exists()]
                if todo:
                    return pid, todo[0]
                os.kill(pid, signal.SIGCONT)
            return None

        pid, chunk = _wait(busy_worker, "a worker holding a chunk, one shard written", watched, step=0.01)
        done_before = len(_shards(out))
        os.kill(pid, signal.SIGKILL)                                 # the worker dies mid-stage
        victim = next(p for p, _ in workers if p.pid == pid)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        assert done_before < N and not (out / f"shard-{chunk:05d}.h5").exists()

        rc = stage.wait(timeout=TIMEOUT)
        assert rc == 0, stage_log.read_text()[-3000:]
        survivor = next(p for p, _ in workers if p.pid != pid)
        assert survivor.poll() is None                               # the other worker did the rest
    finally:
        if client is not None:
            client.close()
        for p in [stage] + [p for p, _ in workers] + [sched]:
            _kill(p)

    # the same shards, rows and rejects: every dataset and attribute of every shard exactly
    # (NaN where NaN); the files byte for byte where the format is deterministic.  The fit
    # stage's shards are LZF-compressed, and liblzf leaves its hash table uninitialised
    # (INIT_HTAB 0), so the compressed bytes of equal images can differ between processes
    # (seen here: a few bytes inside the image chunk of some shards); their contents do not.
    got, want = _contents(out), _contents(ref)
    assert sorted(got) == sorted(want) and len(got) == N
    for name, (attrs, data) in want.items():
        assert got[name][0] == attrs, name
        assert sorted(got[name][1]) == sorted(data), name
        for k, x in data.items():
            y = got[name][1][k]
            assert x.dtype == y.dtype and x.shape == y.shape, (name, k)
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (name, k)
    assert ShardSet(out).keys() == ShardSet(ref).keys()
    assert (out / "rejects.jsonl").read_bytes() == (ref / "rejects.jsonl").read_bytes()
    assert _stage_json(out)["complete"]
    assert _no_sha(_stage_json(out)) == _no_sha(_stage_json(ref))     # all but the shards' checksums
    # nothing of ours is left running
    for p in [sched, stage] + [p for p, _ in workers]:
        assert p.poll() is not None
