"""End to end through the CLI: a real `moesif-backfill` process, killed with SIGKILL mid-run,
rerun until complete; every expected transaction_id arrives and nothing is lost.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import expected_ids, write_mapping, write_payments

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "moesif_backfill.cli"]


def _env(prefect_api: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PREFECT_API_URL=prefect_api, PREFECT_LOGGING_LEVEL="WARNING")
    return env


def _run_args(tmp_path: Path, src: Path, stream: str, endpoint: str, n: int) -> list[str]:
    return [
        *CLI,
        "run",
        str(src),
        "--mapping",
        str(tmp_path / "m.yaml"),
        "--stream",
        stream,
        "--endpoint-url",
        endpoint,
        "--region",
        "us-east-1",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--job",
        "e2e",
        "--summary-json",
        str(tmp_path / f"summary-{n}.json"),
        "--chunk-rows",
        "500",
        "--quiet",
    ]


def test_sigkill_and_rerun_loses_nothing(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    rows = 20_000
    src = write_payments(tmp_path / "p.parquet", 1, rows)
    write_mapping(tmp_path / "m.yaml")
    # Slow the endpoint down so the process can be caught mid-run.
    # InternalFailure only: per-record throttling would slow the adaptive rate down, not the point.
    strict_firehose.configure(
        latency_s=0.05, record_failure_rate=0.05, record_failure_code="InternalFailure"
    )
    rng = random.Random(7)
    kills = 0
    attempts: list[int] = []
    for n in range(1, 8):
        proc = subprocess.Popen(
            _run_args(tmp_path, src, firehose_stream, strict_firehose.endpoint_url, n),
            env=_env(prefect_api),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if kills < 3:
            target = len(strict_firehose.records(firehose_stream)) + rng.randint(1_000, 4_000)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if len(strict_firehose.records(firehose_stream)) >= target:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.01)
        _out, err = proc.communicate(timeout=300)
        attempts.append(proc.returncode)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert kills == 3 and attempts[-1] == 0, attempts
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == expected_ids(1, rows)
    # At most the chunks in flight at each kill are sent twice (4 chunks x 500 rows).
    dupes = sum(c - 1 for c in Counter(delivered).values())
    assert dupes <= kills * 4 * 500
    final = json.loads((tmp_path / f"summary-{len(attempts)}.json").read_text())
    assert final["accounted"] and final["rows_read"] == rows
    assert final["actions_sent"] + final["rows_skipped"] == rows


def test_exit_codes_config_error_and_rejects(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text(
        "invoice_line_id,customer_id,user_id,created_at,amount,currency\n"
        "il_1,c1,u1,2999-01-01T00:00:00Z,1.5,USD\n"
        "il_2,c2,u2,,2.5,USD\n",
        encoding="utf-8",
    )
    write_mapping(tmp_path / "m.yaml")
    args = _run_args(tmp_path, csv, firehose_stream, strict_firehose.endpoint_url, 1)
    done = subprocess.run(
        args, env=_env(prefect_api), capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert "rejected" in done.stderr.decode()

    missing = subprocess.run(
        [
            *CLI,
            "run",
            str(tmp_path / "nope.csv"),
            "--mapping",
            str(tmp_path / "m.yaml"),
            "--stream",
            firehose_stream,
            "--endpoint-url",
            strict_firehose.endpoint_url,
        ],
        env=_env(prefect_api),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert missing.returncode == 2
    assert "nope.csv" in missing.stderr.decode()
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in done.stderr.decode() + missing.stderr.decode()
