"""Several streams: routing by transaction_id (pure), then runs over two streams of the strict
Firehose endpoint (real boto3): every ID in exactly one stream, the same stream on a rerun,
preflight of every stream, and per-stream quotas adding up."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import pyarrow as pa
import pytest

from connectors.stream_router import id_prefixes, split_by_stream, stream_indexes, uuid_prefix
from moesif_backfill.errors import PreflightError, TransientDeliveryError
from pipeline.sinks import _all_of
from tests.datasets import expected_ids, write_payments
from tests.runner import run_plain, strict_settings
from tests.standins.strict_firehose import StrictFirehose
from tests.test_quota import DeliveryClock

# -- routing (pure) ------------------------------------------------------------------------------


def _records(ids: list[str]) -> pa.Array:
    # Shaped like transforms.actions output, with decoys before and after the real key.
    return pa.array(
        [
            json.dumps(
                {
                    "action_name": 'x"transaction_id":"ffffffff-0000',
                    "request": {"time": "2024-01-01T00:00:00.000Z"},
                    "user_id": "transaction_id",
                    "transaction_id": tid,
                    "metadata": {"transaction_id": "00000000-0000-0000-0000-000000000000"},
                },
                separators=(",", ":"),
            )
            for tid in ids
        ]
    )


def test_stream_is_the_first_8_bytes_of_the_uuid_mod_n() -> None:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"id-{i}")) for i in range(2_000)]
    records = _records(ids)
    assert [int(p) for p in id_prefixes(records)] == [uuid_prefix(t) for t in ids]
    for n in (2, 3, 7):
        expected = [int.from_bytes(uuid.UUID(t).bytes[:8], "big") % n for t in ids]
        assert stream_indexes(records, n).tolist() == expected
    upper = _records([t.upper() for t in ids[:50]])
    assert stream_indexes(upper, 3).tolist() == stream_indexes(records.slice(0, 50), 3).tolist()


def test_split_keeps_order_loses_nothing_and_is_even() -> None:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_DNS, f"row-{i}")) for i in range(30_000)]
    records = _records(ids).slice(7)  # an offset into the buffers
    parts = split_by_stream(records, 3)
    assert sum(len(p) for p in parts) == len(records)
    position = {r: i for i, r in enumerate(records.to_pylist())}
    for index, part in enumerate(parts):
        rows = part.to_pylist()
        assert [position[r] for r in rows] == sorted(position[r] for r in rows)  # order kept
        assert all(uuid_prefix(json.loads(r)["transaction_id"]) % 3 == index for r in rows)
        assert abs(len(rows) - len(records) / 3) < 0.03 * len(records)  # uniform
    assert split_by_stream(records, 1) == [records]
    assert [len(p) for p in split_by_stream(records.slice(0, 0), 2)] == [0, 0]


def test_a_record_without_a_transaction_id_is_refused() -> None:
    with pytest.raises(ValueError, match="record 1 has no transaction_id"):
        stream_indexes(pa.array(['{"transaction_id":"' + str(uuid.uuid4()) + '"}', "{}"]), 2)
    with pytest.raises(ValueError, match="not a UUID"):
        stream_indexes(pa.array(['{"transaction_id":"not-a-uuid-at-all-no-not-one-bit!!"}']), 2)


def test_a_chunk_resolves_when_all_parts_did_and_fails_if_any_failed() -> None:
    a: Future[int] = Future()
    b: Future[int] = Future()
    both = _all_of([a, b])
    a.set_result(3)
    assert not both.done()
    b.set_result(4)
    assert both.result() == 7
    c: Future[int] = Future()
    d: Future[int] = Future()
    either = _all_of([c, d])
    d.set_exception(TransientDeliveryError("part 2 failed"))
    assert not either.done()  # still waits for the other part
    c.set_result(5)
    with pytest.raises(TransientDeliveryError, match="part 2"):
        either.result()


# -- over two streams of the strict endpoint -----------------------------------------------------


@pytest.fixture
def second_stream(strict_firehose: StrictFirehose) -> str:
    name = f"test2-{uuid.uuid4().hex[:16]}"
    strict_firehose.create_stream(name)
    return name


def _by_stream(server: StrictFirehose, streams: list[str]) -> dict[str, list[str]]:
    return {s: server.transaction_ids(s) for s in streams}


@pytest.mark.integration
def test_two_streams_each_id_in_exactly_one_the_same_on_a_rerun(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str, second_stream: str
) -> None:
    rows = 12_000
    src = write_payments(tmp_path / "p.parquet", 1, rows)
    streams = [firehose_stream, second_stream]
    settings = strict_settings(tmp_path, [src], strict_firehose, firehose_stream)
    settings = settings.model_copy(update={"streams": streams})
    summary, err = run_plain(settings)
    assert err is None, err
    first = _by_stream(strict_firehose, streams)
    seen = Counter(t for ids in first.values() for t in ids)
    assert set(seen) == expected_ids(1, rows) and set(seen.values()) == {1}
    for index, stream in enumerate(streams):
        assert first[stream], "both streams get actions"
        assert all(uuid_prefix(t) % 2 == index for t in first[stream])
        counters = strict_firehose.stream_counters(stream)
        assert summary.streams[stream] == {
            "records": len(first[stream]),
            "calls": counters["put_calls"],
            "throttled": 0,
            "throttled_records": 0,
            "records_retried": 0,
            "bytes": counters["bytes_stored"],
        }
    assert summary.actions_sent == rows and summary.accounted
    assert summary.firehose_calls == sum(s["calls"] for s in summary.streams.values())
    assert summary.send_limits == {"records_per_second": None, "mib_per_second": None, "streams": 2}

    again, err = run_plain(settings.model_copy(update={"reset": True}))
    assert err is None, err
    for stream in streams:
        ids = strict_firehose.transaction_ids(stream)
        assert Counter(ids) == Counter({t: 2 for t in first[stream]})  # sent twice, same stream
    assert again.actions_sent == rows


@pytest.mark.integration
def test_a_failed_part_fails_the_chunk_and_the_rerun_completes(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str, second_stream: str
) -> None:
    rows = 4_000
    src = write_payments(tmp_path / "p.parquet", 1, rows)
    streams = [firehose_stream, second_stream]
    settings = strict_settings(
        tmp_path, [src], strict_firehose, firehose_stream, retry_attempts=2
    ).model_copy(update={"streams": streams})
    strict_firehose.configure(delete_stream_after_calls=1)  # each stream takes one call only
    summary, err = run_plain(settings)
    assert err is not None and summary.status == "failed"
    committed = summary.actions_sent
    assert committed < rows
    first = set().union(*(strict_firehose.transaction_ids(s) for s in streams))
    strict_firehose.reset_faults()
    for stream in streams:
        strict_firehose.create_stream(stream)  # re-created empty
    rerun, err = run_plain(settings)
    assert err is None, err
    assert rerun.rows_skipped == committed and rerun.actions_sent == rows - committed
    delivered = _by_stream(strict_firehose, streams)
    resent = set(delivered[firehose_stream]) | set(delivered[second_stream])
    assert len(resent) == rows - committed  # the failed chunks, whole: both parts
    assert first | resent == expected_ids(1, rows)
    for index, stream in enumerate(streams):
        assert all(uuid_prefix(t) % 2 == index for t in delivered[stream])


@pytest.mark.integration
def test_preflight_checks_every_stream_before_sending(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 500)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    settings = strict_settings(tmp_path, [src], strict_firehose, firehose_stream)
    settings = settings.model_copy(update={"streams": [firehose_stream, missing]})
    summary, err = run_plain(settings)
    assert isinstance(err, PreflightError), err
    assert missing in str(err) and "Nothing was sent" in str(err)
    assert strict_firehose.records(firehose_stream) == [] and summary.actions_sent == 0


@pytest.mark.integration
def test_per_stream_quota_two_streams_carry_about_twice_one(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str, second_stream: str
) -> None:
    """Quota 2,000 records/s PER STREAM and the same limits given: 2 streams, ~2x the rate."""
    rows = 12_000
    src = write_payments(tmp_path / "p.parquet", 1, rows)
    strict_firehose.configure(quota_records_per_second=2_000)
    rates: dict[int, float] = {}
    for n, streams in ((1, [firehose_stream]), (2, [firehose_stream, second_stream])):
        before = sum(len(strict_firehose.records(s)) for s in streams)
        settings = strict_settings(
            tmp_path, [src], strict_firehose, firehose_stream, max_records_per_second=2_000
        ).model_copy(update={"streams": streams, "reset": True, "job": f"q{n}"})
        with DeliveryClock(strict_firehose, streams, rows) as clock:
            summary, err = run_plain(settings)
        assert err is None, err
        assert sum(len(strict_firehose.records(s)) for s in streams) - before == rows
        assert summary.expected_send_s == pytest.approx(rows / 2_000 / n, rel=1e-3)
        assert summary.throttled_calls == 0
        rates[n] = clock.rate()
    print(f"1 stream {rates[1]:,.0f} records/s, 2 streams {rates[2]:,.0f} records/s")
    assert rates[2] >= 1.5 * rates[1]


@pytest.mark.integration
def test_adaptive_rate_per_stream_converges_on_each_quota(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str, second_stream: str
) -> None:
    """No limits given, quota 2,000 records/s per stream: each stream's AIMD finds its own."""
    rows, quota = 40_000, 2_000
    src = write_payments(tmp_path / "p.parquet", 1, rows)
    strict_firehose.configure(quota_records_per_second=quota)
    streams = [firehose_stream, second_stream]
    settings = strict_settings(tmp_path, [src], strict_firehose, firehose_stream)
    settings = settings.model_copy(update={"streams": streams, "adaptive_rate": True})
    with DeliveryClock(strict_firehose, streams, rows) as clock:
        summary, err = run_plain(settings)
    assert err is None, err
    rate = clock.rate()
    print(
        f"adaptive over 2 streams: {rate:,.0f} records/s = {rate / (2 * quota):.0%} of the "
        f"quotas; throttled {summary.throttled_calls} of {summary.firehose_calls} calls"
    )
    assert rate >= 0.8 * 2 * quota
    assert summary.throttled_calls <= 0.15 * summary.firehose_calls
    assert all(s["throttled"] >= 1 for s in summary.streams.values())  # each found its quota
