"""Datasets and samplers over the shard stages of a run folder.

* :class:`UnpairedDataset` — real photos (``RUN/fits``): ``{"image" [3,S,S], "p" [E]}``.
* :func:`open_speech_split` — one split of the ``fit-lrw`` stage (``RUN/lrw-fits``): the rows
  of ``split == "train"`` and their 40-wide ``p_exp`` (30 fitted expression + 10 LRW-3D speech),
  phase 2 of ``train.speech`` (an :class:`UnpairedDataset` over those rows: random targets).
* :class:`PairedDataset` — 3D-warped images (``RUN/warps``) as targets, each paired with a
  source of the *same face* (same ``group``): the original photo (``fits`` row, fitted
  parameters) or another warp of it (exact parameters), i.e. the pairs
  (photo, p_fit) <-> (warp, p_k) and (warp, p_j) <-> (warp, p_k).
  Item ``i`` is warp ``i`` as the target; its source is drawn uniformly among the other
  members of its group with an RNG seeded by ``(seed, epoch, i)``, so an item does not
  depend on which worker reads it or on earlier items (resumable, deterministic).
* :class:`ResumableBatchSampler` — a per-epoch permutation from ``(seed, epoch)`` that can
  start at any batch (the checkpoint's data-order state) and shards batches over DDP ranks.

Images are read lazily through :class:`pipeline.shards.ShardSet` (one h5py handle per
worker process) and yielded as uint8 ``[3,h,w]``; the trainer converts a whole batch to
float ``[B,3,S,S]`` in [-1, 1] on its device (:func:`uint8_to_float`, antialiased bilinear
resize when ``image_size`` differs from the shard's 128): 4x fewer bytes through the worker
pipes, and the arithmetic runs on the GPU.  Parameter columns are small and read once.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from model.networks import to_network_input
from pipeline.config import ConfigError
from pipeline.shards import ShardSet

log = logging.getLogger("slidergan.train")

N_EXP = 30


def open_stage(run: str | Path, name: str, required: bool = True) -> ShardSet | None:
    """``ShardSet(RUN/name)``; None when absent and not required; ConfigError when empty."""
    d = Path(run) / name
    if not (d / "_stage.json").is_file():
        if required:
            raise ConfigError(f"{d}: no shard stage here (run the stage that makes {name!r} first)")
        return None
    ds = ShardSet(d)
    if len(ds) == 0:
        raise ConfigError(f"{d}: shard set is empty (0 rows)")
    for col in ("image", "p_exp"):
        if col not in ds.datasets:
            raise ConfigError(f"{d}: shard set has no {col!r} dataset")
    return ds


def str_column(ds: ShardSet, name: str) -> np.ndarray:
    """A string column as an object array of ``str`` (h5py returns bytes)."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ds.read(name)], object)


def open_speech_split(run: str | Path, name: str, split: str, width: int) -> tuple[ShardSet, np.ndarray, np.ndarray]:
    """Rows of one LRW split of the ``fit-lrw`` stage ``RUN/name`` -> (shards, rows int64 [M],
    params float32 [N, width] of *all* rows).

    The stage's ``p_exp`` must be exactly ``width`` wide (40: 30 fitted + 10 speech; no padding:
    speech data without speech would train nothing). One-line ConfigErrors for an absent stage,
    no ``split`` column, a width mismatch or a split without rows."""
    ds = open_stage(run, name, required=False)
    if ds is None:
        raise ConfigError(f"{Path(run) / name}: no fit-lrw stage here (train.speech trains phase 2 on it: "
                          f"run 'slidergan fit-lrw --out {Path(run) / name}' or 'make fit-lrw' first)")
    if "split" not in ds.datasets:
        raise ConfigError(f"{ds.dir}: shard set has no 'split' dataset (not a fit-lrw stage?)")
    p = np.asarray(ds.read("p_exp"), np.float32)
    if p.ndim != 2 or p.shape[1] != width:
        raise ConfigError(f"{ds.dir}: p_exp is {list(p.shape[1:])} wide; train.speech needs {width} "
                          f"(30 expression + 10 speech parameters per frame)")
    rows = np.nonzero(str_column(ds, "split") == split)[0].astype(np.int64)
    if len(rows) == 0:
        raise ConfigError(f"{ds.dir}: no rows with split == {split!r}")
    return ds, rows, p


def params_to_width(p: np.ndarray, width: int, where: str, pad_speech: bool) -> np.ndarray:
    """Parameters [N,w] -> [N,width] float32.

    ``w == width`` passes; with speech conditioning (``width == 40``) a 30-wide column is
    zero-padded (no speech motion: warps and photos of the paired phase); anything else is a
    one-line ConfigError naming the stage."""
    p = np.asarray(p, dtype=np.float32)
    if p.ndim != 2:
        raise ConfigError(f"{where}: p_exp must be [N,E], got shape {list(p.shape)}")
    w = p.shape[1]
    if w == width:
        return p
    if pad_speech and w == N_EXP and width > N_EXP:
        return np.concatenate([p, np.zeros((len(p), width - w), np.float32)], axis=1)
    raise ConfigError(f"{where}: parameter width {w} disagrees with the conditioning width {width}"
                      + (" (train.speech=true needs 30 or 40 columns)" if pad_speech else
                         " (set train.speech=true for 40 parameters)"))


def to_uint8_chw(img: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] (shard row) -> uint8 [3,H,W] tensor (what the loaders yield)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be [H,W,3], got {list(img.shape)}")
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def uint8_to_float(u8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [...,3,h,w] -> float32 [...,3,size,size] in [-1,1]: ``model.networks.to_network_input``,
    the one conversion G and D get everywhere (antialiased bilinear, docs/INTERFACES.md)."""
    return to_network_input(u8, size)


def to_tensor_image(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H,W,3] -> float32 [3,size,size] in [-1,1]."""
    return uint8_to_float(to_uint8_chw(img), size)


class UnpairedDataset(Dataset):
    """Rows of one stage. ``ds[i] -> {"image": uint8 [3,h,w], "p": [E], "index": int}``
    (``image_size`` is applied by :func:`uint8_to_float` on the training device)."""

    def __init__(self, shards: ShardSet, params: np.ndarray, image_size: int):
        self.shards, self.params, self.size = shards, np.asarray(params, np.float32), image_size
        if len(self.params) != len(shards):
            raise ValueError("params rows != shard rows")

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict:
        return {"image": to_uint8_chw(self.shards.read("image", int(i))),
                "p": torch.from_numpy(self.params[i].copy()), "index": int(i)}


class PairedDataset(Dataset):
    """Warps as targets paired with a same-group source (photo or other warp).

    ``ds[i] -> {"image": source uint8 [3,h,w], "p": source params [E], "target": warp i uint8 [3,h,w],
    "p_trg": warp i's exact params [E], "index": i}``.  Call :meth:`set_epoch` before an epoch.
    """

    def __init__(self, fits: ShardSet | None, fit_params: np.ndarray | None, warps: ShardSet,
                 warp_params: np.ndarray, image_size: int, seed: int = 0):
        self.fits, self.warps, self.size, self.seed = fits, warps, image_size, int(seed)
        self.fit_params = None if fit_params is None else np.asarray(fit_params, np.float32)
        self.warp_params = np.asarray(warp_params, np.float32)
        self.epoch = 0
        if "group" not in warps.datasets:
            raise ConfigError(f"{warps.dir}: warps have no 'group' dataset")
        wg = warps.read("group").astype(np.int64)
        members: dict[int, list[tuple[int, int]]] = {}      # group -> [(stage 0 fits / 1 warps, row)]
        if fits is not None and "group" in fits.datasets:
            for r, g in enumerate(fits.read("group").astype(np.int64)):
                members.setdefault(int(g), []).append((0, r))
        for r, g in enumerate(wg):
            members.setdefault(int(g), []).append((1, r))
        self.members = {g: np.array(m, dtype=np.int64) for g, m in members.items()}
        self.warp_group = wg
        self.n_lonely = sum(1 for g in wg if len(self.members[int(g)]) < 2)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.warps)

    def source_of(self, i: int) -> tuple[int, int]:
        """(stage, row) of warp i's source for the current epoch (0 fits, 1 warps)."""
        m = self.members[int(self.warp_group[i])]
        others = m[~((m[:, 0] == 1) & (m[:, 1] == i))]
        if len(others) == 0:            # a warp alone in its group: reconstruct itself
            return 1, int(i)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        s, r = others[int(rng.integers(len(others)))]
        return int(s), int(r)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        s, r = self.source_of(i)
        if s == 0:
            src, p_src = self.fits.read("image", r), self.fit_params[r]
        else:
            src, p_src = self.warps.read("image", r), self.warp_params[r]
        return {"image": to_uint8_chw(src), "p": torch.from_numpy(p_src.copy()),
                "target": to_uint8_chw(self.warps.read("image", i)),
                "p_trg": torch.from_numpy(self.warp_params[i].copy()), "index": i}


class ResumableBatchSampler(Sampler):
    """Batches of a seeded per-epoch permutation, starting at batch ``start``.

    ``n`` items, ``batch_size`` (last partial batch dropped), permutation from
    ``torch.Generator().manual_seed(seed * 1_000_003 + epoch)``.  With ``world > 1`` rank r
    takes global batches r, r+world, ... (``batches_per_epoch`` counts a rank's batches).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0,
                 rank: int = 0, world: int = 1):
        self.n, self.bs, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world

    @staticmethod
    def count(n: int, batch_size: int, world: int = 1) -> int:
        return (n // batch_size) // world

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        nb = self.count(self.n, self.bs, self.world)
        glob = [perm[b * self.bs:(b + 1) * self.bs] for b in range(nb * self.world)]
        return glob[self.rank::self.world][self.start:]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return max(0, self.count(self.n, self.bs, self.world) - self.start)


class ConcatPaired(Dataset):
    """Datasets one after the other (``set_epoch`` forwarded to each): item ``i`` is item
    ``i - offset_k`` of the dataset k it falls in. [warps, 4DFAB renders] for ``train.paired_4dfab``."""

    def __init__(self, parts: list):
        self.parts = list(parts)
        self.ends = np.cumsum([len(d) for d in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        k = int(np.searchsorted(self.ends, i, side="right"))
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        return self.parts[k][i - (int(self.ends[k - 1]) if k else 0)]

    def set_epoch(self, epoch: int) -> None:
        for d in self.parts:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


class RowSubset(Dataset):
    """Rows ``rows`` of a dataset (``set_epoch`` forwarded): ``sub[j] = ds[rows[j]]``."""

    def __init__(self, ds: Dataset, rows: np.ndarray):
        self.ds, self.rows = ds, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict:
        return self.ds[int(self.rows[j])]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)
