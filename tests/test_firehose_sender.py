"""FirehoseSender against the strict local Firehose endpoint (real boto3, never a mock)."""

from __future__ import annotations

import itertools
import json
import socket
import time
import uuid
from concurrent.futures import Future, wait
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.firehose import (
    TRANSPORT_ERRORS,
    FirehoseSender,
    RetryPolicy,
    SendStats,
    redact,
)
from connectors.firehose_batching import (
    MAX_BATCH_BYTES,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_BATCH,
    billable_units,
    plan_batches,
    split_batches,
)
from connectors.firehose_client import make_firehose_client
from moesif_backfill.errors import PermanentDeliveryError, TransientDeliveryError
from tests.standins.strict_firehose import StrictFirehose

FAST = RetryPolicy(max_attempts=40, base_delay_s=0.001, max_delay_s=0.01)
MIB = 1024 * 1024


def _actions(count: int, size: int = 0) -> list[bytes]:
    pad = "p" * size
    return [
        json.dumps({"transaction_id": str(uuid.uuid4()), "action_name": "a", "pad": pad}).encode()
        for _ in range(count)
    ]


def _tids(records: list[bytes]) -> list[str]:
    return [json.loads(r)["transaction_id"] for r in records]


def _submit_chunks(sender: FirehoseSender, records: list[bytes], chunk: int) -> int:
    futures = [sender.submit(records[i : i + chunk]) for i in range(0, len(records), chunk)]
    return sum(f.result(timeout=60) for f in futures)


# -- batch splitting (pure) ----------------------------------------------------------------------

_sizes = st.lists(
    st.one_of(
        st.integers(0, 2_000),
        st.integers(0, 20_000),
        st.integers(500_000, MAX_RECORD_BYTES),
    ),
    max_size=1_600,
)


@settings(max_examples=200, deadline=None)
@given(_sizes)
def test_plan_batches_respects_limits_keeps_order_and_loses_nothing(sizes: list[int]) -> None:
    plan = plan_batches(sizes)
    flattened = [i for start, end in plan for i in range(start, end)]
    assert flattened == list(range(len(sizes)))  # order preserved, nothing lost or repeated
    for start, end in plan:
        assert 1 <= end - start <= MAX_RECORDS_PER_BATCH
        assert sum(sizes[start:end]) <= MAX_BATCH_BYTES
    for (start, end), (next_start, _) in itertools.pairwise(plan):
        # greedy: a batch is only closed when the next record would not fit
        assert end == next_start
        assert end - start == MAX_RECORDS_PER_BATCH or (
            sum(sizes[start:end]) + sizes[next_start] > MAX_BATCH_BYTES
        )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(max_size=64), max_size=1_200), st.integers(1, 600), st.integers(64, 4_000)
)
def test_split_batches_on_real_records(
    records: list[bytes], max_records: int, max_bytes: int
) -> None:
    batches = split_batches(records, max_records=max_records, max_bytes=max_bytes)
    assert [r for batch in batches for r in batch] == records
    assert all(len(b) <= max_records and sum(map(len, b)) <= max_bytes for b in batches)


def test_oversized_record_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="1024001 bytes"):
        plan_batches([10, MAX_RECORD_BYTES + 1])


def test_billable_units_round_up_to_5_kib() -> None:
    assert [billable_units(n) for n in (0, 1, 5120, 5121, 10_240, 1_024_000)] == [
        1,
        1,
        1,
        2,
        2,
        200,
    ]


def test_redact_removes_credentials() -> None:
    text = "key AKIAABCDEFGHIJKLMNOP Credential=AKIAXYZ/2024/us-east-1 secret=abc123 token: zz"
    cleaned = redact(text)
    for secret in ("AKIAABCDEFGHIJKLMNOP", "AKIAXYZ", "abc123", "zz"):
        assert secret not in cleaned


def test_send_stats_snapshot_and_attributes() -> None:
    stats = SendStats()
    stats.add(records_sent=3, throttled_calls=1)
    assert stats.records_sent == 3
    assert stats.snapshot()["throttled_calls"] == 1
    assert set(stats.snapshot()) == set(SendStats.FIELDS)


# -- against the strict endpoint -----------------------------------------------------------------


@pytest.fixture
def sender_for(strict_firehose_client: Any, firehose_stream: str) -> Any:
    senders: list[FirehoseSender] = []

    def make(**kwargs: Any) -> FirehoseSender:
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("seed", 7)
        sender = FirehoseSender(
            strict_firehose_client, kwargs.pop("stream", firehose_stream), **kwargs
        )
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close(cancel_pending=True)


@pytest.mark.integration
def test_batches_respect_500_records_and_4_mib(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    sender = sender_for(max_in_flight=1)  # one call at a time: arrival order is submit order
    small = _actions(1_100)
    assert sender.submit(small).result(timeout=30) == 1_100
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["put_calls"] == 3  # 500 + 500 + 100
    assert counters["max_batch_records"] == 500
    big = _actions(1_000, size=10_000)  # ~10 KB each: the 4 MiB limit binds first
    assert sender.submit(big).result(timeout=30) == 1_000
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["invalid_requests"] == 0
    assert counters["max_batch_bytes"] <= 4 * MIB
    assert counters["put_calls"] == 3 + 3  # 10,042-byte records: 417 per call
    assert _tids(strict_firehose.records(firehose_stream)) == _tids(small) + _tids(big)
    stats = sender.stats.snapshot()
    assert stats["firehose_calls"] == 6
    assert stats["records_sent"] == 2_100
    assert stats["bytes_sent"] == sum(map(len, small + big))
    assert stats["billable_5kb_units"] == 1_100 + 1_000 * 2


@pytest.mark.integration
def test_chaos_every_record_delivered_at_least_once(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(
        record_failure_rate=0.10,
        throttle_rate=0.20,
        server_error_rate=0.05,
        drop_before_store_rate=0.05,
        drop_after_store_rate=0.05,
    )
    sender = sender_for(max_in_flight=8)
    records = _actions(6_000)
    # small chunks mean many calls (~250), so every kind of fault shows up
    assert _submit_chunks(sender, records, chunk=100) == 6_000
    stored = _tids(strict_firehose.records(firehose_stream))
    assert set(stored) == set(_tids(records))  # nothing lost; duplicates allowed
    stats = sender.stats.snapshot()
    assert stats["records_retried"] > 0
    assert stats["throttled_calls"] > 0
    assert stats["server_errors"] > 0
    assert stats["connection_errors"] > 0
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["put_calls"] == stats["firehose_calls"]  # no hidden botocore retries
    assert counters["failed_records"] > 0 and counters["dropped"] > 0


@pytest.mark.integration
def test_partial_failure_resends_only_failed_records(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(record_failure_rate=0.5)
    sender = sender_for()
    records = _actions(1_000)
    assert sender.submit(records).result(timeout=30) == 1_000
    stored = strict_firehose.records(firehose_stream)
    assert sorted(stored) == sorted(records)  # exactly once: no drops, only failed resent
    counters = strict_firehose.stream_counters(firehose_stream)
    stats = sender.stats.snapshot()
    assert stats["records_retried"] == counters["failed_records"] > 0
    assert counters["records_received"] == 1_000 + stats["records_retried"]
    assert stats["throttled_calls"] == 0
    assert stats["throttled_records"] == counters["throttled_records"] > 0
    assert stats["bytes_sent"] == sum(map(len, records))  # each acknowledged byte once


@pytest.mark.integration
def test_retry_budget_exhausted_is_transient_and_one_server_call_per_attempt(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(throttle_rate=1.0)
    sender = sender_for(retry=RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002))
    future = sender.submit(_actions(700))  # two batches
    with pytest.raises(TransientDeliveryError) as excinfo:
        future.result(timeout=10)
    message = str(excinfo.value)
    assert "700 of 700 records" in message and "not acknowledged" in message
    assert "Rerun" in message and firehose_stream in message
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["put_calls"] == 2 * 3  # botocore adds no retries of its own
    assert sender.stats.throttled_calls == 6
    assert strict_firehose.records(firehose_stream) == []


@pytest.mark.integration
def test_raw_client_has_botocore_retries_off(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(throttle_rate=1.0)
    with pytest.raises(ClientError):
        strict_firehose_client.put_record_batch(
            DeliveryStreamName=firehose_stream, Records=[{"Data": b"x"}]
        )
    assert strict_firehose.stream_counters(firehose_stream)["put_calls"] == 1


@pytest.mark.integration
def test_throttle_with_http_503_is_still_throttling(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(throttle_rate=0.5, throttle_http_status=503)
    sender = sender_for()
    assert _submit_chunks(sender, _actions(100), chunk=5) == 100
    assert sender.stats.throttled_calls > 0
    assert sender.stats.server_errors == 0


@pytest.mark.integration
def test_unknown_stream_is_permanent_and_fast(
    strict_firehose: StrictFirehose, sender_for: Any
) -> None:
    sender = sender_for(stream="no-such-stream-xyz")
    started = time.monotonic()
    with pytest.raises(PermanentDeliveryError, match="no-such-stream-xyz") as excinfo:
        sender.check_stream()
    assert "does not exist" in str(excinfo.value)
    before = strict_firehose.counters["not_found"]
    with pytest.raises(PermanentDeliveryError, match="ResourceNotFoundException"):
        sender.submit(_actions(10)).result(timeout=10)
    assert time.monotonic() - started < 2
    assert strict_firehose.counters["not_found"] == before + 1  # not retried
    assert sender.stats.firehose_calls == 1


@pytest.mark.integration
def test_check_stream_ok_and_credential_errors(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    sender = sender_for()
    sender.check_stream()
    strict_firehose.configure(auth_error="UnrecognizedClientException")
    with pytest.raises(PermanentDeliveryError) as excinfo:
        sender.check_stream()
    message = str(excinfo.value)
    assert firehose_stream in message and "credentials" in message
    assert "testing-secret-key" not in message and "testing-key-id" not in message
    with pytest.raises(PermanentDeliveryError, match="UnrecognizedClientException"):
        sender.submit(_actions(3)).result(timeout=10)


@pytest.mark.integration
def test_check_stream_connection_refused_names_endpoint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = make_firehose_client(region="us-east-1", endpoint_url=url, connect_timeout_s=1)
    with (
        FirehoseSender(client, "any-stream") as sender,
        pytest.raises(PermanentDeliveryError) as excinfo,
    ):
        sender.check_stream()
    assert url in str(excinfo.value) and "any-stream" in str(excinfo.value)


@pytest.mark.integration
def test_stream_deleted_mid_run_is_permanent(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(delete_stream_after_calls=2)
    sender = sender_for(max_in_flight=1)
    future = sender.submit(_actions(2_000))  # four batches, sent one at a time
    with pytest.raises(PermanentDeliveryError, match="1000 of 2000 records"):
        future.result(timeout=10)
    assert len(strict_firehose.records(firehose_stream)) == 1_000


@pytest.mark.integration
def test_rate_limit_shapes_throughput(firehose_stream: str, sender_for: Any) -> None:
    sender = sender_for(max_records_per_second=4_000)
    started = time.monotonic()
    assert _submit_chunks(sender, _actions(2_000), chunk=250) == 2_000
    assert time.monotonic() - started >= 0.4
    by_bytes = sender_for(max_mib_per_second=4)
    started = time.monotonic()
    assert by_bytes.submit([b"x" * 100_000] * 21).result(timeout=30) == 21  # 2.1 MB
    assert time.monotonic() - started >= 0.4


@pytest.mark.integration
def test_dropped_after_store_duplicates_but_no_loss(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(drop_after_store_rate=0.3)
    sender = sender_for(max_in_flight=4)
    records = _actions(3_000)
    assert _submit_chunks(sender, records, chunk=100) == 3_000
    stored = _tids(strict_firehose.records(firehose_stream))
    assert set(stored) == set(_tids(records))
    assert len(stored) > len(set(stored))  # duplicates, deduplicated later by transaction_id
    assert sender.stats.connection_errors > 0


@pytest.mark.integration
def test_oversized_record_rejected_before_sending(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    sender = sender_for()
    with pytest.raises(ValueError, match="1024001 bytes"):
        sender.submit([b"ok", b"x" * (MAX_RECORD_BYTES + 1)])
    assert strict_firehose.stream_counters(firehose_stream)["put_calls"] == 0
    assert sender.submit([]).result(timeout=1) == 0


@pytest.mark.integration
def test_close_with_cancel_resolves_every_future(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(latency_s=0.1)
    futures: list[Future[int]] = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        FirehoseSender(
            strict_firehose_client, firehose_stream, max_in_flight=1, retry=FAST
        ) as sender,
    ):
        futures = [sender.submit(_actions(10)) for _ in range(5)]
        raise RuntimeError("boom")
    _, not_done = wait(futures, timeout=5)
    assert not not_done
    outcomes = [f.exception() for f in futures]
    assert any(isinstance(e, TransientDeliveryError) for e in outcomes)
    with pytest.raises(RuntimeError, match="closed"):
        sender.submit([b"x"])


# -- the client: plain boto3, public configuration -------------------------------------------------


@pytest.mark.integration
def test_client_has_retries_off_and_no_parameter_validation(
    strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    client = make_firehose_client(
        region="us-east-1",
        endpoint_url=strict_firehose.endpoint_url,
        max_pool_connections=12,
        connect_timeout_s=2,
        read_timeout_s=7,
    )
    config = client.meta.config
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert (config.max_pool_connections, config.connect_timeout, config.read_timeout) == (12, 2, 7)
    # botocore does not check the request (an empty Records list fails its validation): the
    # server answers instead, once.
    before = strict_firehose.counters["calls"]
    with pytest.raises(ClientError) as excinfo:
        client.put_record_batch(DeliveryStreamName=firehose_stream, Records=[])
    assert excinfo.value.response["Error"]["Code"] == "ValidationException"
    assert "at least one record" in str(excinfo.value)
    assert strict_firehose.counters["calls"] == before + 1


@pytest.mark.integration
def test_transport_errors_are_the_senders_transport_errors(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    """What plain boto3 raises for a dropped connection or a refused one is retried."""
    strict_firehose.configure(drop_before_store_rate=1.0)
    with pytest.raises(TRANSPORT_ERRORS):
        strict_firehose_client.put_record_batch(
            DeliveryStreamName=firehose_stream, Records=[{"Data": b"a"}]
        )
    closed = make_firehose_client(
        region="us-east-1", endpoint_url="http://127.0.0.1:9", connect_timeout_s=1
    )
    with pytest.raises(EndpointConnectionError):
        closed.put_record_batch(DeliveryStreamName=firehose_stream, Records=[{"Data": b"a"}])
    assert issubclass(EndpointConnectionError, TRANSPORT_ERRORS)


@pytest.mark.integration
def test_sender_counts_what_the_server_saw(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    strict_firehose.configure(record_failure_rate=0.2, throttle_rate=0.2)
    records = [b'{"n": %d}' % i for i in range(2_000)]
    sender = sender_for()
    assert sender.submit(records).result(timeout=60) == len(records)
    assert sorted(strict_firehose.records(firehose_stream)) == sorted(records)
    stats = sender.stats.snapshot()
    counters = strict_firehose.stream_counters(firehose_stream)
    assert stats["records_sent"] == len(records)
    assert stats["firehose_calls"] == counters["put_calls"]
    assert stats["throttled_calls"] == counters["throttled"] > 0
    assert stats["throttled_records"] == counters["throttled_records"] > 0


# -- issue 10, item 11: an answer acknowledges a record only through its own entry ---------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("empty", "no RequestResponses entries for 500 records"),
        ("short", "499 RequestResponses entries for 500 records"),
        ("miscounted", "FailedPutCount is 0 but 1 entries carry an ErrorCode"),
    ],
)
def test_answer_without_an_entry_per_record_acknowledges_nothing(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any, kind: str, what: str
) -> None:
    """HTTP 200 with ``{}`` (a proxy), too few entries, or a FailedPutCount that disagrees:
    nothing counts as delivered; the whole call is resent within the budget, then the chunk
    fails, naming the stream and what was wrong."""
    strict_firehose.configure(bad_answer_rate=1.0, bad_answer=kind)
    sender = sender_for(
        max_in_flight=1,  # the 500-record call gives up first: its reason is in the message
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002),
    )
    future = sender.submit(_actions(700))  # two calls: 500 + 200
    with pytest.raises(TransientDeliveryError) as excinfo:
        future.result(timeout=30)
    message = str(excinfo.value)
    assert "700 of 700 records" in message and firehose_stream in message
    assert "without acknowledging each record" in message and what in message
    stats = sender.stats.snapshot()
    assert stats["records_sent"] == stats["bytes_sent"] == stats["billable_5kb_units"] == 0
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["put_calls"] == stats["firehose_calls"] == 2 * 3  # resent whole, in budget
    assert stats["server_errors"] == counters["bad_answers"] == 6
    assert stats["records_retried"] == 2 * (500 + 200)


@pytest.mark.integration
def test_unusable_answers_now_and_then_lose_nothing(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any
) -> None:
    """A miscounted answer hides a record that was not stored: it must be resent."""
    strict_firehose.configure(bad_answer_rate=0.3, bad_answer="miscounted")
    sender = sender_for(max_in_flight=4)
    records = _actions(3_000)
    assert _submit_chunks(sender, records, chunk=250) == 3_000
    stored = _tids(strict_firehose.records(firehose_stream))
    assert set(stored) == set(_tids(records))  # nothing lost; the resends duplicate the rest
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["bad_answers"] > 0
    assert sender.stats.server_errors == counters["bad_answers"]


# -- issue 10, item 12: per-record throttling is throttling ----------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("code", ["ServiceUnavailableException", "InternalFailure"])
def test_per_record_throttling_backs_off_like_a_throttled_call(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any, code: str
) -> None:
    """Records refused with ServiceUnavailableException in a 200 answer are counted in
    throttled_records and back off exponentially (each retry's cap doubles while the retries
    stay throttled); InternalFailure records keep the short first-step delay."""
    strict_firehose.configure(record_failure_rate=0.5, record_failure_code=code)
    base = 0.05
    delays: list[float] = []
    sender = sender_for(
        max_in_flight=1,
        retry=RetryPolicy(max_attempts=30, base_delay_s=base, max_delay_s=5.0),
        sleep=delays.append,  # the delays the sender chose; no time is spent waiting
    )
    records = _actions(500)
    assert sender.submit(records).result(timeout=30) == 500
    assert sorted(strict_firehose.records(firehose_stream)) == sorted(records)
    stats = sender.stats.snapshot()
    counters = strict_firehose.stream_counters(firehose_stream)
    assert stats["throttled_calls"] == 0  # no call was refused whole
    assert len(delays) == stats["firehose_calls"] - 1 >= 5
    if code == "ServiceUnavailableException":
        for retry, delay in enumerate(delays, start=1):
            assert delay <= min(5.0, base * 2 ** (retry - 1))
        assert max(delays) > 4 * base, delays  # not the <= 50 ms of a partial retry
        assert stats["throttled_records"] == counters["failed_records"] > 0
    else:
        assert max(delays) <= base, delays
        assert stats["throttled_records"] == 0 and counters["failed_records"] > 0


@pytest.mark.integration
@pytest.mark.parametrize("code", ["ServiceUnavailableException", "InternalFailure"])
def test_per_record_throttling_lowers_the_adaptive_rate(
    strict_firehose: StrictFirehose, firehose_stream: str, sender_for: Any, code: str
) -> None:
    strict_firehose.configure(record_failure_rate=0.3, record_failure_code=code)
    sender = sender_for(adaptive_rate=True)
    assert sender.rate_limits == (None, None)  # unlimited until Firehose throttles
    assert sender.submit(_actions(1_000)).result(timeout=30) == 1_000
    assert sender.stats.throttled_calls == 0
    records_per_s, bytes_per_s = sender.rate_limits
    if code == "ServiceUnavailableException":
        assert records_per_s is not None and bytes_per_s is not None  # AIMD decreased
    else:
        assert (records_per_s, bytes_per_s) == (None, None)
