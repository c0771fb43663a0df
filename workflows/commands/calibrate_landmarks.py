"""slidergan calibrate-landmarks: learn the correction from dlib's 68 points to the model's
landmark vertices on renders of the model (workflows/stages/calibrate.py, docs/fitting.md).

Writes ``<model folder>/<stem>.lmcal.npz`` (or ``--out``), where the fit stage's
``fit.landmark_calibration: auto`` finds it.  The renders follow the config's ``demo:`` photo
settings (sizes, yaw range, expression mix, JPEG quality) and ``seed``; a re-run with the
same inputs is a no-op.  ``make-demo`` runs it for the demo model (``demo.calibration_faces``).
"""
from __future__ import annotations

HELP = "learn the detector-to-model landmark calibration from renders of a model"


def add_arguments(p):
    from workflows.common import add_config_options

    add_config_options(p)
    p.add_argument("--model", required=True, metavar="F", help="model.h5 (with a texture model)")
    p.add_argument("--out", default=None, metavar="FILE", help="output file (default: beside the model, <stem>.lmcal.npz)")
    p.add_argument("--faces", type=int, default=None, metavar="N", help="renders (default demo.calibration_faces)")
    p.add_argument("--ridge", type=float, default=None, help="ridge weight (default demo.calibration_ridge)")
    p.add_argument("--force", action="store_true", help="recompute even if the file is up to date")
    p.add_argument("--cluster", default="local", metavar="local|slurm|PROFILE.yaml|tcp://HOST:PORT",
                   help="local: Dask worker processes on this machine (default); otherwise a Dask cluster "
                        "from pipeline.cluster (SLURM profile or a running scheduler)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="parallel tasks (default: CPU count)")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def run(args) -> int:
    from pipeline.config import ConfigError
    from workflows.commands.make_demo import params_from_args
    from workflows.common import config_from_args, require_file
    from workflows.stages.calibrate import build_calibration

    from fitting.model import ModelError, MorphableModel

    model_path = require_file(args.model, "model file")
    demo = config_from_args(args).section("demo")
    faces = int(demo.get("calibration_faces", 2000)) if args.faces is None else int(args.faces)
    if faces < 1:
        raise ConfigError(f"--faces must be >= 1, got {faces}")
    ridge = float(demo.get("calibration_ridge", 1.0)) if args.ridge is None else float(args.ridge)
    try:
        model = MorphableModel.load(model_path)
    except (ModelError, OSError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot read model {model_path}: {str(e).splitlines()[0]}") from None
    if model.U_tex is None or model.texture_mean is None:
        raise ConfigError(f"{model_path} has no texture model: the calibration renders need one")
    args.seed, args.chunk_size = None, None
    P, _ = params_from_args(args)
    build_calibration(model_path, P, faces=faces, ridge=ridge, out=args.out, force=args.force,
                      cluster=args.cluster, workers=args.workers, progress=not args.no_progress)
    return 0
