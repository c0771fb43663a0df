"""Training throughput (one step = one batch: a critic update, plus a generator update on
every n_critic-th step), identity embedder F on.

- GPU: the paper preset's networks (G/D conv dim 64, 6 residual blocks, six-conv critic),
  batch 16, 128x128, bf16 autocast, F = iresnet50 at 112x112 (random weights: speed only).
- CPU: the demo preset (config/demo.yaml) for a few steps, reported with
  ``train_preset = "demo"``; the paper preset on CPU would take minutes per step.

Keys: ``train_it_per_s`` (steps per second averaged over whole n_critic cycles),
``train_device``, ``train_preset``, ``train_batch``, ``train_image_size``.
"""
from __future__ import annotations

import numpy as np
import torch


def run(ctx) -> dict:
    from model.identity import IResNet
    from pipeline.config import load_config
    from pipeline.testing import make_stage
    from train.checkpoint import save_identity_file
    from train.trainer import Trainer

    gpu = torch.cuda.is_available()
    preset = "paper" if gpu else "demo"
    cfg = load_config(None if preset == "demo" else "paper")
    t = cfg.section("train")
    bs = int(t["batch_size"])
    root = ctx.tmp / "train-run"
    n = max(4 * bs, 32)
    rng = np.random.default_rng(0)
    if not (root / "fits" / "_stage.json").exists():
        make_stage(root / "fits", "fits", {
            "key": [f"p{i}" for i in range(n)], "group": np.arange(n) // 2,
            "image": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
            "p_exp": rng.uniform(-1, 1, (n, 30)).astype(np.float32)}, chunk_size=64)
    if gpu:
        F_conf = {"arch": "iresnet50", "layers": [3, 4, 14, 3], "width": 64, "input_size": 112, "num_features": 512}
    else:
        F_conf = {"arch": "iresnet-small", "layers": [int(v) for v in t["identity_layers"]],
                  "width": int(t["identity_width"]), "input_size": int(t["identity_size"]),
                  "num_features": int(t["identity_features"])}
    f_path = ctx.tmp / f"identity-{preset}.pt"
    if not f_path.exists():
        net = IResNet(F_conf["layers"], F_conf["width"], F_conf["input_size"], F_conf["num_features"])
        save_identity_file(f_path, F_conf, net.state_dict())
    cfg = cfg.with_overrides([f"train.identity_weights={f_path}", "train.workers=0", "train.epochs_paired=0",
                              "train.epochs_unpaired=1", "train.tensorboard=false"])
    tr = Trainer(root, ctx.tmp / "train-out", cfg, variant="rad", steps=0).setup()
    ds = tr.phases[0].dataset
    batch = torch.utils.data.default_collate([ds[i] for i in range(tr.batch_size)])
    nc = int(t["n_critic"])
    seconds_per_step(tr, batch, False, nc)                       # warm-up (cudnn autotune, allocator)
    cycles = 1 if (ctx.quick or not gpu) else 10
    s = seconds_per_step(tr, batch, False, nc * cycles)
    return {"train_it_per_s": 1.0 / s, "train_device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "train_preset": preset, "train_batch": tr.batch_size, "train_image_size": int(t["image_size"])}


def seconds_per_step(trainer, batch: dict, paired: bool, n: int) -> float:
    """Mean wall seconds of ``n`` train steps on one fixed batch (synchronised on a GPU)."""
    import time
    t0 = time.perf_counter()
    for i in range(n):
        trainer.train_step(batch, paired, i)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n
