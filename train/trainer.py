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

Code: this module holds the config checks, the networks, :meth:`Trainer.train_step`, the
checkpoint state and the loop; ``train/phases.py`` the held-out split, the phases and their
batch streams; ``train/validation.py`` the validation records and image grids;
``train/schedule.py`` the step arithmetic; ``train/runlog.py`` metrics.jsonl and TensorBoard.

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

from model import losses as L
from model.identity import build_identity
from model.networks import build_networks, model_config_from_train
from pipeline.config import Config, ConfigError
from train import checkpoint as ck
from train.data import uint8_to_float
from train.phases import TrainerData
from train.runlog import RunLog
from train.schedule import ema_beta, lr_factor, position, ramp
from train.validation import TrainerValidation
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



class Trainer(TrainerData, TrainerValidation):
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
        if t["condition"] not in ("target", "delta"):
            raise ConfigError(f"train.condition must be target|delta, got {t['condition']!r}")
        if t["colour"] not in ("absolute", "residual"):
            raise ConfigError(f"train.colour must be absolute|residual, got {t['colour']!r}")
        if t["gen_loss"] not in L.GEN_LOSSES:
            raise ConfigError(f"train.gen_loss must be l1|l2, got {t['gen_loss']!r}")
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

    def build_model(self) -> None:
        t = self.t
        self.model_config = model_config_from_train(t, self.E)
        try:
            G, D = build_networks(self.model_config, float(t.get("mask_bias_init", 0.0)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        init = t.get("init_from")
        if init:            # train.init_from: start from another run's weights (fresh optimisers, step 0)
            from model.networks import ModelConfigError, widen_into
            try:
                E0 = widen_into(G, D, self.model_config, ck.load_checkpoint(init, require=("D",)))
            except ModelConfigError as e:
                raise ConfigError(f"train.init_from {init}: {e}") from None
            self._say(f"init: G and D from {init} ({E0} parameters"
                      + (f"; parameters {E0}..{self.E - 1} start at zero weight)" if E0 < self.E else ")"))
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
            fake_g, _, mask = self.G(x, p_trg, p)
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
                if lam["rec"] > 0:        # the cycle pass costs as much as G's own: only when it is weighed
                    rec, _, mask_rec = self.G(fake, p, p_trg)
                    g_rec = L.l1_loss(rec, x)
                else:
                    mask_rec, g_rec = None, torch.zeros((), device=dev)
                g_gen = (L.gen_loss(fake, x_trg, self.t["gen_loss"]) if (paired and lam["gen"] > 0)
                         else torch.zeros((), device=dev))
                if self.Fnet is not None:
                    with torch.no_grad():
                        e_org = self.Fnet(x.float())
                    g_id = L.identity_loss(self.Fnet(fake.float()), e_org)
                else:
                    g_id = torch.zeros((), device=dev)
                tv = float(self.t["att_tv"])
                g_att = L.attention_loss(mask, tv) + (L.attention_loss(mask_rec, tv) if mask_rec is not None else 0.0)
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
        last_saved = start
        self._stop = None
        restore = self._install_stop_handlers()
        try:
            step, last_saved = self._loop(step, t0, done, acc, (every_ck, every_log, every_img), last_saved)
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

    def _loop(self, step, t0, done, acc, every, last_saved):
        """Steps from ``step`` to the end (or a stop signal): train, log, validate, checkpoint.
        ``every`` = (checkpoint_every, log_every, image_every). Returns (step, last saved step)."""
        t = self.t
        every_ck, every_log, every_img = every
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
