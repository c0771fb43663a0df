"""The ``slidergan`` command line (also ``python -m workflows``).

Each command lives in ``workflows/commands/<module>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.  Modules are imported only when their
command runs, so ``slidergan --help`` is instant.

Exit status: 0 success (a stage's rejected inputs do not fail it while they stay under
``pipeline.max_reject_fraction``); 2 usage/configuration error, including an unreadable or
corrupt input file such as ``model.h5`` (one line, no traceback); 1 failure: failed chunks,
too many rejects, or an internal error (one line; ``SLIDERGAN_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (module under workflows.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run every stage on the offline demo world and write the HTML report"),
    "make-demo": ("make_demo", "build the offline demo world (3DMM, photos, 4DFAB meshes, LRW sequences)"),
    "build-model": ("build_model", "build model.h5 from LSFM + 4DFAB files, or the demo 3DMM (--demo)"),
    "calibrate-landmarks": ("calibrate_landmarks", "learn the detector-to-model landmark calibration from renders of a model"),
    "fit-emotionet": ("fit_emotionet", "detect, landmark, fit the 3DMM to and align every image (shard stage)"),
    "fit-lrw": ("fit_lrw", "fit the 3DMM to LRW videos + LRW-3D speech parameters -> 40-vectors (shard stage)"),
    "render-warps": ("render_warps", "render random-expression 3D warps of fitted photos (shard stage)"),
    "project-4dfab": ("project_4dfab", "project 4DFAB meshes to expression parameters and render them (shard stage)"),
    "train": ("train", "train SliderGAN (variants rad, wgp, ganimation and ablations)"),
    "train-identity": ("train_identity", "train the identity embedder with an ArcFace loss on identity-labelled shards"),
    "train-reader": ("train_reader", "train the independent expression reader (face crop -> parameters) on the run's warps"),
    "compare": ("compare", "train variants over several seeds and compare them on held-out data (mean, spread)"),
    "evaluate": ("evaluate", "evaluate checkpoints: IED, regression error, identity, figures, HTML report"),
    "bench": ("bench", "run the benchmarks and write bench.json"),
    "shards": ("shards", "inspect shard stages: 'shards verify DIR', 'shards info DIR'"),
    "edit": ("edit", "edit the expression of one photo with a trained checkpoint"),
    "serve": ("serve", "slider editor web page for a trained checkpoint"),
}


class UsageError(Exception):
    """Bad command-line usage; one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + error by default)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<15} {desc}" for name, (_, desc) in COMMANDS.items()]
    p = _Parser(
        prog="slidergan",
        description="SliderGAN: edit facial expressions by sliding 3D blendshape parameters.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'slidergan COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", help="one of the commands below")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def _input_file_error(exc: BaseException) -> bool:
    """A malformed input file that reached the top (``fitting.model.ModelError``): like a
    configuration error, the user fixes it, not the code -> exit 2."""
    model = sys.modules.get("fitting.model")
    return model is not None and isinstance(exc, getattr(model, "ModelError", ()))


def _format_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else exc.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        from workflows import __version__
        print(__version__)
        return 0
    name = argv[0]
    if name.startswith("-"):
        top.error(f"unknown option {name!r} (see 'slidergan --help')")
    if name not in COMMANDS:
        top.error(f"unknown command {name!r} (see 'slidergan --help')")
    module_name, desc = COMMANDS[name]
    from pipeline.config import ConfigError

    try:
        module = importlib.import_module(f"workflows.commands.{module_name}")
    except ModuleNotFoundError as e:
        sys.stderr.write(f"slidergan {name}: error: not available ({e})\n")
        return 1
    parser = _Parser(prog=f"slidergan {name}", description=desc)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    args.command = name
    try:
        rc = module.run(args)
        return 0 if rc is None else int(rc)
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"slidergan {name}: error: {_format_error(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"slidergan {name}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 — top-level guard: one line, no traceback
        if os.environ.get("SLIDERGAN_DEBUG"):
            raise
        if _input_file_error(e):
            sys.stderr.write(f"slidergan {name}: error: {_format_error(e)}\n")
            return 2
        sys.stderr.write(f"slidergan {name}: error: {e.__class__.__name__}: {_format_error(e)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
