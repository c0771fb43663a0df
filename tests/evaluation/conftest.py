"""Fixtures for the evaluation tests (builders in ``evalfixtures.py``).

Also makes ``import evaluation`` resolve to the package, not to this tests folder: the
editable install's finder runs after the path finder, so without the repository root on
``sys.path`` the folder ``tests/evaluation`` (a namespace package under pytest's rootdir
insertion) would shadow the ``evaluation`` package."""
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parents[1]), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from evalfixtures import build_checkpoints, build_eval_run  # noqa: E402


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory):
    return build_eval_run(tmp_path_factory.mktemp("evalrun"))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    return build_checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread while evaluation tests run (two OpenMP threads on a busy 2-core
    machine thrash, ~20x slower); restored afterwards so other parts' tests are unaffected."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
