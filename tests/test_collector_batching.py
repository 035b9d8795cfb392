"""Unit tests of the Moesif Collector batching (`connectors.moesif_batching`) and of the sender's
413 splitting, retries and permanent errors against the Collector stand-in over real HTTP."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator

import pytest

from connectors.chunk_tracker import Delivery
from connectors.moesif_batching import (
    batch_body,
    body_size,
    plan_bodies,
)
from connectors.moesif_collector import CollectorSender
from connectors.moesif_http import CollectorClient
from connectors.rate_limit import RetryPolicy
from moesif_backfill.errors import (
    DeliveryStalledError,
    DestinationRefusedError,
    TransientDeliveryError,
    exit_code_for,
)
from tests.datasets import expected_id
from tests.standins.collector import CollectorStandin

APP_ID = "unit-app-id-3b8e1d7f"


def action(i: int, pad: int = 0) -> bytes:
    doc = {
        "action_name": "x",
        "request": {"time": "2026-12-01T00:00:00.000Z"},
        "transaction_id": expected_id(i),
        "metadata": {"pad": "p" * pad},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.mark.parametrize("limit", [3, 50, 200, 1_000])
def test_plan_bodies_keeps_order_and_the_limit(limit: int) -> None:
    sizes = [10, 1, 90, 30, 30, 30, 199, 5, 5, 5, 400]
    plan = plan_bodies(sizes, limit)
    assert [i for s, e in plan for i in range(s, e)] == list(range(len(sizes)))
    for s, e in plan:
        assert e > s
        # a body over the limit only for a single action too big on its own
        assert body_size(sizes[s:e]) <= limit or e - s == 1
    # greedy: the next action would not have fit
    for (s, e), _next in itertools.pairwise(plan):
        assert body_size(sizes[s : e + 1]) > limit


def test_plan_bodies_one_body_when_all_fit() -> None:
    assert plan_bodies([5] * 7, body_size([5] * 7)) == [(0, 7)]
    assert plan_bodies([5] * 7, body_size([5] * 7) - 1) == [(0, 6), (6, 7)]
    assert plan_bodies([], 3) == []


def test_body_is_the_records_byte_for_byte() -> None:
    records = [b'{"a":1.50}', b'{"b":"\\u00e9"}']
    body = batch_body(records)
    assert body == b'[{"a":1.50},{"b":"\\u00e9"}]'
    assert len(body) == body_size([len(r) for r in records])
    assert batch_body([]) == b"[]"


@pytest.fixture
def standin() -> Iterator[CollectorStandin]:
    with CollectorStandin(APP_ID) as s:
        yield s


def sender(standin: CollectorStandin, app_id: str = APP_ID, **kw: object) -> CollectorSender:
    client = CollectorClient(standin.url, app_id, connect_timeout_s=2, read_timeout_s=5)
    options: dict[str, object] = {"retry": RetryPolicy(max_attempts=5, base_delay_s=0.001)}
    options.update(kw)
    return CollectorSender(client, **options)  # type: ignore[arg-type]


def test_413_splits_down_to_the_one_action_refused(standin: CollectorStandin) -> None:
    records = [action(i) for i in range(20)]
    records[7] = action(7, pad=3_000)
    standin.too_large_over(2_000)
    s = sender(standin, batch_max_bytes=100_000)
    try:
        result = s.submit(records).result(timeout=30)
    finally:
        s.close()
    assert isinstance(result, Delivery)
    assert result.records == 20
    assert [i for i, _ in result.refused] == [7]
    assert "413" in result.refused[0][1]
    assert sorted(standin.delivered_ids()) == sorted(expected_id(i) for i in range(20) if i != 7)
    assert s.stats.snapshot()["records_refused"] == 1
    # the wire format: gzip, a JSON array, the records unchanged
    assert all(e["encoding"] == "gzip" for e in standin.request_log())


def test_retries_then_gives_up_transient(standin: CollectorStandin) -> None:
    standin.fail_next(503, 503, 503, 503, 503)
    s = sender(standin, retry=RetryPolicy(max_attempts=3, base_delay_s=0.001))
    try:
        with pytest.raises(TransientDeliveryError):
            s.submit([action(1)]).result(timeout=30)
        assert standin.delivered_ids() == []
        # the queue still holds 2: the next chunk gets through on its third attempt
        assert s.submit([action(2)]).result(timeout=30) == Delivery(1, ())
    finally:
        s.close()
    assert standin.delivered_ids() == [expected_id(2)]


def test_retry_after_is_honoured(standin: CollectorStandin) -> None:
    waits: list[float] = []
    standin.fail_next(429, retry_after=2)
    s = sender(standin, sleep=waits.append)
    try:
        assert s.submit([action(1)]).result(timeout=30) == Delivery(1, ())
    finally:
        s.close()
    assert len(waits) == 1 and waits[0] >= 2.0
    assert s.stats.snapshot()["throttled_calls"] == 1


@pytest.mark.parametrize("status", [400, 401, 402, 406, 404])
def test_permanent_answers_stop(standin: CollectorStandin, status: int) -> None:
    standin.fail_next(status)
    s = sender(standin)
    try:
        with pytest.raises(DestinationRefusedError) as info:
            s.submit([action(1)]).result(timeout=30)
    finally:
        s.close()
    assert exit_code_for(info.value, committed=0) == 2
    assert exit_code_for(info.value, committed=3) == 1
    if status == 401:
        assert "Moesif refused the application id (401)" in str(info.value)
    assert APP_ID not in str(info.value)
    assert len(standin.request_log()) == 1  # not retried


def test_wrong_app_id_is_401_and_never_shown(standin: CollectorStandin) -> None:
    s = sender(standin, app_id="wrong-id-0000")
    try:
        with pytest.raises(DestinationRefusedError) as info:
            s.submit([action(1)]).result(timeout=30)
    finally:
        s.close()
    assert "wrong-id-0000" not in str(info.value) + repr(s) + repr(s._client)


def test_stalled_collector_fails_the_chunk() -> None:
    with CollectorStandin(APP_ID) as down:
        url = down.url
    client = CollectorClient(url, APP_ID, connect_timeout_s=0.5, read_timeout_s=0.5)
    s = CollectorSender(
        client,
        retry=RetryPolicy(max_attempts=1000, base_delay_s=0.01, max_delay_s=0.05),
        stall_timeout_s=0.5,
    )
    try:
        with pytest.raises(DeliveryStalledError) as info:
            s.submit([action(1)]).result(timeout=30)
    finally:
        s.close()
    assert "acknowledged nothing" in str(info.value)
    assert s.stats.snapshot()["connection_errors"] >= 1


def test_gzip_body_decodes_to_the_records(standin: CollectorStandin) -> None:
    records = [action(i) for i in range(3)]
    s = sender(standin)
    try:
        s.submit(records).result(timeout=30)
    finally:
        s.close()
    assert standin.actions() == [json.loads(r) for r in records]
    assert gzip.decompress(gzip.compress(batch_body(records))) == batch_body(records)


def test_count_only_standin_counts_the_ids_without_keeping_actions() -> None:
    records = [action(i) for i in range(250)]
    with CollectorStandin(APP_ID, count_only=True) as counting:
        s = sender(counting, batch_max_bytes=5_000)
        try:
            assert s.submit(records).result(timeout=30) == Delivery(250, ())
        finally:
            s.close()
        assert sorted(counting.delivered_ids()) == sorted(expected_id(i) for i in range(250))
        assert counting.actions() == [] and counting.bodies() == []
        stats = counting.stats()
        assert stats["accepted_requests"] == len(counting.request_log()) > 1
        assert stats["actions"] == stats["unique_transaction_ids"] == 250
