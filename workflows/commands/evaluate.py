"""slidergan evaluate --checkpoint C --data RUN --out E [--compare C2 C3 ...]

Evaluates one or more checkpoints side by side (the paper's Tables 1-4 plus identity and
refit checks, figures) and writes E/metrics.json and E/index.html.
"""
from __future__ import annotations

import argparse
import sys

from workflows.common import add_config_options, config_from_args, require_dir, require_file

HELP = "evaluate checkpoints: IED, regression error, identity, figures, HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--checkpoint", required=True, metavar="C", help="checkpoint file (T/checkpoints/latest.pt)")
    p.add_argument("--compare", nargs="+", default=[], metavar="C2",
                   help="more checkpoints evaluated side by side (variants, ablations)")
    p.add_argument("--data", required=True, metavar="RUN", help="run folder (model.h5, fits/, 4dfab-params/, lrw/)")
    p.add_argument("--out", required=True, metavar="E", help="report folder")
    p.add_argument("--device", default=None, metavar="cpu|cuda|auto", help="torch device (default evaluate.device)")
    p.add_argument("--no-figures", action="store_true", help="metrics only")


def run(args: argparse.Namespace) -> int:
    from evaluation.runner import EvalOptions, evaluate

    cfg = config_from_args(args)
    opt = EvalOptions.from_config(cfg)
    if args.device:
        opt.device = args.device
    if args.no_figures:
        opt.figures = False
    ckpts = [require_file(args.checkpoint, "checkpoint")] + [require_file(c, "checkpoint") for c in args.compare]
    run_dir = require_dir(args.data, "run folder")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = evaluate(ckpts, run_dir, args.out, opt, log=log)
    n = len(result.get("models", result))
    print(f"wrote {args.out}/metrics.json and {args.out}/index.html ({n} checkpoint"
          f"{'s' if n != 1 else ''} + baselines {', '.join(result.get('baselines', {}))})")
    return 0
