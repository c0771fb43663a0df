"""tests/warps fixtures.

* Put the repository root first on sys.path: with tests/ on sys.path (pytest's rootdir
  conftest), ``import render`` could resolve to the tests/render folder as a namespace
  package.
* ``SLIDERGAN_TEST_WORLD=/path`` reuses an existing tiny world (made with the command line
  of tests/conftest.py) while iterating; unset, the shared session fixtures are used.
"""
import os
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
for _name in ("render", "fitting"):
    if _name in sys.modules and getattr(sys.modules[_name], "__file__", None) is None:
        for k in [k for k in list(sys.modules) if k == _name or k.startswith(_name + ".")]:
            del sys.modules[k]

_WORLD = os.environ.get("SLIDERGAN_TEST_WORLD")

if _WORLD:
    @pytest.fixture(scope="session")
    def tiny_world():
        return Path(_WORLD)
