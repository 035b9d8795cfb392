"""Nightly sync: day selection and the watermark document (pure / store level), the engine's
time window across a resumed run, then `nightly_sync` through Prefect against the strict
Firehose endpoint: exactly a day's ids, reruns, late files, catch-up, the catch-up bound,
missing and empty days and the watermark, time-window mode on one file holding several days,
and day prefixes plus the checkpoint in (moto) S3.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.checkpoint_local import LocalCheckpointStore
from flows.nightly import nightly_sync, scheduled_start
from moesif_backfill.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    DaysFailedError,
    PermanentDeliveryError,
)
from pipeline.day_run import input_absent
from pipeline.day_settings import NightlySettings
from pipeline.days import (
    advance_watermark,
    check_templates,
    day_bounds,
    select_days,
    target_day,
)
from pipeline.nightly_state import Watermark, load_watermark, save_watermark
from tests.datasets import expected_ids, payments_table, write_mapping
from tests.runner import run_plain, strict_settings

D = dt.date


# ------------------------------------------------------------------------------ test data


def day_start(index: int) -> int:
    """First invoice line number of test day `index` (days never share an id)."""
    return 1 + index * 100_000


def write_day(path: Path, day: dt.date, start: int, n: int) -> Path:
    """`n` payments (ids start..start+n-1) with times spread over `day` (UTC), day-partition
    style (e.g. usage/dt=2026-11-20/part-0.parquet)."""
    table = payments_table(start, n)
    t0 = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    step = dt.timedelta(hours=24) / n
    times = pa.array([t0 + i * step for i in range(n)], pa.timestamp("us", "UTC"))
    table = table.set_column(table.schema.get_field_index("created_at"), "created_at", times)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def partition(root: Path, day: dt.date, part: int = 0) -> Path:
    return root / f"dt={day:%Y-%m-%d}" / f"part-{part}.parquet"


def recent_day(days_ago: int) -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days_ago)


def params(tmp_path: Path, server: Any, stream: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sources": [str(tmp_path / "usage" / "dt={date:%Y-%m-%d}") + "/"],
        "mapping": str(write_mapping(tmp_path / "mapping.yaml")),
        "job": "usage",
        "streams": [stream],
        "checkpoint": str(tmp_path / "ckpt"),
        "endpoint_url": server.endpoint_url,
        "region": "us-east-1",
        "options": {"chunk_rows": 500},
    }
    base.update(kw)
    return base


def sync(p: dict[str, Any], date: str | None = None, **settings: Any) -> dict[str, Any]:
    """The `nightly-sync` flow with the settings `p` (updated with `settings`) for `date`."""
    return nightly_sync(NightlySettings.model_validate({**p, **settings}), date=date)


def by_day(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["day"]: d for d in result["days"]}


async def _artifact_keys(prefix: str) -> set[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key for a in await client.read_artifacts() if a.key and a.key.startswith(prefix)}


# ------------------------------------------------------------------------------ pure: days


def test_target_day_is_the_day_before_the_scheduled_start_in_the_time_zone() -> None:
    at = dt.datetime(2026, 11, 21, 2, 0, tzinfo=dt.UTC)
    assert target_day(at, "UTC") == D(2026, 11, 20)
    # 02:00 UTC is 21:00 on the 20th in New York: its "yesterday" is the 19th
    assert target_day(at, "America/New_York") == D(2026, 11, 19)
    # 11:00 on the 21st in Tokyo
    assert target_day(at, "Asia/Tokyo") == D(2026, 11, 20)
    # a late run (scheduled 02:00, started at noon) still syncs its scheduled day
    assert target_day(at.replace(hour=23, minute=59), "UTC") == D(2026, 11, 20)
    with pytest.raises(ConfigError, match="unknown time zone"):
        target_day(at, "Mars/Olympus")
    # outside a flow run the "scheduled start" is now
    assert abs(scheduled_start() - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


def test_day_bounds_follow_the_time_zone_and_dst() -> None:
    start, end = day_bounds(D(2026, 3, 8), "America/New_York")  # spring forward: 23 h
    assert start.isoformat() == "2026-03-08T00:00:00-05:00"
    assert end.isoformat() == "2026-03-09T00:00:00-04:00"
    assert end.astimezone(dt.UTC) - start.astimezone(dt.UTC) == dt.timedelta(hours=23)
    start, end = day_bounds(D(2026, 11, 1), "America/New_York")  # fall back: 25 h
    assert (end.astimezone(dt.UTC) - start.astimezone(dt.UTC)) == dt.timedelta(hours=25)


def test_select_days() -> None:
    t = D(2026, 11, 20)

    def pick(target: dt.date, start: dt.date | None, last: dt.date | None, **kw: int) -> Any:
        kw.setdefault("max_catch_up_days", 7)
        kw.setdefault("late_arrival_days", 2)
        return select_days(target, start_day=start, last_synced=last, **kw)

    first = pick(t, None, None)  # first run ever: just the target
    assert (first.new, first.rescan, first.remaining) == ((t,), (), ())
    # first day failed last time (no watermark yet): that day is still pending
    retry = pick(t + dt.timedelta(days=1), t, None)
    assert retry.new == (t, t + dt.timedelta(days=1)) and retry.rescan == ()
    # the usual night: the new day, and the two synced days before it re-scanned
    usual = pick(t, D(2026, 11, 1), D(2026, 11, 19))
    assert usual.new == (t,) and usual.rescan == (D(2026, 11, 18), D(2026, 11, 19))
    assert [k for _, k in usual.days()] == ["rescan", "rescan", "new"]
    # the same date again: nothing new, the target and its late-arrival days re-scanned
    again = pick(t, D(2026, 11, 1), t)
    assert again.new == () and again.rescan == (D(2026, 11, 18), D(2026, 11, 19), t)
    # re-scans never go before the first day the sync ran for
    young = pick(t, t, t)
    assert young.rescan == (t,)
    # three days late: catches up oldest first; re-scans the days before the gap
    late = pick(t, D(2026, 11, 1), D(2026, 11, 17))
    assert late.new == (D(2026, 11, 18), D(2026, 11, 19), t)
    assert late.rescan == (D(2026, 11, 16), D(2026, 11, 17))
    # more missing days than max_catch_up_days: the oldest run, the rest remain
    bounded = pick(t, D(2026, 11, 1), D(2026, 11, 10), max_catch_up_days=3)
    assert bounded.new == (D(2026, 11, 11), D(2026, 11, 12), D(2026, 11, 13))
    assert bounded.remaining[0] == D(2026, 11, 14) and bounded.remaining[-1] == t
    assert len(bounded.remaining) == 7
    assert pick(t, D(2026, 11, 1), D(2026, 11, 19), late_arrival_days=0).rescan == ()
    with pytest.raises(ConfigError, match="before 2026-11-21, the first day"):
        pick(t, D(2026, 11, 21), None)
    with pytest.raises(ConfigError, match="max_catch_up_days"):
        pick(t, None, None, max_catch_up_days=0)


def test_watermark_moves_over_consecutive_completed_days_only() -> None:
    s = D(2026, 11, 1)
    assert advance_watermark(None, s, []) is None
    assert advance_watermark(None, s, [s, D(2026, 11, 2)]) == D(2026, 11, 2)
    # 11-04 completed but 11-03 did not: the watermark stops at 11-02
    assert advance_watermark(D(2026, 11, 1), s, [D(2026, 11, 2), D(2026, 11, 4)]) == D(2026, 11, 2)
    assert advance_watermark(D(2026, 11, 1), s, [D(2026, 11, 3)]) == D(2026, 11, 1)


def test_path_mode_needs_a_per_day_placeholder(tmp_path: Path) -> None:
    check_templates(["s3://b/usage/dt={date:%Y-%m-%d}/"], "path")
    with pytest.raises(ConfigError, match="does not change from day to day"):
        check_templates(["s3://b/usage/month={date:%Y-%m}/"], "path")
    check_templates(["s3://b/usage/month={date:%Y-%m}/", "plain/"], "time")
    with pytest.raises(ConfigError, match="only placeholder is"):
        check_templates(["s3://b/{day}/"], "time")
    (tmp_path / "only_marker").mkdir()
    (tmp_path / "only_marker" / "_SUCCESS").write_text("")
    assert input_absent(str(tmp_path / "only_marker"))
    assert input_absent(str(tmp_path / "nope"))
    assert input_absent(str(tmp_path / "*.parquet"))
    # a glob that matches only bookkeeping files is as absent as discovery sees it
    assert input_absent(str(tmp_path / "only_marker" / "*"))
    write_day(tmp_path / "d" / "x.parquet", D(2026, 1, 1), 1, 3)
    assert not input_absent(str(tmp_path / "d"))
    assert not input_absent(str(tmp_path / "**" / "*.parquet"))


def test_watermark_document_local_and_s3(tmp_path: Path, moto_firehose: Any) -> None:
    """Atomic, checksummed, refused when damaged; in S3 refused once the lease is lost."""
    from connectors.checkpoint_s3 import S3CheckpointStore
    from tests.standins.moto_firehose import ensure_bucket

    local = LocalCheckpointStore(tmp_path / "ckpt")
    wm = Watermark.first("usage", D(2026, 11, 1), "UTC", "path").advanced(D(2026, 11, 5))
    assert load_watermark(local, "usage") is None
    save_watermark(local, wm)
    assert load_watermark(local, "usage") == wm
    doc = tmp_path / "ckpt" / "usage" / "nightly.json"
    doc.write_bytes(doc.read_bytes().replace(b"2026-11-05", b"2026-11-09"))
    with pytest.raises(CheckpointError, match=r"nightly.json is damaged \(checksum mismatch\)"):
        load_watermark(local, "usage")
    with pytest.raises(ConfigError, match="invalid checkpoint document name"):
        local.write_document("usage", "state.json", {})
    with pytest.raises(ConfigError, match="syncs days in time zone UTC with window=path"):
        wm.check_matches("Europe/Berlin", "path", "here")

    s3 = moto_firehose.s3_client()
    bucket = f"wm-{uuid.uuid4().hex[:12]}"
    ensure_bucket(s3, bucket, moto_firehose.region)
    store = S3CheckpointStore(
        f"s3://{bucket}/ckpt/",
        client=s3,
        endpoint_url=moto_firehose.endpoint_url,
        region=moto_firehose.region,
        lease_seconds=30,
    )
    with store.lock("usage"):
        save_watermark(store, wm)
        assert load_watermark(store, "usage") == wm
        s3.put_object(Bucket=bucket, Key="ckpt/usage/lease.json", Body=b'{"owner": "other"}')
        with pytest.raises(CheckpointError, match="lease lost"):
            save_watermark(store, wm.advanced(D(2026, 11, 6)))
    assert load_watermark(store, "usage") == wm


def test_window_counts_stay_exact_when_a_run_resumes(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """The engine with a time window, without Prefect: a run that fails mid-file (stream
    deleted after 4 calls) and its resumption count every row once: committed chunks are
    skipped with their outside-window rows counted as such, not as skipped."""
    day = recent_day(3)
    parts = []
    for k, d in enumerate([day - dt.timedelta(days=1), day, day + dt.timedelta(days=1)]):
        parts.append(pq.read_table(write_day(tmp_path / f"d{k}.parquet", d, day_start(k), 300)))
    mixed = pa.concat_tables(parts)
    order = [k * 300 + i for i in range(300) for k in range(3)]  # the days interleaved
    src = tmp_path / "mixed.parquet"
    pq.write_table(mixed.take(pa.array(order)), src)
    start, end = day_bounds(day, "UTC")
    settings = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunk_rows=90,
        chunks_in_flight=1,
        window_start=start,
        window_end=end,
    )
    strict_firehose.configure(delete_stream_after_calls=4)
    first, error = run_plain(settings)
    assert isinstance(error, PermanentDeliveryError)
    assert (first.actions_sent, first.rows_outside_window, first.rows_read) == (120, 240, 360)
    assert first.accounted
    strict_firehose.reset_faults()
    second_stream = f"{firehose_stream}-b"
    strict_firehose.create_stream(second_stream)
    again, error = run_plain(settings.model_copy(update={"streams": [second_stream]}))
    assert error is None, error
    assert again.rows_read == 900 and again.accounted
    assert (again.actions_sent, again.rows_skipped, again.rows_outside_window) == (180, 120, 600)
    delivered = strict_firehose.transaction_ids(firehose_stream)
    delivered += strict_firehose.transaction_ids(second_stream)
    assert Counter(delivered) == Counter(expected_ids(day_start(1), 300))


def test_a_day_checkpointed_under_one_window_refuses_another(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """The window is part of a day job's identity: day D synced in New York time, then the
    same day job run with D's UTC bounds (`range` in UTC after `nightly` in New York) is
    refused before anything is sent, instead of skipping chunks committed under the New York
    window and leaving rows of the UTC day undelivered. A checkpoint without a recorded
    window (written before windows were recorded) takes on the window of its next run."""
    day = recent_day(3)
    parts = []
    for k, d in enumerate([day - dt.timedelta(days=1), day, day + dt.timedelta(days=1)]):
        parts.append(pq.read_table(write_day(tmp_path / f"d{k}.parquet", d, day_start(k), 300)))
    src = tmp_path / "three-days.parquet"
    pq.write_table(pa.concat_tables(parts), src)
    ny_start, ny_end = day_bounds(day, "America/New_York")
    ny = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunk_rows=100,
        job="usage-day",
        window_start=ny_start,
        window_end=ny_end,
    )
    first, error = run_plain(ny)
    assert error is None, error
    sent_first = first.actions_sent
    assert sent_first > 0
    utc_start, utc_end = day_bounds(day, "UTC")
    utc = ny.model_copy(update={"window_start": utc_start, "window_end": utc_end})
    again, error = run_plain(utc)
    assert isinstance(error, CheckpointMismatchError), error
    message = str(error)
    assert "time window" in message and "--reset" in message and "--timezone" in message
    assert again.actions_sent == 0
    assert len(strict_firehose.transaction_ids(firehose_stream)) == sent_first
    # the same window (another offset spelling of the same instants) resumes as before
    same, error = run_plain(ny)
    assert error is None and same.rows_skipped + same.rows_outside_window == same.rows_read

    # a checkpoint from before windows were recorded takes on the next run's window
    store = LocalCheckpointStore(tmp_path / "ckpt")
    state = store.load("usage-day")
    assert state is not None and state.window is not None
    with store.lock("usage-day"):
        store.commit(state.model_copy(update={"window": None}))
    _, error = run_plain(ny)
    assert error is None, error
    state = store.load("usage-day")
    assert state is not None and state.window is not None
    assert state.window.start == ny_start.isoformat()


# ------------------------------------------------------------------------------ through Prefect


@pytest.mark.integration
def test_nightly_day_rerun_late_file_and_catch_up(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    root = tmp_path / "usage"
    d0 = recent_day(10)
    d = [d0 + dt.timedelta(days=i) for i in range(4)]
    write_day(partition(root, d[0]), d[0], day_start(0), 1_200)
    write_day(partition(root, d[1]), d[1], day_start(1), 700)
    p = params(tmp_path, strict_firehose, firehose_stream)

    # 1. the day D: exactly D's ids (D+1's partition exists but is not D)
    first = sync(p, date=d[0].isoformat())
    assert first["status"] == "complete" and first["watermark_after"] == d[0].isoformat()
    assert [(x["day"], x["kind"], x["sent"]) for x in first["days"]] == [
        (d[0].isoformat(), "new", 1_200)
    ]
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert Counter(delivered) == Counter(expected_ids(day_start(0), 1_200))

    # 2. the same day again: nothing new, everything skipped
    second = sync(p, date=d[0].isoformat())
    assert [(x["kind"], x["sent"], x["skipped"]) for x in second["days"]] == [("rescan", 0, 1_200)]
    assert len(strict_firehose.transaction_ids(firehose_stream)) == 1_200

    # 3. a late file in D's partition: delivered alone on the next run for D
    write_day(partition(root, d[0], 1), d[0], day_start(0) + 50_000, 300)
    third = sync(p, date=d[0].isoformat())
    assert [(x["sent"], x["skipped"]) for x in third["days"]] == [(300, 1_200)]
    new = strict_firehose.transaction_ids(firehose_stream)[1_200:]
    assert Counter(new) == Counter(expected_ids(day_start(0) + 50_000, 300))

    # 4. a run for D+3 catches up D+1 and D+2 (oldest first), re-scans D
    write_day(partition(root, d[2]), d[2], day_start(2), 400)
    write_day(partition(root, d[3]), d[3], day_start(3), 500)
    fourth = sync(p, date=d[3].isoformat())
    days = by_day(fourth)
    assert [(x["day"], x["kind"]) for x in fourth["days"]] == [
        (d[0].isoformat(), "rescan"),
        (d[1].isoformat(), "new"),
        (d[2].isoformat(), "new"),
        (d[3].isoformat(), "new"),
    ]
    assert [days[x.isoformat()]["sent"] for x in d] == [0, 700, 400, 500]
    assert fourth["watermark_before"] == d[0].isoformat()
    assert fourth["watermark_after"] == d[3].isoformat()
    assert fourth["totals"]["sent"] == 1_600 and fourth["totals"]["skipped"] == 1_500
    want = (
        expected_ids(day_start(0), 1_200)
        | expected_ids(day_start(0) + 50_000, 300)
        | expected_ids(day_start(1), 700)
        | expected_ids(day_start(2), 400)
        | expected_ids(day_start(3), 500)
    )
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == want and len(delivered) == len(want)  # no duplicate at all

    # the watermark document: days only, in the checkpoint store
    wm = load_watermark(LocalCheckpointStore(tmp_path / "ckpt"), "usage")
    assert wm is not None and wm.last_synced_day == d[3] and wm.start_day == d[0]
    assert set(json.loads((tmp_path / "ckpt" / "usage" / "nightly.json").read_bytes())) == {
        "format_version",
        "sha256",
        "body",
    }
    keys = asyncio.run(_artifact_keys("usage-"))
    assert {f"usage-{x:%Y-%m-%d}-summary" for x in d} | {"usage-nightly-summary"} <= keys


@pytest.mark.integration
def test_catch_up_bound_fails_loudly_naming_the_remaining_days(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    root = tmp_path / "usage"
    d = [recent_day(12) + dt.timedelta(days=i) for i in range(5)]
    for i, day in enumerate(d):
        write_day(partition(root, day), day, day_start(i), 100)
    p = params(tmp_path, strict_firehose, firehose_stream, late_arrival_days=0)
    sync(p, date=d[0].isoformat())

    with pytest.raises(DaysFailedError) as failed:
        sync(p, date=d[4].isoformat(), max_catch_up_days=2)
    message = str(failed.value)
    assert f"{d[3]} .. {d[4]} (2 days)" in message
    assert "--max-catch-up-days 4" in message and "backfill-range" in message
    wm = load_watermark(LocalCheckpointStore(tmp_path / "ckpt"), "usage")
    assert wm is not None and wm.last_synced_day == d[2]
    assert set(strict_firehose.transaction_ids(firehose_stream)) == {
        i for k in range(3) for i in expected_ids(day_start(k), 100)
    }
    done = sync(p, date=d[4].isoformat(), max_catch_up_days=2)
    assert done["watermark_after"] == d[4].isoformat()
    assert [x["day"] for x in done["days"]] == [d[3].isoformat(), d[4].isoformat()]


@pytest.mark.integration
def test_missing_day_fails_and_keeps_the_watermark(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    root = tmp_path / "usage"
    d = [recent_day(8) + dt.timedelta(days=i) for i in range(3)]
    write_day(partition(root, d[0]), d[0], day_start(0), 100)
    write_day(partition(root, d[2]), d[2], day_start(2), 100)
    p = params(tmp_path, strict_firehose, firehose_stream, late_arrival_days=0)
    sync(p, date=d[0].isoformat())

    with pytest.raises(DaysFailedError, match=rf"{d[1]} \(usage-{d[1]}\): day {d[1]}: no input"):
        sync(p, date=d[2].isoformat())
    store = LocalCheckpointStore(tmp_path / "ckpt")
    wm = load_watermark(store, "usage")
    assert wm is not None and wm.last_synced_day == d[0]  # not past the missing day
    # the day after the gap was still delivered (billing stays current)
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(
        day_start(0), 100
    ) | expected_ids(day_start(2), 100)

    # the export lands: the next run delivers it, skips D+2, and moves the watermark
    write_day(partition(root, d[1]), d[1], day_start(1), 100)
    done = sync(p, date=d[2].isoformat())
    days = by_day(done)
    assert days[d[1].isoformat()]["sent"] == 100 and days[d[2].isoformat()]["skipped"] == 100
    assert len(strict_firehose.transaction_ids(firehose_stream)) == 300
    assert done["watermark_after"] == d[2].isoformat()
    # an empty day, allowed: counted as empty, the watermark moves over it
    empty = sync(p, date=(d[2] + dt.timedelta(days=1)).isoformat(), allow_empty_days=True)
    assert empty["days"][-1]["status"] == "empty"
    assert empty["watermark_after"] == (d[2] + dt.timedelta(days=1)).isoformat()


@pytest.mark.integration
def test_a_day_with_one_of_two_sources_missing_is_incomplete(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    """Two source templates (usage and seats exports): a day where one has landed and the
    other has not fails as incomplete and holds the watermark, even with allow_empty_days
    (which accepts only a day where every source is empty); nothing of the day is sent until
    both are there."""
    usage, seats = tmp_path / "usage", tmp_path / "seats"
    d = [recent_day(6) + dt.timedelta(days=i) for i in range(2)]
    write_day(partition(usage, d[0]), d[0], day_start(0), 100)
    write_day(partition(seats, d[0]), d[0], day_start(0) + 50_000, 50)
    write_day(partition(usage, d[1]), d[1], day_start(1), 100)  # seats of d[1]: not yet
    sources = [str(root / "dt={date:%Y-%m-%d}") + "/" for root in (usage, seats)]
    p = params(tmp_path, strict_firehose, firehose_stream, sources=sources, late_arrival_days=0)
    sync(p, date=d[0].isoformat())
    assert len(strict_firehose.transaction_ids(firehose_stream)) == 150

    with pytest.raises(DaysFailedError, match=rf"day {d[1]} is incomplete: no input at .*seats"):
        sync(p, date=d[1].isoformat(), allow_empty_days=True)
    wm = load_watermark(LocalCheckpointStore(tmp_path / "ckpt"), "usage")
    assert wm is not None and wm.last_synced_day == d[0]  # not past the incomplete day
    assert len(strict_firehose.transaction_ids(firehose_stream)) == 150  # nothing of d[1]

    write_day(partition(seats, d[1]), d[1], day_start(1) + 50_000, 50)
    done = sync(p, date=d[1].isoformat())
    assert by_day(done)[d[1].isoformat()]["sent"] == 150
    assert done["watermark_after"] == d[1].isoformat()
    # a day where every source is empty is what allow_empty_days accepts
    empty = sync(p, date=(d[1] + dt.timedelta(days=1)).isoformat(), allow_empty_days=True)
    assert empty["days"][-1]["status"] == "empty"


@pytest.mark.integration
def test_time_window_mode_sends_each_day_only_its_rows(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    """One CSV holding three days (New York time), rows 40 days old and a row whose time
    cannot be read: each day's run sends exactly that day's rows, counts add up."""
    tz = "America/New_York"
    d = [recent_day(9) + dt.timedelta(days=i) for i in range(3)]
    rows: list[tuple[str, str]] = []  # (invoice_line_id, created_at text)
    want: dict[dt.date, set[str]] = {day: set() for day in d}
    line = 0
    for day in d:
        t0 = dt.datetime.combine(day, dt.time(0), tzinfo=ZoneInfo(tz))
        # 00:00 local (inside), 23:30 local (inside; the next day in UTC), every 37 min between
        for minutes in [0, *range(1, 1_440, 37), 1_410, 1_439]:
            line += 1
            rows.append((f"il_{line:07d}", (t0 + dt.timedelta(minutes=minutes)).isoformat()))
            want[day] |= expected_ids(line, 1)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    for _ in range(5):
        line += 1
        rows.append((f"il_{line:07d}", old.isoformat()))
    line += 1
    rows.append((f"il_{line:07d}", "not a time"))
    src = tmp_path / "all.csv"
    src.write_text(
        "invoice_line_id,customer_id,user_id,created_at,amount,currency\n"
        + "".join(f"{i},cus_1,user_1,{t},1.50,USD\n" for i, t in rows),
        encoding="utf-8",
    )
    p = params(
        tmp_path, strict_firehose, firehose_stream, sources=[str(src)], window="time", timezone=tz
    )
    p["options"] = {"chunk_rows": 40}

    first = sync(p, date=d[0].isoformat())
    (day0,) = first["days"]
    assert day0["sent"] == len(want[d[0]]) and day0["rejected"] == 1  # the unreadable time
    assert day0["outside_window"] == len(rows) - len(want[d[0]]) - 1
    assert day0["rows_read"] == len(rows)
    assert set(strict_firehose.transaction_ids(firehose_stream)) == want[d[0]]

    done = sync(p, date=d[2].isoformat())
    days = by_day(done)
    for day in d:
        x = days[day.isoformat()]
        total = x["sent"] + x["rejected"] + x["skipped"] + x["outside_window"]
        assert x["rows_read"] == total == len(rows), x
    # the re-scanned day: its rows delivered before are skipped, its unreadable row stays
    # rejected (by the earlier run), not "skipped"
    assert days[d[0].isoformat()]["skipped"] == len(want[d[0]])
    assert days[d[0].isoformat()]["rejected"] == 1
    for day in d[1:]:
        assert days[day.isoformat()]["sent"] == len(want[day])
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == want[d[0]] | want[d[1]] | want[d[2]]
    assert len(delivered) == len(set(delivered))
    # the day jobs' checkpoints record the rows outside their window (exact on a rerun)
    (shard,) = (tmp_path / "ckpt").glob(f"usage-{d[1]}.shard-*")  # the day's one file
    state = json.loads((shard / "state.json").read_bytes())
    (prog,) = state["body"]["files"].values()
    assert prog["rows_outside_window"] == len(rows) - len(want[d[1]]) - 1


@pytest.mark.integration
def test_nightly_on_s3_partitions_and_s3_checkpoint(
    tmp_path: Path,
    prefect_api: str,
    moto_firehose: Any,
    strict_firehose: Any,
    firehose_stream: str,
) -> None:
    """Day prefixes and the checkpoint (with the watermark) in S3: a missing day prefix fails
    loudly; once uploaded, the next run delivers it and moves the watermark."""
    from tests.standins.moto_firehose import ensure_bucket

    s3 = moto_firehose.s3_client()
    bucket = f"nightly-{uuid.uuid4().hex[:10]}"
    ensure_bucket(s3, bucket, moto_firehose.region)
    d = [recent_day(7), recent_day(6)]

    def upload(k: int) -> None:
        local = write_day(tmp_path / f"day{k}.parquet", d[k], day_start(k), 250)
        s3.upload_file(str(local), bucket, f"exports/usage/dt={d[k]:%Y-%m-%d}/part-0.parquet")
        s3.put_object(Bucket=bucket, Key=f"exports/usage/dt={d[k]:%Y-%m-%d}/_SUCCESS", Body=b"")

    upload(0)
    p = params(
        tmp_path,
        strict_firehose,
        firehose_stream,
        sources=[f"s3://{bucket}/exports/usage/dt={{date:%Y-%m-%d}}/"],
        checkpoint=f"s3://{bucket}/ckpt/",
        s3_endpoint_url=moto_firehose.endpoint_url,
        late_arrival_days=0,
    )
    sync(p, date=d[0].isoformat())
    with pytest.raises(DaysFailedError, match=rf"day {d[1]}: no input at s3://{bucket}/"):
        sync(p, date=d[1].isoformat())
    upload(1)
    done = sync(p, date=d[1].isoformat())
    assert done["watermark_after"] == d[1].isoformat()
    assert done["watermark_location"] == f"s3://{bucket}/ckpt/usage/nightly.json"
    body = json.loads(s3.get_object(Bucket=bucket, Key="ckpt/usage/nightly.json")["Body"].read())
    assert body["body"]["last_synced_day"] == d[1].isoformat()
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert Counter(delivered) == Counter(
        expected_ids(day_start(0), 250) | expected_ids(day_start(1), 250)
    )
