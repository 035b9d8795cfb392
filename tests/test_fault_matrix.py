"""Fault matrix: the whole pipeline (plain Python, real boto3) against the strict Firehose endpoint.

Each case gets a fresh stream, a fresh checkpoint and a few thousand rows, one kind of fault, and
checks the promise of the README's Guarantees section:

* a run that completes delivered every row (the set of transaction_ids on the server equals the
  set the ID contract gives, computed independently in `tests.datasets`), duplicates only where
  the client could not know a call had been stored;
* a run that fails exits 1 with the checkpoint holding EXACTLY the chunks whose every record was
  acknowledged (no fault in these cases stores a record without acknowledging it, so
  "acknowledged" is "on the server"), ``rows_sent`` in the checkpoint equal to the summary's
  ``actions_sent``; a rerun once the fault is gone skips exactly those chunks and completes;
* the summary accounts for every row, and reports the retries and throttles.

The sender's retry *delays* are compressed (the endpoint's faults do not depend on load, so only
the number of attempts matters); the attempt budget is the default one (`RetryPolicy()`, 10
attempts per batch) unless a case says otherwise. Why some cases need a bigger budget, from the
numbers (every attempt is an independent draw at the endpoint):

* per-record failure p: a record is lost to the budget after 10 failures, p**10 per record.
  10 %: 1e-10, harmless. 50 %: 1/1024 per record, so a run of thousands of rows almost surely
  exhausts the default budget (exit 1, resumable): the matrix shows both, with the default budget
  (TransientDeliveryError) and with 30 attempts (0.5**30 ~ 1e-9 per record: completes).
* throttled calls p: a batch is lost after 10 throttled calls in a row, p**10 per batch. 20 %:
  1e-7, harmless. 80 %: 0.107 per batch, so a run of 100 batches exhausts the budget with
  probability 1 - 0.893**100 > 0.9999: TransientDeliveryError, exit 1, checkpoint at the last
  fully acknowledged chunk. With 60 attempts (0.8**60 ~ 1.5e-6 per batch) it completes.

Set FAULT_MATRIX_REPORT=path.json to keep the measured figures (one entry per case), and
FAULT_MATRIX_SEED=n to draw other faults (the assertions hold for any seed; the figures vary).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipeline.resources
from connectors.firehose import FirehoseSender, RetryPolicy
from moesif_backfill.errors import PermanentDeliveryError, TransientDeliveryError
from pipeline.report import RunSummary
from pipeline.settings import RunSettings
from tests.datasets import expected_ids, write_payments
from tests.runner import file_progress, run_plain, settings_for
from tests.standins.strict_firehose import StrictFirehose

pytestmark = pytest.mark.integration

DEFAULT_ATTEMPTS = RetryPolicy().max_attempts
# The endpoint's fault generator is seeded; FAULT_MATRIX_SEED=n replays the matrix with other draws.
SEED = int(os.environ.get("FAULT_MATRIX_SEED", "0"))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    faults: dict[str, Any]
    rows: int = 8_000
    chunk_rows: int = 1_000  # 2 calls per chunk; 200 gives 40 one-call chunks
    attempts: int = DEFAULT_ATTEMPTS
    read_timeout_s: float = 30.0
    expect: type[BaseException] | None = None  # None: the run completes


CASES = [
    Case("record_failure_0pct", {}),
    Case("record_failure_10pct", {"record_failure_rate": 0.10}),
    # The budget counts attempts that delivered nothing, so steady partial failures converge.
    Case("record_failure_50pct", {"record_failure_rate": 0.50}, rows=10_000),
    # Records refused with ServiceUnavailableException inside a 200 answer: throttling.
    Case(
        "record_throttling_20pct",
        {"record_failure_rate": 0.20, "record_failure_code": "ServiceUnavailableException"},
    ),
    Case(
        "record_failure_100pct",
        {"record_failure_rate": 1.0},
        rows=2_000,  # nothing is ever acknowledged: the budget runs out on the first chunk
        expect=TransientDeliveryError,
    ),
    Case("throttle_20pct", {"throttle_rate": 0.20}, chunk_rows=200),
    Case(
        "throttle_80pct_default_budget",
        {"throttle_rate": 0.80},
        rows=5_000,
        chunk_rows=50,  # 100 one-call chunks: 1 - 0.893 ** 100 > 0.9999
        expect=TransientDeliveryError,
    ),
    Case("throttle_80pct", {"throttle_rate": 0.80}, rows=2_000, chunk_rows=100, attempts=60),
    Case("http_5xx_500_and_503", {"server_error_rate": 0.30}, chunk_rows=200),
    Case("dropped_before_store", {"drop_before_store_rate": 0.20}, chunk_rows=200),
    Case("dropped_after_store", {"drop_after_store_rate": 0.20}, chunk_rows=200),
    Case(
        "latency_spikes_beyond_read_timeout",
        {"latency_spike_rate": 0.20, "latency_spike_s": 1.5},
        chunk_rows=200,
        read_timeout_s=0.5,
    ),
    Case(
        "stream_deleted_mid_run",
        {"delete_stream_after_calls": 5},
        expect=PermanentDeliveryError,
    ),
]


class Probe:
    """Wraps the FirehoseSender the run creates: its retry budget, its stats, HTTP statuses."""

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self.senders: list[FirehoseSender] = []
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()

    def factory(self, client: Any, stream: str, **kwargs: Any) -> FirehoseSender:
        client.meta.events.register("after-call.firehose.PutRecordBatch", self._after_call)
        sender = FirehoseSender(client, stream, **{**kwargs, "retry": self.retry, "seed": 7})
        self.senders.append(sender)
        return sender

    def _after_call(self, http_response: Any, **_: Any) -> None:
        with self._lock:
            self.statuses[int(http_response.status_code)] += 1

    def stats(self) -> dict[str, int]:
        assert len(self.senders) == 1
        return self.senders[0].stats.snapshot()


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    figures: dict[str, Any] = {}
    yield figures
    path = os.environ.get("FAULT_MATRIX_REPORT")
    if path and figures:
        Path(path).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def exit_code(err: BaseException | None) -> int:
    """What the CLI exits with for this outcome (0 ok; errors carry their own code)."""
    if err is None:
        return 0
    return int(getattr(err, "exit_code", 1))


def chunk_ids(chunk: int, case: Case) -> set[str]:
    start = chunk * case.chunk_rows
    return expected_ids(1 + start, min(case.chunk_rows, case.rows - start))


def committed_chunks(settings: RunSettings, src: Path) -> tuple[set[int], int]:
    prog = file_progress(settings.checkpoint, "test-job", src)
    if prog is None:  # no chunk was ever committed
        return set(), 0
    return {c for a, b in prog.done for c in range(a, b)}, prog.rows_sent


def settle(server: StrictFirehose, stream: str, timeout_s: float = 5.0) -> None:
    """Wait until the server stored every record it received (latency cases only).

    A call the client gave up on (read timeout) is still being served: it sleeps, then stores.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c = server.stream_counters(stream)
        if c["records_stored"] >= c["records_received"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not settle: {server.stream_counters(stream)}")


def duplicates(ids: list[str]) -> int:
    return sum(n - 1 for n in Counter(ids).values())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_matrix(
    case: Case,
    *,
    tmp_path: Path,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
    monkeypatch: pytest.MonkeyPatch,
    report: dict[str, Any],
) -> None:
    started = time.monotonic()
    server, stream = strict_firehose, firehose_stream
    probe = Probe(RetryPolicy(max_attempts=case.attempts, base_delay_s=0.002, max_delay_s=0.02))
    monkeypatch.setattr(pipeline.resources, "FirehoseSender", probe.factory)
    src = write_payments(tmp_path / "payments.parquet", 1, case.rows)
    expected = expected_ids(1, case.rows)
    per_call = min(500, case.chunk_rows)  # every call carries a full chunk or half of one
    n_chunks = -(-case.rows // case.chunk_rows)
    settings = settings_for(
        tmp_path,
        [src],
        stream=stream,
        endpoint_url=server.endpoint_url,
        chunk_rows=case.chunk_rows,
        chunks_in_flight=2,
        max_in_flight=4,
        read_timeout_s=case.read_timeout_s,
        # Random throttling is not a quota; these cases test retries, not the adaptive rate.
        adaptive_rate=False,
        # The sender's budget is under test: the runner does not retry the shard on top.
        retry_budget_s=0,
    )
    server.reseed(zlib.crc32(f"{SEED}:{case.name}".encode()))  # independent draws per case
    server.configure(**case.faults)
    before = server.counters

    summary, err = run_plain(settings)
    if case.faults.get("latency_spike_rate"):
        settle(server, stream)
    delivered = server.transaction_ids(stream)
    on_server = set(delivered)
    dupes = duplicates(delivered)
    counters = server.stream_counters(stream)
    calls_seen = {k: v - before[k] for k, v in server.counters.items()}  # incl. a deleted stream
    stats = probe.stats()
    figures: dict[str, Any] = {
        "rows": case.rows,
        "chunk_rows": case.chunk_rows,
        "attempts_per_batch": case.attempts,
        "faults": case.faults,
        "exit_code": exit_code(err),
        "outcome": "complete" if err is None else type(err).__name__,
        "calls": summary.firehose_calls,
        "records_retried": summary.records_retried,
        "throttled_calls": summary.throttled_calls,
        "throttled_records": summary.throttled_records,
        "server_errors": stats["server_errors"],
        "connection_errors": stats["connection_errors"],
        "http_statuses": {str(k): v for k, v in sorted(probe.statuses.items())},
        "rows_delivered": len(on_server),
        "duplicates_delivered": dupes,
        "actions_sent": summary.actions_sent,
        "chunks_committed": summary.chunks_committed,
    }

    # -- every case ---------------------------------------------------------------------------
    assert summary.accounted, summary
    assert summary.rows_read == summary.actions_sent + summary.rows_rejected + summary.rows_skipped
    # one server call per attempt: botocore adds no hidden retries
    assert summary.firehose_calls == stats["firehose_calls"] == calls_seen["put_calls"]
    assert summary.throttled_calls == counters["throttled"]
    assert on_server <= expected  # nothing foreign or malformed reached the stream
    done, rows_sent = committed_chunks(settings, src)
    assert rows_sent == summary.actions_sent

    if case.expect is None:
        assert err is None, err
        assert exit_code(err) == 0 and summary.status == "complete"
        assert on_server == expected  # every row delivered
        assert summary.actions_sent == summary.rows_read == case.rows
        assert done == set(range(n_chunks))
    else:
        assert isinstance(err, case.expect), err
        assert exit_code(err) == 1 and summary.status == "failed"
        assert "rerun" in str(err).lower()
        _check_checkpoint_is_exactly_what_was_acknowledged(case, done, on_server, summary)
        figures["checkpoint_chunks"] = _ranges(done)
        # The fault goes away (a deleted stream is re-created, empty): the rerun skips exactly
        # the committed chunks and sends everything else.
        server.reset_faults()
        if case.expect is PermanentDeliveryError:
            server.create_stream(stream)
        rerun, err2 = run_plain(settings)
        assert err2 is None, err2
        assert rerun.accounted and rerun.status == "complete"
        assert rerun.rows_skipped == summary.actions_sent
        assert rerun.actions_sent == case.rows - summary.actions_sent
        assert on_server | set(server.transaction_ids(stream)) == expected
        figures["rerun"] = {
            "exit_code": exit_code(err2),
            "actions_sent": rerun.actions_sent,
            "rows_skipped": rerun.rows_skipped,
            "calls": rerun.firehose_calls,
        }

    # -- each kind of fault -------------------------------------------------------------------
    faults = case.faults
    if not faults:
        assert dupes == 0 and summary.records_retried == 0
        assert summary.firehose_calls == case.rows // per_call
    if faults.get("record_failure_rate"):
        assert counters["failed_records"] > 0 and dupes == 0  # partial failures never duplicate
        # only failed records are resent, once per failure (not after the last attempt)
        assert summary.records_retried <= counters["failed_records"]
        assert summary.throttled_records == counters["throttled_records"]
        assert summary.streams[stream]["throttled_records"] == summary.throttled_records
        if faults.get("record_failure_code") == "ServiceUnavailableException":
            assert summary.throttled_records == counters["failed_records"] > 0
            assert summary.throttled_calls == 0  # no call was refused whole
            table = {row["metric"]: row["value"] for row in summary.table_rows()}
            assert table["throttled_records"] == summary.throttled_records
        if err is None:
            assert summary.records_retried == counters["failed_records"]
            assert counters["records_received"] == case.rows + summary.records_retried
    if faults.get("throttle_rate"):
        assert summary.throttled_calls > 0 and dupes == 0
        assert probe.statuses[400] == summary.throttled_calls  # ServiceUnavailableException
        if err is None:  # a throttled call is resent whole
            assert summary.records_retried == summary.throttled_calls * per_call
    if faults.get("server_error_rate"):
        assert probe.statuses[500] > 0 and probe.statuses[503] > 0, probe.statuses
        assert stats["server_errors"] == probe.statuses[500] + probe.statuses[503]
        assert stats["server_errors"] == counters["server_errors"]
        assert summary.records_retried == stats["server_errors"] * per_call and dupes == 0
    if faults.get("drop_before_store_rate"):
        drops = counters["dropped_before_store"]
        assert drops > 0 and stats["connection_errors"] == drops
        assert dupes == 0  # nothing was stored, so the resend is the only copy
        assert summary.records_retried == drops * per_call
    if faults.get("drop_after_store_rate"):
        drops = counters["dropped_after_store"]
        assert drops > 0 and stats["connection_errors"] == drops
        # a dropped call had been stored, and was resent: its records are the duplicates
        assert dupes == drops * per_call and len(delivered) == case.rows + dupes
    if faults.get("latency_spike_rate"):
        timeouts = stats["connection_errors"]
        assert timeouts > 0, "no latency spike happened"
        assert timeouts == calls_seen["latency_spikes"]  # every spike outlasted the timeout
        # the server stored the calls the client gave up on: those are the duplicates
        assert dupes == timeouts * per_call and len(delivered) == case.rows + dupes
        figures["read_timeout_s"] = case.read_timeout_s
        figures["latency_spikes"] = calls_seen["latency_spikes"]
    if "delete_stream_after_calls" in faults:
        assert "ResourceNotFoundException" in str(err)
        assert calls_seen["not_found"] > 0 and dupes == 0
    figures["seconds"] = round(time.monotonic() - started, 2)
    report[case.name] = figures


@pytest.mark.parametrize("kind", ["empty", "short", "miscounted"])
def test_unacknowledging_answers_commit_nothing(
    kind: str, *, tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    """HTTP 200 answers without one RequestResponses entry per record (a proxy's ``{}``, a
    short list, a FailedPutCount that disagrees): the records may well be on the server, but
    nothing was acknowledged, so nothing is committed; the run fails naming the stream and
    the answer, and a rerun once the answers are whole sends every row."""
    server, stream = strict_firehose, firehose_stream
    rows = 2_000
    src = write_payments(tmp_path / "payments.parquet", 1, rows)
    settings = settings_for(
        tmp_path,
        [src],
        stream=stream,
        endpoint_url=server.endpoint_url,
        chunk_rows=1_000,
        retry_attempts=3,
        adaptive_rate=False,
    )
    server.configure(bad_answer_rate=1.0, bad_answer=kind)
    summary, err = run_plain(settings)
    assert isinstance(err, TransientDeliveryError), err
    assert stream in str(err) and "without acknowledging each record" in str(err)
    assert summary.status == "failed" and summary.accounted
    assert summary.actions_sent == 0 and summary.chunks_committed == 0
    assert committed_chunks(settings, src) == (set(), 0)
    assert summary.server_errors == server.stream_counters(stream)["bad_answers"] > 0
    assert server.transaction_ids(stream), "the records did reach the server"

    server.reset_faults()
    rerun, err2 = run_plain(settings)
    assert err2 is None, err2
    assert rerun.actions_sent == rows and rerun.rows_skipped == 0
    assert set(server.transaction_ids(stream)) == expected_ids(1, rows)


def _ranges(chunks: set[int]) -> list[list[int]]:
    """Committed chunks as inclusive [first, last] runs, for the report."""
    runs: list[list[int]] = []
    for c in sorted(chunks):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return runs


def _check_checkpoint_is_exactly_what_was_acknowledged(
    case: Case, done: set[int], on_server: set[str], summary: RunSummary
) -> None:
    """No fault of the failing cases stores a record without acknowledging it, so the chunks
    whose every record is on the server are the chunks whose every record was acknowledged."""
    n_chunks = -(-case.rows // case.chunk_rows)
    fully_acknowledged = {c for c in range(n_chunks) if chunk_ids(c, case) <= on_server}
    assert done == fully_acknowledged, (sorted(done), sorted(fully_acknowledged))
    assert len(done) < n_chunks, "the fault should have stopped the run before the end"
    assert summary.actions_sent == sum(len(chunk_ids(c, case)) for c in done)
    assert summary.chunks_committed == len(done)
