"""One run model (issue 11): a run in one process and a run on Dask are the same sharded run.

* a job stopped part-way in one process is finished on a local Dask cluster of 2 workers, and
  the other way round: every row delivered, nothing the first run had committed sent again,
  duplicates at most the chunks in flight when the first run stopped;
* the job's own state holds no file (a chunk commit rewrites only its shard's one-file state);
* several shards at once in one process (shards_in_flight) deliver the same set;
* the core's retries: a transient failure is retried within RunSettings.retry_budget_s (the
  budget's backoff is exponential and shared by the whole run); budget 0 stops at once.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connectors.checkpoint_local import LocalCheckpointStore
from moesif_backfill.errors import PermanentDeliveryError, TransientDeliveryError
from pipeline.scheduler import RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S, RetryBudget
from pipeline.settings import RunSettings
from tests.datasets import expected_ids, write_payments
from tests.runner import run_plain, strict_settings

CHUNK = 250  # one call per chunk; a.parquet (row groups of 5,000) in 3 shards
ALL = expected_ids(1, 12_000) | expected_ids(20_001, 1_500)


def _inputs(tmp_path: Path) -> list[Path]:
    return [
        write_payments(tmp_path / "in" / "a.parquet", 1, 12_000),
        write_payments(tmp_path / "in" / "b.parquet", 20_001, 1_500),
    ]


def _settings(tmp_path: Path, server: Any, stream: str, **kw: Any) -> RunSettings:
    return strict_settings(
        tmp_path,
        _inputs(tmp_path),
        server,
        stream,
        chunk_rows=CHUNK,
        chunks_in_flight=1,
        max_in_flight=1,
        adaptive_rate=False,
        **kw,
    )


def _stop_part_way(settings: RunSettings, server: Any, stream: str, calls: int) -> set[str]:
    """Run until the stream disappears after `calls` calls; what was delivered, the stream
    then re-created empty."""
    server.configure(delete_stream_after_calls=calls)
    summary, error = run_plain(settings)
    assert isinstance(error, PermanentDeliveryError), error
    assert summary.accounted and 0 < summary.actions_sent < len(ALL)
    delivered = server.transaction_ids(stream)
    assert len(delivered) == len(set(delivered))
    server.reset_faults()
    server.create_stream(stream)
    return set(delivered)


def _finish(settings: RunSettings, server: Any, stream: str, first: set[str], most: int) -> None:
    summary, error = run_plain(settings)
    assert error is None, error
    assert summary.status == "complete" and summary.accounted
    again = server.transaction_ids(stream)
    assert len(again) == len(set(again))
    assert first | set(again) == ALL  # no gap
    resent = first & set(again)
    assert len(resent) <= most, len(resent)  # at most the chunks in flight, sent again
    assert summary.rows_skipped == len(first) - len(resent)
    assert summary.job_totals == {"rows_sent": len(ALL), "rows_rejected": 0, "files_complete": 2}


@pytest.mark.integration
@pytest.mark.e2e
def test_started_in_one_process_finished_on_dask(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    one = _settings(tmp_path, strict_firehose, firehose_stream)
    first = _stop_part_way(one, strict_firehose, firehose_stream, calls=30)
    # one shard at a time, one call at a time: exactly 30 chunks committed, no partial chunk
    assert len(first) == 30 * CHUNK
    _finish(one.model_copy(update={"workers": 2}), strict_firehose, firehose_stream, first, 0)


@pytest.mark.integration
@pytest.mark.e2e
def test_started_on_dask_finished_in_one_process(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    dask = _settings(tmp_path, strict_firehose, firehose_stream, workers=2)
    first = _stop_part_way(dask, strict_firehose, firehose_stream, calls=20)
    # every shard running when the stream went may have had its chunk half-delivered
    _finish(
        dask.model_copy(update={"workers": None}),
        strict_firehose,
        firehose_stream,
        first,
        2 * CHUNK,
    )


@pytest.mark.integration
def test_job_state_holds_no_file_and_shards_in_flight_deliver_the_same_set(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    s = _settings(tmp_path, strict_firehose, firehose_stream, shards_in_flight=3)
    summary, error = run_plain(s)
    assert error is None and summary.actions_sent == len(ALL) and summary.accounted
    assert summary.files_complete == 2
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == ALL and max(Counter(delivered).values()) == 1
    store = LocalCheckpointStore(s.checkpoint)
    state = store.load("test-job")
    assert state is not None and state.files == {}
    shards = sorted((tmp_path / "ckpt").glob("test-job.shard-*"))
    assert len(shards) == 4  # a.parquet: 3 ranges of row groups; b.parquet: 1
    for d in shards:
        body = json.loads((d / "state.json").read_text())["body"]
        assert len(body["files"]) == 1
    again, error = run_plain(s)
    assert error is None and again.actions_sent == 0 and again.rows_skipped == len(ALL)


def test_retry_budget_backs_off_exponentially_within_the_run_budget() -> None:
    budget = RetryBudget(10.0)
    assert budget.take("a") == RETRY_FIRST_DELAY_S
    assert budget.take("a") == 2 * RETRY_FIRST_DELAY_S
    assert budget.take("b") == RETRY_FIRST_DELAY_S  # each shard backs off on its own ...
    assert budget.take("a") == 4 * RETRY_FIRST_DELAY_S
    left = 10.0 - 8 * RETRY_FIRST_DELAY_S
    assert budget.take("a") == pytest.approx(left)  # ... from one budget for the whole run
    assert budget.take("b") is None
    assert RetryBudget(0).take("a") is None
    big = RetryBudget(1e9)
    assert max(big.take("a") or 0 for _ in range(20)) == RETRY_MAX_DELAY_S


@pytest.mark.integration
def test_transient_failure_is_retried_by_the_runner_within_the_budget(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_000)
    s = strict_settings(
        tmp_path, [src], strict_firehose, firehose_stream, retry_attempts=1, retry_budget_s=0
    )
    strict_firehose.configure(throttle_rate=1.0)
    summary, error = run_plain(s)  # no budget: the first transient failure stops the run
    assert isinstance(error, TransientDeliveryError) and summary.actions_sent == 0
    strict_firehose.configure(throttle_rate=0.3)
    retried = s.model_copy(update={"retry_budget_s": 60.0, "chunk_rows": 100})
    summary, error = run_plain(retried)  # a throttled call now and then: retried, completes
    assert error is None, error
    assert summary.actions_sent == 1_000 and summary.accounted and summary.rows_skipped == 0
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 1_000)
    assert summary.throttled_calls > 0  # it was retried
