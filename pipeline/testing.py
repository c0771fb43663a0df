"""Test helpers: build stage folders from in-memory rows, and toy stages.

- :func:`make_stage` writes a complete, valid stage folder (shards + rejects.jsonl +
  _stage.json) from arrays, through the real runner — for trainer/evaluation fixtures.
- :class:`ToyStage` (image file -> mean colour) exercises rejects, retries, kills and
  locks; :class:`BusyStage` is a CPU-bound workload for the pipeline benchmark.
- ``python -m pipeline.testing toy --inputs DIR --out D ...`` runs the toy stage in a real
  process (the kill/lock tests drive it); exit status as for ``slidergan`` stages.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.config import ConfigError
from pipeline.shards import normalise_rows
from pipeline.stage import ChunkResult, Reject, Stage, process_items


class _RowsStage(Stage):
    """Serves pre-made rows; key i (zero-padded) is row i, so row order is preserved."""

    def __init__(self, name: str, rows: dict[str, np.ndarray], params: dict, model_hash: str | None,
                 attrs: dict, rejects: Sequence[Mapping]):
        self.name = name
        self._rows, self._params, self._mh, self._attrs = rows, params, model_hash, attrs
        self._n = len(next(iter(rows.values()))) if rows else 0
        self._rejects = list(rejects)

    def input_keys(self) -> list[str]:
        return [f"{i:09d}" for i in range(self._n)]

    def params(self) -> dict:
        return self._params

    def model_hash(self) -> str | None:
        return self._mh

    def attrs(self) -> dict:
        return self._attrs

    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        lo, hi = int(keys[0]), int(keys[-1]) + 1
        return ChunkResult(rows={k: v[lo:hi] for k, v in self._rows.items()},
                           rejects=self._rejects if chunk == 0 else [])


def make_stage(dir: str | os.PathLike, name: str, rows: Mapping[str, Any], chunk_size: int,
               params: dict | None = None, model_hash: str | None = None, attrs: dict | None = None,
               rejects: Sequence[Mapping] = ()) -> Path:
    """Write a complete stage folder ``dir`` holding ``rows`` ({dataset: array [n, ...] or
    list[str]}) in shards of ``chunk_size`` rows, in the given row order.  Returns ``dir``."""
    from pipeline.runner import run_stage

    data, n = normalise_rows(rows)
    if n == 0:
        raise ValueError("make_stage needs at least one row")
    stage = _RowsStage(name, data, dict(params or {}), model_hash, dict(attrs or {}), rejects)
    report = run_stage(stage, dir, chunk_size=chunk_size, cluster="inprocess", progress=False, log=None,
                       retries=0)
    if not report.ok:
        raise RuntimeError(report.summary())
    return Path(dir)


# -- toy stage: image file -> mean colour ---------------------------------------------------

def make_toy_inputs(folder: str | os.PathLike, n: int, size: int = 8, bad: Sequence[int] = (),
                    seed: int = 0) -> Path:
    """``n`` small PNGs ``img-XXXXX.png`` (random colours); indices in ``bad`` hold garbage."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = folder / f"img-{i:05d}.png"
        if i in bad:
            p.write_bytes(b"this is not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
    return folder


def toy_reference(folder: str | os.PathLike, scale: float = 1.0) -> dict[str, np.ndarray]:
    """The obviously-correct answer: {key: scale * mean RGB / 255} for every readable image."""
    from PIL import Image

    out = {}
    for p in sorted(Path(folder).glob("*.png")):
        try:
            img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
        except Exception:  # noqa: BLE001 — unreadable -> not in the reference
            continue
        out[p.name] = (scale * img.reshape(-1, 3).mean(0) / 255.0).astype(np.float32)
    return out


class ToyStage(Stage):
    """Image -> mean colour.  rows: key str, mean float32 [n,3], image uint8 [n,h,w,3],
    group int64 [n].  ``delay`` (s/item), ``marker_dir`` (write ``<chunk>-<pid>`` at chunk
    start), ``fail_chunks`` (always raise), ``flaky_dir`` (raise on a chunk's first attempt),
    ``bug_items`` (a TypeError, as a refactoring slip would raise, in the per-item function)
    and ``config_error_chunks`` (raise ConfigError, as a corrupt model would) are test hooks
    and are not hashed."""
    name = "toy"
    version = "1"

    def __init__(self, inputs: str | os.PathLike, scale: float = 1.0, delay: float = 0.0,
                 marker_dir: str | None = None, fail_chunks: Sequence[int] = (), flaky_dir: str | None = None,
                 bug_items: Sequence[str] = (), config_error_chunks: Sequence[int] = ()):
        self.inputs = str(Path(inputs).absolute())
        self.scale, self.delay = float(scale), float(delay)
        self.marker_dir, self.fail_chunks, self.flaky_dir = marker_dir, tuple(fail_chunks), flaky_dir
        self.bug_items, self.config_error_chunks = tuple(bug_items), tuple(config_error_chunks)

    def input_keys(self) -> list[str]:
        return sorted(p.name for p in Path(self.inputs).glob("*.png"))

    def params(self) -> dict:
        return {"scale": self.scale}

    def model_hash(self) -> str | None:
        return None

    def _item(self, key: str) -> dict:
        from PIL import Image, UnidentifiedImageError

        if self.delay:
            time.sleep(self.delay)
        if key in self.bug_items:
            return {"key": key, "mean": len(None)}          # noqa — the injected bug: a TypeError
        try:
            img = np.asarray(Image.open(Path(self.inputs) / key).convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise Reject("unreadable", str(e).splitlines()[0]) from None
        mean = self.scale * img.reshape(-1, 3).astype(np.float64).mean(0) / 255.0
        return {"key": key, "mean": mean.astype(np.float32), "image": img,
                "group": np.int64(int(key[4:9]))}

    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        if self.marker_dir:
            Path(self.marker_dir, f"{chunk}-{os.getpid()}").touch()
        if chunk in self.fail_chunks:
            raise RuntimeError(f"toy failure in chunk {chunk}")
        if chunk in self.config_error_chunks:
            raise ConfigError(f"toy model file is corrupt (chunk {chunk})")
        if self.flaky_dir:
            flag = Path(self.flaky_dir, f"attempt-{chunk}")
            if not flag.exists():
                flag.touch()
                raise RuntimeError(f"flaky first attempt of chunk {chunk}")
        return process_items(keys, self._item)


class BusyStage(Stage):
    """CPU-bound benchmark workload: each item runs ``work`` steps of an integer LCG in
    pure Python (~0.1 us/step).  rows: key str, value int64 [n]."""
    name = "busy"
    version = "1"

    def __init__(self, n_items: int = 64, work: int = 200_000):
        self.n_items, self.work = int(n_items), int(work)

    def input_keys(self) -> list[str]:
        return [f"item-{i:05d}" for i in range(self.n_items)]

    def params(self) -> dict:
        return {"work": self.work}

    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        vals = []
        for k in keys:
            x = int(k[5:])
            for _ in range(self.work):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            vals.append(x)
        return ChunkResult(rows={"key": list(keys), "value": np.asarray(vals, dtype=np.int64)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.testing")
    p.add_argument("what", choices=["toy"])
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--marker-dir", default=None)
    p.add_argument("--fail-chunk", type=int, action="append", default=[])
    p.add_argument("--bug-item", action="append", default=[])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--force", action="store_true")
    p.add_argument("--only", type=int, default=None)
    p.add_argument("--cluster", default="local")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from pipeline.runner import run_stage_from_args

    stage = ToyStage(args.inputs, scale=args.scale, delay=args.delay, marker_dir=args.marker_dir,
                     fail_chunks=args.fail_chunk, bug_items=args.bug_item)
    try:
        return run_stage_from_args(stage, args, default_chunk_size=4).exit_code
    except ConfigError as e:
        sys.stderr.write(f"toy: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
