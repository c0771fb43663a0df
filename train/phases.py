"""The trainer's data: the held-out split, the phases and their batch streams, the validation pairs.

:class:`TrainerData` is a mixin of :class:`train.trainer.Trainer` (it reads the trainer's
config ``self.t``, seeds, rank/world and ``self.variant``; it sets ``self.phases``,
``self.paired_set``, ``self.val_set``, ``self.batch_size`` and ``self.total_steps``). Which batch
a step sees is a pure function of (seed, phase, epoch, step) and the dataset sizes, so resume
is exact (train/schedule.py holds the step arithmetic).
"""
from __future__ import annotations

import copy

import numpy as np
from torch.utils.data import DataLoader

from pipeline.config import ConfigError
from pipeline.split import holdout_rows
from train.data import (ConcatPaired, PairedDataset, ResumableBatchSampler, RowSubset, UnpairedDataset,
                        open_speech_split, open_stage, params_to_width)
from train.schedule import Phase, cap_phase_steps


class TrainerData:
    """Building the phases and streaming their batches (mixin of the Trainer)."""

    def _holdout(self, fits):
        """(train rows of fits, groups of held-out rows) under the evaluation's identity split
        (``evaluate.test_fraction``, global seed; pipeline.split.holdout_rows), or (None, None)
        when ``train.holdout`` is off or nothing is held out."""
        if not bool(self.t.get("holdout", True)) or "identity" not in fits.datasets:
            return None, None
        frac = float(self.cfg.section("evaluate").get("test_fraction", 0.17)) if "evaluate" in self.cfg else 0.17
        keys = np.asarray(fits.keys(), object) if "key" in fits.datasets else None
        test = holdout_rows(fits.read("identity").astype(np.int64), keys, frac, self.split_seed)
        if not test.any() or test.all():
            return None, None
        self._say(f"holding out {int(test.sum())} of {len(test)} photos for evaluation "
                  f"(evaluate.test_fraction {frac}, split by identity)")
        groups = fits.read("group").astype(np.int64)[test] if "group" in fits.datasets else None
        return np.nonzero(~test)[0], groups

    def _val_pairs(self, paired: PairedDataset, held: np.ndarray) -> RowSubset:
        """The fixed validation pairs: up to ``train.val_pairs`` held-out warps (the warps of the
        photos evaluation holds out), or training warps when nothing is held out (then the curve
        measures fitting, not generalisation). Read from a copy of the paired dataset fixed at
        epoch 0, so validating never changes the sources of the training epoch in progress."""
        rows = np.nonzero(held)[0] if held.any() else np.arange(len(held))
        k = min(len(rows), int(self.t["val_pairs"]))
        fixed = copy.copy(paired)
        fixed.seed = self.split_seed      # the sources too: every training seed validates on the same pairs
        fixed.set_epoch(0)
        self._say(f"validation: {k} {'held-out' if held.any() else 'training'} warp pairs "
                  f"every {self.t['eval_every']} steps")
        return RowSubset(fixed, np.sort(rows[np.random.default_rng([self.split_seed, 17]).permutation(len(rows))[:k]]))

    def build_data(self) -> None:
        t, S = self.t, int(self.t["image_size"])
        self.val_set, self._val_batches = None, None
        if int(t["val_pairs"]) < 0 or int(t["eval_every"]) < 0:
            raise ConfigError("train.val_pairs and train.eval_every must be >= 0")
        fits = open_stage(self.data, "fits", required=True)
        fit_p = params_to_width(fits.read("p_exp"), self.E, str(fits.dir), bool(t["speech"]))
        self.fits = fits
        train_rows, held_groups = self._holdout(fits)
        phases: list[Phase] = []
        bs = int(t["batch_size"])
        mix = int(t["paired_mix"])
        self.paired_set = None             # the training warps (phase 1, and the batches mixed into later phases)
        if self.variant.paired and (t["epochs_paired"] > 0 or mix > 0):
            name = str(t.get("warps") or "warps")   # train.warps: the paired stage of RUN (default RUN/warps)
            warps = open_stage(self.data, name, required=False)
            if warps is None:
                self._say(f"note: {self.data / name} has no shard stage; skipping the paired phase")
            else:
                warp_p = params_to_width(warps.read("p_exp"), self.E, str(warps.dir), bool(t["speech"]))
                ds = full = PairedDataset(fits, fit_p, warps, warp_p, S, seed=self.seed)
                if ds.n_lonely:
                    self._say(f"note: {ds.n_lonely} warps have no other image of their face; "
                              "they are paired with themselves")
                held = np.zeros(len(warps), bool)
                if held_groups is not None:   # warps of held-out photos share their group
                    held = np.isin(warps.read("group").astype(np.int64), held_groups)
                    ds = RowSubset(full, np.nonzero(~held)[0])
                extra = [d for d in (self._fab_pairs(S), self._speech_pairs(S), self._speech_warps(fits, fit_p, S,
                                                                                             held_groups))
                         if d is not None]
                if extra:
                    ds = ConcatPaired([ds] + extra)
                self.paired_set = ds
                if t["epochs_paired"] > 0:
                    phases.append(Phase("paired", int(t["epochs_paired"]), ds, 0))
                if int(t["eval_every"]) > 0:
                    self.val_set = self._val_pairs(full, held)
        speech_stage = t.get("speech_data") if t["speech"] else None
        if speech_stage:
            self._speech_phase(phases, str(speech_stage), S)
        elif t["epochs_unpaired"] > 0:
            real = UnpairedDataset(fits, fit_p, S)
            phases.append(Phase("unpaired", int(t["epochs_unpaired"]),
                                real if train_rows is None else RowSubset(real, train_rows), 0))
        if not phases:
            raise ConfigError("nothing to train: train.epochs_paired and train.epochs_unpaired are 0")
        if mix > 0 and self.paired_set is not None:
            for p in phases:
                if p.name != "paired":
                    p.mix = mix
        smallest = min(len(p.dataset) for p in phases)
        if smallest < bs * self.world:
            self._say(f"note: batch size {bs} lowered to {max(1, smallest // self.world)} "
                      f"(only {smallest} samples)")
            bs = max(1, smallest // self.world)
        self.batch_size = bs
        for p in phases:
            p.batches_per_epoch = ResumableBatchSampler.count(len(p.dataset), bs, self.world)
        if self.paired_set is not None and len(self.paired_set) < bs * self.world:
            raise ConfigError(f"train.paired_mix: {len(self.paired_set)} training warps, fewer than one batch")
        self.phases = phases
        total = sum(p.steps for p in phases)
        if total <= 0:
            raise ConfigError("nothing to train: 0 steps (fewer samples than one batch?)")
        for p, n in zip(phases, cap_phase_steps([p.steps for p in phases], self.max_steps)):
            p.run_steps = n
        self.total_steps = sum(p.run_steps for p in phases)

    def _fab_pairs(self, S: int):
        """``train.paired_4dfab`` = N > 0: the training-split renders of ``RUN/4dfab-params``
        (``split == 0``: identities evaluation never sees) as extra paired targets, each with a
        source drawn among the other frames of its identity + session (exact parameters both),
        N times per paired epoch. None when off or when the run has no such stage (a note says
        so); a one-line error for a stage without group/split columns."""
        n = int(self.t["paired_4dfab"])
        if n < 0:
            raise ConfigError(f"train.paired_4dfab must be >= 0, got {n}")
        if n == 0:
            return None
        fab = open_stage(self.data, "4dfab-params", required=False)
        if fab is None:                   # like absent warps: the run trains without them, and says so
            self._say(f"note: {self.data / '4dfab-params'} has no shard stage; train.paired_4dfab={n} adds "
                      "nothing (run project-4dfab first to train on its renders)")
            return None
        if "group" not in fab.datasets or "split" not in fab.datasets:
            raise ConfigError(f"train.paired_4dfab={n}: {fab.dir} has no group/split columns "
                              "(not a project-4dfab stage?)")
        p = params_to_width(fab.read("p_exp"), self.E, str(fab.dir), bool(self.t["speech"]))
        rows = np.nonzero(fab.read("split").astype(np.int64) == 0)[0]
        if len(rows) == 0:
            raise ConfigError(f"train.paired_4dfab={n}: {fab.dir} has no training-split rows")
        return self._tiled_pairs(fab, p, rows, n, S, f"training-split 4DFAB renders x {n} (train.paired_4dfab)")

    def _speech_pairs(self, S: int):
        """``train.paired_speech`` = N > 0 with ``train.speech``: the ``split == "train"`` frames of
        the fit-lrw stage ``RUN/<train.speech_data>`` as extra paired targets, each with a source
        drawn among the other frames of its video (``group``) and the target's own 40-vector, N
        times per paired epoch (so the warp batches mixed into the speech phase teach L_gen on
        same-video frames, the pairs of Table 3). None when off or without ``train.speech``."""
        n = int(self.t.get("paired_speech") or 0)
        if n < 0:
            raise ConfigError(f"train.paired_speech must be >= 0, got {n}")
        stage = self.t.get("speech_data")
        if n == 0 or not self.t["speech"] or not stage:
            return None
        lrw, rows, p = open_speech_split(self.data, str(stage), "train", self.E)
        if "group" not in lrw.datasets:
            raise ConfigError(f"train.paired_speech={n}: {lrw.dir} has no group column (not a fit-lrw stage?)")
        return self._tiled_pairs(lrw, p, rows, n, S, f"training LRW frames x {n} (train.paired_speech)")

    def _speech_warps(self, fits, fit_p, S: int, held_groups):
        """``train.speech_warps`` = a stage name with ``train.speech``: the 40-wide speech warps
        ``RUN/<name>`` (``render-warps`` with ``warps.speech`` 10: photo fits warped to random
        expression + speech) as extra paired targets; a target's source is its photo (zero
        speech) or another warp of that photo (``PairedDataset``), the warps of held-out
        photos left out. None when off, without ``train.speech`` or when the stage
        is absent (a note says so); a one-line error for a stage that is not 40 wide."""
        name = self.t.get("speech_warps")
        if not name or not self.t["speech"]:
            return None
        warps = open_stage(self.data, str(name), required=False)
        if warps is None:
            self._say(f"note: {self.data / str(name)} has no shard stage; train.speech_warps adds nothing "
                      f"(render-warps --set warps.speech=10 --out {self.data / str(name)} makes it)")
            return None
        width = int(warps.datasets["p_exp"][1][1]) if "p_exp" in warps.datasets else 0
        if width != self.E:
            raise ConfigError(f"train.speech_warps: {warps.dir} has p_exp [{width}] wide; train.speech needs "
                              f"{self.E} (render-warps --set warps.speech={self.E - width if width else 10})")
        ds = PairedDataset(fits, fit_p, warps, np.asarray(warps.read("p_exp"), np.float32), S, seed=self.seed)
        rows = np.arange(len(warps))
        if held_groups is not None:
            rows = rows[~np.isin(warps.read("group").astype(np.int64), held_groups)]
        self._say(f"paired: + {len(rows)} speech warps of {warps.dir} (train.speech_warps)")
        return RowSubset(ds, rows)

    def _tiled_pairs(self, stage, p, rows, n: int, S: int, what: str):
        """Rows ``rows`` of ``stage`` as paired targets (exact parameters ``p``; each source drawn
        among the other rows of its group), ``n`` times per paired epoch."""
        self._say(f"paired: + {len(rows)} {what}")
        return RowSubset(PairedDataset(None, None, stage, p, S, seed=self.seed), np.tile(rows, n))

    def _speech_phase(self, phases: list, stage: str, S: int) -> None:
        """Phase 2 of ``train.speech``: the ``split == "train"`` frames of the fit-lrw stage
        ``RUN/<train.speech_data>`` with their 40-vectors, unpaired (random targets: shuffled
        other frames' 40-vectors + noise, :meth:`sample_targets`), for ``train.epochs_speech``
        epochs (null: ``epochs_unpaired``). Phase 1 (warps) pads its 30 parameters with zero speech."""
        t = self.t
        epochs = int(t["epochs_unpaired"] if t.get("epochs_speech") is None else t["epochs_speech"])
        if epochs < 0:
            raise ConfigError(f"train.epochs_speech must be >= 0, got {epochs}")
        if epochs == 0:
            return
        lrw, rows, p = open_speech_split(self.data, stage, "train", self.E)
        n_vid = len(np.unique(lrw.read("group").astype(np.int64)[rows])) if "group" in lrw.datasets else 0
        self._say(f"speech phase: {len(rows)} training frames of {n_vid} videos in {lrw.dir} "
                  f"({int(p.shape[1])} parameters: {self.E - 10} expression + 10 speech)")
        phases.append(Phase("speech", epochs, RowSubset(UnpairedDataset(lrw, p, S), rows), 0))

    def _stream(self, ph: int, dataset, epoch: int, start: int):
        """Batches of ``dataset`` in the seeded order of phase index ``ph``, from batch ``start``
        of epoch ``epoch`` on, epoch after epoch (the caller stops)."""
        workers = int(self.t["workers"])
        bpe = ResumableBatchSampler.count(len(dataset), self.batch_size, self.world)
        epoch, b = epoch + start // bpe, start % bpe
        while True:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler = ResumableBatchSampler(len(dataset), self.batch_size, self.seed * 10 + ph, epoch, b,
                                            self.rank, self.world)
            yield from DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                  pin_memory=self.device.type == "cuda", persistent_workers=False,
                                  prefetch_factor=4 if workers > 0 else None)
            epoch, b = epoch + 1, 0

    def _phase_batches(self, ph: int, s: int):
        """(batch, paired) for the steps of phase ``ph`` from its step ``s`` on: the phase's own
        batches, with one paired warp batch after every ``mix`` of them when ``train.paired_mix``
        is set (the paired stream continues phase 1's epochs; a pure function of the step)."""
        phase = self.phases[ph]
        own0, mixed0, _ = phase.split(s)
        own = self._stream(ph, phase.dataset, 0, own0)
        if not phase.mix:
            for batch in own:
                yield batch, phase.name == "paired"
            return
        paired = self._stream(0, self.paired_set, int(self.t["epochs_paired"]), mixed0)
        while True:
            yield (next(paired), True) if phase.split(s)[2] else (next(own), False)
            s += 1
