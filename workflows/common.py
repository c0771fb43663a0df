"""Options and helpers shared by the CLI commands."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.config import Config, ConfigError, load_config


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML preset (default config/demo.yaml; 'paper' = config/paper.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.batch_size=16 (repeatable)")


def add_stage_options(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    """The options every shard-stage command accepts (docs/INTERFACES.md, Command line)."""
    add_config_options(p)
    p.add_argument("--out", required=out_required, metavar="DIR", help="stage output folder")
    p.add_argument("--force", action="store_true", help="recompute every chunk")
    p.add_argument("--only", type=int, default=None, metavar="CHUNK", help="recompute one chunk")
    p.add_argument("--cluster", default="local", metavar="local|slurm|tcp://HOST:PORT",
                   help="Dask scheduler: LocalCluster (default), SLURM via dask-jobqueue, or an existing scheduler")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="Dask workers (default: CPU count)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N", help="items per shard")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []) or [])


def require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return p


def require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{what} not found: {path}")
    return p


def run_stage_with_preview(stage, args: argparse.Namespace, default_chunk_size: int, write_preview) -> int:
    """Run a shard stage from CLI options, then write its contact sheet (``write_preview(out)``);
    a failing preview is a warning, never a failed stage. Returns the exit status."""
    from pipeline.runner import run_stage_from_args

    report = run_stage_from_args(stage, args, default_chunk_size=default_chunk_size)
    if report.ok:
        try:
            path = write_preview(args.out)
            if path is not None and not args.no_progress:
                print(f"preview: {path}")
        except Exception as e:  # noqa: BLE001 — the preview is a convenience, never fails the stage
            print(f"warning: preview not written ({e.__class__.__name__}: {e})")
    return int(report)
