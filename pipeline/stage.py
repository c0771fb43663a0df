"""The stage abstraction (docs/pipeline.md).

A stage declares its inputs (sorted keys), its parameters (hashed), a model hash, and a
pure function ``process_chunk(keys, chunk) -> ChunkResult``.  The runner
(:mod:`pipeline.runner`) splits the sorted keys into fixed chunks, skips chunks whose shard
is complete and current, and runs the rest as coarse Dask tasks.

Stages are pickled and sent to Dask workers with every task: keep them small (paths and
parameters; load models lazily inside ``process_chunk``, e.g. cached per process).
"""
from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence


@dataclass
class ChunkResult:
    """rows: {dataset: array [n, ...] or list[str]} (row-aligned); rejects: [{"key","reason","detail"}]."""
    rows: dict[str, Any] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)


class Reject(Exception):
    """Raise inside a per-item function to reject that input: ``Reject("no face", "detail")``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Stage:
    """Base class.  Subclasses set ``name``/``version`` and implement the four methods.

    ``version`` is the stage's code version: it is part of the params hash, so bumping it
    recomputes every shard.  Optional: ``attrs()`` (stage-level attributes written to
    ``_stage.json`` and every shard), ``compression`` (None or "lzf" for image datasets).
    """
    name: str = "stage"
    version: str = "1"
    compression: str | None = None

    def input_keys(self) -> list[str]:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def model_hash(self) -> str | None:
        return None

    def attrs(self) -> dict:
        return {}

    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        raise NotImplementedError


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_hash(stage: Stage) -> str:
    """sha256[:16] of the stage's name, code version and params (canonical JSON)."""
    try:
        text = canonical_json({"name": stage.name, "version": str(stage.version), "params": stage.params()})
    except TypeError as e:
        raise TypeError(f"stage {stage.name!r}: params() must be JSON-able ({e})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def keys_hash(keys: Sequence[str]) -> str:
    """sha256[:16] of a chunk's input keys; a shard is reused only for the same keys."""
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:16]


def split_chunks(keys: Sequence[str], chunk_size: int) -> list[list[str]]:
    """Fixed slices of the sorted keys: chunk i = keys[i*chunk_size:(i+1)*chunk_size]."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return [list(keys[i:i + chunk_size]) for i in range(0, len(keys), chunk_size)]


def process_items(keys: Iterable[str], fn: Callable[[str], Mapping[str, Any] | None],
                  reason: str = "error") -> ChunkResult:
    """Helper for per-item stages: ``fn(key) -> {dataset: value}`` per kept item.

    :class:`Reject` becomes a reject with its reason; any other exception becomes a reject
    with ``reason`` and the exception's one-line message (the stage goes on).  ``fn`` may
    return None to drop an item silently.  Values are stacked with numpy per dataset.
    """
    import numpy as np

    kept: list[Mapping[str, Any]] = []
    rejects: list[dict] = []
    for key in keys:
        try:
            row = fn(key)
        except Reject as e:
            rejects.append({"key": key, "reason": e.reason, "detail": e.detail})
            continue
        except Exception as e:  # noqa: BLE001 — a bad input is a reject, not a crash
            last = traceback.format_exception_only(type(e), e)[-1].strip().splitlines()
            rejects.append({"key": key, "reason": reason, "detail": last[0][:500] if last else ""})
            continue
        if row is not None:
            kept.append(row)
    rows: dict[str, Any] = {}
    if kept:
        for name in kept[0]:
            vals = [r[name] for r in kept]
            rows[name] = vals if isinstance(vals[0], str) else np.stack([np.asarray(v) for v in vals])
    return ChunkResult(rows=rows, rejects=rejects)
