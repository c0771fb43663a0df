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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence


@dataclass
class ChunkResult:
    """rows: {dataset: array [n, ...] or list[str]} (row-aligned); rejects: [{"key","reason","detail"}]."""
    rows: dict[str, Any] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)


class BadInput(Exception):
    """The declared input error: raise it (in ``process_chunk`` or a per-item function) for an
    input that cannot be processed -- an unreadable image, no face, a diverged fit, a bad
    mesh -- and the input becomes a reject ``{"key", "reason", "detail"}``.

    ``reason`` is a short, stable reason code ("no face", "unreadable", ...): rejects are
    counted by it (the stage's reject summary, ``pipeline.max_reject_fraction``).  Any other
    exception is a bug, not a bad input: it fails the chunk (retried, then exit 1)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = str(reason)
        self.detail = str(detail)

    def __reduce__(self):                         # picklable with both arguments (Dask)
        return (type(self), (self.reason, self.detail))

    def as_reject(self, key: str) -> dict:
        return {"key": key, "reason": self.reason, "detail": self.detail}


Reject = BadInput                                 # the name the stages used first


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

    def for_chunk(self, keys: list[str]) -> "Stage":
        """The stage one task carries to compute the chunk ``keys`` (the runner pickles it into
        every task). A stage that holds per-input data (paths, metadata) returns a copy cut to
        ``keys``, so a task's size does not grow with the number of inputs; ``process_chunk``
        and ``attrs`` of the copy must give what the whole stage gives for these keys."""
        return self


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


def plan_chunk_size(n_items: int, chunk_size: int, workers: int, per_worker: int = 4) -> int:
    """The chunk size the runner uses: ``chunk_size`` is an upper bound, lowered so that
    ``workers`` > 1 get at least ``per_worker`` chunks each when the items allow
    (``floor(n_items / (per_worker * workers))``, at least 1: fixed slices of that size make at
    least ``per_worker * workers`` chunks).  One worker keeps ``chunk_size``: splitting gains
    it nothing."""
    cs = max(1, int(chunk_size))
    if int(workers) <= 1 or n_items <= 0:
        return cs
    return max(1, min(cs, int(n_items) // (per_worker * int(workers))))


def split_chunks(keys: Sequence[str], chunk_size: int) -> list[list[str]]:
    """Fixed slices of the sorted keys: chunk i = keys[i*chunk_size:(i+1)*chunk_size]."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return [list(keys[i:i + chunk_size]) for i in range(0, len(keys), chunk_size)]


def process_items(keys: Iterable[str], fn: Callable[[str], Mapping[str, Any] | None]) -> ChunkResult:
    """Helper for per-item stages: ``fn(key) -> {dataset: value}`` per kept item.

    :class:`BadInput` becomes a reject with its reason; any other exception propagates and
    fails the chunk (a bug must not pass for a bad input).  ``fn`` may return None to drop
    an item silently.  Values are stacked with numpy per dataset.
    """
    import numpy as np

    kept: list[Mapping[str, Any]] = []
    rejects: list[dict] = []
    for key in keys:
        try:
            row = fn(key)
        except BadInput as e:
            rejects.append(e.as_reject(key))
            continue
        if row is not None:
            kept.append(row)
    rows: dict[str, Any] = {}
    if kept:
        for name in kept[0]:
            vals = [r[name] for r in kept]
            rows[name] = vals if isinstance(vals[0], str) else np.stack([np.asarray(v) for v in vals])
    return ChunkResult(rows=rows, rejects=rejects)
