"""slidergan fit-lrw: fit the 3DMM to LRW videos and join LRW-3D speech parameters (shard stage)."""
from __future__ import annotations

HELP = "fit the 3DMM to LRW videos (shared identity, smoothed camera) + LRW-3D speech -> 40-vectors (shard stage)"


def add_arguments(p):
    from workflows.common import add_stage_options

    p.add_argument("--videos", required=True, metavar="DIR",
                   help="LRW videos: lipread_mp4/ (or its parent) with <WORD>/{train,val,test}/<WORD>_<id>.mp4")
    p.add_argument("--speech", required=True, metavar="DIR|H5|NPZ",
                   help="LRW-3D speech parameters: a mirror tree of <WORD>/<split>/<WORD>_<id>.npy/.csv "
                        "[frames, S], or one .h5/.npz keyed by video id (docs/speech.md)")
    p.add_argument("--model", required=True, metavar="F", help="3DMM model.h5")
    p.add_argument("--metadata", default=None, metavar="H5",
                   help="HDF5 with video/identity to carry through (default: truth.h5 in or beside --videos)")
    p.add_argument("--landmarks", default=None, choices=("sidecar", "detect", "auto"),
                   help="landmark source (default: config lrw.landmarks)")
    add_stage_options(p)


def run(args) -> int:
    from pipeline.runner import run_stage_from_args
    from workflows.common import config_from_args
    from workflows.stages.fit_lrw import build_stage

    cfg = config_from_args(args)
    lrw_cfg = cfg.section("lrw")
    if args.landmarks:
        lrw_cfg["landmarks"] = args.landmarks
    stage = build_stage(args.videos, args.speech, args.model, cfg.section("fit"), lrw_cfg, metadata=args.metadata)
    report = run_stage_from_args(stage, args, default_chunk_size=int(lrw_cfg.get("chunk_size", 8)))
    return int(report)
