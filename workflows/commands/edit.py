"""``slidergan edit``: edit the expression of one photo with a trained checkpoint.

``p.json`` holds the target parameters: a list of E numbers, or a ``{name: value}`` mapping
over the model's expression names (missing names are 0).  The output is the edited
aligned crop, or with ``--paste-back`` the whole photo with the edited crop blended in.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from pipeline.config import ConfigError

HELP = "edit the expression of one photo with a trained checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="photo to edit (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", required=True, metavar="C", help="checkpoint file or training folder")
    p.add_argument("--params", required=True, metavar="p.json",
                   help="target parameters: a JSON list of E numbers or a {name: value} mapping")
    p.add_argument("--model", default=None, metavar="F", help="3DMM (default: model.h5 of the checkpoint's run folder)")
    p.add_argument("--out", required=True, metavar="OUT.png", help="output image (PNG or JPEG by suffix)")
    p.add_argument("--paste-back", action="store_true", help="write the whole photo with the edit pasted back")
    p.add_argument("--landmarks", choices=("auto", "sidecar", "detect"), default="auto",
                   help="auto (default): the photo's .pts sidecar when present, else detect with dlib")


def read_params(path) -> object:
    """The raw JSON value of a parameter file (checked against the model by Editor.check_params)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"parameter file not found: {path}")
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(value, (list, dict)):
        raise ConfigError(f"{path}: expected a list of numbers or a {{name: value}} mapping")
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
    raw = read_params(args.params)
    image = read_image_file(image_path)  # cheap checks first: torch is imported below

    from workflows.editor.core import Editor
    from workflows.editor.fitbridge import read_landmarks_sidecar

    editor = Editor.from_files(args.checkpoint, args.model)
    p = editor.check_params(raw)
    landmarks = None
    if args.landmarks != "detect":
        landmarks = read_landmarks_sidecar(image_path)
        if landmarks is None and args.landmarks == "sidecar":
            raise ConfigError(f"no landmark sidecar (.pts/.ljson) beside {image_path}")
    face = editor.prepare(image, key=image_path.name, landmarks=landmarks)
    edited = editor.edit(face, p)
    result = editor.paste(face, edited) if args.paste_back else edited
    write_image_atomic(result, out)
    print(f"wrote {out} ({result.shape[1]}x{result.shape[0]}, fit error {face.fit_error:.3f}, "
          f"landmarks {face.landmark_source})")
    return 0
