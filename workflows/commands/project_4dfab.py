"""slidergan project-4dfab: expression parameters of registered 4DFAB meshes + renders (shard stage)."""
from __future__ import annotations

HELP = "project 4DFAB meshes to expression parameters and render them (shard stage)"


def add_arguments(p):
    from workflows.common import add_stage_options

    p.add_argument("--meshes", required=True, metavar="DIR",
                   help="mesh folder: <identity>/<session>/.../<frame>.obj|.ply (4DFAB layout, recursive)")
    p.add_argument("--model", required=True, metavar="F", help="3DMM model.h5")
    p.add_argument("--correspondence", default=None, metavar="FILE",
                   help="vertex index map (.npy/.json/.txt, one mesh vertex index per model vertex) for meshes "
                        "whose vertex count differs from the model")
    p.add_argument("--method", default=None, choices=("projection", "joint"),
                   help="which estimate goes into p_exp (project.method; both are always stored)")
    add_stage_options(p)


def run(args) -> int:
    from workflows.common import config_from_args, run_stage_with_preview
    from workflows.stages.project_4dfab import build_stage, write_preview

    cfg = config_from_args(args)
    pcfg = cfg.section("project")
    if args.method:
        pcfg["method"] = args.method
    render_cfg = cfg.section("render") if "render" in cfg else {}
    stage = build_stage(args.meshes, args.model, pcfg, seed=int(cfg.get("seed", 0)),
                        correspondence=args.correspondence, size=int(render_cfg.get("size", 128)),
                        backend=str(render_cfg.get("backend", "fast")))
    return run_stage_with_preview(stage, args, int(pcfg.get("chunk_size", 64)), write_preview)
