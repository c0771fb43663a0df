"""``slidergan serve``: the slider editor web page for a trained checkpoint (docs/editor.md)."""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from pipeline.config import ConfigError
from workflows.common import add_config_options, config_from_args

HELP = "slider editor web page for a trained checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--checkpoint", required=True, metavar="C",
                   help="checkpoint file (T/checkpoints/latest.pt) or training folder T")
    p.add_argument("--model", default=None, metavar="model.h5",
                   help="3DMM used to fit photos (default: model.h5 of the checkpoint's run folder)")
    p.add_argument("--reader", default="auto", metavar="F|auto|none",
                   help="expression reader offered for transfer beside D (slidergan train-reader; default auto: "
                        "RUN/reader/reader.pt of the checkpoint's run folder when there)")
    p.add_argument("--photos", default=None, metavar="DIR",
                   help="folder of photos to pick from (default: emotionet/ of the run folder, when there)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20 MB)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest accepted image (decompression-bomb guard; default 40 megapixels)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for G (default 1: the 3D render runs beside G in its own thread, and "
                        "on a busy machine more threads slow a single image down)")
    p.add_argument("--sessions", type=int, default=32, help="browser tabs whose state is kept (LRU; default 32)")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.sessions < 1 or args.threads < 1:
        raise ConfigError("--max-upload-mb, --max-megapixels, --sessions and --threads must be positive")
    if not Path(args.checkpoint).exists():
        raise ConfigError(f"checkpoint not found: {args.checkpoint}")
    if args.model and not Path(args.model).is_file():
        raise ConfigError(f"3DMM file not found: {args.model}")
    if args.reader not in ("auto", "none") and not Path(args.reader).is_file():
        raise ConfigError(f"reader file not found: {args.reader}")
    cfg = config_from_args(args)
    photos = Path(args.photos) if args.photos else None
    if photos is not None and not photos.is_dir():
        raise ConfigError(f"photo folder not found: {photos}")
    import uvicorn  # cheap checks first: torch is imported below

    from workflows.editor.app import create_app
    from workflows.editor.core import Editor, find_model_file

    import torch

    torch.set_num_threads(args.threads)
    editor = Editor.from_files(args.checkpoint, args.model, reader=args.reader, config=cfg)
    if editor.reader_note:
        print(f"note: {editor.reader_note}", file=sys.stderr, flush=True)
    if photos is None:
        mfile = Path(args.model) if args.model else find_model_file(args.checkpoint)
        cand = mfile.parent / "emotionet" if mfile else None
        photos = cand if cand is not None and cand.is_dir() else None
    app = create_app(editor, photos, max_bytes=int(args.max_upload_mb * 1e6),
                     max_pixels=int(args.max_megapixels * 1e6), max_sessions=args.sessions)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"slidergan serve: editor at http://{shown}:{port}/  (checkpoint {args.checkpoint}, "
          f"{editor.n_params} parameters; transfer: {' | '.join(editor.regressors + ['fit'])}; "
          f"photos: {photos or 'upload only'}; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0
