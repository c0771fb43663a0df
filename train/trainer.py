"""The SliderGAN training loop: phases, variants, losses, checkpoints, logging.

One *step* is one batch: a critic (D) update, plus a generator (G) update on every
``n_critic``-th step (StarGAN's iteration; GANimation trains G every 5 D steps the same way).
``--steps N`` / ``train.max_steps`` cap the number of steps.

Phases: ``paired`` (epochs over the 3D warps, pairs within a face group, L_gen on) then
``unpaired`` (epochs over the real photos, targets sampled); with ``train.speech`` the second
phase is ``speech`` (the LRW training frames of ``RUN/lrw-fits``, 40 parameters, targets sampled)
and the warps' 30 parameters get zero speech.  The position in the data
(phase, epoch, batch) is a pure function of the step, the seed and the dataset sizes, so a
resumed run continues with exactly the batches an uninterrupted run would have seen.

Tensor shapes: x [B,3,S,S] in [-1,1]; p, p_trg [B,E]; masks [B,1,S,S]; critic patches
[B,1,S/2^r,S/2^r].
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from model import losses as L
from model.identity import build_identity
from model.networks import build_networks, model_config_from_train
from pipeline.config import Config, ConfigError
from train import checkpoint as ck
from pipeline.split import holdout_rows
from train.data import (PairedDataset, ResumableBatchSampler, RowSubset, UnpairedDataset, open_speech_split,
                        open_stage, params_to_width, uint8_to_float)
from train.runlog import RunLog
from train.schedule import Phase, cap_phase_steps, ema_beta, lr_factor, position, ramp
from train.variants import Variant, get_variant

log = logging.getLogger("slidergan.train")


def _dist_info() -> tuple[int, int]:
    """(rank, world) under torchrun (env WORLD_SIZE set), else (0, 1)."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _grad_norm(params) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Columns (input | mask | colour | output | target) side by side, one row per sample.

    rows: tensors [N,C,S,S] in [-1,1] (masks [N,1,S,S] in [0,1], shown grey) -> [3, N*S, 5*S] in [0,1].
    """
    cols = []
    for t in rows:
        t = t.detach().float().cpu()
        t = t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else (t + 1) / 2
        cols.append(t.clamp(0, 1))
    grid = torch.cat(cols, dim=3)                   # [N,3,S,5S]
    return torch.cat(list(grid), dim=1)             # [3,N*S,5S]


class Trainer:
    """Build everything from a run folder and a config, then :meth:`run`.

    ``Trainer(data, out, cfg, variant=None, steps=None)``; ``cfg`` is the whole preset
    (:class:`pipeline.config.Config`); ``variant`` overrides ``train.variant``; ``steps``
    overrides ``train.max_steps``.
    """

    def __init__(self, data: str | Path, out: str | Path, cfg: Config, variant: str | None = None,
                 steps: int | None = None, echo: Callable[[str], None] = print):
        self.data, self.out, self.echo = Path(data), Path(out), echo
        self.cfg = cfg
        t = cfg.section("train")
        self.t = t
        self.split_seed = int(cfg.get("seed", 0))     # the evaluation's held-out split and the val pairs
        self.seed = self.split_seed if t.get("seed") is None else int(t["seed"])   # init, data order, targets
        self.variant: Variant = get_variant(variant or t["variant"])
        self.max_steps = int(steps if steps is not None else t["max_steps"])
        if self.max_steps < 0:
            raise ConfigError(f"--steps must be >= 0, got {self.max_steps}")
        for key, low in (("n_critic", 1), ("batch_size", 1), ("image_size", 4), ("epochs_paired", 0),
                         ("epochs_unpaired", 0), ("checkpoint_every", 1), ("log_every", 1), ("image_every", 1),
                         ("workers", 0), ("keep_checkpoints", 0)):
            if t[key] < low:
                raise ConfigError(f"train.{key} must be >= {low}, got {t[key]}")
        if not 0.0 <= float(t["paired_identity_fraction"]) < 1.0:
            raise ConfigError(f"train.paired_identity_fraction must be in [0, 1), got {t['paired_identity_fraction']}")
        if not 0.0 <= t["lr_decay_fraction"] <= 1.0:
            raise ConfigError(f"train.lr_decay_fraction must be in [0, 1], got {t['lr_decay_fraction']}")
        if t["target"] not in ("shuffle", "uniform", "normal"):
            raise ConfigError(f"train.target must be shuffle|uniform|normal, got {t['target']!r}")
        self.rank, self.world = _dist_info()
        dev = t.get("device", "auto")
        try:
            self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available()
                                       else ("cpu" if dev == "auto" else dev))
        except (RuntimeError, TypeError):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {dev!r}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device={dev} but no CUDA device is available (use auto or cpu)")
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        if self.device.type == "cpu" and int(t.get("threads", 0)) > 0:
            torch.set_num_threads(int(t["threads"]))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True     # fixed input sizes: let cuDNN pick kernels
        self.amp = bool(t["amp"]) and self.device.type == "cuda"
        self.E = 40 if t["speech"] else 30
        self.lam = {k: float(t[f"lambda_{k}"]) for k in ("adv", "adv_d", "exp", "rec", "gen", "id", "att", "gp")}
        for key in ("d_warmup_steps", "g_ramp_start", "g_ramp_steps", "paired_mix", "g_ema_halflife"):
            if int(t[key]) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {t[key]}")
        if not self.variant.use_gen:
            self.lam["gen"] = 0.0
        if not self.variant.use_id:
            self.lam["id"] = 0.0
        self.runlog = RunLog(self.out, bool(t.get("tensorboard", True)) and self.rank == 0, echo=self._say)

    # -- setup ----------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.rank == 0:
            self.echo(msg)

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
            warps = open_stage(self.data, "warps", required=False)
            if warps is None:
                self._say(f"note: {self.data / 'warps'} has no shard stage; skipping the paired phase")
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

    def build_model(self) -> None:
        t = self.t
        self.model_config = model_config_from_train(t, self.E)
        try:
            G, D = build_networks(self.model_config, float(t.get("mask_bias_init", 0.0)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.G, self.D = G.to(self.device), D.to(self.device)
        # the exponential moving average of G's weights (train.g_ema_halflife; None = off): what
        # validation, checkpoints' inference weights ("G_ema") and evaluation use
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if int(t["g_ema_halflife"]) > 0 else None
        self.g_updates = 0
        betas = (float(t["beta1"]), float(t["beta2"]))
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=float(t["lr_g"]), betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=float(t["lr_d"]), betas=betas)
        self.scaler_state: dict = {}     # bf16 autocast needs no loss scaling; kept for the format
        self.Fnet = None
        self.identity_info = None
        if self.lam["id"] > 0:
            self.Fnet = self._load_identity().to(self.device)

    def _load_identity(self):
        path = self.t.get("identity_weights")
        if path is None:
            path = self.out / "identity.pt"
            if not path.is_file():
                if self.rank == 0:
                    from train.identity import train_identity
                    self._say(f"no train.identity_weights given: training a small identity embedder -> {path}")
                    train_identity(self.data, path, self.cfg, echo=self._say)
                if self.world > 1:
                    import torch.distributed as dist
                    dist.barrier()
        from model.identity import IdentityWeightsError
        try:
            F = build_identity(ck.load_identity_file(path))
        except IdentityWeightsError as e:
            raise ConfigError(f"{path}: {e}") from None
        self.identity_info = {"path": str(path), "config": dict(F.config)}
        return F

    # -- schedule -------------------------------------------------------------------------
    def position(self, step: int) -> tuple[int, int, int]:
        """(phase index, epoch, batch in epoch) of global step ``step`` (:func:`train.schedule.position`)."""
        return position(self.phases, step)

    def lr_factor(self, step: int) -> float:
        """1 until the last ``lr_decay_fraction`` of training, then linear down to 0 at the end."""
        return lr_factor(step, self.total_steps, float(self.t["lr_decay_fraction"]))

    def g_ramp(self, step: int) -> float:
        """Factor on G's adversarial and expression weights: 0 before ``d_warmup_steps`` (G does
        not train) + ``g_ramp_start`` (G learns from L_gen, L_rec, L_id, L_att only; variants
        without L_gen on warps have nothing to learn from first and skip the delay), then linear
        up to 1 over ``g_ramp_steps`` (paper preset: no warm-up, no delay, no ramp)."""
        delay = int(self.t["g_ramp_start"]) if self.variant.use_gen and self.variant.paired else 0
        if int(self.t["g_ramp_steps"]) <= 0 and delay == 0:
            return 1.0
        return ramp(step, int(self.t["d_warmup_steps"]) + delay, int(self.t["g_ramp_steps"]))

    @torch.no_grad()
    def validate(self) -> dict:
        """Fixed validation pairs (:meth:`_val_pairs`, read once) -> ``val_l1`` (G(src, p_trg) vs the target
        warp, mean |.| in [-1,1] units like ``g_gen``), ``val_l1_copy`` (the unedited source),
        ``val_l1_wrong`` (G given another pair's target), ``val_d_exp`` (D's regression MSE on the
        target warps), ``val_d_r2_k`` (its R^2 on components 0-2), ``val_mask``. Empty without pairs."""
        if self.val_set is None or len(self.val_set) < 2:
            return {}
        if self._val_batches is None:
            items = [self.val_set[j] for j in range(len(self.val_set))]
            src, trg = (torch.stack([c[k] for c in items]) for k in ("image", "target"))
            p_all = torch.stack([c["p_trg"] for c in items])
            wrong_all = torch.roll(p_all, len(items) // 2, 0)     # the target of the pair half the set away
            bs = max(2, self.batch_size)
            self._val_batches = [(src[i:i + bs], trg[i:i + bs], p_all[i:i + bs], wrong_all[i:i + bs])
                                 for i in range(0, len(items), bs)]
        sums = {"val_l1": 0.0, "val_l1_copy": 0.0, "val_l1_wrong": 0.0, "val_mask": 0.0}
        preds, trues = [], []
        for src, trg, p_trg, wrong in self._val_batches:
            x, y = self.images(src), self.images(trg)
            p_trg, wrong = p_trg.to(self.device), wrong.to(self.device)
            with self._autocast():
                out, _, mask = self.G_eval(x, p_trg)
                out_w = self.G_eval(x, wrong)[0]
                r = self.D(y)[1]
            n = len(x)
            sums["val_l1"] += float((out.float() - y).abs().mean()) * n
            sums["val_l1_copy"] += float((x - y).abs().mean()) * n
            sums["val_l1_wrong"] += float((out_w.float() - y).abs().mean()) * n
            sums["val_mask"] += float(mask.float().mean()) * n
            preds.append(r.float().cpu())
            trues.append(p_trg.float().cpu())
        out = {k: v / len(self.val_set) for k, v in sums.items()}
        P, T = torch.cat(preds), torch.cat(trues)
        out["val_d_exp"] = float(((P - T) ** 2).mean())
        sst = ((T - T.mean(0, keepdim=True)) ** 2).sum(0).clamp_min(1e-12)
        r2 = 1.0 - ((P - T) ** 2).sum(0) / sst
        for k in range(min(3, r2.numel())):
            out[f"val_d_r2_{k}"] = float(r2[k])
        return out

    # -- one step -------------------------------------------------------------------------
    def images(self, u8: torch.Tensor) -> torch.Tensor:
        """Loader images uint8 [B,3,h,w] -> float [B,3,S,S] in [-1,1] on the device.

        The conversion (and any resize) happens here rather than in the loader workers so
        that 4x fewer bytes cross the worker -> trainer -> device boundary."""
        return uint8_to_float(u8.to(self.device, non_blocking=True), int(self.t["image_size"]))

    def sample_targets(self, p: torch.Tensor) -> torch.Tensor:
        """Unpaired target parameters [B,E] for source parameters p [B,E]."""
        B, E = p.shape
        mode, noise = self.t["target"], float(self.t["target_noise"])
        if mode == "shuffle":
            perm = torch.randperm(B, generator=self.gen)
            u = torch.rand(B, E, generator=self.gen) * 2 - 1
            return p[perm.to(p.device)] + noise * u.to(p.device)
        if mode == "uniform":
            return (torch.rand(B, E, generator=self.gen) * 2 - 1).to(p.device)
        return (torch.randn(B, E, generator=self.gen) * 0.5).clamp(-1, 1).to(p.device)

    def identity_pairs(self, step: int, n: int) -> torch.Tensor | None:
        """Bool [n] on the device: the items of step ``step``'s paired batch whose target becomes
        their own source (``train.paired_identity_fraction``; CycleGAN's identity mapping read
        through L_gen: G(I, p_I) = I). A pure function of (seed, step), so resume stays exact and
        the target sampler's stream is untouched. None when the fraction is 0."""
        frac = float(self.t["paired_identity_fraction"])
        if frac <= 0:
            return None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return (torch.rand(n, generator=g) < frac).to(self.device)

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _allreduce(self, params) -> None:
        """Average gradients over ranks by hand: DDP's wrapper cannot run the gradient
        penalty's double backward (torch.autograd.grad with create_graph)."""
        if self.world <= 1:
            return
        import torch.distributed as dist
        for q in params:
            if q.grad is not None:
                dist.all_reduce(q.grad)
                q.grad /= self.world

    def train_step(self, batch: dict, paired: bool, step: int) -> dict:
        """One critic update (+ one generator update when ``(step+1) % n_critic == 0``).

        Returns this step's scalar metrics."""
        dev, lam, kind = self.device, self.lam, self.variant.adv
        x = self.images(batch["image"])
        p = batch["p"].to(dev, non_blocking=True)
        if paired:
            p_trg = batch["p_trg"].to(dev, non_blocking=True)
            x_trg = self.images(batch["target"])
            keep = self.identity_pairs(step, len(x))
            if keep is not None:              # these items: "edit" the source to its own parameters
                x_trg = torch.where(keep.view(-1, 1, 1, 1), x, x_trg)
                p_trg = torch.where(keep.view(-1, 1), p, p_trg)
        else:
            p_trg, x_trg = self.sample_targets(p), None
        f = self.lr_factor(step)
        for g in self.opt_G.param_groups:
            g["lr"] = float(self.t["lr_g"]) * f
        for g in self.opt_D.param_groups:
            g["lr"] = float(self.t["lr_d"]) * f
        m: dict[str, float] = {"lr_g": float(self.t["lr_g"]) * f}

        # G's forward is shared by the critic update (detached) and, on G's turn, the generator
        # update (G's parameters do not change in between, so this equals two forwards)
        g_turn = (step + 1) % int(self.t["n_critic"]) == 0 and step >= int(self.t["d_warmup_steps"])
        with torch.set_grad_enabled(g_turn), self._autocast():
            fake_g, _, mask = self.G(x, p_trg)
        fake = fake_g.detach()

        # critic
        with self._autocast():
            real_s, real_r = self.D(x)
            fake_s, _ = self.D(fake.detach())
            d_adv = L.adv_d_loss(real_s, fake_s, kind)
            d_exp = L.exp_loss(real_r, p)
            if paired and bool(self.t["d_exp_targets"]):      # the warps' exact parameters too
                d_exp = 0.5 * (d_exp + L.exp_loss(self.D(x_trg)[1], p_trg))
        gp = L.gradient_penalty(lambda z: self.D(z.float())[0], L.interpolate(x, fake.float(), self.gen))
        loss_d = lam["adv_d"] * (d_adv + lam["gp"] * gp) + lam["exp"] * d_exp
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self._allreduce(self.D.parameters())
        m.update(loss_d=loss_d.item(), d_adv=d_adv.item(), d_gp=gp.item(), d_exp=d_exp.item(),
                 grad_norm_d=_grad_norm(self.D.parameters()),
                 d_real=real_s.detach().float().mean().item(), d_fake=fake_s.detach().float().mean().item())
        self.opt_D.step()

        if not g_turn:
            return m
        ramp = self.g_ramp(step)
        # generator
        for q in self.D.parameters():
            q.requires_grad_(False)
        try:
            fake = fake_g
            with self._autocast():
                fake_s, fake_r = self.D(fake)
                with torch.no_grad():
                    real_s = self.D(x)[0] if kind == "rad" else None
                g_adv = L.adv_g_loss(real_s, fake_s, kind)
                g_exp = L.exp_loss(fake_r, p_trg)
                rec, _, mask_rec = self.G(fake, p)
                g_rec = L.l1_loss(rec, x)
                g_gen = L.l1_loss(fake, x_trg) if (paired and lam["gen"] > 0) else torch.zeros((), device=dev)
                if self.Fnet is not None:
                    with torch.no_grad():
                        e_org = self.Fnet(x.float())
                    g_id = L.identity_loss(self.Fnet(fake.float()), e_org)
                else:
                    g_id = torch.zeros((), device=dev)
                tv = float(self.t["att_tv"])
                g_att = L.attention_loss(mask, tv) + L.attention_loss(mask_rec, tv)
            loss_g = (ramp * lam["adv"] * g_adv + ramp * lam["exp"] * g_exp + lam["rec"] * g_rec + lam["gen"] * g_gen
                      + lam["id"] * g_id + lam["att"] * g_att)
            self.opt_G.zero_grad(set_to_none=True)
            loss_g.backward()
            self._allreduce(self.G.parameters())
            m.update(loss_g=loss_g.item(), g_adv=g_adv.item(), g_exp=g_exp.item(), g_rec=g_rec.item(),
                     g_gen=g_gen.item(), g_id=g_id.item(), g_att=g_att.item(),
                     grad_norm_g=_grad_norm(self.G.parameters()), **L.mask_stats(mask))
            self.opt_G.step()
            self._update_ema()
        finally:
            for q in self.D.parameters():
                q.requires_grad_(True)
        return m

    @torch.no_grad()
    def _update_ema(self) -> None:
        """G_ema <- beta * G_ema + (1 - beta) * G after each generator update (:func:`ema_beta`)."""
        self.g_updates += 1
        if self.G_ema is None:
            return
        beta = ema_beta(int(self.t["g_ema_halflife"]), self.g_updates)
        for e, q in zip(self.G_ema.parameters(), self.G.parameters()):
            e.lerp_(q.detach(), 1.0 - beta)
        for e, q in zip(self.G_ema.buffers(), self.G.buffers()):
            e.copy_(q)

    @property
    def G_eval(self):
        """The generator that validation and the image grids run: G_ema when it is on, else G."""
        return self.G if self.G_ema is None else self.G_ema

    # -- state ----------------------------------------------------------------------------
    def state(self, step: int) -> dict:
        ph, epoch, b = self.position(step) if step < self.total_steps else (len(self.phases) - 1, -1, 0)
        return {
            "variant": self.variant.name, "step": int(step), "phase": self.phases[ph].name,
            "epoch": int(epoch), "batch": int(b),
            "data_order": {"seed": self.seed, "batch_size": self.batch_size, "world": self.world,
                           "phases": [[p.name, p.epochs, p.batches_per_epoch] for p in self.phases]},
            "total_steps": int(self.total_steps),
            "model_config": dict(self.model_config), "train_config": _plain(self.t),
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            **({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {}),
            "g_updates": int(self.g_updates),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "scaler": dict(self.scaler_state),
            "rng": dict(ck.get_rng_state(), target=self.gen.get_state()),
            "identity": self.identity_info,
        }

    def restore(self, ckpt: dict) -> int:
        if ckpt.get("model_config") != self.model_config:
            raise ConfigError(f"checkpoint in {self.out} has model_config {ckpt.get('model_config')} "
                              f"but this run builds {self.model_config}; use another --out")
        if ckpt.get("variant") != self.variant.name:
            raise ConfigError(f"{self.out} holds a {ckpt.get('variant')!r} run, not {self.variant.name!r}; "
                              "use another --out")
        order = ckpt.get("data_order", {})
        now = [[p.name, p.epochs, p.batches_per_epoch] for p in self.phases]
        if order.get("phases") != now or order.get("batch_size") != self.batch_size:
            self._say(f"warning: data or epochs changed since the checkpoint ({order.get('phases')} -> {now}); "
                      "continuing from its step with the new data order")
        self.G.load_state_dict(ckpt["G"])
        if self.G_ema is not None:     # a checkpoint from before the EMA was switched on starts it at G
            self.G_ema.load_state_dict(ckpt.get("G_ema", ckpt["G"]))
        self.g_updates = int(ckpt.get("g_updates", 0))
        self.D.load_state_dict(ckpt["D"])
        self.opt_G.load_state_dict(ckpt["opt_G"])
        self.opt_D.load_state_dict(ckpt["opt_D"])
        ck.set_rng_state(ckpt["rng"])
        self.gen.set_state(ckpt["rng"]["target"])
        return int(ckpt["step"])

    # -- logging --------------------------------------------------------------------------
    def _log_images(self, step: int, batch: dict, paired: bool) -> None:
        if self.runlog.writer(step) is None:
            return
        n = min(4, batch["image"].shape[0])
        x = self.images(batch["image"][:n])
        p_trg = batch["p_trg"][:n].to(self.device) if paired else self.sample_targets_eval(batch["p"][:n])
        with torch.no_grad():
            out, colour, mask = self.G_eval(x, p_trg.to(self.device))
        trg = self.images(batch["target"][:n]) if paired else torch.full_like(x, -1.0)   # black: no target
        self.runlog.image(step, "grid/input|mask|colour|output|target", image_grid([x, mask, colour, out, trg]))

    def sample_targets_eval(self, p: torch.Tensor) -> torch.Tensor:
        """Targets for the image grid without touching the training RNG: the batch rolled by one."""
        return torch.roll(p, 1, dims=0).to(self.device)

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> dict:
        from pipeline.lock import StageLock
        self.out.mkdir(parents=True, exist_ok=True)
        lock = StageLock(self.out).acquire() if self.rank == 0 else None
        if lock is not None:                 # temp files of a killed run (we hold the lock)
            from pipeline.atomic import remove_stale_temps
            for folder in (self.out, ck.checkpoint_dir(self.out)):
                remove_stale_temps(folder)
        try:
            return self._run()
        finally:
            self.runlog.close()
            if lock is not None:
                lock.release()

    def setup(self) -> "Trainer":
        """Seed every RNG, open the data, build G, D, optimisers and F (no resume)."""
        import random
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed * 7 + 1 + self.rank)
        self.build_data()
        self.build_model()
        return self

    def _run(self) -> dict:
        self.setup()
        start = 0
        latest = ck.latest_checkpoint(self.out)
        if latest is not None:
            start = self.restore(ck.load_checkpoint(latest))
            self._say(f"resuming {self.variant.name} from {latest} (step {start})")
        if self.rank == 0:
            self.runlog.trim(start)
        t = self.t
        desc = ", ".join(f"{p.name}: {p.epochs} epochs x {p.batches_per_epoch} batches"
                         + (f", capped at {p.run_steps} steps" if p.run_steps < p.steps else "")
                         for p in self.phases)
        self._say(f"training {self.variant.name} on {self.device} ({desc}; batch {self.batch_size}; "
                  f"{self.total_steps} steps)")
        step, t0, done = start, time.perf_counter(), 0
        acc: dict[str, tuple[float, int]] = {}
        every_ck, every_log, every_img = (max(1, int(t[k])) for k in ("checkpoint_every", "log_every", "image_every"))
        delay = float(os.environ.get("SLIDERGAN_TRAIN_STEP_DELAY", "0") or 0)   # test hook (kill -9 tests)
        last_saved = start
        self._stop = None
        restore = self._install_stop_handlers()
        try:
            step, last_saved = self._loop(step, t0, done, acc, every_ck, every_log, every_img, delay, last_saved)
        finally:
            restore()
        if self.rank == 0 and last_saved != step:
            ck.save_checkpoint(self.out, self.state(step), keep=int(t["keep_checkpoints"]))
        if self._stop is not None:
            self._say(f"stopped by {self._stop} at step {step}/{self.total_steps}; checkpoint saved, "
                      "re-run the same command to resume")
            return {"step": step, "total_steps": self.total_steps, "variant": self.variant.name,
                    "stopped": self._stop}
        self._say(f"done: {step} steps; checkpoint {ck.checkpoint_dir(self.out) / 'latest.pt'}")
        return {"step": step, "total_steps": self.total_steps, "variant": self.variant.name}

    def _install_stop_handlers(self):
        """SIGTERM (SLURM pre-emption, ``scancel``) and SIGINT finish the current step, save a
        checkpoint and stop; returns a function restoring the previous handlers."""
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {}

        def handler(signum, frame):  # noqa: ARG001
            self._stop = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, handler)
        return lambda: [signal.signal(k, v) for k, v in old.items()]

    def _should_stop(self) -> bool:
        if self.world <= 1:
            return self._stop is not None
        import torch.distributed as dist
        flag = torch.tensor([1.0 if self._stop is not None else 0.0],
                            device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag)                     # every rank stops at the same step
        if flag.item() > 0 and self._stop is None:
            self._stop = "another rank"
        return flag.item() > 0

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

    def _loop(self, step, t0, done, acc, every_ck, every_log, every_img, delay, last_saved):
        t = self.t
        while step < self.total_steps:
            ph, epoch, _ = self.position(step)
            phase = self.phases[ph]
            phase_start = sum(p.run_steps for p in self.phases[:ph])
            phase_end = phase_start + phase.run_steps
            for batch, paired in self._phase_batches(ph, step - phase_start):
                m = self.train_step(batch, paired, step)
                step += 1
                done += 1
                for k, v in m.items():
                    s, n = acc.get(k, (0.0, 0))
                    acc[k] = (s + v, n + 1)
                if self.rank == 0:
                    if step % every_log == 0 or step == self.total_steps:
                        ev = int(t["eval_every"])
                        if ev > 0 and (step % ev == 0 or step == self.total_steps):
                            acc.update({k: (v, 1) for k, v in self.validate().items()})
                        self.runlog.record(step, self.total_steps, phase.name, self.position(step - 1)[1], acc, t0, done)
                        acc = {}
                    if step % every_img == 0:
                        self._log_images(step, batch, paired)
                    if step % every_ck == 0 or step == self.total_steps:
                        ck.save_checkpoint(self.out, self.state(step), keep=int(t["keep_checkpoints"]))
                        last_saved = step
                if delay:
                    time.sleep(delay)
                if self._should_stop():
                    return step, last_saved
                if step >= phase_end or step >= self.total_steps:
                    break
        return step, last_saved


def _plain(obj: Any) -> Any:
    """Config values as plain python (weights_only-safe)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
