"""A local Dask cluster for the tests (2 worker processes on 127.0.0.1), one per test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """A client of a LocalCluster of 2 single-threaded worker processes, closed after the
    module's tests."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",  # no warning when 8787 is taken
        scheduler_kwargs={"dashboard": False},
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
