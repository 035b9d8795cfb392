"""A shard retried after a transient failure counts each of its rows once (issue 10, item 9;
issue 11: the runner retries it, from its checkpoint, within RunSettings.retry_budget_s).

The scenario that used to miscount: an earlier run delivered the first 3,000 rows of a
10,000-row file; the rerun skips them, delivers more, hits a transient failure and retries the
file. The retry used to count the 3,000 rows skipped by its first attempt as skipped again
(rows_read 13,000, rows_skipped 6,000).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import expected_ids, write_payments
from tests.runner import run_plain, strict_settings

pytestmark = pytest.mark.integration


def test_file_retry_counts_each_row_once(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10_000)
    settings = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        retry_attempts=2,
        adaptive_rate=False,
        chunks_in_flight=1,
        max_in_flight=1,
    )
    # Run 1 delivers exactly 3 chunks (6 calls of 500 records), then the stream disappears.
    strict_firehose.configure(delete_stream_after_calls=6)
    first, error = run_plain(settings)
    assert error is not None and first.actions_sent == 3_000
    strict_firehose.reset_faults()
    strict_firehose.create_stream(firehose_stream)

    def throttle_for_a_while() -> None:  # a transient outage once 3 more chunks were stored
        while len(strict_firehose.records(firehose_stream)) < 6_000:
            time.sleep(0.005)
        strict_firehose.configure(throttle_rate=1.0)
        time.sleep(2.0)
        strict_firehose.configure(throttle_rate=0.0)

    chaos = threading.Thread(target=throttle_for_a_while, daemon=True)
    chaos.start()
    summary, error = run_plain(settings)
    chaos.join(timeout=30)
    assert error is None, error
    result = summary.to_dict()
    assert result["status"] == "complete"
    assert result["rows_read"] == 10_000
    assert result["rows_skipped"] == 3_000  # delivered by run 1, counted once
    assert result["actions_sent"] == 7_000
    assert result["accounted"]
    # The re-created stream holds what run 2 sent: every row after the first 3,000.
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(3_001, 7_000)
