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


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load one checkpoint (weights_only); ConfigError with one line when unreadable."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001 — corrupt / foreign file: one line
        raise ConfigError(f"cannot load checkpoint {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a {FORMAT} checkpoint")
    return ckpt


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
