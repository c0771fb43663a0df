"""slidergan make-demo: build the offline demo world (model.h5, emotionet/, 4dfab/, lrw/).

Sizes come from the config's ``demo:`` section (``--config``/``--set demo.faces=...``);
the explicit flags below override it.  Deterministic for ``seed``; re-running on a
finished folder with the same parameters is a no-op (``D/_demo.json``).  Then the landmark
calibration of the demo model, ``D/model.lmcal.npz`` (``demo.calibration_faces`` renders;
0 = none; see ``slidergan calibrate-landmarks``).
"""
from __future__ import annotations

HELP = "build the offline demo world (3DMM, photos, 4DFAB meshes, LRW sequences)"

# flag -> demo-section key
_FLAGS = {
    "faces": "faces", "identities": "identities", "identities_4dfab": "identities_4dfab",
    "sessions_4dfab": "sessions_4dfab", "frames_4dfab": "frames_4dfab",
    "lrw_sequences": "lrw_sequences", "lrw_frames": "lrw_frames",
}


def add_arguments(p):
    from workflows.common import add_config_options

    add_config_options(p)
    p.add_argument("--out", required=True, metavar="D", help="output folder of the demo world")
    p.add_argument("--faces", type=int, default=None, metavar="N", help="EmotioNet-style photos (demo.faces)")
    p.add_argument("--identities", type=int, default=None, metavar="N", help="identities among the photos")
    p.add_argument("--identities-4dfab", type=int, default=None, metavar="M", help="4DFAB-style identities")
    p.add_argument("--sessions-4dfab", type=int, default=None, metavar="N", help="sessions per 4DFAB identity")
    p.add_argument("--frames-4dfab", type=int, default=None, metavar="N", help="frames per 4DFAB session")
    p.add_argument("--lrw-sequences", type=int, default=None, metavar="N", help="LRW-style sequences")
    p.add_argument("--lrw-frames", type=int, default=None, metavar="N", help="frames per LRW sequence")
    p.add_argument("--seed", type=int, default=None, help="world seed (config 'seed')")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    p.add_argument("--cluster", default="local", metavar="local|slurm|PROFILE.yaml|tcp://HOST:PORT",
                   help="local: Dask threads in this process (default); otherwise a Dask cluster from "
                        "pipeline.cluster (SLURM profile or a running scheduler; D must be on a shared disk)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="parallel tasks (default: CPU count)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N", help="items per task (demo.chunk_size)")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def params_from_args(args):
    """The :class:`WorldParams` of a command line (config, then --set, then flags)."""
    from pipeline.config import ConfigError
    from workflows.common import config_from_args
    from workflows.demoworld.params import WorldParams

    cfg = config_from_args(args)
    demo = cfg.section("demo")
    for flag, key in _FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            demo[key] = v
    model = cfg.section("model")
    rend = cfg.section("render")
    seed = cfg.seed if args.seed is None else args.seed
    try:
        P = WorldParams(
            seed=int(seed), n_id=int(model["n_id"]), n_exp=int(model["n_exp"]), n_speech=int(model["n_speech"]),
            faces=int(demo["faces"]), identities=int(demo["identities"]),
            identities_4dfab=int(demo["identities_4dfab"]), sessions_4dfab=int(demo["sessions_4dfab"]),
            frames_4dfab=int(demo["frames_4dfab"]), lrw_sequences=int(demo["lrw_sequences"]),
            lrw_frames=int(demo["lrw_frames"]), lrw_size=int(demo.get("lrw_size", 256)),
            min_size=int(demo["min_size"]), max_size=int(demo["max_size"]), max_yaw=float(demo["max_yaw"]),
            camera_dist=float(demo.get("camera_dist", 0.0)),
            prototype_fraction=float(demo["prototype_fraction"]),
            jpeg_quality=int(demo.get("jpeg_quality", 92)), backend=str(rend.get("backend", "fast")))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"bad demo configuration: {e}") from None
    chunk = args.chunk_size if args.chunk_size is not None else int(demo["chunk_size"])
    return P, chunk


def run(args) -> int:
    from pathlib import Path

    from workflows.common import config_from_args
    from workflows.stages.calibrate import build_calibration
    from workflows.stages.demo_world import build_world

    P, chunk = params_from_args(args)
    build_world(args.out, P, chunk_size=chunk, force=args.force, cluster=args.cluster,
                workers=args.workers, progress=not args.no_progress)
    demo = config_from_args(args).section("demo")
    build_calibration(Path(args.out) / "model.h5", P, faces=int(demo.get("calibration_faces", 2000)),
                      ridge=float(demo.get("calibration_ridge", 1.0)), force=args.force, cluster=args.cluster,
                      workers=args.workers, progress=not args.no_progress)
    return 0
