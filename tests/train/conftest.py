from pathlib import Path

import pytest

from tests.train.tiny import make_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """RUN folder with fits (8 photos), warps (3 per photo), 4dfab-params (8 renders), 32x32."""
    return make_tiny_run(tmp_path_factory.mktemp("trainrun") / "run")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run fastest (and reproducibly) on one thread on a shared 2-core box."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
