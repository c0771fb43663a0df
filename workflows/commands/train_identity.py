"""slidergan train-identity --data RUN --out F.pt [--epochs N]"""
from __future__ import annotations

from workflows.common import add_config_options, config_from_args, require_dir

HELP = "train the identity embedder with an ArcFace loss on identity-labelled shards"


def add_arguments(p) -> None:
    add_config_options(p)
    p.add_argument("--data", required=True, metavar="RUN", help="run folder with fits/, warps/, 4dfab-params/")
    p.add_argument("--out", required=True, metavar="F.pt", help="embedder file to write (atomic)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="default train.identity_epochs")


def run(args) -> int:
    from train.identity import train_identity

    cfg = config_from_args(args)
    require_dir(args.data, "run folder")
    meta = train_identity(args.data, args.out, cfg, epochs=args.epochs, echo=lambda m: print(m, flush=True))
    print(f"wrote {args.out} ({meta['classes']} identities, train accuracy {meta['train_acc']:.3f})")
    return 0
