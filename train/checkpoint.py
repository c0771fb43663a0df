"""Full-state checkpoints (format ``slidergan-ckpt/1``, docs/INTERFACES.md).

``T/checkpoints/step-XXXXXXX.pt`` is written to a temporary name and renamed; then
``latest.pt`` is replaced by an atomic copy of it.  A ``kill -9`` at any moment leaves
either the previous or the new checkpoint under each final name.  Everything stored is a
tensor or a plain Python value (dict/list/tuple/str/int/float/bool/None), so files load
with ``torch.load(..., weights_only=True)``.

Keys: ``format``, ``variant``, ``step``, ``phase``, ``epoch``, ``batch`` (data-order state:
batches done in the current epoch), ``data_order`` (seed, batches per epoch per phase),
``model_config``, ``train_config``, ``G``, ``D``, ``opt_G``, ``opt_D``, ``scaler``, ``rng``
(python, numpy, torch, cuda, target sampler), ``identity`` (path/config of F, or None).
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_write_with, commit, temp_path
from pipeline.config import ConfigError

FORMAT = "slidergan-ckpt/1"
STEP_RE = re.compile(r"^step-(\d{7})\.pt$")


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_path(out: str | Path, step: int) -> Path:
    return checkpoint_dir(out) / f"step-{step:07d}.pt"


def save_checkpoint(out: str | Path, state: dict, keep: int = 0) -> Path:
    """Write ``state`` as step-XXXXXXX.pt and latest.pt atomically; keep the newest ``keep``
    step files (0 = keep all).  Returns the step file's path."""
    folder = checkpoint_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(state, format=FORMAT)
    path = step_path(out, int(state["step"]))
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))
    tmp = temp_path(folder / "latest.pt")
    try:
        shutil.copyfile(path, tmp)
        commit(tmp, folder / "latest.pt")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if keep > 0:
        steps = sorted(list_steps(out))
        for s in steps[:-keep]:
            step_path(out, s).unlink(missing_ok=True)
    return path


def list_steps(out: str | Path) -> list[int]:
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() for m in [STEP_RE.match(p.name)] if m)


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file or a folder: a training folder ``T`` (its newest complete
    checkpoint, :func:`latest_checkpoint`), ``T/checkpoints``, or a folder with ``latest.pt``.
    ConfigError (one line) when there is none."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p) or (latest_checkpoint(p.parent) if p.name == "checkpoints" else None)
        p = found if found is not None else p / "latest.pt"
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return p


def load_checkpoint(path: str | Path, map_location: Any = "cpu", *, variant: str | None = None,
                    require: tuple[str, ...] = ()) -> dict:
    """The one checkpoint loader (trainer resume, evaluation, editor, compare).

    ``path``: a file or a folder (:func:`resolve_checkpoint`).  Loads with
    ``weights_only=True`` and checks, each failure a :class:`ConfigError` of one line:
    the file exists and unpickles; ``format == "slidergan-ckpt/1"``; ``variant`` is a
    non-empty string (equal to ``variant`` when given); ``model_config`` passes
    ``model.networks.validate_model_config``; ``G`` (and every key in ``require``, e.g.
    ``("D",)``) is present.  Weights are matched against ``model_config`` by
    :func:`load_networks`."""
    from model.networks import ModelConfigError, validate_model_config

    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 — corrupt / foreign / truncated file: one line
        raise ConfigError(f"cannot load checkpoint {p}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{p}: not a SliderGAN checkpoint (format {fmt!r}: the file is not a {FORMAT} checkpoint)")
    got = ckpt.get("variant")
    if not isinstance(got, str) or not got:
        raise ConfigError(f"{p}: checkpoint has no variant name (got {got!r})")
    if variant is not None and got != variant:
        raise ConfigError(f"{p} holds a {got!r} run, not {variant!r}")
    for k in ("model_config", "G", *require):
        if ckpt.get(k) is None:
            raise ConfigError(f"{p}: checkpoint has no {k!r} entry")
    if not isinstance(ckpt["model_config"], dict):
        raise ConfigError(f"{p}: model_config is a {type(ckpt['model_config']).__name__}, not a dict")
    try:
        validate_model_config(ckpt["model_config"])
    except ModelConfigError as e:
        raise ConfigError(f"{p}: {str(e).splitlines()[0]}") from None
    return ckpt


def load_networks(ckpt: dict, device: Any = "cpu", path: str | Path = "checkpoint") -> tuple:
    """``(G, D)`` in eval mode on ``device`` with a loaded checkpoint's weights (D is None when
    the checkpoint has none); ConfigError (one line) when they do not fit its model_config."""
    from model.networks import ModelConfigError, load_from_checkpoint_state

    try:
        G, D, _ = load_from_checkpoint_state({k: v for k, v in ckpt.items() if v is not None})
    except (ModelConfigError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: weights do not match its model_config ({str(e).splitlines()[0]})") from None
    if ckpt.get("D") is None:
        D = None
    G.to(device).eval()
    if D is not None:
        D.to(device).eval()
    return G, D


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest step file (complete by construction), else ``latest.pt``, else None.

    The step file is preferred because a kill between writing it and copying it to
    ``latest.pt`` leaves ``latest.pt`` one checkpoint behind."""
    folder = checkpoint_dir(out)
    steps = list_steps(out)
    if steps:
        return step_path(out, steps[-1])
    return folder / "latest.pt" if (folder / "latest.pt").is_file() else None


def load_identity_file(path: str | Path) -> dict:
    """Load identity weights (our train-identity file or a raw iresnet state_dict)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"identity weights not found: {path}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot load identity weights {path}: {str(e).splitlines()[0] if str(e) else e}") from None


def save_identity_file(path: str | Path, config: dict, state_dict: dict, meta: dict | None = None) -> None:
    obj = {"format": "slidergan-identity/1", "config": dict(config),
           "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "meta": dict(meta or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


# -- RNG state as plain values ------------------------------------------------------------
def get_rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]],
           "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                     int(np_state[3]), float(np_state[4])],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
