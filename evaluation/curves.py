"""Training curves of the evaluated checkpoints (``curves.png`` in the report).

A checkpoint ``T/checkpoints/X.pt`` was written by ``slidergan train --out T``, which logs
``T/metrics.jsonl``: one JSON object per line with ``step``, ``phase`` and scalars. Used here:
``d_exp``, ``mask_mean`` (every log record) and, on validation records, ``val_l1`` (held-out
paired L1 of G(src, p_trg) vs the target warp), ``val_l1_copy`` (the unedited source vs the
target), ``val_l1_wrong`` (G given another pair's target), ``val_d_exp`` (D's regression MSE
on the held-out warps), ``val_mask``. A record without a key simply lacks it.

Figure (matplotlib, Agg backend): three panels over the training step, one colour per
checkpoint: held-out paired L1 (solid) with its copy line (dashed) and the wrong-target L1
(dotted); D's regression loss, train (solid) and held-out (dashed); attention-mask mean,
train (solid) and held-out (dashed).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

#: final validation numbers copied into each model's metrics: metrics key -> jsonl key
FINAL_KEYS = {"train_val_l1": "val_l1", "train_val_l1_copy": "val_l1_copy", "train_val_l1_wrong": "val_l1_wrong"}


def training_folder(checkpoint: str | os.PathLike) -> Path:
    """T for a checkpoint ``T/checkpoints/X.pt``."""
    return Path(checkpoint).resolve().parent.parent


def read_metrics_jsonl(path: str | os.PathLike) -> tuple[list[dict], int]:
    """Records of a metrics.jsonl (sorted by step, stable) and the number of lines skipped
    (not a JSON object with a numeric ``step``: e.g. a line the trainer is still writing)."""
    recs, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(r, dict) or not _num(r.get("step")):
                bad += 1
                continue
            recs.append(r)
    recs.sort(key=lambda r: float(r["step"]))
    return recs, bad


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that have a finite number under ``key``."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if _num(v):
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def final_values(records: list[dict], max_step: int | None = None) -> dict:
    """The last value of each validation key at or before ``max_step`` (the checkpoint's step;
    None = any): {train_val_l1, train_val_l1_copy, train_val_l1_wrong, train_val_step}; keys
    never logged are None."""
    out: dict = {k: None for k in FINAL_KEYS}
    out["train_val_step"] = None
    for r in records:
        if max_step is not None and max_step >= 0 and float(r["step"]) > max_step:
            continue
        if _num(r.get("val_l1")):
            out["train_val_step"] = int(r["step"])
        for k, src in FINAL_KEYS.items():
            if _num(r.get(src)):
                out[k] = float(r[src])
    return out


PANELS = [
    ("held-out paired L1 (dashed: copy, dotted: wrong target)",
     [("val_l1", "-"), ("val_l1_copy", "--"), ("val_l1_wrong", ":")]),
    ("D's regression loss d_exp (solid: train, dashed: held-out)", [("d_exp", "-"), ("val_d_exp", "--")]),
    ("attention mask mean (solid: train, dashed: held-out)", [("mask_mean", "-"), ("val_mask", "--")]),
]


def plot_curves(runs: dict, path: str | os.PathLike) -> bool:
    """Write the curves figure for ``runs`` {name: records} to ``path`` (PNG, atomic).
    Returns False (nothing written) when no record holds any plotted key."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from pipeline.atomic import atomic_write_with

    if not any(series(recs, k)[0] for recs in runs.values() for _, keys in PANELS for k, _ in keys):
        return False
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 3.8), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes, PANELS):
        drawn = False
        for i, (name, recs) in enumerate(runs.items()):
            for key, style in keys:
                xs, ys = series(recs, key)
                if not xs:
                    continue
                ax.plot(xs, ys, style, color=colours[i % len(colours)], marker="." if len(xs) < 3 else None,
                        label=f"{name} {key}")
                drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"not logged ({', '.join(k for k, _ in keys)})", ha="center", va="center", transform=ax.transAxes, color="#888")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return True
