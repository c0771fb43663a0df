"""Helpers shared by the test folders (a uniquely named module: several test folders have
their own ``conftest.py``, so ``from conftest import ...`` would be ambiguous)."""
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


def slidergan(*args: str, check: bool = True, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess; return the completed process (text output)."""
    e = dict(os.environ)
    e.setdefault("PYOPENGL_PLATFORM", "osmesa")
    if env:
        e.update(env)
    proc = subprocess.run([sys.executable, "-m", "workflows", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f"slidergan {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _sets(items):
    out = []
    for it in items:
        out += ["--set", it]
    return out
