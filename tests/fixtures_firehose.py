"""Fixtures for the strict Firehose endpoint (a pytest plugin, registered in tests/conftest.py).

* ``strict_firehose`` (session): one `StrictFirehose` on 127.0.0.1, started once, stopped at
  the end of the session.
* ``strict_firehose_client`` (session): a boto3 Firehose client for it, botocore retries off.
* ``firehose_stream`` (function): a fresh, uniquely named stream; faults are reset and the
  fault generator reseeded (seed 0) before the test, and reset again after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.firehose_client import make_firehose_client
from tests.standins.strict_firehose import StrictFirehose


@pytest.fixture(scope="session")
def strict_firehose() -> Iterator[StrictFirehose]:
    with StrictFirehose(seed=0) as server:
        yield server


@pytest.fixture(scope="session")
def strict_firehose_client(strict_firehose: StrictFirehose) -> Any:
    return make_firehose_client(region="us-east-1", endpoint_url=strict_firehose.endpoint_url)


@pytest.fixture
def firehose_stream(strict_firehose: StrictFirehose) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:16]}"
    strict_firehose.reset_faults()
    strict_firehose.reseed(0)
    strict_firehose.create_stream(name)
    yield name
    strict_firehose.reset_faults()
