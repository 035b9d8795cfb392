"""Integration tests of the pipeline (plain Python, no Prefect) against the local stand-ins.

boto3 talks HTTP to moto server (happy path) or to the project's strict Firehose endpoint
(limits and injected faults); nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from moesif_backfill.errors import (
    CheckpointMismatchError,
    JobLockedError,
    PermanentDeliveryError,
    PreflightError,
    SourceError,
    TransientDeliveryError,
)
from pipeline.run import Run
from tests.datasets import MAPPING, NAMESPACE, expected_ids, ids_of, write_mapping, write_payments
from tests.runner import file_progress, run_plain, settings_for, strict_settings

pytestmark = pytest.mark.integration


def test_moto_happy_path_then_rerun_sends_nothing(
    tmp_path: Path, moto_firehose_stream: Any
) -> None:
    data = tmp_path / "data"
    write_payments(data / "a.parquet", 1, 2_500)
    write_payments(data / "sub" / "b.csv", 2_501, 1_500)
    s = settings_for(
        tmp_path,
        [data],
        stream=moto_firehose_stream.stream,
        endpoint_url=moto_firehose_stream.endpoint_url,
    )
    first, err = run_plain(s)
    assert err is None, err
    assert first.rows_read == first.actions_sent == 4_000 and first.accounted
    receiver = moto_firehose_stream.receiver
    assert receiver.transaction_ids() == expected_ids(1, 4_000)
    assert receiver.stats()["duplicates"] == 0 and receiver.stats()["invalid"] == 0

    second, err = run_plain(s)
    assert err is None
    assert second.actions_sent == 0 and second.rows_skipped == 4_000 and second.accounted
    assert receiver.stats()["records"] == 4_000


def test_faults_every_row_delivered_at_least_once(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 6_000)
    strict_firehose.configure(
        record_failure_rate=0.10,
        throttle_rate=0.20,
        drop_after_store_rate=0.05,
        drop_before_store_rate=0.05,
    )
    # Random throttling is not a quota: the adaptive rate would only slow this retry test down.
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream, adaptive_rate=False)
    summary, err = run_plain(s)
    assert err is None, err
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == expected_ids(1, 6_000)
    assert summary.accounted and summary.actions_sent == 6_000
    assert summary.records_retried > 0 and summary.throttled_calls > 0
    dupes = sum(c - 1 for c in Counter(delivered).values())
    # Duplicates come only from calls whose connection dropped after the records were stored
    # (the client cannot know they arrived); each such call carried at most 500 records.
    drops = strict_firehose.stream_counters(firehose_stream)["dropped_after_store"]
    assert drops > 0
    assert dupes <= drops * 500


def test_permanent_failure_checkpoint_holds_exactly_what_was_delivered(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10_000)
    strict_firehose.configure(delete_stream_after_calls=7)
    s = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunks_in_flight=1,
        max_in_flight=1,
    )
    summary, err = run_plain(s)
    assert isinstance(err, PermanentDeliveryError)
    assert summary.status == "failed"
    prog = file_progress(tmp_path / "ckpt", "test-job", src)
    assert prog is not None
    delivered = set(strict_firehose.transaction_ids(firehose_stream))
    committed: set[str] = set()
    for a, b in prog.done:
        for chunk in range(a, b):
            committed |= expected_ids(1 + chunk * 1_000, 1_000)
    assert committed, "some chunks were delivered before the stream vanished"
    assert committed <= delivered  # nothing committed that was not delivered
    assert prog.rows_sent == len(committed) == summary.actions_sent

    # The stream comes back: the rerun fills exactly the gap.
    strict_firehose.reset_faults()
    strict_firehose.create_stream(firehose_stream)
    summary2, err = run_plain(s)
    assert err is None, err
    assert summary2.rows_skipped == len(committed)
    assert summary2.actions_sent == 10_000 - len(committed)
    assert set(strict_firehose.transaction_ids(firehose_stream)) | delivered == expected_ids(
        1, 10_000
    )


def test_throttled_beyond_budget_is_transient_and_resumable(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 2_000)
    strict_firehose.configure(throttle_rate=1.0)
    # No retries by the runner (retry_budget_s=0): the sender's own budget runs out.
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream, retry_budget_s=0)
    summary, err = run_plain(s)
    assert isinstance(err, TransientDeliveryError)
    assert "rerun" in str(err).lower() or "resume" in str(err).lower()
    assert summary.actions_sent == 0 and strict_firehose.transaction_ids(firehose_stream) == []
    strict_firehose.reset_faults()
    summary, err = run_plain(s)
    assert err is None and summary.actions_sent == 2_000


def test_rows_older_than_30_days_stop_before_sending(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=45)
    src = write_payments(tmp_path / "old.parquet", 1, 300, now=old)
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream)
    with pytest.raises(PreflightError, match=r"300 row\(s\) are more than 30 days old"):
        Run(s).prepare()
    assert strict_firehose.transaction_ids(firehose_stream) == []
    allowed = s.model_copy(update={"allow_older_than_30_days": True})
    summary, err = run_plain(allowed)
    assert err is None and summary.actions_sent == 300


def test_unknown_stream_is_a_preflight_error(tmp_path: Path, strict_firehose: Any) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10)
    s = settings_for(
        tmp_path, [src], stream="no-such-stream", endpoint_url=strict_firehose.endpoint_url
    )
    with pytest.raises(PreflightError, match="no-such-stream"):
        Run(s).prepare()


def test_changed_mapping_or_input_needs_reset_or_reprocess(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_500)
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream)
    assert run_plain(s)[1] is None

    changed = dict(MAPPING, action_name={"value": "Another Name"})
    write_mapping(tmp_path / "mapping.yaml", changed)
    with pytest.raises(CheckpointMismatchError, match="mapping changed"):
        Run(s).prepare()
    write_mapping(tmp_path / "mapping.yaml")

    write_payments(src, 1, 1_600)  # the file grew
    with pytest.raises(CheckpointMismatchError, match="--reprocess"):
        Run(s).prepare()
    summary, err = run_plain(s.model_copy(update={"reprocess": [str(src)]}))
    assert err is None and summary.actions_sent == 1_600

    summary, err = run_plain(s.model_copy(update={"reset": True}))
    assert err is None and summary.actions_sent == 1_600 and summary.rows_skipped == 0


def test_second_run_of_a_job_refuses_to_start(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10)
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream)
    first = Run(s)
    first.prepare()
    try:
        with pytest.raises(JobLockedError, match="already running"):
            Run(s).prepare()
    finally:
        first.finish()


def test_rejects_are_written_with_reason_and_row(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    csv = tmp_path / "r.csv"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    csv.write_text(
        "invoice_line_id,customer_id,user_id,created_at,amount,currency\n"
        f"il_1,c1,u1,{now},1.5,USD\n"
        f",c2,u2,{now},2.5,USD\n"
        f"il_3,c3,u3,,3.5,USD\n"
        f"il_4,c4,u4,not-a-time,4.5,USD\n"
        f"il_5,c5,u5,{now},5.5,USD\n",
        encoding="utf-8",
    )
    s = strict_settings(
        tmp_path,
        [csv],
        strict_firehose,
        firehose_stream,
        rejects=tmp_path / "rejects.ndjson",
    )
    summary, err = run_plain(s)
    assert err is None
    assert (summary.actions_sent, summary.rows_rejected, summary.status) == (
        2,
        3,
        "complete_with_rejects",
    )
    lines = [json.loads(x) for x in (tmp_path / "rejects.ndjson").read_text().splitlines()]
    assert [(x["row"], x["reason"]) for x in lines] == [
        (2, "missing transaction_id key value"),
        (3, "missing time"),
        (4, "unparseable time"),
    ]
    assert lines[2]["values"]["created_at"] == "not-a-time"
    assert lines[0]["source"] == str(csv.resolve())
    sent = sorted(ids_of(strict_firehose.records(firehose_stream)))
    assert sent == sorted(str(uuid.uuid5(NAMESPACE, f"v1|4:{k}")) for k in ("il_1", "il_5"))


def test_dry_run_writes_exactly_the_records_and_sends_nothing(tmp_path: Path) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 3_000)
    s = settings_for(tmp_path, [src], mode="dry-run", out=tmp_path / "out")
    summary, err = run_plain(s)
    assert err is None and summary.actions_sent == 3_000
    files = sorted((tmp_path / "out").glob("*.ndjson.gz"))
    assert len(files) == 1
    lines = gzip.decompress(files[0].read_bytes()).decode().splitlines()
    assert {json.loads(x)["transaction_id"] for x in lines} == expected_ids(1, 3_000)
    assert sum(len(x.encode()) for x in lines) == summary.bytes_sent
    assert not (tmp_path / "ckpt" / "test-job" / "state.json").exists()


def test_task_retry_within_a_run_counts_every_row_once(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """What a Prefect task retry does: the same Run processes the same file again."""
    src = write_payments(tmp_path / "p.parquet", 1, 10_000)
    strict_firehose.configure(delete_stream_after_calls=9)
    s = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunks_in_flight=1,
        max_in_flight=1,
    )
    run = Run(s)
    run.prepare()
    with pytest.raises(PermanentDeliveryError):
        run.process_file(0)
    first_attempt = run.counts.actions_sent
    assert 0 < first_attempt < 10_000
    strict_firehose.reset_faults()
    strict_firehose.create_stream(firehose_stream)
    run.process_file(0)
    summary = run.finish()
    assert summary.accounted
    assert (summary.rows_read, summary.actions_sent, summary.rows_skipped) == (10_000, 10_000, 0)


def test_unreadable_row_mid_file_stops_with_delivered_chunks_committed(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """A CSV value that cannot be read (bytes that are not UTF-8 in company_id, found past the
    first blocks and by no preflight pass) is a source error: the run fails (exit 1) and the
    checkpoint keeps the chunks delivered so far. (A text value in a number column used to be
    the example; since issue 10 it makes the column text, decided before sending.)"""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [f"il_{i},c{i % 7},u{i},{now},{i % 1000},USD".encode() for i in range(1, 150_001)]
    rows[140_000] = f"il_140001,c1\xff,u1,{now},1,USD".encode("latin-1")
    csv = tmp_path / "big.csv"
    csv.write_bytes(
        b"invoice_line_id,customer_id,user_id,created_at,amount,currency\n"
        + b"\n".join(rows)
        + b"\n"
    )
    s = strict_settings(
        tmp_path,
        [csv],
        strict_firehose,
        firehose_stream,
        chunk_rows=10_000,
    )
    summary, err = run_plain(s)
    assert isinstance(err, SourceError) and err.exit_code == 1
    assert "customer_id" in str(err) and "UTF-8" in str(err)
    prog = file_progress(tmp_path / "ckpt", "test-job", csv)
    assert prog is not None
    assert prog.total_chunks is None and prog.rows_sent == summary.actions_sent > 0
    assert len(set(strict_firehose.transaction_ids(firehose_stream))) >= prog.rows_sent


def test_validate_counts_rejects_old_rows_and_billable_units(tmp_path: Path) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    a = write_payments(tmp_path / "d" / "a.parquet", 1, 200, now=old)
    write_payments(tmp_path / "d" / "b.parquet", 201, 300)
    s = settings_for(tmp_path, [a.parent], mode="validate")
    summary, err = run_plain(s)
    assert err is None
    assert summary.rows_older_than_30_days == 200
    assert summary.actions_sent == 500 and summary.firehose_calls == 0
    assert summary.billable_5kb_units == 500  # every small action is one 5 KB unit
    assert len(summary.sample_actions) == 3
    assert not (tmp_path / "ckpt").exists()
