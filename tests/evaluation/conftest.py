"""Fixtures for the evaluation tests (builders in ``evalfixtures.py``)."""
import pytest

from tests.evaluation.evalfixtures import build_checkpoints, build_eval_run


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
