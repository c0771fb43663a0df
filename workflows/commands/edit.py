"""``slidergan edit``: edit the expression of one photo with a trained checkpoint.

``--params`` takes the target parameters as inline JSON (``'{"smile": 1.0, "jaw_open": 0.5}'``)
or a JSON file: a list of E numbers, or a ``{name: value}`` mapping over the model's
expression names (missing names are 0).  ``--params-from PHOTO2`` instead
transfers the expression of a second photo, read by the expression reader, D's regression
head or the 3D fit (``--regressor``), clipped to [-1, 1] like the editor's sliders.  The output is the edited
aligned crop, or with ``--paste-back`` the whole photo with the edited crop blended in.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from pipeline.config import ConfigError
from workflows.common import add_config_options, config_from_args

HELP = "edit the expression of one photo with a trained checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("image", metavar="IMAGE", help="photo to edit (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", required=True, metavar="C", help="checkpoint file or training folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", metavar="JSON|p.json",
                     help="target parameters, inline JSON or a JSON file: a list of E numbers or a "
                          "{name: value} mapping, e.g. '{\"smile\": 1.0, \"jaw_open\": 0.5}'")
    src.add_argument("--params-from", metavar="PHOTO2",
                     help="expression transfer: the target parameters are read from a second photo (see --regressor)")
    p.add_argument("--regressor", choices=("auto", "reader", "D", "fit"), default="auto",
                   help="with --params-from: who reads PHOTO2's parameters: the expression reader, D's regression "
                        "head or the 3D fit (default auto: the reader when one is loaded, else D)")
    p.add_argument("--reader", default="auto", metavar="F|auto|none",
                   help="expression reader file (slidergan train-reader; default auto: RUN/reader/reader.pt of the "
                        "checkpoint's run folder when there)")
    p.add_argument("--model", default=None, metavar="F", help="3DMM (default: model.h5 of the checkpoint's run folder)")
    p.add_argument("--out", required=True, metavar="OUT.png", help="output image (PNG or JPEG by suffix)")
    p.add_argument("--paste-back", action="store_true", help="write the whole photo with the edit pasted back")
    p.add_argument("--landmarks", choices=("auto", "sidecar", "detect"), default="auto",
                   help="auto (default): the photo's .pts sidecar when present, else detect with dlib")


def read_params(text) -> object:
    """The raw JSON value of ``--params`` (checked against the model by Editor.check_params):
    inline JSON when it starts with ``[`` or ``{``, else the name of a JSON file."""
    s = str(text).strip()
    if s.startswith(("[", "{")):
        where, raw = "--params", s
    else:
        p = Path(text)
        if not p.is_file():
            raise ConfigError(f"--params: neither inline JSON (starting with '[' or '{{') nor a file: {text}")
        try:
            where, raw = str(text), p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{text}: not valid JSON ({str(e).splitlines()[0]})") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: expected a list of numbers or a {{name: value}} mapping")
    return value


def write_image_atomic(image, out: Path) -> None:
    from PIL import Image

    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out must end in .png, .jpg or .jpeg, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image).save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from workflows.editor.imaging import read_image_file

    image_path = Path(args.image)
    if not image_path.is_file():
        raise ConfigError(f"image not found: {args.image}")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ConfigError(f"--out must end in .png, .jpg or .jpeg, got {out.name}")
    if not Path(args.checkpoint).exists():
        raise ConfigError(f"checkpoint not found: {args.checkpoint}")
    if args.model and not Path(args.model).is_file():
        raise ConfigError(f"3DMM file not found: {args.model}")
    if args.reader not in ("auto", "none") and not Path(args.reader).is_file():
        raise ConfigError(f"reader file not found: {args.reader}")
    if args.params_from is not None and not Path(args.params_from).is_file():
        raise ConfigError(f"image not found: {args.params_from}")
    cfg = config_from_args(args)
    raw = read_params(args.params) if args.params is not None else None
    image = read_image_file(image_path)  # cheap checks first: torch is imported below
    image2 = read_image_file(Path(args.params_from)) if args.params_from is not None else None

    from workflows.editor.core import Editor
    from workflows.editor.fitbridge import read_landmarks_sidecar

    editor = Editor.from_files(args.checkpoint, args.model, reader=args.reader, config=cfg)
    if editor.reader_note:
        print(f"note: {editor.reader_note}", file=sys.stderr, flush=True)

    def landmarks_of(path: Path):
        if args.landmarks == "detect":
            return None
        lm = read_landmarks_sidecar(path)
        if lm is None and args.landmarks == "sidecar":
            raise ConfigError(f"no landmark sidecar (.pts/.ljson) beside {path}")
        return lm

    how = ""
    if raw is not None:
        p = editor.check_params(raw)
    else:
        src = Path(args.params_from)
        regressor = args.regressor if args.regressor != "auto" else ("reader" if editor.reader is not None else "D")
        face2 = editor.prepare(image2, key=src.name, landmarks=landmarks_of(src), domain=editor.domain_of(src))
        p = face2.p_exp.copy() if regressor == "fit" else editor.regress(face2, regressor)
        p = np.clip(p, -1.0, 1.0).astype(np.float32)
        how = f", parameters of {src.name} by {regressor}"
    face = editor.prepare(image, key=image_path.name, landmarks=landmarks_of(image_path),
                          domain=editor.domain_of(image_path))
    edited = editor.edit(face, p)
    result = editor.paste(face, edited) if args.paste_back else edited
    write_image_atomic(result, out)
    print(f"wrote {out} ({result.shape[1]}x{result.shape[0]}, fit error {face.fit_error:.3f}, "
          f"landmarks {face.landmark_source}{how})")
    return 0
