"""slidergan bench: run every benchmark area and write one flat ``bench.json``.

Areas live in ``workflows/benchmarks/<area>.py`` with ``run(ctx) -> dict``.  A small demo
world is built once under ``B/world`` (reused on re-runs) and handed to every area.  An
area that fails leaves its keys out, is named on stderr and in ``B/bench_errors.json``,
and makes the command exit 1 after the other areas have run.  ``EXTRA_AREAS`` (``fit-scale``)
run only when ``--only`` names them; an area module with ``NEEDS_WORLD = False`` builds its own
data, and when every selected area does, ``B/world`` is not built.  Area options
(``--fit-scale-*``) reach the areas as ``ctx.options``.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ConfigError

HELP = "run the benchmarks and write bench.json"
AREAS = ["render", "pipeline", "fit", "warps", "loader", "train", "editor"]
#: areas run only when named in ``--only`` (long: ``fit-scale`` generates and fits thousands of photos)
EXTRA_AREAS = ["fit-scale"]
BENCH_WORLD = ["demo.faces=64", "demo.identities=16", "demo.identities_4dfab=4", "demo.sessions_4dfab=2",
               "demo.frames_4dfab=4", "demo.lrw_sequences=2", "demo.lrw_frames=8"]


@dataclass
class BenchContext:
    world: Path
    tmp: Path
    out: Path
    quick: bool
    options: dict = field(default_factory=dict)      # area options (--fit-scale-*)


def add_arguments(p):
    p.add_argument("--out", required=True, metavar="B", help="output folder (bench.json)")
    p.add_argument("--only", default=None, metavar="AREA[,AREA]", help=f"areas to run (of {', '.join(AREAS)}; "
                   f"only when named: {', '.join(EXTRA_AREAS)})")
    p.add_argument("--quick", action="store_true", help="smaller workloads (smoke run)")
    p.add_argument("--world", default=None, metavar="DIR", help="use this demo world instead of building one")
    p.add_argument("--fit-scale-faces", default=None, metavar="N,N",
                   help="fit-scale: photo counts to fit (default 1000,4000; --quick 64,256)")
    p.add_argument("--fit-scale-workers", default=None, metavar="W,W", help="fit-scale: worker counts (default 1,2)")
    p.add_argument("--fit-scale-chunk-size", default=None, type=int, metavar="N",
                   help="fit-scale: --chunk-size of the fit runs (default: the stage's fit.chunk_size)")


def _module(area: str) -> str:
    """``fit-scale`` -> ``workflows.benchmarks.fit_scale``."""
    return f"workflows.benchmarks.{area.replace('-', '_')}"


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run(args) -> int:
    out = Path(args.out)
    areas = AREAS if not args.only else [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in areas if a not in AREAS + EXTRA_AREAS]
    if unknown:
        raise ConfigError(f"unknown benchmark area(s) {', '.join(unknown)} (of {', '.join(AREAS + EXTRA_AREAS)})")
    out.mkdir(parents=True, exist_ok=True)
    world = Path(args.world) if args.world else out / "world"
    needs_world = any(getattr(importlib.import_module(_module(a)), "NEEDS_WORLD", True) for a in areas)
    if not args.world and needs_world:
        cmd = [sys.executable, "-m", "workflows", "make-demo", "--out", str(world)]
        for s in BENCH_WORLD:
            cmd += ["--set", s]
        print(f"bench: demo world at {world}", file=sys.stderr)
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError("building the benchmark demo world failed")
    tmp = out / "tmp"
    tmp.mkdir(exist_ok=True)
    options = {k: getattr(args, k, None) for k in ("fit_scale_faces", "fit_scale_workers", "fit_scale_chunk_size")}
    ctx = BenchContext(world=world, tmp=tmp, out=out, quick=bool(args.quick), options=options)
    results: dict = {}
    bench_path = out / "bench.json"
    if bench_path.exists() and args.only:
        try:
            results = json.loads(bench_path.read_text())
        except ValueError:
            results = {}
    errors = {}
    for area in areas:
        t0 = time.perf_counter()
        print(f"bench: {area} ...", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(_module(area))
            res = mod.run(ctx) or {}
            results.update(res)
            print(f"bench: {area} done in {time.perf_counter() - t0:.1f}s: "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
                  file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - one area failing must not lose the others
            errors[area] = f"{e.__class__.__name__}: {e}"
            (out / f"bench_{area}_traceback.txt").write_text(traceback.format_exc())
            print(f"bench: {area} FAILED: {errors[area]}", file=sys.stderr, flush=True)
        _atomic_json(bench_path, results)
    _atomic_json(out / "bench_errors.json", errors)
    print(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {bench_path}", file=sys.stderr)
    return 1 if errors else 0
