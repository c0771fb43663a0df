"""``slidergan make-demo``'s driver: builds (or completes) the demo world in a folder.

Orchestration only: the folder's lock, the ``_demo.json`` marker (a finished world with the
same params is a no-op), resuming from the chunk records, running the chunks as tasks
(:func:`pipeline.tasks.run_tasks`) and assembling the truth files and the preview.  What the
world is and how each item is made is the package :mod:`workflows.demoworld` (layout of the
folder there and in docs/demo_world.md).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from workflows.demoworld.chunks import chunk_record, make_preview, plan_chunks, record_ok, run_chunk, write_truth
from workflows.demoworld.params import (CHUNKS, FORMAT, KINDS, MARKER, WorldParams, load_model, mesh_items,
                                        params_hash)


def read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _clear_generated(out: Path) -> None:
    """Remove what a previous make-demo with other params generated (only our folders)."""
    for name in (*KINDS, CHUNKS):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
    for name in ("model.h5", "preview.png", MARKER):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def build_world(out: str | os.PathLike, P: WorldParams, chunk_size: int = 32, force: bool = False,
                cluster: str = "local", workers: int | None = None, progress: bool = True,
                log=print) -> dict:
    """Build (or complete) the demo world in ``out``; returns the marker dict.

    A finished world with the same params is left untouched (no-op); other params or
    ``force`` regenerate it; a partial world with the same params is completed."""
    from pipeline.atomic import atomic_write_json, remove_stale_temps
    from pipeline.config import ConfigError
    from pipeline.lock import StageLock
    from pipeline.tasks import run_tasks

    P.validate()
    if chunk_size < 1:
        raise ConfigError(f"demo.chunk_size must be >= 1, got {chunk_size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out exists and is not a folder: {out}")
    params = P.to_dict()
    phash = params_hash(params)
    with StageLock(out):
        marker = read_marker(out)
        if marker and marker.get("params_hash") == phash and not force:
            log(f"demo world in {out} is up to date (params {phash})")
            return marker
        if force or (marker and marker.get("params_hash") != phash) or not _records_match(out, phash):
            _clear_generated(out)
        for sub in (out, out / CHUNKS, *(out / k for k in KINDS)):
            sub.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(sub)
        model_path = out / "model.h5"
        if not model_path.exists():
            from fitting.demo_model import build_demo_model

            log(f"building the demo 3DMM (seed {P.seed}, {P.n_id} id, {P.n_exp} exp, {P.n_speech} speech)")
            build_demo_model(seed=P.seed, n_id=P.n_id, n_exp=P.n_exp, n_speech=P.n_speech).save(model_path)
        (out / CHUNKS / "params_hash").write_text(phash + "\n")
        model, _ = load_model(str(model_path))

        tasks = [t for t in plan_chunks(P, chunk_size) if not record_ok(chunk_record(out, t[0], t[1]), phash)]
        n_items = sum(len(t[2]) for t in tasks)
        log(f"generating {n_items} items in {len(tasks)} chunks ({P.faces} photos, "
            f"{len(mesh_items(P))} meshes, {P.lrw_sequences}x{P.lrw_frames} frames)")
        run_tasks(run_chunk, [(str(out), kind, chunk, items, params, phash) for kind, chunk, items in tasks],
                  cluster, workers, progress, desc="demo world")

        counts = {}
        for kind in KINDS:
            recs = sorted((out / CHUNKS).glob(f"{kind}-*.npz"))
            counts[kind] = write_truth(out / kind / "truth.h5", recs)
        make_preview(out, model, P)
        marker = {"format": FORMAT, "params": params, "params_hash": phash, "model_hash": model.hash,
                  "counts": counts}
        atomic_write_json(out / MARKER, marker)
        log(f"demo world ready in {out}: {counts['emotionet']} photos, {counts['4dfab']} meshes, "
            f"{counts['lrw']} sequence frames; preview {out / 'preview.png'}")
        return marker


def _records_match(out: Path, phash: str) -> bool:
    f = out / CHUNKS / "params_hash"
    try:
        return f.read_text().strip() == phash
    except OSError:
        return False
