"""``slidergan shards verify DIR`` / ``slidergan shards info DIR``.

verify: ``_stage.json`` is complete; every listed shard exists, has schema
``slidergan-shard/1``, the stage's params/model hash, ``n`` rows in every dataset, and the
sha256 listed in ``_stage.json``; ``rejects.jsonl`` parses.  Exit 1 naming each bad shard.
info: datasets (dtype, shape), row/shard counts, params, rejects summary.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

HELP = "inspect shard stages: 'shards verify DIR', 'shards info DIR'"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["verify", "info"], help="verify: check every shard; info: describe")
    p.add_argument("dir", metavar="DIR", help="a stage folder (holding _stage.json)")
    p.add_argument("--json", action="store_true", help="info: print JSON instead of text")


def verify(stage_dir: str | Path) -> list[str]:
    """Problems found in a stage folder, one line each, naming the shard ([] = good)."""
    from pipeline.shards import REJECTS_FILE, SCHEMA, open_shard, read_stage_json, sha256_file

    d = Path(stage_dir)
    meta = read_stage_json(d)
    problems = []
    if not meta.get("complete", False):
        problems.append(f"{d}: stage incomplete (failed {sorted(meta.get('failed', {}))}, "
                        f"missing {meta.get('missing', [])})")
    total = 0
    for s in meta.get("shards", []):
        path = d / s["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if sha256_file(path) != s["sha256"]:
            problems.append(f"{path}: sha256 differs from _stage.json (corrupt or modified)")
            continue
        try:
            with open_shard(path) as f:
                a = f.attrs
                want = {"schema": SCHEMA, "stage": meta["name"], "params_hash": meta["params_hash"],
                        "model_hash": meta.get("model_hash") or ""}
                for k, v in want.items():
                    got = a.get(k)
                    got = got.decode() if isinstance(got, bytes) else got
                    if got != v:
                        problems.append(f"{path}: attribute {k}={got!r}, expected {v!r}")
                if int(a.get("n", -1)) != int(s["n"]):
                    problems.append(f"{path}: n={a.get('n')} but _stage.json lists {s['n']}")
                for name in f:
                    if not name.startswith("_") and f[name].shape[0] != int(s["n"]):
                        problems.append(f"{path}: dataset {name} has {f[name].shape[0]} rows, expected {s['n']}")
                for name in meta.get("datasets", {}):
                    if int(s["n"]) > 0 and name not in f:
                        problems.append(f"{path}: dataset {name} missing")
        except OSError as e:
            problems.append(f"{path}: not readable as HDF5 ({str(e).splitlines()[0]})")
            continue
        total += int(s["n"])
    if not problems and total != meta.get("counts", {}).get("rows", total):
        problems.append(f"{d}: {total} rows in shards, _stage.json counts {meta['counts']['rows']}")
    rej = d / REJECTS_FILE
    if rej.is_file():
        for i, line in enumerate(rej.read_text(encoding="utf-8").splitlines(), 1):
            try:
                r = json.loads(line)
                assert isinstance(r, dict) and "key" in r and "reason" in r
            except (ValueError, AssertionError):
                problems.append(f"{rej}: line {i} is not a reject object")
                break
    return problems


def info(stage_dir: str | Path) -> dict:
    from pipeline.shards import ShardSet, read_stage_json

    meta = read_stage_json(stage_dir)
    ds = ShardSet(stage_dir, allow_incomplete=True)
    rejects = ds.rejects()
    return {
        "stage": meta["name"], "dir": str(stage_dir), "complete": meta.get("complete", False),
        "code_version": meta.get("code_version"), "params_hash": meta.get("params_hash"),
        "model_hash": meta.get("model_hash"), "params": meta.get("params"),
        "rows": len(ds), "shards": len(ds.files), "chunk_size": meta.get("chunk_size"),
        "datasets": {k: {"dtype": str(dt), "shape": list(shape)} for k, (dt, shape) in ds.datasets.items()},
        "rejects": len(rejects), "reject_reasons": dict(Counter(r["reason"] for r in rejects).most_common()),
        "failed": meta.get("failed", {}), "missing": meta.get("missing", []),
    }


def run(args) -> int:
    import sys

    if args.action == "verify":
        problems = verify(args.dir)
        for p in problems:
            sys.stderr.write(f"bad: {p}\n")
        if problems:
            return 1
        meta = json.loads((Path(args.dir) / "_stage.json").read_text())
        print(f"ok: {args.dir}: {len(meta['shards'])} shards, {meta['counts']['rows']} rows, "
              f"{meta['counts']['rejects']} rejects")
        return 0
    out = info(args.dir)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"stage {out['stage']} ({'complete' if out['complete'] else 'INCOMPLETE'}) in {out['dir']}")
    print(f"  code version {out['code_version']}, params_hash {out['params_hash']}, "
          f"model_hash {out['model_hash'] or '-'}")
    print(f"  params {json.dumps(out['params'], sort_keys=True)}")
    print(f"  {out['rows']} rows in {out['shards']} shards of {out['chunk_size']}")
    for k, v in out["datasets"].items():
        print(f"  {k:<14} {v['dtype']:<6} {tuple(v['shape'])}")
    reasons = ", ".join(f"{r}: {n}" for r, n in out["reject_reasons"].items())
    print(f"  rejects {out['rejects']}" + (f" ({reasons})" if reasons else ""))
    if out["failed"] or out["missing"]:
        print(f"  failed chunks {out['failed']}, missing chunks {out['missing']}")
    return 0
