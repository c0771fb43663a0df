"""The trainer's validation records and image grids.

:class:`TrainerValidation` is a mixin of :class:`train.trainer.Trainer`: :meth:`validate` runs
the generator that evaluation will run (``G_eval``: the weight average when
``train.g_ema_halflife`` is on) on the fixed held-out pairs; :meth:`_log_images` writes the
TensorBoard grid (input | mask | colour | output | target).
"""
from __future__ import annotations

import torch

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


class TrainerValidation:
    """Validation metrics and image grids (mixin of the Trainer)."""

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
            p_src_all = torch.stack([c["p"] for c in items])
            wrong_all = torch.roll(p_all, len(items) // 2, 0)     # the target of the pair half the set away
            bs = max(2, self.batch_size)
            self._val_batches = [(src[i:i + bs], trg[i:i + bs], p_all[i:i + bs], wrong_all[i:i + bs],
                                  p_src_all[i:i + bs]) for i in range(0, len(items), bs)]
        sums = {"val_l1": 0.0, "val_l1_copy": 0.0, "val_l1_wrong": 0.0, "val_mask": 0.0}
        preds, trues = [], []
        for src, trg, p_trg, wrong, p_src in self._val_batches:
            x, y = self.images(src), self.images(trg)
            p_trg, wrong, p_src = p_trg.to(self.device), wrong.to(self.device), p_src.to(self.device)
            with self._autocast():
                out, _, mask = self.G_eval(x, p_trg, p_src)
                out_w = self.G_eval(x, wrong, p_src)[0]
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

    def _log_images(self, step: int, batch: dict, paired: bool) -> None:
        if self.runlog.writer(step) is None:
            return
        n = min(4, batch["image"].shape[0])
        x = self.images(batch["image"][:n])
        p_trg = batch["p_trg"][:n].to(self.device) if paired else self.sample_targets_eval(batch["p"][:n])
        with torch.no_grad():
            out, colour, mask = self.G_eval(x, p_trg.to(self.device), batch["p"][:n].to(self.device))
        trg = self.images(batch["target"][:n]) if paired else torch.full_like(x, -1.0)   # black: no target
        self.runlog.image(step, "grid/input|mask|colour|output|target", image_grid([x, mask, colour, out, trg]))

    def sample_targets_eval(self, p: torch.Tensor) -> torch.Tensor:
        """Targets for the image grid without touching the training RNG: the batch rolled by one."""
        return torch.roll(p, 1, dims=0).to(self.device)
