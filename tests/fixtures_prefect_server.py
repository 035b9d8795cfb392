"""A real `prefect server start` on 127.0.0.1 for the whole session (a pytest plugin).

Started lazily, only by the tests that need schedules, work pools, workers or Dask workers;
stopped at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standins.prefect_server import PrefectServer


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    with PrefectServer() as server:
        yield server
