"""`redrive --ledger` (pipeline/redrive_ledger.py): one ledger row per action of each committed
chunk (and one per undecodable line), read back with DuckDB, checked against what the strict
Firehose stand-in or the Collector stand-in received; reruns write nothing; a failed ledger
write commits nothing; `run`'s and `redrive`'s ledgers in one location, read together."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from moesif_backfill.errors import LedgerError, PreflightError
from pipeline.ledger import LEDGER_SCHEMA, chunk_name
from pipeline.redrive import run_redrive
from pipeline.redrive_ledger import REDRIVE_LEDGER_SCHEMA
from pipeline.redrive_settings import RedriveSettings
from tests.datasets import expected_ids, payments_table
from tests.runner import run_plain, strict_settings
from tests.standins.collector import CollectorStandin
from tests.standins.moto_firehose import LocalFirehose
from tests.standins.strict_firehose import StrictFirehose
from tests.test_redrive import NOW, Scenario, action, fd_key, fd_line, good_actions, settings
from tests.test_redrive_collector import APP_ID, redrive

pytestmark = pytest.mark.integration


def read_ledger(location: Path, where: str = "") -> list[dict[str, Any]]:
    """Every ledger row (with `job`), as DuckDB reads a location holding both kinds of files."""
    glob = str(location / "**" / "*.parquet")
    rel = duckdb.sql(
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true, union_by_name=true) "
        f"{where} ORDER BY job, source, line, action, row"
    )
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def key(row: tuple[Any, ...]) -> tuple[str, int, int]:
    """(source, line, action) of a ledger row tuple, sortable (an undecodable line first)."""
    return (row[0], row[1], -1 if row[2] is None else row[2])


def snapshot(location: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in location.rglob("*.parquet")}


@pytest.fixture
def bucket(moto_firehose: LocalFirehose) -> Scenario:
    moto_firehose.ensure()
    s3 = moto_firehose.s3_client()
    name = f"backup-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return Scenario(name, s3)


def tid(n: int) -> str:
    return str(uuid.UUID(int=n))


def mixed(sc: Scenario) -> tuple[dt.datetime, list[tuple[str, int, int | None, str | None, str]]]:
    """Two objects: good actions, a line that is not JSON, an action without transaction_id,
    an action older than 30 days and a line that arrived before --since. Returns the arrival
    time of the lines inside the window and the expected ledger rows (source, line, action,
    transaction_id, status)."""
    t = NOW - dt.timedelta(hours=20)
    a1, a2, a3, a4 = good_actions(sc, 1, 2, 3, 4)
    (old,) = good_actions(sc, 40, days_ago=40)
    no_tid, _ = action(90, tid=False)
    out1, _ = action(91)
    out2, _ = action(92)
    sc.put(
        "mixed",
        fd_key("errors/", t),
        [
            fd_line(a1, arrival=t),
            b"this line is not JSON",
            fd_line(b"[" + a2 + b"," + no_tid + b"," + a3 + b"]", arrival=t),
            fd_line(old, arrival=t),
            fd_line(out1 + b"\n" + out2, arrival=t - dt.timedelta(days=5)),
            fd_line(a4, arrival=t),
        ],
    )
    a5, a6 = good_actions(sc, 5, 6)
    sc.put("clean", fd_key("errors/", t, ".gz"), [fd_line(a5, arrival=t), fd_line(a6, arrival=t)])
    m, c = sc.url("mixed"), sc.url("clean")
    rows = [
        (m, 1, 0, tid(1), "sent"),
        (m, 2, None, None, "rejected"),
        (m, 3, 0, tid(2), "sent"),
        (m, 3, 1, None, "rejected"),
        (m, 3, 2, tid(3), "sent"),
        (m, 4, 0, tid(40), "too_old"),
        (m, 5, 0, tid(91), "outside_window"),
        (m, 5, 1, tid(92), "outside_window"),
        (m, 6, 0, tid(4), "sent"),
        (c, 1, 0, tid(5), "sent"),
        (c, 2, 0, tid(6), "sent"),
    ]
    return t, rows


def test_ledger_rows_per_action_with_statuses_ids_as_delivered_and_rerun_writes_nothing(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    t, want = mixed(bucket)
    ledger = tmp_path / "ledger"
    loc = f"s3://{bucket.bucket}/errors/"
    s = settings(
        tmp_path,
        moto_firehose,
        strict_firehose,
        firehose_stream,
        loc,
        job="rd",
        ledger=str(ledger),
        since=t - dt.timedelta(hours=1),
        until=NOW + dt.timedelta(hours=1),
        skip_older_than_30_days=True,
    )
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    summary = outcome.summary
    rows = read_ledger(ledger)
    got = [(r["source"], r["line"], r["action"], r["transaction_id"], r["status"]) for r in rows]
    assert sorted(got, key=key) == sorted(want, key=key)  # one row per action / bad line
    assert len(rows) == summary.actions_read == 11
    delivered = strict_firehose.transaction_ids(firehose_stream)
    sent = [r["transaction_id"] for r in rows if r["status"] == "sent"]
    assert Counter(sent) == Counter(delivered) and len(sent) == summary.actions_sent == 6
    assert Counter(r["status"] for r in rows) == {
        "sent": summary.actions_sent,
        "rejected": summary.actions_rejected,
        "too_old": summary.actions_too_old,
        "outside_window": summary.actions_outside_window,
    }
    # reasons: the rejects file's, for the rejected rows only
    path = tmp_path / "ckpt" / "rd" / "rejects.ndjson"
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    assert {(e["source"], e["line"], e.get("action"), e["reason"]) for e in entries} == {
        (r["source"], r["line"], r["action"], r["reason"])
        for r in rows
        if r["status"] == "rejected"
    }
    assert all(r["reason"] is None for r in rows if r["status"] != "rejected")
    # the object's ETag, run_id, the action's request.time; `row` (run's) is null
    assert {r["row"] for r in rows} == {None}
    for name in ("mixed", "clean"):
        head = bucket.s3.head_object(Bucket=bucket.bucket, Key=bucket.keys[name])
        etag = head["ETag"].strip('"')
        assert {r["etag"] for r in rows if r["source"] == bucket.url(name)} == {etag}
    assert len({r["run_id"] for r in rows}) == 1 and {r["job"] for r in rows} == {"rd"}
    uuid.UUID(rows[0]["run_id"])
    first = next(r for r in rows if r["transaction_id"] == tid(1))
    assert first["action_time"] == NOW - dt.timedelta(days=1)
    bad = [r for r in rows if r["source"] == bucket.url("mixed") and r["line"] == 2]
    assert [r["action_time"] for r in bad] == [None]
    # the layout: job=<job>/<sha256(object URL)[:24]>-<first line, 0-based>.parquet per chunk
    files = sorted(p.relative_to(ledger).as_posix() for p in ledger.rglob("*.parquet"))
    names = [chunk_name(bucket.url("mixed"), n) for n in (0, 2, 4)]
    names.append(chunk_name(bucket.url("clean"), 0))
    assert files == sorted(f"job=rd/{n}" for n in names)
    assert len(list(ledger.rglob("*"))) == len(files) + 1  # no temp files left
    schema = pq.read_schema(ledger / files[0]).remove_metadata()
    assert schema == REDRIVE_LEDGER_SCHEMA.remove_metadata()
    # a rerun skips every committed chunk and writes nothing
    before = snapshot(ledger)
    again = run_redrive(s)
    assert again.error is None, again.error
    assert (again.summary.actions_sent, again.summary.actions_skipped) == (0, 6)
    assert snapshot(ledger) == before
    assert len(strict_firehose.transaction_ids(firehose_stream)) == 6


def test_dry_run_writes_would_send(
    tmp_path: Path, bucket: Scenario, moto_firehose: LocalFirehose
) -> None:
    _t, want = mixed(bucket)
    ledger = tmp_path / "ledger"
    s = RedriveSettings(
        location=f"s3://{bucket.bucket}/errors/",
        mode="dry-run",
        out=tmp_path / "out",
        s3_endpoint_url=moto_firehose.endpoint_url,
        region="us-east-1",
        job="dry",
        chunk_rows=2,
        ledger=str(ledger),
    )
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    rows = read_ledger(ledger)
    # no window: the line that arrived early would be sent too, and the old action
    status = {"too_old": "would_send", "outside_window": "would_send", "sent": "would_send"}
    got = [(r["source"], r["line"], r["action"], r["status"]) for r in rows]
    expected = [(src, line, index, status.get(st, st)) for src, line, index, _tid, st in want]
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert len(rows) == outcome.summary.actions_read


def test_a_refused_action_is_rejected_in_the_ledger_with_the_collector_and_the_variable(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    collector: CollectorStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = NOW - dt.timedelta(hours=3)
    a1, a2, a3 = good_actions(bucket, 1, 2, 3)
    big, big_id = action(4)
    big = big.replace(b'"plan":"caf\\u00e9"', b'"plan":"' + b"x" * 6_000 + b'"')
    one = [fd_line(b"[" + a1 + b", " + a2 + b"]", arrival=t), fd_line(big, arrival=t)]
    bucket.put("one", fd_key("errors/", t), one)
    bucket.put("two", fd_key("errors/", t), [fd_line(a3, arrival=t)])
    collector.too_large_over(4_000)  # the big action alone is over it: 413, then refused
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("MOESIF_BACKFILL_LEDGER", str(ledger))  # the variable applies to redrive

    assert redrive(tmp_path, moto_firehose, bucket, collector.url) == 3
    rows = read_ledger(ledger)
    got = [(r["source"], r["line"], r["action"], r["transaction_id"], r["status"]) for r in rows]
    u1, u2 = bucket.url("one"), bucket.url("two")
    want = [
        (u1, 1, 0, tid(1), "sent"),
        (u1, 1, 1, tid(2), "sent"),
        (u1, 2, 0, big_id, "rejected"),
        (u2, 1, 0, tid(3), "sent"),
    ]
    assert sorted(got, key=key) == sorted(want, key=key)
    (refused,) = [r["reason"] for r in rows if r["status"] == "rejected"]
    assert refused.startswith("refused: ") and "413" in refused
    sent = {r["transaction_id"] for r in rows if r["status"] == "sent"}
    assert sent == set(collector.delivered_ids()) == set(bucket.expected)
    for path in ledger.rglob("*.parquet"):
        assert APP_ID.encode() not in path.read_bytes()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[CollectorStandin]:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", APP_ID)
    for name in [k for k in os.environ if k.startswith("MOESIF_BACKFILL_")]:
        monkeypatch.delenv(name)
    with CollectorStandin(APP_ID) as standin:
        yield standin


def test_a_failed_ledger_write_commits_nothing(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    """An S3 ledger whose bucket does not exist: the chunks are acknowledged, their files
    cannot be written, so none is committed; a rerun with a writable ledger sends them all
    again and writes every row."""
    t = NOW - dt.timedelta(hours=2)
    lines = [fd_line(a, arrival=t) for a in good_actions(bucket, *range(1, 7))]
    bucket.put("one", fd_key("errors/", t), lines)
    loc = f"s3://{bucket.bucket}/errors/"
    s = settings(
        tmp_path,
        moto_firehose,
        strict_firehose,
        firehose_stream,
        loc,
        job="rd",
        ledger=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/ledger/",
    )
    failed = run_redrive(s)
    assert isinstance(failed.error, LedgerError), failed.error
    assert "NoSuchBucket" in str(failed.error) and "s3:PutObject" in str(failed.error)
    assert "testing-secret-key" not in str(failed.error)
    assert strict_firehose.transaction_ids(firehose_stream)  # acknowledged, yet
    assert failed.summary.chunks_committed == 0 and failed.summary.status == "failed"
    assert failed.summary.actions_sent == 0
    ledger = tmp_path / "ledger"
    done = run_redrive(s.model_copy(update={"ledger": str(ledger)}))
    assert done.error is None, done.error
    assert (done.summary.actions_sent, done.summary.actions_skipped) == (6, 0)  # none committed
    rows = read_ledger(ledger)
    assert [(r["line"], r["status"]) for r in rows] == [(n, "sent") for n in range(1, 7)]
    assert {r["transaction_id"] for r in rows} == set(bucket.expected)
    # an unwritable local ledger stops the run before anything is sent
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger directory should be")
    before = len(strict_firehose.records(firehose_stream))
    stopped = run_redrive(s.model_copy(update={"ledger": str(blocker), "reset": True}))
    assert isinstance(stopped.error, PreflightError) and "Nothing was sent" in str(stopped.error)
    assert len(strict_firehose.records(firehose_stream)) == before


def test_duckdb_reads_runs_and_redrives_ledgers_together(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    ledger = tmp_path / "ledger"
    src = tmp_path / "data" / "p.parquet"
    src.parent.mkdir()
    pq.write_table(payments_table(1, 1_200, now=NOW), src)
    rs = strict_settings(
        tmp_path, [src], strict_firehose, firehose_stream, ledger=str(ledger), chunk_rows=500
    )
    run_summary, err = run_plain(rs)
    assert err is None, err
    t = NOW - dt.timedelta(hours=2)
    lines = [fd_line(a, arrival=t) for a in good_actions(bucket, 1, 2, 3)]
    bucket.put("one", fd_key("errors/", t), [*lines, b"not JSON"])
    loc = f"s3://{bucket.bucket}/errors/"
    s = settings(tmp_path, moto_firehose, strict_firehose, firehose_stream, loc, ledger=str(ledger))
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    job = outcome.summary.job
    # run's files keep their format
    run_files = list((ledger / "job=test-job").glob("*.parquet"))
    assert len(run_files) == 3
    for path in run_files:
        assert pq.read_schema(path).remove_metadata() == LEDGER_SCHEMA.remove_metadata()
    glob = str(ledger / "**" / "*.parquet")
    dataset = f"read_parquet('{glob}', hive_partitioning=true, union_by_name=true)"
    # README's queries, over both jobs
    by_status = duckdb.sql(f"SELECT status, count(*) FROM {dataset} GROUP BY ALL").fetchall()
    assert dict(by_status) == {"sent": 1_200 + 3, "rejected": 1}
    run_rows = duckdb.sql(
        f"SELECT row, transaction_id, action_time FROM {dataset} "
        "WHERE job = 'test-job' AND status = 'sent' ORDER BY row"
    ).fetchall()
    assert [r[0] for r in run_rows] == list(range(1, 1_201))
    assert {r[1] for r in run_rows} == expected_ids(1, 1_200)
    # the columns one kind lacks are null
    per_job = duckdb.sql(
        f"SELECT job, count(*), count(row), count(line), count(action), count(etag) "
        f"FROM {dataset} GROUP BY job ORDER BY job"
    ).fetchall()
    assert sorted(per_job) == sorted([("test-job", 1_200, 1_200, 0, 0, 0), (job, 4, 0, 4, 3, 4)])
    # README's queries as written, over this location
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("**`redrive --ledger`**")[1].split("```sql\n")[1].split("```")[0]
    queries = [q for q in block.replace("LEDGER", str(ledger)).split(";") if q.strip()]
    results = [duckdb.sql(q).fetchall() for q in queries]
    assert len(results) == 3
    assert sorted(results[0]) == sorted(
        [("test-job", "sent", 1_200), (job, "sent", 3), (job, "rejected", 1)]
    )
    assert results[1] == []  # no nightly job here
    assert [(r[1], r[2], r[4]) for r in results[2]] == [
        (1, 0, "sent"),
        (2, 0, "sent"),
        (3, 0, "sent"),
        (4, None, "rejected"),
    ]
    sent = duckdb.sql(f"SELECT transaction_id FROM {dataset} WHERE status = 'sent'").fetchall()
    assert Counter(r[0] for r in sent) == Counter(strict_firehose.transaction_ids(firehose_stream))
    assert run_summary.actions_sent + outcome.summary.actions_sent == len(sent)


def test_sigkill_after_the_ledger_file_before_the_commit_then_rerun(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    """SIGKILL after a chunk's ledger file was written but before its checkpoint commit: every
    `sent` row was acknowledged, every committed chunk has its file; the rerun resends the
    uncommitted chunk, overwrites its file, and the ledger ends with one row per action."""
    from connectors.checkpoint_local import LocalCheckpointStore
    from tests.test_redrive import _cli

    t = NOW - dt.timedelta(hours=2)
    lines = [fd_line(a, arrival=t) for a in good_actions(bucket, *range(1, 9))]
    bucket.put("one", fd_key("errors/", t), [*lines, b"not JSON"])
    ledger = tmp_path / "ledger"
    loc = f"s3://{bucket.bucket}/errors/"
    args = [*_cli(tmp_path, moto_firehose, strict_firehose, firehose_stream, loc), "--ledger"]
    args.append(str(ledger))
    env = {**os.environ, "MOESIF_BACKFILL_FAILPOINTS": "chunk.acknowledged=4"}
    killed = subprocess.run(args, env=env, capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    acknowledged = set(strict_firehose.transaction_ids(firehose_stream))
    after_kill = read_ledger(ledger)
    assert {r["transaction_id"] for r in after_kill if r["status"] == "sent"} <= acknowledged
    state = LocalCheckpointStore(tmp_path / "ckpt").load("cli")
    prog = state.files[bucket.url("one")] if state is not None else None
    committed = {c for a, b in (prog.done if prog else []) for c in range(a, b)}
    in_ledger = {r["line"] - 1 for r in after_kill}  # --chunk-rows 1: chunk = line - 1
    assert len(committed) == 3 and committed < in_ledger  # the 4th: written, not committed
    first_run = {r["run_id"] for r in after_kill}

    env.pop("MOESIF_BACKFILL_FAILPOINTS")
    done = subprocess.run(args, env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr.decode()[-2000:]  # complete, with a rejected line
    final = read_ledger(ledger)
    assert [(r["line"], r["status"]) for r in final] == [
        *((n, "sent") for n in range(1, 9)),
        (9, "rejected"),
    ]
    sent = Counter(r["transaction_id"] for r in final if r["status"] == "sent")
    assert (
        set(sent) == set(strict_firehose.transaction_ids(firehose_stream)) == set(bucket.expected)
    )
    assert all(n == 1 for n in sent.values())
    by_line = {r["line"]: r["run_id"] for r in final}
    assert all(by_line[c + 1] in first_run for c in committed)  # skipped: not written again
    written_not_committed = in_ledger - committed
    assert all(by_line[c + 1] not in first_run for c in written_not_committed)  # overwritten
