"""slidergan train --data RUN --variant V --out T [--steps N] [--config F --set k=v]"""
from __future__ import annotations

import logging

from workflows.common import add_config_options, config_from_args, require_dir

HELP = "train SliderGAN (variants rad, wgp, ganimation and ablations)"
VARIANT_NAMES = ("rad", "wgp", "ganimation", "rad-no-id", "rad-no-gen", "rad-no-id-gen")


def add_arguments(p) -> None:
    add_config_options(p)
    p.add_argument("--data", required=True, metavar="RUN",
                   help="run folder holding the shard stages fits/ (and warps/, 4dfab-params/)")
    p.add_argument("--variant", default=None, choices=VARIANT_NAMES,
                   help="training variant (default: train.variant of the preset)")
    p.add_argument("--out", required=True, metavar="T",
                   help="output folder: checkpoints/, tb/, metrics.jsonl; resumes from T/checkpoints/latest.pt")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="cap on training steps (overrides train.max_steps; 0 = full schedule)")


def run(args) -> int:
    from train.trainer import Trainer

    cfg = config_from_args(args)
    require_dir(args.data, "run folder")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = Trainer(args.data, args.out, cfg, variant=args.variant, steps=args.steps,
                      echo=lambda m: print(m, flush=True)).run()
    if summary.get("stopped"):
        return 130 if summary["stopped"] == "SIGINT" else 143     # stopped early; a re-run resumes
    return 0 if summary["step"] >= summary["total_steps"] else 1
