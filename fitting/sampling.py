"""Random target expressions for the 3D-warped training set (paper Sec. 4.1: "20 random
expressions of the blendshape model" per fitted photo).

Parameters are **normalised** (``p / sqrt(ev)``), so one unit is one standard deviation of
the blendshape model and ``[-1, 1]`` spans plausible faces.

Distributions (``warps.distribution``; ``scale`` = ``warps.scale``):

* ``uniform`` (default): every parameter independently ``U(-scale, scale)``.  The paper
  samples the model's parameter space with values in ``[-1, 1]``; uniform sampling covers
  the whole slider range evenly, which is what the generator is later asked to reach.
* ``normal``: every parameter ``N(0, (scale / 2)^2)`` clipped to ``[-scale, scale]`` (about
  95 % of the draws are not clipped); more near-neutral faces, fewer extremes.

Determinism: the draw for photo ``key`` and index ``k`` depends only on ``(seed, key, k)``
(a SHA-256 of the three seeds a numpy ``Generator``), never on chunking, worker count or
the order items are processed in, so a re-run reproduces the same parameters bit for bit.
"""
from __future__ import annotations

import hashlib

import numpy as np

DISTRIBUTIONS = ("uniform", "normal")


def item_rng(seed: int, key: str, k: int = 0, purpose: str = "exp") -> np.random.Generator:
    """A numpy Generator seeded by ``sha256(purpose, seed, key, k)`` (stable across runs and
    platforms)."""
    h = hashlib.sha256(f"{purpose}\x00{int(seed)}\x00{key}\x00{int(k)}".encode()).digest()
    return np.random.default_rng(np.frombuffer(h[:16], dtype=np.uint32).astype(np.uint64))


def sample_expression(seed: int, key: str, k: int, n_exp: int, distribution: str = "uniform",
                      scale: float = 1.0) -> np.ndarray:
    """One normalised expression vector ``[n_exp] float32`` for photo ``key``, draw ``k``."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown expression distribution {distribution!r} (expected one of {DISTRIBUTIONS})")
    if not scale > 0:
        raise ValueError(f"expression scale must be > 0, got {scale}")
    rng = item_rng(seed, key, k)
    if distribution == "uniform":
        p = rng.uniform(-scale, scale, size=n_exp)
    else:
        p = np.clip(rng.normal(0.0, scale / 2.0, size=n_exp), -scale, scale)
    return p.astype(np.float32)


def sample_expressions(seed: int, key: str, n: int, n_exp: int, distribution: str = "uniform",
                       scale: float = 1.0) -> np.ndarray:
    """``n`` draws for one photo: ``[n, n_exp] float32``, row ``k`` = ``sample_expression(..., k)``."""
    if n <= 0:
        return np.zeros((0, n_exp), np.float32)
    return np.stack([sample_expression(seed, key, k, n_exp, distribution, scale) for k in range(n)])


def select_keys(keys, n: int, seed: int) -> list[str]:
    """Choose ``n`` of ``keys`` deterministically and without bias: order by
    ``sha256(seed, key)`` and keep the first ``n``; returned sorted.  Adding photos to the
    input never changes which of the old ones are chosen unless the new ones hash earlier."""
    keys = sorted(set(keys))
    if n >= len(keys):
        return keys
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"select\x00{int(seed)}\x00{k}".encode()).digest())
    return sorted(ranked[:n])
