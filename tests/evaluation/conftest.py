"""Make ``import evaluation`` resolve to the package, not to this tests folder.

The editable install's finder runs after the path finder, so without the repository root
on ``sys.path`` the folder ``tests/evaluation`` (a namespace package under pytest's
rootdir-relative path insertion) would shadow the ``evaluation`` package."""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
