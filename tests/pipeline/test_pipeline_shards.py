"""Shard writer/reader against plain numpy references."""
from __future__ import annotations

import json
import multiprocessing as mp
import pickle

import h5py
import numpy as np
import pytest

from pipeline.shards import SCHEMA, ShardError, ShardSet, sha256_file, write_shard
from pipeline.testing import make_stage


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "key": [f"photo/{i:03d}-é.jpg" for i in range(n)],
        "identity": rng.integers(-1, 5, n).astype(np.int64),
        "p_exp": rng.normal(size=(n, 30)).astype(np.float32),
        "image": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
    }


def test_write_shard_layout_and_determinism(tmp_path):
    rows = _rows(5)
    a = write_shard(tmp_path / "a.h5", rows, stage="fit", chunk=3, params_hash="p", model_hash="m",
                    rejects=[{"key": "x", "reason": "no face", "detail": "d"}])
    b = write_shard(tmp_path / "b.h5", rows, stage="fit", chunk=3, params_hash="p", model_hash="m",
                    rejects=[{"key": "x", "reason": "no face", "detail": "d"}])
    assert a["sha256"] == b["sha256"] == sha256_file(tmp_path / "a.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assert a["n"] == 5 and a["n_rejects"] == 1
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert dict(f.attrs) == {"schema": SCHEMA, "stage": "fit", "chunk": 3, "params_hash": "p",
                                 "model_hash": "m", "n": 5}
        assert f["image"].chunks == (1, 16, 16, 3)          # one image per HDF5 chunk
        assert h5py.check_string_dtype(f["key"].dtype).encoding == "utf-8"
        assert list(f["key"].asstr()[()]) == rows["key"]
        np.testing.assert_array_equal(f["p_exp"][()], rows["p_exp"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp left
    c = write_shard(tmp_path / "c.h5", {**rows, "p_exp": rows["p_exp"] + 1}, stage="fit", chunk=3,
                    params_hash="p", model_hash="m")
    assert c["sha256"] != a["sha256"]


def test_write_shard_lzf_and_bad_rows(tmp_path):
    rows = _rows(3)
    write_shard(tmp_path / "z.h5", rows, stage="s", chunk=0, params_hash="p", compression="lzf")
    with h5py.File(tmp_path / "z.h5", "r") as f:
        assert f["image"].compression == "lzf"
        np.testing.assert_array_equal(f["image"][()], rows["image"])
    with pytest.raises(ValueError, match="p_exp"):
        write_shard(tmp_path / "bad.h5", {**rows, "p_exp": rows["p_exp"][:2]}, stage="s", chunk=0, params_hash="p")
    assert not (tmp_path / "bad.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_shardset_matches_concatenated_reference(tmp_path):
    rows = _rows(23, seed=1)
    d = make_stage(tmp_path / "st", "fits", rows, chunk_size=5, params={"a": 1}, model_hash="mh",
                   attrs={"source_stage": "x"}, rejects=[{"key": "bad.jpg", "reason": "no face"}])
    ds = ShardSet(d)
    assert len(ds) == 23 and len(ds.files) == 5
    assert ds.datasets["image"] == (np.dtype(np.uint8), (23, 16, 16, 3))
    assert ds.datasets["key"][0] == "str"
    assert ds.attrs["params"] == {"a": 1} and ds.attrs["model_hash"] == "mh"
    assert ds.attrs["source_stage"] == "x" and ds.attrs["stage"] == "fits"
    for name in ("identity", "p_exp", "image"):
        np.testing.assert_array_equal(ds.read(name), rows[name])
    assert ds.keys() == rows["key"]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 23, 40)                      # unordered, repeated, across shards
    np.testing.assert_array_equal(ds.read("image", idx), rows["image"][idx])
    assert list(ds.read("key", idx)) == [rows["key"][i] for i in idx]
    np.testing.assert_array_equal(ds.read("p_exp", slice(3, 17, 2)), rows["p_exp"][3:17:2])
    np.testing.assert_array_equal(ds.read("p_exp", -1), rows["p_exp"][-1])
    mask = rows["identity"] > 1
    np.testing.assert_array_equal(ds.read("p_exp", mask), rows["p_exp"][mask])
    assert ds.read("image", []).shape == (0, 16, 16, 3)
    row = ds.row(11)
    assert row["key"] == rows["key"][11] and np.array_equal(row["image"], rows["image"][11])
    assert ds.rejects() == [{"key": "bad.jpg", "reason": "no face", "detail": ""}]
    with pytest.raises(IndexError):
        ds.read("p_exp", 23)
    with pytest.raises(KeyError, match="nope"):
        ds.read("nope")


def _child_read(ds, q):
    q.put(ds.read("p_exp", [0, 7, 22]).tolist())


def test_shardset_after_fork_and_pickle(tmp_path):
    rows = _rows(23, seed=2)
    ds = ShardSet(make_stage(tmp_path / "st", "fits", rows, chunk_size=5))
    ds.read("p_exp", [1, 12])                           # parent opens handles first
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_child_read, args=(ds, q))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), rows["p_exp"][[0, 7, 22]])
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2._handles == {}
    np.testing.assert_array_equal(ds2.read("image", 22), rows["image"][22])


def test_shardset_refuses_unfinished_or_mismatched(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        ShardSet(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="not a finished stage"):
        ShardSet(tmp_path / "empty")
    d = make_stage(tmp_path / "st", "fits", _rows(6), chunk_size=3, params={"a": 1})
    meta = json.loads((d / "_stage.json").read_text())
    meta["params_hash"] = "other"
    (d / "_stage.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match="does not match"):
        ShardSet(d).read("p_exp")
    meta["complete"] = False
    meta["failed"] = {"1": "boom"}
    (d / "_stage.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match="incomplete"):
        ShardSet(d)


class _Rows:
    """A torch-style dataset over a ShardSet (what the trainer does)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds.read("p_exp", i), i


def test_shardset_in_torch_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    rows = _rows(23, seed=3)
    ds = ShardSet(make_stage(tmp_path / "st", "fits", rows, chunk_size=5))
    ds.read("p_exp", 0)                                  # parent holds open handles
    loader = torch.utils.data.DataLoader(_Rows(ds), batch_size=4, shuffle=True, num_workers=2,
                                         multiprocessing_context="fork",
                                         generator=torch.Generator().manual_seed(0))
    seen = {}
    for p, idx in loader:
        for row, i in zip(p.numpy(), idx.tolist()):
            seen[i] = row
    assert sorted(seen) == list(range(23))
    np.testing.assert_array_equal(np.stack([seen[i] for i in range(23)]), rows["p_exp"])


def test_small_multidim_rows_are_contiguous(tmp_path):
    lm = np.zeros((4, 68, 2), np.float32)
    write_shard(tmp_path / "s.h5", {"lm": lm, "image": np.zeros((4, 32, 32, 3), np.uint8)}, stage="s",
                chunk=0, params_hash="p")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["lm"].chunks is None and f["image"].chunks == (1, 32, 32, 3)
