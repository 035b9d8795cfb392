"""The ID ledger (--ledger, pipeline/ledger.py): one row per input row, read back with DuckDB as a
hive-partitioned dataset, checked against what the strict Firehose stand-in received; reruns,
SIGKILL between the acknowledgement and the checkpoint commit, S3 (moto server), dry runs, time
windows, and the pure row builder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from moesif_backfill.errors import LedgerError, PreflightError
from moesif_backfill.failpoints import ENV as FAILPOINTS_ENV
from pipeline.day_settings import RangeSettings
from pipeline.ledger import LEDGER_SCHEMA, chunk_name, ledger_rows
from tests.datasets import expected_id, expected_ids, payments_table, write_mapping
from tests.runner import file_progress, run_plain, settings_for, strict_settings
from transforms.actions import ActionBatch

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=123_456)  # the rows' times: minutes before it


def read_ledger(location: Path, where: str = "") -> list[dict[str, Any]]:
    """Every ledger row (with the `job` partition column), as DuckDB reads the dataset."""
    glob = str(location / "**" / "*.parquet")
    rel = duckdb.sql(
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true) {where} ORDER BY source, row"
    )
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def status_counts(location: Path) -> dict[str, int]:
    glob = str(location / "**" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT status, count(*) FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY ALL"
    ).fetchall()
    return {s: n for s, n in rows}


def write_with_rejects(path: Path, start: int, n: int) -> dict[int, str]:
    """Payments rows start..start+n-1; some without a key, some without a time. Returns the
    reason of each rejected row by its 1-based row number."""
    table = payments_table(start, n, now=NOW)
    ids = table.column("invoice_line_id").to_pylist()
    times = table.column("created_at").to_pylist()
    bad: dict[int, str] = {}
    for i in range(0, n, 97):
        ids[i] = None
        bad[i + 1] = "missing transaction_id key value"
    for i in range(5, n, 211):
        if i + 1 not in bad:
            times[i] = None
            bad[i + 1] = "missing time"
    table = table.set_column(0, "invoice_line_id", pa.array(ids, pa.string()))
    table = table.set_column(3, "created_at", pa.array(times, pa.timestamp("us", "UTC")))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=1_000)
    return bad


def test_ledger_one_row_per_input_row_ids_as_delivered(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    a, b = tmp_path / "data" / "a.parquet", tmp_path / "data" / "b.csv"
    bad = {str(a): write_with_rejects(a, 1, 4_500), str(b): write_with_rejects(b, 10_001, 1_700)}
    ledger = tmp_path / "ledger"
    s = strict_settings(
        tmp_path, [a, b], strict_firehose, firehose_stream, ledger=str(ledger), chunk_rows=1_000
    )
    summary, err = run_plain(s)
    assert err is None, err
    assert summary.rows_read == 6_200 and summary.rows_rejected == sum(map(len, bad.values()))

    rows = read_ledger(ledger)
    assert len(rows) == summary.rows_read
    assert len({(r["source"], r["row"]) for r in rows}) == len(rows)  # one row per input row
    assert {r["job"] for r in rows} == {"test-job"}
    assert len({r["run_id"] for r in rows}) == 1
    uuid.UUID(rows[0]["run_id"])
    delivered = strict_firehose.transaction_ids(firehose_stream)
    sent = [r for r in rows if r["status"] == "sent"]
    assert Counter(r["transaction_id"] for r in sent) == Counter(delivered)
    assert len(sent) == summary.actions_sent
    for src, start, n in ((a, 1, 4_500), (b, 10_001, 1_700)):
        mine = [r for r in rows if r["source"] == str(src)]
        assert [r["row"] for r in mine] == list(range(1, n + 1))
        table = payments_table(start, n, now=NOW)
        for r in mine:
            i = start + r["row"] - 1
            reason = bad[str(src)].get(r["row"])
            if reason is None:
                assert r["status"] == "sent" and r["reason"] is None
                assert r["transaction_id"] == expected_id(i)
                assert r["action_time"] is not None
            else:
                assert r["status"] == "rejected" and r["reason"] == reason
                assert r["transaction_id"] == (None if "key" in reason else expected_id(i))
                assert (r["action_time"] is None) == (reason == "missing time")
        # action_time: the row's time in UTC (to the microsecond)
        want = table.column("created_at").to_pylist()
        got = {r["row"]: r["action_time"] for r in mine if r["action_time"] is not None}
        assert all(got[k] == want[k - 1] for k in got)
    # the rejects file and the ledger agree
    rejects_file = Path(summary.rejects_path or "")
    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert {(e["source"], e["row"], e["reason"]) for e in rejects} == {
        (r["source"], r["row"], r["reason"]) for r in rows if r["status"] == "rejected"
    }
    # The file layout: job=<job>/<sha256(source)[:24]>-<first row>.parquet, one per chunk.
    files = sorted(p.relative_to(ledger).as_posix() for p in ledger.rglob("*.parquet"))
    assert len(files) == 5 + 2
    assert f"job=test-job/{chunk_name(str(a), 4_000)}" in files
    assert pq.read_schema(ledger / files[0]).remove_metadata() == LEDGER_SCHEMA.remove_metadata()
    assert status_counts(ledger) == {"sent": summary.actions_sent, "rejected": len(rejects)}


def test_rerun_writes_nothing_for_skipped_chunks(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = tmp_path / "p.parquet"
    write_with_rejects(src, 1, 3_000)
    ledger = tmp_path / "ledger"
    s = strict_settings(
        tmp_path, [src], strict_firehose, firehose_stream, ledger=str(ledger), chunk_rows=500
    )
    _first, err = run_plain(s)
    assert err is None, err
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ledger.rglob("*.parquet")}
    assert len(before) == 6 and len(list(ledger.rglob("*"))) == 6 + 1  # no temp files left
    second, err = run_plain(s)
    assert err is None, err
    # rows the first run rejected stay rejected (by an earlier run), the rest is skipped
    assert second.rows_skipped + second.rows_rejected == 3_000 and second.actions_sent == 0
    assert second.rows_rejected == second.rows_rejected_earlier == _first.rows_rejected
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ledger.rglob("*.parquet")} == before
    assert len(read_ledger(ledger)) == 3_000


def _cli(src: Path, tmp: Path, server: Any, stream: str, ledger: str, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "moesif_backfill.cli", "run", str(src)),
        *("--mapping", str(write_mapping(tmp / "m.yaml")), "--stream", stream),
        *("--endpoint-url", server.endpoint_url, "--region", "us-east-1"),
        *("--checkpoint", str(tmp / "ckpt"), "--job", "crash", "--chunk-rows", "500"),
        *("--ledger", ledger, "--quiet", "--no-prefect", *extra),
    ]


@pytest.mark.parametrize("point", ["chunk.acknowledged=3", "chunk.submitted=6"])
def test_sigkill_ledger_never_says_sent_for_unacknowledged_rows(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str, point: str
) -> None:
    """SIGKILL after a chunk's ledger file was written but before its checkpoint commit
    (chunk.acknowledged), or while chunks are in flight (chunk.submitted): every `sent` row of
    the ledger was acknowledged by the stand-in; the rerun resends the uncommitted chunks and
    overwrites their files, and the ledger ends with exactly one row per input row."""
    rows = 6_000
    src = tmp_path / "p.parquet"
    bad = write_with_rejects(src, 1, rows)
    ledger = tmp_path / "ledger"
    strict_firehose.configure(latency_s=0.05)
    env = dict(os.environ, **{FAILPOINTS_ENV: point})
    cmd = _cli(src, tmp_path, strict_firehose, firehose_stream, str(ledger))
    killed = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    acknowledged = set(strict_firehose.transaction_ids(firehose_stream))
    after_kill = read_ledger(ledger) if any(ledger.rglob("*.parquet")) else []
    assert after_kill, "the kill came before any ledger file"
    assert {r["transaction_id"] for r in after_kill if r["status"] == "sent"} <= acknowledged
    prog = file_progress(tmp_path / "ckpt", "crash", src)
    committed = {c for a, b in (prog.done if prog else []) for c in range(a, b)}
    in_ledger = {(r["row"] - 1) // 500 for r in after_kill}
    assert committed <= in_ledger  # a committed chunk always has its ledger file
    if point.startswith("chunk.acknowledged"):
        assert in_ledger - committed, "the killed chunk's file is in the ledger, uncommitted"
    run1 = {r["run_id"] for r in after_kill}

    env.pop(FAILPOINTS_ENV)
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 3, done.stderr.decode()[-2000:]  # complete, with rejects
    final = read_ledger(ledger)
    assert [r["row"] for r in final] == list(range(1, rows + 1))
    acknowledged = set(strict_firehose.transaction_ids(firehose_stream))
    assert acknowledged == expected_ids(1, rows) - {expected_id(k) for k in bad}
    sent = {r["transaction_id"] for r in final if r["status"] == "sent"}
    assert sent == acknowledged
    assert {r["row"] for r in final if r["status"] == "rejected"} == set(bad)
    by_chunk = {(r["row"] - 1) // 500: r["run_id"] for r in final}
    assert all(by_chunk[c] in run1 for c in committed)  # skipped chunks: not written again
    assert {by_chunk[c] for c in set(by_chunk) - committed} - run1  # resent: overwritten


def test_s3_ledger_on_moto_read_hive_partitioned(
    tmp_path: Path, moto_firehose: Any, strict_firehose: Any, firehose_stream: str
) -> None:
    s3 = moto_firehose.s3_client()
    bucket = f"ledger-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    local = tmp_path / "p.parquet"
    bad = write_with_rejects(local, 1, 2_500)
    s3.upload_file(str(local), bucket, "exports/p.parquet")
    s = strict_settings(
        tmp_path,
        [f"s3://{bucket}/exports/"],  # type: ignore[list-item]
        strict_firehose,
        firehose_stream,
        s3_endpoint_url=moto_firehose.endpoint_url,
        ledger=f"s3://{bucket}/ledger",
        chunk_rows=1_000,
    )
    summary, err = run_plain(s)
    assert err is None, err
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="ledger/")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    source = f"s3://{bucket}/exports/p.parquet"
    assert keys == [f"ledger/job=test-job/{chunk_name(source, r)}" for r in (0, 1_000, 2_000)]
    copy = tmp_path / "copy"
    for key in keys:  # DuckDB here has no httpfs: read a copy of the objects, keys kept
        (copy / key).parent.mkdir(parents=True, exist_ok=True)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert b"testing-secret-key" not in body and b"testing-key-id" not in body
        (copy / key).write_bytes(body)
    rows = read_ledger(copy / "ledger")
    assert [r["row"] for r in rows] == list(range(1, 2_501))
    assert {r["source"] for r in rows} == {source} and {r["job"] for r in rows} == {"test-job"}
    sent = Counter(r["transaction_id"] for r in rows if r["status"] == "sent")
    assert sent == Counter(strict_firehose.transaction_ids(firehose_stream))
    assert {r["row"] for r in rows if r["status"] == "rejected"} == set(bad)
    assert summary.actions_sent == sum(sent.values())


def test_dry_run_window_statuses(tmp_path: Path) -> None:
    """A dry run writes `would_send`; rows outside the time window are `outside_window`, with
    their transaction_id and time."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    src = tmp_path / "p.parquet"
    pq.write_table(payments_table(1, 3_000, now=now), src)
    ledger = tmp_path / "ledger"
    start = now - dt.timedelta(minutes=999)  # rows 1..1000 (minutes 0..999 ago) are inside
    s = settings_for(
        tmp_path,
        [src],
        mode="dry-run",
        out=tmp_path / "out",
        ledger=str(ledger),
        window_start=start,
        window_end=now + dt.timedelta(seconds=1),
    )
    summary, err = run_plain(s)
    assert err is None, err
    rows = read_ledger(ledger)
    assert len(rows) == 3_000 == summary.rows_read
    inside = [r for r in rows if r["status"] == "would_send"]
    outside = [r for r in rows if r["status"] == "outside_window"]
    assert len(inside) == summary.actions_sent and len(outside) == summary.rows_outside_window
    assert len(inside) + len(outside) == 3_000 and outside
    for r in rows:
        assert r["transaction_id"] == expected_id(r["row"])
        assert r["action_time"] == now - dt.timedelta(minutes=r["row"] % 5000)
        assert (r["status"] == "would_send") == (r["action_time"] >= start)


def test_ledger_rows_pure_column_wise() -> None:
    # Chunk rows 0, 1, 2, 5 were built into actions (0, 2, 5 accepted; 1 rejected); row 3 was
    # left out as too old, row 4 as outside the window.
    result = ActionBatch(
        records=pa.array(["{}", "{}", "{}"]),
        accepted=np.array([0, 2, 5]),
        rejected=np.array([1]),
        reasons=["missing transaction_id key value"],
        epoch_us=pa.array([0, 2, 3], pa.int64()),
        row_ids=pa.array(["a", None, "c", "d"]),
        row_times_us=pa.array([0, None, 2, 3], pa.int64()),
    )
    table = ledger_rows(
        source="s3://b/k.parquet",
        first_row=10,
        n=6,
        result=result,
        accepted_status="sent",
        run_id="r",
        written_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        left_out={"outside_window": np.array([4]), "too_old": np.array([3])},
        left_out_ids=pa.array(["e", "f"]),
        left_out_times_us=pa.array([40, 30], pa.int64()),
    )
    assert table.schema == LEDGER_SCHEMA
    got = table.to_pydict()
    assert got["row"] == [11, 12, 13, 14, 15, 16]
    assert got["status"] == ["sent", "rejected", "sent", "too_old", "outside_window", "sent"]
    assert got["reason"] == [None, "missing transaction_id key value", None, None, None, None]
    assert got["transaction_id"] == ["a", None, "c", "f", "e", "d"]
    times = [None if t is None else t.microsecond for t in got["action_time"]]
    assert times == [0, None, 2, 30, 40, 3]
    assert set(got["source"]) == {"s3://b/k.parquet"} and set(got["run_id"]) == {"r"}
    with pytest.raises(ValueError, match="no status"):
        ledger_rows(
            source="s",
            first_row=0,
            n=7,
            result=result,
            accepted_status="sent",
            run_id="r",
            written_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )


def test_ledger_flag_for_run_nightly_range() -> None:
    from moesif_backfill.cli import build_parser

    parser = build_parser()
    for argv in (
        ["run", "x", "--mapping", "m.yaml", "--dry-run", "--out", "o"],
        ["nightly", "x", "--mapping", "m.yaml", "--job", "j", "--stream", "s"],
        [
            "range",
            "x",
            "--mapping",
            "m.yaml",
            "--job",
            "j",
            "--stream",
            "s",
            *("--start", "a"),
            *("--end", "b"),
        ],
    ):
        assert "ledger" not in vars(parser.parse_args(argv))  # off by default
        assert parser.parse_args([*argv, "--ledger", "s3://b/l/"]).ledger == "s3://b/l/"
    # the days' jobs get it
    days = RangeSettings(sources=["x/{date}"], mapping="m.yaml", job="j", streams=["s"])
    assert days.settings_for(dt.date(2026, 1, 2), Path("s.json")).ledger is None
    days = days.model_copy(update={"ledger": "led"})
    assert days.settings_for(dt.date(2026, 1, 2), Path("s.json")).ledger == "led"


@pytest.mark.e2e
def test_dask_workers_write_their_shards_chunks(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """On a local Dask cluster (2 worker processes) each worker writes its shards' chunks:
    rows numbered from the file's first row, one per input row, ids as delivered."""
    src = tmp_path / "p.parquet"
    bad = write_with_rejects(src, 1, 30_000)
    ledger = tmp_path / "ledger"
    s = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        ledger=str(ledger),
        chunk_rows=500,
        workers=2,
    )
    summary, err = run_plain(s)
    assert err is None, err
    rows = read_ledger(ledger)
    assert [r["row"] for r in rows] == list(range(1, 30_001))
    sent = Counter(r["transaction_id"] for r in rows if r["status"] == "sent")
    assert sent == Counter(strict_firehose.transaction_ids(firehose_stream))
    assert {r["row"] for r in rows if r["status"] == "rejected"} == set(bad)
    assert len({r["run_id"] for r in rows}) == 1 and summary.actions_sent == sum(sent.values())
    assert len(list(ledger.rglob("*.parquet"))) == 60
    assert len(list((tmp_path / "ckpt").glob("test-job.shard-*"))) == 3  # 3 shards of the file


def test_unwritable_ledger_stops_before_sending(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = tmp_path / "p.parquet"
    write_with_rejects(src, 1, 1_000)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger directory should be")
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream, ledger=str(blocker))
    _summary, err = run_plain(s)
    assert isinstance(err, PreflightError) and "Nothing was sent" in str(err), err
    assert str(blocker) in str(err)
    assert strict_firehose.transaction_ids(firehose_stream) == []


def test_failed_ledger_write_commits_nothing(
    tmp_path: Path, moto_firehose: Any, strict_firehose: Any, firehose_stream: str
) -> None:
    """An S3 ledger whose bucket does not exist: the chunks are acknowledged, their files
    cannot be written, so none is committed (a rerun sends them again) and the run fails
    saying why."""
    src = tmp_path / "p.parquet"
    write_with_rejects(src, 1, 3_000)
    s = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        s3_endpoint_url=moto_firehose.endpoint_url,
        ledger=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/ledger/",
        chunk_rows=1_000,
    )
    summary, err = run_plain(s)
    assert isinstance(err, LedgerError), err
    assert "NoSuchBucket" in str(err) and "s3:PutObject" in str(err)
    assert "testing-secret-key" not in str(err)
    assert strict_firehose.transaction_ids(firehose_stream)  # acknowledged, yet
    prog = file_progress(tmp_path / "ckpt", "test-job", src)
    assert prog is None or not prog.done  # nothing committed
    assert summary.chunks_committed == 0 and summary.status == "failed"


def test_range_days_are_partitions(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """`range --ledger`: each day's job is its partition folder (job=JOB-YYYY-MM-DD)."""
    from pipeline import nightly
    from tests.test_nightly import params, partition, recent_day, write_day

    days = [recent_day(5), recent_day(4)]
    for i, day in enumerate(days):
        write_day(partition(tmp_path / "usage", day), day, 1 + i * 1_000, 700)
    ledger = tmp_path / "ledger"
    settings = RangeSettings.model_validate(
        params(tmp_path, strict_firehose, firehose_stream, ledger=str(ledger))
    )
    outcome = nightly.run_range(
        settings, nightly.direct_job, start=days[0].isoformat(), end=days[1].isoformat()
    )
    assert outcome.error is None, outcome.error
    glob = str(ledger / "**" / "*.parquet")
    got = duckdb.sql(
        f"SELECT job, status, count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert got == [(f"usage-{day:%Y-%m-%d}", "sent", 700) for day in days]
    sent = {r["transaction_id"] for r in read_ledger(ledger)}
    assert (
        sent
        == set(strict_firehose.transaction_ids(firehose_stream))
        == (expected_ids(1, 700) | expected_ids(1_001, 700))
    )
