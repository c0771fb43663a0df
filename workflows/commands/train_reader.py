"""slidergan train-reader --data RUN [--out F] [--steps N]"""
from __future__ import annotations

from workflows.common import add_config_options, config_from_args, require_dir

HELP = "train the independent expression reader (CNN: face crop -> expression parameters) on the run's warps"


def add_arguments(p) -> None:
    add_config_options(p)
    p.add_argument("--data", required=True, metavar="RUN", help="run folder with warps/ (and fits/, model.h5)")
    p.add_argument("--out", default=None, metavar="F.pt", help="reader file to write (atomic; default RUN/reader/reader.pt)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="default reader.steps")


def run(args) -> int:
    from train.reader import summary_line, train_reader

    cfg = config_from_args(args)
    require_dir(args.data, "run folder")
    meta = train_reader(args.data, args.out, cfg, steps=args.steps, echo=lambda m: print(m, flush=True))
    if not meta.get("skipped"):
        print(f"wrote {meta['path']} ({meta['n_train']} training images, {meta['train_seconds']:.0f} s): "
              f"{summary_line(meta)}", flush=True)
    return 0
