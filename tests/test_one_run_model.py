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
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import pipeline.scheduler
from connectors.checkpoint_local import LocalCheckpointStore
from moesif_backfill.errors import PermanentDeliveryError, TransientDeliveryError
from pipeline.engine import Counts
from pipeline.job import run_job
from pipeline.layout import Shard, ShardTotals
from pipeline.scheduler import RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S, RetryBudget, run_shards
from pipeline.settings import RunSettings
from pipeline.shard_work import ShardResult
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


class _FakeHost:
    """The run's side of the scheduler, recording what it was told."""

    def __init__(self, budget_s: float) -> None:
        self.budget = RetryBudget(budget_s)
        self.absorbed: list[int] = []

    def work(self, shard: Shard) -> Any:
        return shard

    def absorb(self, shard: Shard, result: ShardResult) -> None:
        self.absorbed.append(shard.index)

    def reload(self, shard: Shard) -> None:
        return None

    def save_layout(self) -> None:
        return None


class _FakeRunner:
    """Runs nothing: each shard's attempts end as `script` says (an exception, or a result)."""

    def __init__(self, script: dict[int, list[BaseException | None]], slots: int) -> None:
        self.script, self.n = script, slots
        self.submitted: list[int] = []
        self.stopped = False

    def slots(self) -> int:
        return self.n

    def adapt(self, work: Any) -> Any:
        return work

    def submit(self, shard: Shard) -> Future[ShardResult]:
        self.submitted.append(shard.index)
        future: Future[ShardResult] = Future()
        outcome = self.script.get(shard.index, [None]).pop(0)
        result = ShardResult(shard.sid, Counts(), {}, ShardTotals())
        if outcome is None:
            future.set_result(result)
        else:
            outcome.shard_result = result  # type: ignore[attr-defined]
            future.set_exception(outcome)
        return future

    def wait(self, handles: Any, timeout: float | None) -> list[Any]:
        return list(handles)[:1]

    def result(self, handle: Any) -> ShardResult:
        result: ShardResult = handle.result()
        return result

    def stop(self) -> None:
        self.stopped = True


def _shards(n: int) -> list[Shard]:
    return [Shard(i, i, f"f{i}", None, 0, None) for i in range(n)]


def test_after_a_permanent_failure_no_new_shard_starts_and_the_first_error_is_reported() -> None:
    boom, later = PermanentDeliveryError("boom"), PermanentDeliveryError("later")
    runner = _FakeRunner({0: [boom], 1: [later]}, slots=2)
    host = _FakeHost(60)
    error = run_shards(host, runner, _shards(5))
    assert error is boom and runner.stopped
    assert runner.submitted == [0, 1]  # shards 2-4 never started; 1 was running and ended
    assert host.absorbed == [0, 1]  # the failed attempts' counts are added too


def test_transient_failures_are_retried_until_the_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline.scheduler, "RETRY_FIRST_DELAY_S", 0.01)
    flaky = [TransientDeliveryError("slow"), TransientDeliveryError("slow"), None]
    runner = _FakeRunner({1: flaky}, slots=1)
    host = _FakeHost(1.0)
    assert run_shards(host, runner, _shards(3)) is None
    # shard 2 starts while shard 1 waits for its retry
    assert Counter(runner.submitted) == {0: 1, 1: 3, 2: 1} and not runner.stopped
    assert host.budget.left == pytest.approx(1.0 - 0.03)
    # a budget too small for the next backoff: the run stops with the transient error
    always = [TransientDeliveryError(f"slow {i}") for i in range(10)]
    runner = _FakeRunner({0: always}, slots=1)
    host = _FakeHost(0.025)
    error = run_shards(host, runner, _shards(2))
    assert isinstance(error, TransientDeliveryError) and runner.submitted.count(0) == 3


class _Interrupt:
    """A progress listener that raises KeyboardInterrupt (Ctrl-C) once `after` rows are done."""

    def __init__(self, after: int) -> None:
        self.after, self.done = after, 0

    def rows_done(self, n: int) -> None:
        self.done += n
        if self.done >= self.after:
            raise KeyboardInterrupt


@pytest.mark.integration
@pytest.mark.e2e
def test_interrupted_in_one_process_finished_on_dask(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    one = _settings(tmp_path, strict_firehose, firehose_stream, summary_json=tmp_path / "s.json")
    with pytest.raises(KeyboardInterrupt):
        run_job(one, progress=[_Interrupt(after=3_000)])
    summary = json.loads((tmp_path / "s.json").read_text())  # written before the interrupt
    assert summary["status"] == "failed" and summary["error_type"] == "KeyboardInterrupt"
    assert summary["accounted"] and summary["actions_sent"] >= 3_000
    first = set(strict_firehose.transaction_ids(firehose_stream))
    assert len(first) == summary["actions_sent"]
    dask = one.model_copy(update={"workers": 2, "summary_json": None})
    summary2, error = run_plain(dask)
    assert error is None, error
    again = strict_firehose.transaction_ids(firehose_stream)
    assert set(again) == ALL  # no gap
    assert len(again) - len(ALL) <= CHUNK  # at most the chunk in flight sent twice
    assert summary2.rows_skipped + summary2.actions_sent == len(ALL)
