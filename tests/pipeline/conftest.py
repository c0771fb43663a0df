from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session")
def dask_client():
    """One 2-worker LocalCluster (processes, 1 thread each) shared by the pipeline tests."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
