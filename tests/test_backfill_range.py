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
