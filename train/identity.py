"""Train the identity embedder F with the ArcFace loss on identity-labelled shards.

Used when no ArcFace (InsightFace iresnet) weights are given (``train.identity_weights``).
Classes are built from what the run folder knows about "same person":

* ``fits``: the ``identity`` label when >= 0, else the photo's ``group`` (one face);
* ``warps``: the class of the source photo (3D warps keep the identity by construction);
* ``4dfab-params``: ``identity``, training split only (``split == 0``), so the identities
  held out for evaluation are never seen.

Output: ``{"format": "slidergan-identity/1", "config", "state_dict", "meta"}`` (atomic),
loadable by :func:`model.identity.build_identity`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from model.identity import ArcMarginHead, IdentityEmbedder
from pipeline.config import Config, ConfigError
from train.checkpoint import save_identity_file
from train.data import open_stage, to_tensor_image


class LabelledImages(Dataset):
    """(stage, row, label) items -> {"image": [3,S,S] in [-1,1], "label": int}."""

    def __init__(self, stages: list, items: np.ndarray, size: int, flip_seed: int = 0):
        self.stages, self.items, self.size, self.flip_seed = stages, items, size, flip_seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        s, r, lab = (int(v) for v in self.items[i])
        img = to_tensor_image(self.stages[s].read("image", r), self.size)
        if (i * 2654435761 + self.flip_seed) % 2:          # deterministic horizontal flip
            img = img.flip(-1)
        return {"image": img, "label": lab}


def collect_labels(run: str | Path) -> tuple[list, np.ndarray, dict]:
    """Stages and an int64 [N,3] table of (stage index, row, class) for every usable image."""
    stages, rows, counts = [], [], {}
    next_class = 0
    fits = open_stage(run, "fits", required=False)
    fit_class = None
    if fits is not None:
        ident = fits.read("identity").astype(np.int64) if "identity" in fits.datasets else np.full(len(fits), -1)
        group = fits.read("group").astype(np.int64) if "group" in fits.datasets else np.arange(len(fits))
        keys = [("i", int(v)) if v >= 0 else ("g", int(g)) for v, g in zip(ident, group)]
        uniq = {k: j for j, k in enumerate(sorted(set(keys)))}
        fit_class = np.array([uniq[k] for k in keys], np.int64)
        next_class = len(uniq)
        stages.append(fits)
        rows.append(np.stack([np.zeros(len(fits), np.int64), np.arange(len(fits)), fit_class], 1))
        counts["fits"] = len(fits)
        warps = open_stage(run, "warps", required=False)
        if warps is not None and "source" in warps.datasets:
            src = warps.read("source").astype(np.int64)
            ok = (src >= 0) & (src < len(fits))
            stages.append(warps)
            rows.append(np.stack([np.full(ok.sum(), len(stages) - 1), np.nonzero(ok)[0], fit_class[src[ok]]], 1))
            counts["warps"] = int(ok.sum())
    fab = open_stage(run, "4dfab-params", required=False)
    if fab is not None and "identity" in fab.datasets:
        ident = fab.read("identity").astype(np.int64)
        split = fab.read("split").astype(np.int64) if "split" in fab.datasets else np.zeros(len(fab), np.int64)
        ok = (split == 0) & (ident >= 0)
        uniq = {v: next_class + j for j, v in enumerate(sorted(set(ident[ok].tolist())))}
        next_class += len(uniq)
        stages.append(fab)
        rows.append(np.stack([np.full(ok.sum(), len(stages) - 1), np.nonzero(ok)[0],
                              np.array([uniq[v] for v in ident[ok]], np.int64)], 1).reshape(-1, 3))
        counts["4dfab-params"] = int(ok.sum())
    if not rows or sum(len(r) for r in rows) == 0:
        raise ConfigError(f"{run}: no identity-labelled images (need fits, warps or 4dfab-params stages)")
    items = np.concatenate(rows).astype(np.int64)
    counts["classes"] = int(len(np.unique(items[:, 2])))
    if counts["classes"] < 2:
        raise ConfigError(f"{run}: identity training needs at least 2 identities, found {counts['classes']}")
    return stages, items, counts


def identity_config(cfg: Config) -> dict:
    t = cfg.section("train")
    return {"arch": "iresnet-small", "layers": [int(v) for v in t["identity_layers"]],
            "width": int(t["identity_width"]), "input_size": int(t["identity_size"]),
            "num_features": int(t["identity_features"])}


def train_identity(run: str | Path, out: str | Path, cfg: Config, epochs: int | None = None,
                   echo: Callable[[str], None] = print) -> dict:
    """Train F with ArcFace (s, m from ``train.identity_scale``/``identity_margin``) and save it
    to ``out``.  Returns a summary (classes, images, final loss, train accuracy)."""
    t = cfg.section("train")
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    stages, items, counts = collect_labels(run)
    conf = identity_config(cfg)
    dev = t.get("device", "auto")
    device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
    emb = IdentityEmbedder(conf)
    n_classes = int(items[:, 2].max()) + 1
    head = ArcMarginHead(conf["num_features"], n_classes, s=float(t["identity_scale"]),
                         m=float(t["identity_margin"]))
    emb, head = emb.to(device), head.to(device)
    params = list(p for p in emb.parameters() if p.requires_grad) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=float(t["identity_lr"]), weight_decay=5e-4)
    ds = LabelledImages(stages, items, conf["input_size"], seed)
    bs = min(int(t["identity_batch"]), len(ds))
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, generator=g,
                        num_workers=int(t["workers"]))
    n_epochs = int(t["identity_epochs"] if epochs is None else epochs)
    echo(f"identity on {device}: {counts['classes']} classes, {len(ds)} images "
         f"({', '.join(f'{k} {v}' for k, v in counts.items() if k != 'classes')}), {n_epochs} epochs")
    emb.train()
    t0, loss_v, acc = time.perf_counter(), float("nan"), float("nan")
    max_steps, steps = int(t.get("identity_max_steps", 0)), 0
    for ep in range(n_epochs):
        tot, right, n = 0.0, 0, 0
        if max_steps and steps >= max_steps:
            break
        for batch in loader:
            if max_steps and steps >= max_steps:
                break
            steps += 1
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].long().to(device, non_blocking=True)
            e = emb.net(x)   # un-normalised features; the head normalises
            logits = head(e, y)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                cos = F.linear(F.normalize(e, dim=1), F.normalize(head.weight, dim=1))
                right += int((cos.argmax(1) == y).sum())
            tot += loss.item() * len(y)
            n += len(y)
        loss_v, acc = tot / max(1, n), right / max(1, n)
        echo(f"identity epoch {ep + 1}/{n_epochs}: arcface loss {loss_v:.3f}, train acc {acc:.3f}")
    emb.eval()
    meta = {"classes": counts["classes"], "images": len(ds), "epochs": n_epochs, "steps": steps, "loss": loss_v,
            "train_acc": acc, "seconds": time.perf_counter() - t0}
    save_identity_file(out, conf, emb.net.cpu().state_dict(), meta)
    return meta
