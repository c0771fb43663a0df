"""slidergan render-warps: random-expression 3D warps of fitted photos (shard stage)."""
from __future__ import annotations

HELP = "render random-expression 3D warps of fitted photos (shard stage)"


def add_arguments(p):
    from workflows.common import add_stage_options

    p.add_argument("--fits", required=True, metavar="D", help="fit stage folder (slidergan fit-emotionet)")
    p.add_argument("--model", required=True, metavar="F", help="3DMM model.h5 (the one the fits used)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="folder of the original photos (default: the images root the fit stage recorded)")
    p.add_argument("--faces", type=int, default=None, metavar="N", help="photos to warp (warps.faces; paper 10000)")
    p.add_argument("--per-face", type=int, default=None, metavar="K",
                   help="random expressions per photo (warps.per_face; paper 20)")
    add_stage_options(p)


def run(args) -> int:
    from workflows.common import config_from_args, run_stage_with_preview
    from workflows.stages.warps import build_stage, write_preview

    cfg = config_from_args(args)
    wcfg = cfg.section("warps")
    if args.faces is not None:
        wcfg["faces"] = args.faces
    if args.per_face is not None:
        wcfg["per_face"] = args.per_face
    backend = str(cfg.section("render").get("backend", "fast")) if "render" in cfg else "fast"
    stage = build_stage(args.fits, args.model, wcfg, seed=int(cfg.get("seed", 0)), images=args.images,
                        backend=backend)
    return run_stage_with_preview(stage, args, int(wcfg.get("chunk_size", 16)), write_preview)
