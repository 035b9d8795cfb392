"""`backfill_range`: a week of day partitions, killed mid-way (crash points in a real
`moesif-backfill range` process) and rerun: every day delivered, nothing lost, duplicates within
the chunks in flight. A failing day does not stop the others; config errors exit 2.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.nightly import backfill_range
from moesif_backfill import cli
from moesif_backfill.errors import DaysFailedError
from pipeline.day_settings import RangeSettings
from tests.datasets import expected_ids, write_mapping
from tests.test_nightly import (
    _artifact_keys,
    day_start,
    params,
    partition,
    recent_day,
    write_day,
)

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "moesif_backfill.cli"]
ROWS_PER_DAY = 1_000
CHUNK_ROWS = 100
CHUNKS_IN_FLIGHT = 4  # RunSettings default
CONCURRENCY = 2


def _range_args(
    tmp_path: Path, server: Any, stream: str, first: dt.date, last: dt.date
) -> list[str]:
    return [
        *CLI,
        "range",
        str(tmp_path / "usage" / "dt={date:%Y-%m-%d}"),
        "--mapping",
        str(tmp_path / "mapping.yaml"),
        "--job",
        "week",
        "--stream",
        stream,
        "--start",
        first.isoformat(),
        "--end",
        last.isoformat(),
        "--concurrency",
        str(CONCURRENCY),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--endpoint-url",
        server.endpoint_url,
        "--region",
        "us-east-1",
        "--chunk-rows",
        str(CHUNK_ROWS),
        "--summary-json",
        str(tmp_path / "range.json"),
    ]


def test_week_killed_midway_and_rerun_loses_nothing(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    days = [recent_day(14) + dt.timedelta(days=i) for i in range(7)]
    for i, day in enumerate(days):
        write_day(partition(tmp_path / "usage", day), day, day_start(i), ROWS_PER_DAY)
    write_mapping(tmp_path / "mapping.yaml")
    want = set().union(*(expected_ids(day_start(i), ROWS_PER_DAY) for i in range(7)))
    args = _range_args(tmp_path, strict_firehose, firehose_stream, days[0], days[-1])
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_LOGGING_LEVEL="WARNING")

    # SIGKILLed right after its 30th chunk (of 70) was handed to Firehose: days in flight
    crashes = ["chunk.submitted=30"]
    for point in crashes:
        proc = subprocess.run(
            args,
            env=dict(env, MOESIF_BACKFILL_FAILPOINTS=point),
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    partial = set(strict_firehose.transaction_ids(firehose_stream))
    assert 0 < len(partial) < len(want)
    checkpoints = sorted(
        p.parent.name
        for p in (tmp_path / "ckpt").glob("week-*/state.json")
        if ".shard-" not in p.parent.name  # a day job's own state, not one of its shards'
    )
    assert 2 <= len(checkpoints) < 7  # some days started, the week not finished

    done = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    table = done.stdout.decode()
    assert "range week: complete" in table
    assert all(f"{day}  range   complete" in table for day in days), table

    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == want  # every day's every id: nothing lost
    dupes = sum(c - 1 for c in Counter(delivered).values())
    assert dupes <= len(crashes) * CONCURRENCY * CHUNKS_IN_FLIGHT * CHUNK_ROWS, dupes
    result = json.loads((tmp_path / "range.json").read_text())
    assert result["status"] == "complete" and len(result["days"]) == 7
    assert result["totals"]["sent"] + result["totals"]["skipped"] == 7 * ROWS_PER_DAY
    for d in result["days"]:
        assert d["rows_read"] == d["sent"] + d["skipped"] == ROWS_PER_DAY, d
    # a date range never touches a nightly watermark
    assert not (tmp_path / "ckpt" / "week" / "nightly.json").exists()


def test_a_failing_day_does_not_stop_the_others(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    days = [recent_day(6) + dt.timedelta(days=i) for i in range(3)]
    for i in (0, 2):  # day 1's export is missing
        write_day(partition(tmp_path / "usage", days[i]), days[i], day_start(i), 200)
    p = params(tmp_path, strict_firehose, firehose_stream, job="rng", concurrency=3)
    settings = RangeSettings.model_validate(p)

    with pytest.raises(DaysFailedError) as failed:
        backfill_range(settings, start=days[0].isoformat(), end=days[-1].isoformat())
    message = str(failed.value)
    assert f"1 of 3 day(s) not delivered:\n  {days[1]} (rng-{days[1]}): day {days[1]}" in message
    assert "rerun the same range" in message
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set().union(
        *(expected_ids(day_start(i), 200) for i in (0, 2))
    )

    keys = asyncio.run(_artifact_keys("rng-"))
    assert {f"rng-{days[0]:%Y-%m-%d}-summary", f"rng-{days[2]:%Y-%m-%d}-summary"} <= keys
    assert "rng-range-summary" in keys


def test_cli_exit_codes(
    tmp_path: Path,
    prefect_api: str,
    strict_firehose: Any,
    firehose_stream: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    day = recent_day(5)
    write_day(partition(tmp_path / "usage", day), day, day_start(0), 50)
    write_mapping(tmp_path / "mapping.yaml")
    args = _range_args(tmp_path, strict_firehose, firehose_stream, day, day)[len(CLI) :]
    assert cli.main(args) == 0
    assert f"{day}  range   complete" in capsys.readouterr().out

    bad_range = [*args[: args.index("--end") + 1], (day - dt.timedelta(days=1)).isoformat()]
    bad_range += args[args.index("--end") + 2 :]
    assert cli.main(bad_range) == 2
    assert "is before start" in capsys.readouterr().err

    base = ["nightly", *_without(args[1:], "--start", "--end", "--concurrency")]
    bad_zone = [*base, "--date", day.isoformat(), "--timezone", "Mars/Base"]
    assert cli.main(bad_zone) == 2
    assert "unknown time zone" in capsys.readouterr().err

    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert cli.main([*base, "--job", "other", "--date", today]) == 2
    assert "has not ended yet in UTC" in capsys.readouterr().err

    # first nightly run for a day whose export is not there: fails (1), prints the table
    missing = (day + dt.timedelta(days=1)).isoformat()
    assert cli.main([*base, "--job", "other", "--date", missing]) == 1
    captured = capsys.readouterr()
    assert "no input at" in captured.err and f"{missing}  new     failed" in captured.out


def _without(args: list[str], *flags: str) -> list[str]:
    """`args` without each of `flags` and its value."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


# ------------------------------------------------------------------- Ctrl-C/SIGTERM (stop)


class _Listener:
    """The CLI's side of a range flow run: its stop event and the outcome it receives."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.flow_run: Any = None
        self.outcome: Any = None

    def finished(self, outcome: Any, flow_run: Any) -> None:
        self.outcome = outcome


def _stop_after(server: Any, stream: str, n: int, stop: threading.Event) -> threading.Thread:
    """Set `stop` once the stream has `n` records (a Ctrl-C mid-way), on a thread."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while len(server.records(stream)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _four_days(tmp_path: Path) -> list[dt.date]:
    days = [recent_day(9) + dt.timedelta(days=i) for i in range(4)]
    for i, day in enumerate(days):
        write_day(partition(tmp_path / "usage", day), day, day_start(i), 1_000)
    return days


def test_no_day_starts_once_stopped(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """Direct: the stop event set during day 2 ends day 2 at a chunk boundary, and days 3 and
    4 never start (they are reported not run, and nothing of them is sent)."""
    from pipeline import nightly

    days = _four_days(tmp_path)
    p = params(tmp_path, strict_firehose, firehose_stream, job="halt", concurrency=1)
    p["options"] = {"chunk_rows": 100, "max_records_per_second": 1_000}
    stop = threading.Event()
    watcher = _stop_after(strict_firehose, firehose_stream, 1_300, stop)
    started: list[str] = []

    def run_job(job: str, settings: Any) -> None:
        started.append(job)
        nightly.direct_job(job, settings, stop=stop)

    outcome = nightly.run_range(
        RangeSettings.model_validate(p),
        run_job,
        start=days[0].isoformat(),
        end=days[-1].isoformat(),
        stop=stop,
    )
    watcher.join()
    assert started == [f"halt-{days[0]}", f"halt-{days[1]}"]
    assert isinstance(outcome.error, DaysFailedError)
    status = {d.day: (d.status, d.error) for d in outcome.days}
    assert status[days[0]] == ("complete", None)
    assert status[days[1]][0] == "failed" and "interrupted" in str(status[days[1]][1])
    for day in days[2:]:
        assert status[day] == ("not_run", nightly.INTERRUPTED)
    sent = set(strict_firehose.transaction_ids(firehose_stream))
    assert expected_ids(day_start(0), 1_000) <= sent
    assert not sent & (expected_ids(day_start(2), 1_000) | expected_ids(day_start(3), 1_000))


def test_stopped_range_flow_run_ends_cancelled_with_no_day_left_open(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    """Prefect: the range flow run and the day it stopped end Cancelled on their own (no
    flow run left Pending or Running), and the days after it get no flow run at all."""
    from tests.test_operator_signals import _flow_run_states

    days = _four_days(tmp_path)
    job = f"halt-{uuid.uuid4().hex[:8]}"
    p = params(tmp_path, strict_firehose, firehose_stream, job=job, concurrency=1)
    p["options"] = {"chunk_rows": 100, "max_records_per_second": 1_000}
    listener = _Listener()
    watcher = _stop_after(strict_firehose, firehose_stream, 1_300, listener.stop)
    state = backfill_range(
        RangeSettings.model_validate(p),
        start=days[0].isoformat(),
        end=days[-1].isoformat(),
        listener=listener,
        return_state=True,
    )
    watcher.join()
    assert state.is_cancelled(), state
    assert _flow_run_states(prefect_api, job) == ["CANCELLED"]
    assert sorted(_flow_run_states(prefect_api, job, prefix=True)) == ["CANCELLED", "COMPLETED"]
    assert [d.status for d in listener.outcome.days[2:]] == ["not_run", "not_run"]
    sent = set(strict_firehose.transaction_ids(firehose_stream))
    assert not sent & (expected_ids(day_start(2), 1_000) | expected_ids(day_start(3), 1_000))
