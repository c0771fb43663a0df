"""The runner on the toy stage (image -> mean colour): results against a direct reference,
resumption rules (params, --force, --only), rejects, retries and failed chunks — in process
and on a shared 2-worker LocalCluster."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.runner import run_stage
from pipeline.shards import ShardSet, shard_name
from pipeline.stage import ChunkResult, Stage, process_items, split_chunks
from pipeline.testing import ToyStage, make_toy_inputs, toy_reference

N, BAD, CS = 14, (4, 11), 4     # 14 images, 2 unreadable, 4 per chunk -> 4 chunks


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_toy_inputs(tmp_path_factory.mktemp("toy") / "in", N, bad=BAD)


def _bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if p.name.startswith("shard-") or p.name in ("_stage.json", "rejects.jsonl")}


def _run(stage, out, **kw):
    kw.setdefault("cluster", "inprocess")
    return run_stage(stage, out, chunk_size=CS, progress=False, log=None, **kw)


def _inodes(d):
    return {p.name: p.stat().st_ino for p in d.glob("shard-*.h5")}


def test_split_chunks_is_fixed_slices():
    keys = [f"k{i:02d}" for i in range(10)]
    assert split_chunks(keys, 4) == [keys[0:4], keys[4:8], keys[8:10]]
    assert split_chunks([], 4) == []


def test_toy_stage_matches_reference_and_rejects(inputs, tmp_path):
    rep = _run(ToyStage(inputs, scale=2.0), tmp_path / "o")
    assert rep.ok and rep.exit_code == 0 and rep.computed == [0, 1, 2, 3]
    ds = ShardSet(tmp_path / "o")
    ref = toy_reference(inputs, scale=2.0)
    assert ds.keys() == sorted(ref)                      # sorted, unreadable ones left out
    np.testing.assert_allclose(ds.read("mean"), np.stack([ref[k] for k in ds.keys()]), rtol=1e-6)
    rej = ds.rejects()
    assert [r["key"] for r in rej] == [f"img-{i:05d}.png" for i in BAD]
    assert {r["reason"] for r in rej} == {"unreadable"} and all(r["detail"] for r in rej)
    meta = json.loads((tmp_path / "o" / "_stage.json").read_text())
    assert meta["counts"] == {"inputs": N, "rows": N - len(BAD), "rejects": 2, "reject_reasons": {"unreadable": 2}}
    assert meta["complete"] and [s["file"] for s in meta["shards"]] == [shard_name(i) for i in range(4)]


def test_rerun_skips_param_change_recomputes_force_only(inputs, tmp_path):
    out = tmp_path / "o"
    _run(ToyStage(inputs), out)
    first, ino = _bytes(out), _inodes(out)
    rep = _run(ToyStage(inputs, delay=0.01), out)        # delay is not a param
    assert rep.computed == [] and rep.skipped == [0, 1, 2, 3] and rep.ok
    assert _bytes(out) == first and _inodes(out) == ino  # nothing rewritten
    rep = _run(ToyStage(inputs, scale=0.5), out)         # param changed -> everything recomputed
    assert rep.computed == [0, 1, 2, 3]
    assert ShardSet(out).attrs["params"] == {"scale": 0.5}
    rep = _run(ToyStage(inputs), out)                    # back: recomputed, same bytes as before
    assert rep.computed == [0, 1, 2, 3] and _bytes(out) == first
    ino = _inodes(out)
    rep = _run(ToyStage(inputs), out, only=2)
    assert rep.computed == [2] and rep.ok
    new = _inodes(out)
    assert [k for k in ino if ino[k] != new[k]] == [shard_name(2)] and _bytes(out) == first
    rep = _run(ToyStage(inputs), out, force=True)
    assert rep.computed == [0, 1, 2, 3] and _bytes(out) == first
    with pytest.raises(ConfigError, match="--only 9"):
        _run(ToyStage(inputs), out, only=9)


def test_new_inputs_recompute_only_changed_chunks(tmp_path):
    src = make_toy_inputs(tmp_path / "in", 8)
    out = tmp_path / "o"
    _run(ToyStage(src), out)
    ino = _inodes(out)
    make_toy_inputs(tmp_path / "extra", 10, seed=5)
    (tmp_path / "extra" / "img-00009.png").rename(src / "img-00009.png")   # appended key
    rep = _run(ToyStage(src), out)
    assert rep.computed == [2] and rep.skipped == [0, 1]
    assert _inodes(out)[shard_name(0)] == ino[shard_name(0)]
    assert ShardSet(out).keys()[-1] == "img-00009.png"


def test_failed_chunk_reported_others_kept_then_rerun(inputs, tmp_path):
    out = tmp_path / "o"
    rep = _run(ToyStage(inputs, fail_chunks=[1]), out)
    assert rep.exit_code == 1 and list(rep.failed) == [1] and "toy failure in chunk 1" in rep.failed[1]
    assert rep.computed == [0, 2, 3] and "FAILED chunks 1" in rep.summary()
    meta = json.loads((out / "_stage.json").read_text())
    assert meta["complete"] is False and list(meta["failed"]) == ["1"]
    rep = _run(ToyStage(inputs), out)
    assert rep.ok and rep.computed == [1]
    assert len(ShardSet(out)) == N - len(BAD)


def test_flaky_chunk_is_retried(inputs, tmp_path):
    (tmp_path / "flags").mkdir()
    rep = _run(ToyStage(inputs, flaky_dir=str(tmp_path / "flags")), tmp_path / "o")
    assert rep.ok and len(list((tmp_path / "flags").iterdir())) == 4
    rep = _run(ToyStage(inputs, fail_chunks=[0]), tmp_path / "o2", retries=0)
    assert list(rep.failed) == [0]


def test_duplicate_keys_and_bad_sizes_are_config_errors(inputs, tmp_path):
    class Dup(ToyStage):
        def input_keys(self):
            return ["a", "b", "a"]

    with pytest.raises(ConfigError, match="duplicate input key 'a'"):
        _run(Dup(inputs), tmp_path / "o")
    with pytest.raises(ConfigError, match="chunk-size"):
        run_stage(ToyStage(inputs), tmp_path / "o", chunk_size=0)


class _Misaligned(Stage):
    name = "misaligned"

    def input_keys(self):
        return ["a", "b"]

    def process_chunk(self, keys, chunk):
        return ChunkResult(rows={"key": keys, "x": np.zeros(len(keys) + 1)})


def test_misaligned_rows_fail_the_chunk_not_the_run(tmp_path):
    rep = run_stage(_Misaligned(), tmp_path / "o", chunk_size=1, cluster="inprocess", progress=False, log=None)
    assert sorted(rep.failed) == [0, 1] and "'x' has 2 rows, expected 1" in rep.failed[0]


def test_process_items_rejects_bad_input_and_raises_bugs():
    from pipeline.stage import BadInput

    def fn(k):
        if k == "b":
            raise BadInput("no face", "none found")
        if k == "bug":
            raise TypeError("an injected bug")
        return {"key": k, "v": np.float32(len(k))}

    res = process_items(["a", "b", "cc"], fn)
    assert res.rows["key"] == ["a", "cc"] and res.rows["v"].tolist() == [1.0, 2.0]
    assert res.rejects == [{"key": "b", "reason": "no face", "detail": "none found"}]
    with pytest.raises(TypeError, match="injected bug"):
        process_items(["a", "bug"], fn)


def test_dask_cluster_gives_same_bytes_retries_and_failures(inputs, tmp_path, dask_client):
    # 2 workers: chunk_size 4 is lowered to floor(14 / (4 * 2)) = 1, i.e. 14 chunks
    run_stage(ToyStage(inputs), tmp_path / "ref", chunk_size=1, cluster="inprocess", progress=False, log=None)
    (tmp_path / "flags").mkdir()
    rep = _run(ToyStage(inputs, flaky_dir=str(tmp_path / "flags"), marker_dir=str(tmp_path / "flags")),
               tmp_path / "d", cluster=dask_client)
    assert rep.ok and rep.chunk_size == 1 and rep.computed == list(range(14)), rep.summary()
    assert _bytes(tmp_path / "d") == _bytes(tmp_path / "ref")
    worker_pids = {p.name.split("-")[1] for p in (tmp_path / "flags").iterdir() if not p.name.startswith("attempt")}
    assert len(worker_pids) == 2 and str(__import__("os").getpid()) not in worker_pids   # both workers used
    addr = dask_client.scheduler.address                  # --cluster tcp://HOST:PORT
    assert addr.startswith("tcp://")
    rep = _run(ToyStage(inputs, fail_chunks=[3]), tmp_path / "f", cluster=addr, force=True)
    assert list(rep.failed) == [3] and rep.computed == [0, 1, 2], rep.summary()


def test_corrupted_shard_is_recomputed_on_rerun(inputs, tmp_path):
    out = tmp_path / "o"
    _run(ToyStage(inputs), out)
    first = _bytes(out)
    victim = out / shard_name(2)
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF                                   # inside the last image's bytes
    victim.write_bytes(bytes(data))
    rep = _run(ToyStage(inputs), out)
    assert rep.computed == [2] and rep.skipped == [0, 1, 3]
    assert _bytes(out) == first
    (out / ".sha256-cache.json").unlink()                # without the cache: _stage.json's hashes
    victim.write_bytes(bytes(data))
    rep = _run(ToyStage(inputs), out)
    assert rep.computed == [2] and _bytes(out) == first


def test_bad_cluster_is_a_config_error_before_any_change(inputs, tmp_path):
    out = tmp_path / "o"
    _run(ToyStage(inputs), out)
    first = _bytes(out)
    with pytest.raises(ConfigError, match="no cluster profile"):
        run_stage(ToyStage(inputs), out, chunk_size=CS, force=True, cluster="pbs", progress=False, log=None)
    assert _bytes(out) == first


def test_chunk_size_change_recomputes_and_drops_extra_shards(inputs, tmp_path):
    out = tmp_path / "o"
    _run(ToyStage(inputs), out)                                   # 4 chunks of 4
    rep = run_stage(ToyStage(inputs), out, chunk_size=7, cluster="inprocess", progress=False, log=None)
    assert rep.computed == [0, 1] and rep.ok
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [shard_name(0), shard_name(1)]
    ds = ShardSet(out)
    assert ds.keys() == sorted(toy_reference(inputs)) and len(ds.rejects()) == 2


def test_empty_input_gives_an_empty_complete_stage(tmp_path):
    (tmp_path / "in").mkdir()
    rep = _run(ToyStage(tmp_path / "in"), tmp_path / "o")
    assert rep.ok and rep.n_chunks == 0
    ds = ShardSet(tmp_path / "o")
    assert len(ds) == 0 and ds.rejects() == []


def test_shards_info_and_verify_on_an_incomplete_stage(inputs, tmp_path):
    from workflows.commands.shards import info, verify

    out = tmp_path / "o"
    _run(ToyStage(inputs, fail_chunks=[2]), out)
    summary = info(out)
    assert summary["complete"] is False and list(summary["failed"]) == ["2"]
    # chunks 0, 1, 3 hold 10 inputs, one of them (4) unreadable
    assert summary["rows"] == len(ShardSet(out, allow_incomplete=True)) == 9
    assert summary["datasets"]["image"]["shape"] == [9, 8, 8, 3]
    problems = verify(out)
    assert len(problems) == 1 and "incomplete" in problems[0]
