"""The training schedule as pure functions of the step: phases (with warp batches mixed into a
later phase, ``train.paired_mix``), the step cap, the learning-rate decay and G's ramp of the
adversarial and expression weights. The trainer holds no schedule state beyond these, which is
what makes a resumed run see exactly the batches and weights of an uninterrupted one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Phase:
    name: str            # "paired" | "unpaired" | "speech" (LRW frames, unpaired: train.speech)
    epochs: int
    dataset: Any
    batches_per_epoch: int
    run_steps: int = 0   # steps this run takes in the phase (its full length unless capped)
    mix: int = 0         # train.paired_mix: after every `mix` batches of this phase one paired warp batch (0 = none)

    @property
    def steps(self) -> int:
        own = self.epochs * self.batches_per_epoch
        return own + (own // self.mix if self.mix else 0)

    def split(self, s: int) -> tuple[int, int, bool]:
        """Step ``s`` of the phase -> (own batches before it, mixed paired batches before it, is paired).

        With ``mix`` m the steps run m own batches, then one paired batch, and so on."""
        if not self.mix:
            return s, 0, False
        j = s // (self.mix + 1)
        return s - j, j, s % (self.mix + 1) == self.mix


def cap_phase_steps(steps: list[int], cap: int) -> list[int]:
    """Steps run in each phase under a total cap (0 = no cap).

    A cap shortens every phase in proportion to its length, each keeping >= 1 step while the
    cap allows, so a smoke run still goes through the paired and the unpaired phase; the
    last phase takes what is left (never more than its length)."""
    total = sum(steps)
    if cap <= 0 or cap >= total:
        return list(steps)
    out, left = [], cap
    for i, n in enumerate(steps):
        rest = len(steps) - 1 - i
        share = left if rest == 0 else max(1, min(left - rest, int(cap * n / total)))
        take = max(0, min(n, share))
        out.append(take)
        left -= take
    return out


def position(phases: list[Phase], step: int) -> tuple[int, int, int]:
    """(phase index, epoch, batch in epoch) of global step ``step`` (``run_steps`` per phase; a
    mixed phase counts its own batches; steps past the end stay in the last phase)."""
    for i, p in enumerate(phases):
        if step < p.run_steps or i == len(phases) - 1:
            own = p.split(step)[0]
            return i, own // max(1, p.batches_per_epoch), own % max(1, p.batches_per_epoch)
        step -= p.run_steps
    raise AssertionError("no phases")


def lr_factor(step: int, total: int, decay_fraction: float) -> float:
    """1 until the last ``decay_fraction`` of ``total`` steps, then linear down to 0 at the end."""
    start = total * (1.0 - decay_fraction)
    if decay_fraction <= 0 or step < start:
        return 1.0
    return max(0.0, (total - step) / max(1e-9, total - start))


def ramp(step: int, start: int, steps: int) -> float:
    """0 before ``start``, then linear up to 1 over ``steps`` (0 steps: a jump to 1 at ``start``)."""
    if steps <= 0:
        return 1.0 if step >= start else 0.0
    return float(min(1.0, max(0.0, (step - start) / steps)))


def ema_beta(halflife: int, updates: int) -> float:
    """Decay of G's weight average after ``updates`` generator updates: ``0.5 ** (1 / halflife)``
    (the average's weight on an update halves every ``halflife`` updates), capped by
    ``(1 + updates) / (10 + updates)`` so the first updates are not dominated by the initial
    weights (the bias-free warm-up of TensorFlow's ExponentialMovingAverage with num_updates)."""
    if halflife <= 0:
        return 0.0
    return float(min(0.5 ** (1.0 / halflife), (1.0 + updates) / (10.0 + updates)))
