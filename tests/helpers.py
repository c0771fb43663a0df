"""Helpers shared by every test folder, imported as ``tests.helpers`` (``tests/`` is a
package tree, so pytest imports each test module under its dotted name, ``tests.<part>.<file>``,
and the folders named like the library packages never shadow them):

* ``slidergan``: the command line (``python -m workflows ...``) in a subprocess;
* ``TINY_WORLD`` / ``sets``: the sizes of the tiny demo world the session fixtures build;
* ``save_checkpoint``: a tiny randomly initialised (G, D) in the ``slidergan-ckpt/1`` format.

Folder-specific builders stay beside their tests (``tests/evaluation/evalfixtures.py``,
``tests/fitting/fit_helpers.py``, ``tests/train/tiny.py``, ``tests/lrw/helpers_lrw.py``,
``tests/render/render_testutil.py``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

# Sizes of the tiny world used by tests (the full demo world is `make demo`'s business).
TINY_WORLD = [
    "demo.faces=24", "demo.identities=8", "demo.identities_4dfab=4", "demo.sessions_4dfab=2",
    "demo.frames_4dfab=3", "demo.lrw_sequences=2", "demo.lrw_frames=6", "demo.chunk_size=12",
    "demo.calibration_faces=60",
]

#: a tiny 64x64 network (the demo preset's image size; shard crops are 128 and are resized)
TINY_MODEL_CONFIG = {"image_size": 64, "c_dim": 30, "g_conv_dim": 8, "g_repeat": 1, "d_conv_dim": 8,
                     "d_repeat": 2}


def sets(items) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    out = []
    for it in items:
        out += ["--set", it]
    return out


def slidergan(*args, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m workflows ARGS`` from the repository root in a subprocess (text output).
    ``check``: raise AssertionError (with the output's tail) on a non-zero exit; ``env``:
    variables added to this process's environment."""
    e = dict(os.environ)
    e.setdefault("PYOPENGL_PLATFORM", "osmesa")
    e.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "workflows", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f"slidergan {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def checkpoint_state(model_config: dict = TINY_MODEL_CONFIG, variant: str = "rad", step: int = 0,
                     phase: str = "paired", seed: int = 0) -> dict:
    """A randomly initialised (G, D) (``torch.manual_seed(seed)``) as the dictionary a
    ``slidergan-ckpt/1`` file holds (docs/INTERFACES.md, "Checkpoint")."""
    import torch

    from model.networks import build_networks

    torch.manual_seed(seed)
    G, D = build_networks(model_config)
    return {"format": "slidergan-ckpt/1", "variant": variant, "step": step, "phase": phase,
            "model_config": dict(model_config), "G": G.state_dict(), "D": D.state_dict()}


def save_checkpoint(path: Path, model_config: dict = TINY_MODEL_CONFIG, variant: str = "rad", step: int = 0,
                    phase: str = "paired", seed: int = 0) -> Path:
    """``checkpoint_state(...)`` written to ``path`` (parents made); returns ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_state(model_config, variant, step, phase, seed), path)
    return path
