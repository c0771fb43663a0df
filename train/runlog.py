"""What a training run writes besides checkpoints: ``T/metrics.jsonl`` (one JSON record per
``log_every`` steps; lines after a resumed step are dropped) and TensorBoard events in ``T/tb``
(purged after a resumed step). Only rank 0 writes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from pipeline.atomic import atomic_write_text


class RunLog:
    """``RunLog(out, tensorboard, echo)``: :meth:`trim` on resume, :meth:`record` per window,
    :meth:`image` for grids, :meth:`close` at the end."""

    def __init__(self, out: str | Path, tensorboard: bool = True, echo: Callable[[str], None] = print):
        self.out, self.use_tb, self.echo = Path(out), bool(tensorboard), echo
        self._tb = None

    def writer(self, start: int):
        """The TensorBoard writer (created on first use, purging events after ``start``) or None."""
        if self._tb is None and self.use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out / "tb"), purge_step=start if start > 0 else None)
            except ImportError:
                self.echo("note: tensorboard not installed; writing metrics.jsonl only")
                self._tb = False
        return self._tb or None

    def trim(self, start: int) -> None:
        """Drop ``metrics.jsonl`` records after step ``start`` (and a line cut by kill -9)."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= start:
                    keep.append(line)
            except ValueError:
                pass                     # a line cut by kill -9
        atomic_write_text(path, "".join(k + "\n" for k in keep))

    def record(self, step: int, total: int, phase: str, epoch: int, acc: dict, t0: float, steps_done: int) -> dict:
        """One record from the window's sums ``acc`` {key: (sum, n)}: printed, appended to
        ``metrics.jsonl``, sent to TensorBoard. Returns it."""
        rec = {"step": step, "phase": phase, "epoch": epoch}
        rec.update({k: s / n for k, (s, n) in sorted(acc.items())})
        rec["it_per_s"] = steps_done / max(1e-9, time.perf_counter() - t0)
        self.echo(f"step {step}/{total} {phase} epoch {epoch}: "
                  + " ".join(f"{k} {rec[k]:.4g}" for k in ("loss_d", "loss_g", "g_gen", "mask_mean") if k in rec)
                  + f" ({rec['it_per_s']:.2f} it/s)")
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        tb = self.writer(step)
        if tb:
            for k, v in rec.items():
                if isinstance(v, float):
                    tb.add_scalar(f"{'loss' if k[:2] in ('d_', 'g_') or k.startswith('loss') else 'stats'}/{k}", v, step)
            tb.flush()
        return rec

    def image(self, step: int, tag: str, grid) -> None:
        tb = self.writer(step)
        if tb:
            tb.add_image(tag, grid, step)
            tb.flush()

    def close(self) -> None:
        if self._tb:
            self._tb.close()
