"""Failures fail loudly: an injected bug fails its chunk (retried, then exit 1 naming it), a
bad input is still a reject, too many rejects fail the stage, a ConfigError in a chunk stops
it (exit 2); the chunk plan, the log-friendly progress lines and the SLURM start timeout."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.runner import planned_workers, run_stage
from pipeline.shards import ShardError, ShardSet
from pipeline.stage import BadInput, Reject, plan_chunk_size, split_chunks
from pipeline.testing import ToyStage, make_toy_inputs

ROOT = Path(__file__).resolve().parents[2]
N, BAD, CS = 14, (4, 11), 4     # 14 images, 2 unreadable, 4 per chunk -> 4 chunks


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_toy_inputs(tmp_path_factory.mktemp("toy") / "in", N, bad=BAD)


def _toy_cli(inputs, out, *extra):
    cmd = [sys.executable, "-m", "pipeline.testing", "toy", "--inputs", str(inputs), "--out", str(out),
           "--chunk-size", str(CS), "--workers", "1", "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _run(stage, out, **kw):
    kw.setdefault("cluster", "inprocess")
    return run_stage(stage, out, chunk_size=CS, progress=False, log=None, **kw)


# ----------------------------------------------------------------------------- bugs vs bad inputs
def test_injected_bug_in_the_chunk_function_exits_1_naming_chunk_and_error(inputs, tmp_path):
    p = _toy_cli(inputs, tmp_path / "o", "--bug-item", "img-00005.png")   # chunk 1 = items 4..7
    assert p.returncode == 1, p.stderr
    err = p.stderr
    assert "chunks failed: 1 (TypeError:" in err and "re-run to retry them" in err
    meta = json.loads((tmp_path / "o" / "_stage.json").read_text())
    assert meta["complete"] is False and list(meta["failed"]) == ["1"]
    # the bug is not a reject: the item is in no rejects.jsonl, the other chunks are kept
    assert all(r["key"] != "img-00005.png" for r in map(json.loads, (tmp_path / "o" / "rejects.jsonl").open()))
    assert sorted(int(c["chunk"]) for c in meta["shards"]) == [0, 2, 3]
    with pytest.raises(ShardError, match="incomplete"):
        ShardSet(tmp_path / "o")


def test_injected_bug_is_retried_then_fails(inputs, tmp_path):
    class Counting(ToyStage):
        calls: list = []

        def process_chunk(self, keys, chunk):
            Counting.calls.append(chunk)
            return super().process_chunk(keys, chunk)

    rep = _run(Counting(inputs, bug_items=["img-00000.png"]), tmp_path / "o", retries=2)
    assert list(rep.failed) == [0] and "TypeError" in rep.failed[0] and rep.exit_code == 1
    assert Counting.calls.count(0) == 3 and Counting.calls.count(1) == 1       # 1 try + 2 retries


def test_bad_input_is_still_a_reject_and_the_stage_succeeds(inputs, tmp_path):
    p = _toy_cli(inputs, tmp_path / "o")
    assert p.returncode == 0, p.stderr
    assert "2 of 14 inputs rejected (14.3%): unreadable 2" in p.stderr          # the reject summary
    ds = ShardSet(tmp_path / "o")
    assert len(ds) == N - len(BAD) and [r["reason"] for r in ds.rejects()] == ["unreadable", "unreadable"]


def test_bad_input_type_keeps_reason_and_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(BadInput("no face", "none found")))
    assert Reject is BadInput and (e.reason, e.detail) == ("no face", "none found")
    assert e.as_reject("k") == {"key": "k", "reason": "no face", "detail": "none found"}


# ----------------------------------------------------------------------------- too many rejects
def test_more_rejects_than_max_reject_fraction_exit_1_with_summary(tmp_path):
    src = make_toy_inputs(tmp_path / "in", 10, bad=range(6))                     # 60 % unreadable
    out = tmp_path / "o"
    p = _toy_cli(src, out)                                                         # preset default 0.5
    assert p.returncode == 1
    assert "6 of 10 inputs rejected (60.0%): unreadable 6, more than pipeline.max_reject_fraction=0.5" in p.stderr
    meta = json.loads((out / "_stage.json").read_text())
    assert meta["complete"] is False and "60.0%" in meta["too_many_rejects"]
    with pytest.raises(ShardError, match="max_reject_fraction"):
        ShardSet(out)
    # accepting more rejects finishes the stage without recomputing a chunk
    before = {q.name: q.stat().st_ino for q in out.glob("shard-*.h5")}
    p = _toy_cli(src, out, "--set", "pipeline.max_reject_fraction=0.7")
    assert p.returncode == 0, p.stderr
    assert "0 to compute" in p.stderr and {q.name: q.stat().st_ino for q in out.glob("shard-*.h5")} == before
    assert len(ShardSet(out)) == 4


def test_max_reject_fraction_in_run_stage(tmp_path):
    src = make_toy_inputs(tmp_path / "in", 8, bad=(0, 1, 2, 3))                  # exactly half
    rep = _run(ToyStage(src), tmp_path / "a", max_reject_fraction=0.5)
    assert rep.ok and not rep.too_many_rejects and rep.reject_reasons == {"unreadable": 4}
    rep = _run(ToyStage(src), tmp_path / "b", max_reject_fraction=0.49)
    assert rep.too_many_rejects and rep.exit_code == 1 and "TOO MANY REJECTS" in rep.summary()
    assert rep.reject_summary() == "4 of 8 inputs rejected (50.0%): unreadable 4"
    with pytest.raises(ConfigError, match="max_reject_fraction"):
        _run(ToyStage(src), tmp_path / "c", max_reject_fraction=1.5)


def test_config_keys_and_code_defaults_agree():
    from pipeline.cluster import JOB_START_TIMEOUT

    demo = load_config()
    assert demo.section("pipeline")["max_reject_fraction"] == 0.5
    assert demo.section("cluster")["job_start_timeout"] == JOB_START_TIMEOUT
    assert load_config("paper").section("pipeline")["max_reject_fraction"] == 0.5


# ----------------------------------------------------------------------------- fatal errors
def test_config_error_in_a_chunk_stops_the_stage_without_retries(inputs, tmp_path):
    class Counting(ToyStage):
        calls: list = []

        def process_chunk(self, keys, chunk):
            Counting.calls.append(chunk)
            return super().process_chunk(keys, chunk)

    with pytest.raises(ConfigError, match=r"stage toy, chunk 1: toy model file is corrupt"):
        _run(Counting(inputs, config_error_chunks=[1]), tmp_path / "o", retries=2)
    assert Counting.calls == [0, 1]                                   # not retried; 2 and 3 not run
    meta = json.loads((tmp_path / "o" / "_stage.json").read_text())
    assert meta["complete"] is False and sorted(meta["failed"]) == ["1", "2", "3"]


def test_config_error_on_a_dask_cluster_is_fatal_too(inputs, tmp_path, dask_client):
    with pytest.raises(ConfigError, match="chunk 2: toy model file is corrupt"):
        _run(ToyStage(inputs, config_error_chunks=[2]), tmp_path / "o", cluster=dask_client)


# ----------------------------------------------------------------------------- chunk plan
def test_chunk_plan_gives_every_worker_four_chunks():
    assert plan_chunk_size(60, 64, 2) == 7 and len(split_chunks(list(range(60)), 7)) == 9
    assert plan_chunk_size(60, 64, 1) == 64                  # one worker: as asked
    assert plan_chunk_size(1000, 16, 2) == 16                # chunk_size stays an upper bound
    assert plan_chunk_size(5, 64, 4) == 1                    # as many chunks as items allow
    assert plan_chunk_size(0, 64, 4) == 64
    for n, w in ((60, 2), (61, 3), (200, 16), (9, 2)):
        k = len(split_chunks(list(range(n)), plan_chunk_size(n, 10_000, w)))
        assert k >= min(n, 4 * w), (n, w, k)


def test_planned_workers(tmp_path):
    prof = tmp_path / "site.yaml"
    prof.write_text("kind: slurm\nworkers: 7\ncores: 1\nmemory: 1GB\n")
    assert planned_workers(str(prof), None) == 7 and planned_workers(str(prof), 3) == 3
    assert planned_workers("inprocess", 8) == 1
    assert planned_workers("local", 3) == 3
    assert planned_workers("tcp://127.0.0.1:1", None) == 1
    import os

    assert planned_workers("local", None) == (os.cpu_count() or 1)


def test_run_stage_plans_small_chunks_for_two_workers(inputs, tmp_path, dask_client):
    rep = run_stage(ToyStage(inputs), tmp_path / "o", chunk_size=64, cluster=dask_client, progress=False,
                    log=None)
    assert rep.ok and rep.chunk_size == 1 and rep.n_chunks == 14           # floor(14 / 8) = 1 per chunk
    assert json.loads((tmp_path / "o" / "_stage.json").read_text())["chunk_size"] == 1


# ----------------------------------------------------------------------------- progress
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_off_a_terminal_prints_at_most_one_line_per_interval():
    from pipeline.progress import Progress

    clock, buf = FakeClock(), io.StringIO()
    bar = Progress(1000, "fit", unit="chunk", total_items=4000, file=buf, clock=clock, tty=False, interval=30.0)
    for _ in range(999):                          # one chunk of 4 items every 0.5 s: 499.5 s
        clock.t += 0.5
        bar.update(1, items=4)
    assert bar.lines == 16                        # 499.5 s / 30 s, never more often
    lines = buf.getvalue().splitlines()
    assert len(lines) == 16
    assert lines[0] == "fit: 60/1000 chunks, 240/4000 items, 8.0 items/s, ETA 7m50s"
    clock.t += 0.5
    bar.update(1, items=4)
    bar.close()
    bar.close()
    last = buf.getvalue().splitlines()[-1]
    assert len(buf.getvalue().splitlines()) == 17 and last.startswith("fit: 1000/1000 chunks, 4000/4000 items")
    assert last.endswith("ETA 0s")


def test_progress_disabled_and_eta_format():
    from pipeline.progress import Progress, format_eta

    buf = io.StringIO()
    with Progress(3, "x", file=buf, tty=False, enabled=False, clock=FakeClock()) as bar:
        bar.update(3)
    assert buf.getvalue() == ""
    assert (format_eta(5), format_eta(65), format_eta(3725), format_eta(float("nan"))) == ("5s", "1m05s", "1h02m", "?")


def test_stage_log_has_no_bar_redraws_off_a_terminal(inputs, tmp_path):
    p = subprocess.run([sys.executable, "-m", "pipeline.testing", "toy", "--inputs", str(inputs), "--out",
                        str(tmp_path / "o"), "--chunk-size", "1", "--workers", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr                              # no tqdm redraws in a log
    progress = [ln for ln in p.stderr.splitlines() if ln.startswith("toy: ")]
    assert progress == ["toy: 14/14 chunks, 14/14 items, " + progress[0].split(", ", 2)[2]]
    assert "items/s, ETA 0s" in progress[0]


# ----------------------------------------------------------------------------- SLURM start timeout
class _NoWorkers:
    def __init__(self):
        self.waited = []

    def wait_for_workers(self, n, timeout=None):
        self.waited.append((n, timeout))
        raise TimeoutError("none")


def test_job_start_timeout_is_a_one_line_error():
    from pipeline.cluster import WorkerTimeout, wait_for_first_worker

    c = _NoWorkers()
    with pytest.raises(WorkerTimeout, match=r"no worker started within 5 s \(cluster.job_start_timeout\)") as e:
        wait_for_first_worker(c, 5)
    assert c.waited == [(1, 5.0)] and "\n" not in str(e.value)
    wait_for_first_worker(c, 0)                               # 0: wait for ever (no timeout call)
    assert c.waited == [(1, 5.0)]


def test_progress_of_tasks_without_items():
    from pipeline.progress import Progress

    clock, buf = FakeClock(), io.StringIO()
    bar = Progress(4, "demo world", unit="task", file=buf, clock=clock, tty=False)
    clock.t = 8.0
    bar.update(2)
    assert buf.getvalue() == ""                                   # < 30 s: nothing yet
    bar.update(2)
    bar.close()
    assert buf.getvalue() == "demo world: 4/4 tasks, 0.5 tasks/s, ETA 0s\n"
