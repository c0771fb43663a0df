"""slidergan fit-emotionet: detect/read landmarks, fit the 3DMM and align every photo (shard stage)."""
from __future__ import annotations

HELP = "detect, landmark, fit the 3DMM to and align every image (shard stage)"


def add_arguments(p):
    from workflows.common import add_stage_options

    p.add_argument("--images", required=True, metavar="DIR|LIST",
                   help="image folder (recursive; jpg/png/bmp/webp) or a list file (EmotioNet dataFile "
                        "TSV of URLs + AUs, or one path / CSV row per image)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="folder the listed images were downloaded to (with a list file)")
    p.add_argument("--model", required=True, metavar="F", help="3DMM model.h5")
    p.add_argument("--metadata", default=None, metavar="H5",
                   help="HDF5 with key/identity/label to carry through (default: <images>/truth.h5 if present)")
    p.add_argument("--landmarks", default=None, choices=("sidecar", "detect", "auto"),
                   help="landmark source (default: config fit.landmarks)")
    p.add_argument("--fitter", default=None, choices=("landmarks", "itw"),
                   help="fitting method (default: config fit.fitter)")
    add_stage_options(p)


def run(args) -> int:
    from pipeline.runner import run_stage_from_args
    from workflows.common import config_from_args
    from workflows.stages.fit import build_stage

    cfg = config_from_args(args)
    fit_cfg = cfg.section("fit")
    if args.landmarks:
        fit_cfg["landmarks"] = args.landmarks
    if args.fitter:
        fit_cfg["fitter"] = args.fitter
    stage = build_stage(args.images, args.model, fit_cfg, root=args.root, metadata=args.metadata,
                        seed=int(cfg.get("seed", 0)))
    print(f"fit: {stage.image_domain} images (fit.image_domain={fit_cfg['image_domain']}); landmark calibration: "
          f"{stage.calibration_note if stage.calibration is None else stage.calibration}", flush=True)
    report = run_stage_from_args(stage, args, default_chunk_size=int(fit_cfg.get("chunk_size", 64)))
    return int(report)
