"""slidergan compare --data RUN --variants rad,wgp,ganimation --seeds 0,1,2 --out C

Trains every variant with every training seed (``train.seed``; the held-out split and the
validation pairs keep the global seed, so all runs are measured on the same photos), then
evaluates all checkpoints side by side in one ``slidergan evaluate`` (metrics only, no
refit) and writes ``C/compare.json`` and ``C/compare.md``: per variant the mean and the
sample standard deviation over seeds of each metric in ``KEYS``, plus the copy-input and
3D-oracle baselines of the same evaluation.

A run of the global seed is reused from ``RUN/train/<variant>`` when ``slidergan demo``
(or ``make train``) already trained it there with the same preset; every other run trains
into ``C/<variant>-s<seed>`` and resumes from its latest checkpoint on a re-run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.atomic import atomic_write_text
from workflows.common import add_config_options, config_from_args, require_dir
from workflows.jobs import run_parallel, run_step

HELP = "train variants over several seeds and compare them on held-out data (mean, spread)"
KEYS = ("ied", "ied_vs_copy", "reader_vertex_error_trg", "reader_rel_error_trg", "exp_rel_error",
        "identity_cos", "identity_cos_dlib", "extra.train_val_l1", "extra.train_val_l1_copy",
        "extra.train_val_l1_wrong")
BASELINES = ("copy-input", "oracle-3d")


def add_arguments(p) -> None:
    add_config_options(p)
    p.add_argument("--data", required=True, metavar="RUN", help="run folder with fits/, warps/, 4dfab-params/")
    p.add_argument("--variants", default="rad,wgp,ganimation", metavar="V[,V]",
                   help="variants (default rad,wgp,ganimation)")
    p.add_argument("--seeds", default="0,1,2", metavar="S[,S]", help="training seeds (default 0,1,2)")
    p.add_argument("--out", default=None, metavar="C", help="output folder (default RUN/compare)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="cap training steps per run")
    p.add_argument("--jobs", type=int, default=2, metavar="N", help="training runs side by side (default 2)")


def _get(entry: dict, key: str):
    v = entry
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def summarise(metrics: dict, runs: dict[str, tuple[str, int]]) -> dict:
    """Mean and spread per variant over seeds.

    ``metrics``: the evaluation's metrics.json; ``runs``: checkpoint path -> (variant, seed).
    Returns ``{"variants": {v: {key: {"mean", "std", "n", "values"}}}, "baselines": {...}}``;
    ``std`` is the sample standard deviation (n - 1), None for a single value."""
    by_ckpt = {str(Path(e["checkpoint"]).resolve()): e for e in metrics.get("models", {}).values()
               if isinstance(e, dict) and e.get("checkpoint")}
    out: dict = {"variants": {}, "baselines": {}, "seeds": {}}
    for ck, (variant, seed) in runs.items():
        entry = by_ckpt.get(str(Path(ck).resolve()))
        if entry is None:
            raise RuntimeError(f"the evaluation has no entry for {ck}")
        out["seeds"].setdefault(variant, []).append(seed)
        for key in KEYS:
            v = _get(entry, key)
            if v is not None:
                out["variants"].setdefault(variant, {}).setdefault(key, {"values": []})["values"].append(v)
    for stats in out["variants"].values():
        for s in stats.values():
            vals = s["values"]
            n = len(vals)
            mean = sum(vals) / n
            s.update(n=n, mean=mean,
                     std=math.sqrt(sum((x - mean) ** 2 for x in vals) / (n - 1)) if n > 1 else None)
    for b in BASELINES:
        entry = metrics.get("baselines", {}).get(b)
        if isinstance(entry, dict):
            out["baselines"][b] = {k: _get(entry, k) for k in KEYS if _get(entry, k) is not None}
    return out


def markdown(summary: dict) -> str:
    keys = [k for k in KEYS if any(k in s for s in summary["variants"].values())
            or any(k in b for b in summary["baselines"].values())]
    lines = ["| row | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for v, stats in summary["variants"].items():
        cells = []
        for k in keys:
            s = stats.get(k)
            cells.append("-" if s is None else (f"{s['mean']:.4g} ± {s['std']:.2g}" if s["std"] is not None
                                                else f"{s['mean']:.4g}"))
        lines.append(f"| {v} | {','.join(map(str, summary['seeds'][v]))} | " + " | ".join(cells) + " |")
    for b, vals in summary["baselines"].items():
        lines.append(f"| {b} | - | " + " | ".join(f"{vals[k]:.4g}" if k in vals else "-" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    cfg = config_from_args(args)
    R = require_dir(args.data, "run folder")
    C = Path(args.out) if args.out else R / "compare"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not variants or not seeds:
        raise SystemExit("error: --variants and --seeds must name at least one each")
    common = (["--config", args.config] if args.config else []) + [x for s in args.overrides for x in ("--set", s)]
    global_seed = int(cfg.get("seed", 0))
    runs: dict[str, tuple[str, int]] = {}
    jobs = {}
    for v in variants:
        for seed in seeds:
            demo = R / "train" / v / "checkpoints" / "latest.pt"
            if seed == global_seed and cfg.section("train").get("seed") is None and demo.exists() \
                    and _same_preset(demo, cfg):
                print(f"{v} seed {seed}: reusing {demo}", flush=True)
                runs[str(demo)] = (v, seed)
                continue
            T = C / f"{v}-s{seed}"
            argv = ["train", "--data", str(R), "--variant", v, "--out", str(T), *common,
                    "--set", f"train.seed={seed}"]
            if args.steps:
                argv += ["--steps", str(args.steps)]
            jobs[f"train {v} seed {seed}"] = (argv, C / f"{v}-s{seed}.log")
            runs[str(T / "checkpoints" / "latest.pt")] = (v, seed)
    if jobs:
        run_parallel(jobs, max_jobs=args.jobs)
    ckpts = list(runs)
    E = C / "eval"
    run_step("evaluate", ["evaluate", "--checkpoint", ckpts[0], *(["--compare", *ckpts[1:]] if len(ckpts) > 1 else []),
                          "--data", str(R), "--out", str(E), "--no-figures", *common,
                          "--set", "evaluate.refit=false"])
    metrics = json.loads((E / "metrics.json").read_text())
    summary = summarise(metrics, runs)
    summary["runs"] = {ck: {"variant": v, "seed": s} for ck, (v, s) in runs.items()}
    atomic_write_text(C / "compare.json", json.dumps(summary, indent=2) + "\n")
    md = markdown(summary)
    atomic_write_text(C / "compare.md", md)
    print("\n" + md + f"\nwritten {C / 'compare.json'} and {C / 'compare.md'}", flush=True)
    return 0


def _same_preset(ckpt: Path, cfg) -> bool:
    """Whether a checkpoint was trained with this preset's train section (its stored config)."""
    from train.checkpoint import load_checkpoint
    try:
        stored = load_checkpoint(ckpt).get("train_config")
    except Exception:  # noqa: BLE001 — unreadable -> not reusable; the run trains anew
        return False
    if not isinstance(stored, dict):
        return False
    skip = {"variant", "device", "threads", "workers", "tensorboard"}
    return all(stored.get(k) == v for k, v in cfg.section("train").items() if k not in skip)
