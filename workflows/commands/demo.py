"""slidergan demo: every stage on the offline demo world, then the HTML report.

make-demo -> fit-emotionet -> render-warps -> project-4dfab -> fit-lrw -> render-warps (speech warps,
``--speech-config``) -> train (rad, ganimation, rad-speech: 40 parameters, its own preset
``config/demo-speech.yaml``; and the reader) side by side -> evaluate.
Each step is its own ``slidergan`` process, so a re-run reuses whatever
finished: stages skip complete shards, training resumes from (or stops at) its latest
checkpoint, and the evaluation is skipped when its inputs (checkpoints + config) are
unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from workflows.common import add_config_options, config_from_args
from workflows.jobs import run_parallel, run_step

HELP = "run every stage on the offline demo world and write the HTML report"


def add_arguments(p):
    add_config_options(p)
    p.add_argument("--out", default="runs/demo", metavar="R", help="run folder (default runs/demo)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="Dask workers for the stages")
    p.add_argument("--variants", default="rad,ganimation", metavar="V[,V]",
                   help="variants to train and compare (default rad,ganimation)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="cap training steps per variant")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-speech", dest="speech", action="store_false",
                   help="do not train the 40-parameter (expression + speech) RaD model rad-speech")
    p.add_argument("--speech-config", default="demo-speech", metavar="FILE",
                   help="preset of rad-speech and its speech warps (default config/demo-speech.yaml); "
                        "--set overrides apply to it too")


def _digest(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(str(p).encode())
        if p.exists():
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def run(args) -> int:
    cfg = config_from_args(args)  # validates --config/--set before anything runs
    if args.speech:
        from pipeline.config import load_config
        scfg = load_config(args.speech_config, args.overrides)    # and rad-speech's preset
    R = Path(args.out)
    R.mkdir(parents=True, exist_ok=True)
    sets = [x for s in args.overrides for x in ("--set", s)]
    common = (["--config", args.config] if args.config else []) + sets
    stage_opts = []
    if args.workers:
        stage_opts += ["--workers", str(args.workers)]
    if args.no_progress:
        stage_opts += ["--no-progress"]
    stage = common + stage_opts
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    t0 = time.perf_counter()
    model = str(R / "model.h5")
    run_step("make-demo", ["make-demo", "--out", str(R), *common])
    run_step("fit-emotionet", ["fit-emotionet", "--images", str(R / "emotionet"), "--model", model,
                            "--out", str(R / "fits"), *stage])
    run_step("render-warps", ["render-warps", "--fits", str(R / "fits"), "--model", model,
                           "--out", str(R / "warps"), *stage])
    run_step("project-4dfab", ["project-4dfab", "--meshes", str(R / "4dfab"), "--model", model,
                            "--out", str(R / "4dfab-params"), *stage])
    run_step("fit-lrw", ["fit-lrw", "--videos", str(R / "lrw" / "lipread_mp4"), "--speech", str(R / "lrw" / "lrw3d"),
                      "--model", model, "--out", str(R / "lrw-fits"), *stage])
    speech = ["--config", args.speech_config] + sets     # rad-speech's preset, the same overrides
    if args.speech:
        # rad-speech's paired data (config/demo-speech.yaml): the photo fits warped to small
        # expression changes plus speech (docs/speech.md, "Demo recipe")
        run_step("render-warps (speech)", ["render-warps", "--fits", str(R / "fits"), "--model", model,
                                           "--out", str(R / "warps-speech"), *speech, *stage_opts])
    ckpts, jobs = [], {}
    for v in variants:
        argv = ["train", "--data", str(R), "--variant", v, "--out", str(R / "train" / v), *common]
        if args.steps:
            argv += ["--steps", str(args.steps)]
        jobs[f"train {v}"] = (argv, R / "train" / f"{v}.log")
        ckpts.append(R / "train" / v / "checkpoints" / "latest.pt")
    if args.speech:
        # the 40-parameter model (docs/speech.md, "Demo recipe"): its own preset (--speech-config);
        # its steps are capped (train.demo_speech_steps of that preset) so that it shares the
        # second core with the short GANimation and reader runs
        v = "rad-speech"
        cap = int(scfg.section("train").get("demo_speech_steps", 0) or 0)
        steps = min(x for x in (args.steps, cap) if x) if (args.steps or cap) else 0
        argv = ["train", "--data", str(R), "--variant", "rad", "--out", str(R / "train" / v), *speech,
                "--set", "train.speech=true"]
        if steps:
            argv += ["--steps", str(steps)]
        jobs[f"train {v}"] = (argv, R / "train" / f"{v}.log")
        ckpts.append(R / "train" / v / "checkpoints" / "latest.pt")
    import importlib.util
    if importlib.util.find_spec("workflows.commands.train_reader") is not None:
        jobs["train-reader"] = (["train-reader", "--data", str(R), *common], R / "reader.log")
    run_parallel(jobs)
    E = R / "eval"
    stamp = E / ".inputs"
    digest = _digest(ckpts, json.dumps(cfg.to_dict(), sort_keys=True) + (args.speech_config if args.speech else ""))
    if (E / "index.html").exists() and stamp.exists() and stamp.read_text() == digest:
        print("\n==> evaluate: inputs unchanged, report reused", flush=True)
    else:
        argv = ["evaluate", "--checkpoint", str(ckpts[0]), "--data", str(R), "--out", str(E), *common]
        if len(ckpts) > 1:
            argv += ["--compare", *map(str, ckpts[1:])]
        run_step("evaluate", argv)
        tmp = stamp.with_name(".inputs.tmp")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; report: {E / 'index.html'}")
    return 0
