"""Training data loader throughput against raw HDF5 reads, on a shard set made under ctx.tmp.

- ``loader_raw_read_per_s``: one process reading the shard images (uint8 [128,128,3]) in
  the same shuffled order with h5py and nothing else (no decode, no tensor conversion);
  page cache warmed first, best of two passes (before and after the loader).
- ``loader_samples_per_s``: ``train.data.UnpairedDataset`` through a torch DataLoader
  (``ResumableBatchSampler``, batch 16, 2 workers): lazy per-worker ShardSet handles,
  uint8 -> float [-1,1] tensors, collation.  Goal: >= 0.5x the raw read rate.
- ``loader_paired_samples_per_s``: the paired (photo/warp -> warp) dataset, two images a sample.
- ``loader_inprocess_samples_per_s``: the same without workers (one torch thread).  On a
  small, busy CPU this is often faster than 2 workers (the batches' trip through worker
  pipes costs more than the reads); workers pay off when the trainer's own work (GPU)
  runs in parallel with them.
- ``loader_ratio``: loader_samples_per_s / loader_raw_read_per_s.
"""
from __future__ import annotations

import time

import numpy as np


def _make(ctx, n: int):
    from pipeline.testing import make_stage

    root = ctx.tmp / "loader-run"
    rng = np.random.default_rng(0)
    faces = n // 4
    if not (root / "fits" / "_stage.json").exists():
        make_stage(root / "fits", "fits", {
            "key": [f"p{i}" for i in range(faces)], "group": np.arange(faces),
            "image": rng.integers(0, 256, (faces, 128, 128, 3), dtype=np.uint8),
            "p_exp": rng.uniform(-1, 1, (faces, 30)).astype(np.float32)}, chunk_size=64)
    if not (root / "warps" / "_stage.json").exists():
        make_stage(root / "warps", "warps", {
            "key": [f"w{i}" for i in range(n)], "group": np.arange(n) // 4, "source": np.arange(n) // 4,
            "image": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
            "p_exp": rng.uniform(-1, 1, (n, 30)).astype(np.float32)}, chunk_size=64)
    return root


def run(ctx) -> dict:
    import h5py
    import torch
    from torch.utils.data import DataLoader

    from pipeline.shards import ShardSet
    from train.data import PairedDataset, ResumableBatchSampler, UnpairedDataset

    n = 256 if ctx.quick else 1024
    root = _make(ctx, n)
    warps = ShardSet(root / "warps")
    order = [i for b in ResumableBatchSampler(len(warps), 16, 0, 0).batches() for i in b]

    # raw: h5py reads in the same order, handles opened once.  The first pass warms the page
    # cache (not timed); the baseline is the faster of two timed passes, one before and one
    # after the loader runs (conservative ratio on a busy machine).
    def raw_pass() -> float:
        files = [h5py.File(f, "r", locking=False) for f in warps.files]
        t0 = time.perf_counter()
        for i in order:
            s = int(np.searchsorted(warps.offsets, i, side="right") - 1)
            files[s]["image"][int(i - warps.offsets[s])]
        rate = len(order) / (time.perf_counter() - t0)
        for f in files:
            f.close()
        return rate

    raw_pass()
    raw = raw_pass()

    def rate(ds, workers: int = 2) -> float:
        loader = DataLoader(ds, batch_sampler=ResumableBatchSampler(len(ds), 16, 0, 0), num_workers=workers,
                            prefetch_factor=4 if workers else None)
        it = iter(loader)
        next(it)                                     # worker start-up excluded
        t0, k = time.perf_counter(), 0
        for batch in it:
            k += batch["image"].shape[0]
        return k / (time.perf_counter() - t0)

    un = rate(UnpairedDataset(warps, warps.read("p_exp"), 128))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    inproc = rate(UnpairedDataset(warps, warps.read("p_exp"), 128), workers=0)
    torch.set_num_threads(threads)
    warps.close()
    raw = max(raw, raw_pass())
    fits = ShardSet(root / "fits")
    paired = rate(PairedDataset(fits, fits.read("p_exp"), warps, warps.read("p_exp"), 128))
    return {"loader_samples_per_s": un, "loader_raw_read_per_s": raw,
            "loader_paired_samples_per_s": paired, "loader_inprocess_samples_per_s": inproc,
            "loader_ratio": un / raw}
