"""slidergan build-model: model.h5 from LSFM + 4DFAB files, or the demo 3DMM."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError

HELP = "build model.h5 from LSFM + 4DFAB files, or the demo 3DMM (--demo)"


def add_arguments(p):
    p.add_argument("--demo", action="store_true", help="build the demo 3DMM from menpo3d's template")
    p.add_argument("--identity", metavar="LSFM.mat", help="LSFM identity model (.mat, v5 or v7.3)")
    p.add_argument("--expression", metavar="EXP", help="4DFAB expression model (.mat/.npz/.h5)")
    p.add_argument("--speech", metavar="SPEECH", help="optional speech model (.mat/.npz/.h5)")
    p.add_argument("--landmarks", metavar="FILE", help="68 landmark vertex indices (txt/npy/json); "
                   "LSFM ships none")
    p.add_argument("--exp-names", metavar="FILE", help="text file, one expression name per line")
    p.add_argument("--n-id", type=int, default=None, help="identity components to keep")
    p.add_argument("--n-exp", type=int, default=None, help="expression components to keep (paper: 30)")
    p.add_argument("--seed", type=int, default=0, help="demo model seed")
    p.add_argument("--out", required=True, metavar="F", help="output model.h5")
    p.add_argument("--preview", metavar="PNG", help="also write front renders of -1/0/+1 of the first "
                   "10 expression components")


def run(args) -> int:
    from fitting.model import ModelError
    from fitting.model_import import combine, load_landmark_indices, load_linear_model, load_lsfm

    try:
        if args.demo:
            if args.identity or args.expression:
                raise ConfigError("--demo builds the demo model; do not combine it with --identity/--expression")
            from fitting.demo_model import build_demo_model

            model = build_demo_model(seed=args.seed, n_id=args.n_id or 40, n_exp=args.n_exp or 30)
        else:
            if not args.identity or not args.expression:
                raise ConfigError("give --identity LSFM.mat and --expression EXP (or --demo)")
            ident = load_lsfm(args.identity)
            expr = load_linear_model(args.expression)
            speech = load_linear_model(args.speech) if args.speech else None
            lms = load_landmark_indices(args.landmarks) if args.landmarks else None
            names = None
            if args.exp_names:
                path = Path(args.exp_names)
                if not path.is_file():
                    raise ConfigError(f"names file not found: {path}")
                names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            model = combine(ident, expr, landmarks=lms, speech=speech, exp_names=names,
                            n_id=args.n_id, n_exp=args.n_exp)
    except ModelError as e:
        raise ConfigError(str(e)) from None
    model.save(args.out)
    print(f"wrote {args.out}: {model}")
    if args.preview:
        from fitting.preview import blendshape_sheet

        blendshape_sheet(model).save(args.preview)
        print(f"wrote {args.preview}")
    return 0
