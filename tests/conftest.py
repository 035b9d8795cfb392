"""Session-wide test setup.

Prefect gets a temporary PREFECT_HOME and no analytics before it is imported anywhere; the local
stand-ins (moto server, the strict Firehose endpoint, the HTTP-endpoint receiver) come from the
fixture plugins listed below, each started on 127.0.0.1 and stopped at the end of the session.
"""

from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="moesif-backfill-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Fake credentials for the local stand-ins; nothing here ever reaches AWS.
os.environ["AWS_ACCESS_KEY_ID"] = "testing-key-id"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret-key"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_PROFILE", None)

pytest_plugins = [
    "tests.fixtures_dask",
    "tests.fixtures_firehose",
    "tests.fixtures_moto",
    "tests.fixtures_prefect_server",
]


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api() -> object:
    """One temporary Prefect API for the whole session; subprocesses reach it by URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()
