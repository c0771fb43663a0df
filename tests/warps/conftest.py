"""tests/warps fixtures.

``SLIDERGAN_TEST_WORLD=/path`` reuses an existing tiny world (made with the command line of
tests/conftest.py) while iterating; unset, the shared session fixtures are used.
"""
import os
from pathlib import Path

import pytest

_WORLD = os.environ.get("SLIDERGAN_TEST_WORLD")

if _WORLD:
    @pytest.fixture(scope="session")
    def tiny_world():
        return Path(_WORLD)
