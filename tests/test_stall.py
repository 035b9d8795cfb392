"""The sender's stall bound (RunSettings.stall_timeout_s), against the strict Firehose stand-in:
a stream that acknowledges nothing fails its batches with DeliveryStalledError once the bound
is reached (whatever the attempts left); an idle stream is not stalled."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connectors.firehose import FirehoseSender, RetryPolicy
from moesif_backfill.errors import DeliveryStalledError
from tests.standins.strict_firehose import StrictFirehose

RECORDS = [b'{"action_name":"x","request":{"time":"2026-01-01T00:00:00Z"}}'] * 20


def test_a_stream_taking_nothing_fails_as_stalled_within_the_bound(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(server_error_rate=1.0)
    with FirehoseSender(
        strict_firehose_client,
        firehose_stream,
        retry=RetryPolicy(max_attempts=1000),
        stall_timeout_s=1.0,
    ) as sender:
        started = time.monotonic()
        future = sender.submit(RECORDS)
        with pytest.raises(DeliveryStalledError, match="acknowledged nothing for 1 s"):
            future.result(timeout=30)
        assert time.monotonic() - started < 3.0
        assert sender.stalled_for() >= 1.0


def test_an_idle_stream_is_not_stalled(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    with FirehoseSender(strict_firehose_client, firehose_stream, stall_timeout_s=0.5) as sender:
        assert sender.submit(RECORDS).result(timeout=30) == len(RECORDS)
        time.sleep(1.0)  # idle for twice the bound
        assert sender.stalled_for() == 0.0
        strict_firehose.configure(server_error_rate=0.5)  # some calls fail, some go through
        for _ in range(5):
            assert sender.submit(RECORDS).result(timeout=30) == len(RECORDS)
