"""Deterministic hash splits of labelled rows (train / held-out), shared by the trainer and
the evaluation so that evaluated test rows are never trained on."""
from __future__ import annotations

import hashlib

import numpy as np


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0 ** 64


def held_out_identity(identity, fraction: float, seed: int = 0, keys=None) -> np.ndarray:
    """Identity-level split: True for rows in the held-out part.

    identity int [N] (-1 unknown), keys str [N] or None -> bool [N]. An identity is held out
    when sha256(f"{seed}:{id}") falls in the lowest ``fraction`` of the hash range, so all
    rows of one identity fall on one side, independently of which other identities exist.
    Rows of unknown identity (real EmotioNet) are split row by row on
    sha256(f"{seed}:key:{key}") when ``keys`` are given, else never held out.
    """
    ids = np.asarray(identity, np.int64)
    out = np.zeros(len(ids), bool)
    for u in np.unique(ids):
        if u >= 0:
            out[ids == u] = _unit_hash(f"{seed}:{int(u)}") < fraction
    if keys is not None:
        for i in np.nonzero(ids < 0)[0]:
            out[i] = _unit_hash(f"{seed}:key:{keys[i]}") < fraction
    return out


def holdout_rows(identity, keys, fraction: float, seed: int = 0) -> np.ndarray:
    """:func:`held_out_identity`, holding out at least one known identity when the hash
    split holds out none (tiny worlds). bool [N]."""
    ident = np.asarray(identity, np.int64)
    test = held_out_identity(ident, fraction, seed, keys=keys)
    if not test.any():
        known = np.unique(ident[ident >= 0])
        if len(known) > 1:
            test = ident == known[-1]
    return test
