"""The checkpoint in S3, end to end through the CLI: sources and checkpoint in moto server S3.

A run that holds the job's lease makes a second run refuse to start; the first run is then
killed with SIGKILL; after its lease expires a third run, from another working directory (as
on ephemeral infrastructure), takes the lease over and completes: nothing lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import expected_ids, write_mapping, write_payments

pytestmark = pytest.mark.e2e

LEASE_S = 3


def _cmd(src: str, mapping: Path, ckpt: str, *, moto: Any, firehose: Any, stream: str) -> list[str]:
    return [
        *(sys.executable, "-m", "moesif_backfill.cli", "run", src, "--mapping", str(mapping)),
        *("--stream", stream, "--endpoint-url", firehose.endpoint_url, "--region", "us-east-1"),
        *("--s3-endpoint-url", moto.endpoint_url, "--checkpoint", ckpt, "--job", "s3-e2e"),
        *("--lease-seconds", str(LEASE_S), "--chunk-rows", "500", "--max-in-flight", "1"),
        "--quiet",
    ]


def test_s3_checkpoint_lease_kill_and_resume_elsewhere(
    tmp_path: Path,
    prefect_api: str,
    moto_firehose: Any,
    strict_firehose: Any,
    firehose_stream: str,
) -> None:
    s3 = moto_firehose.s3_client()
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    rows = 30_000
    local = write_payments(tmp_path / "p.parquet", 1, rows)
    s3.upload_file(str(local), bucket, "exports/usage/p.parquet")
    mapping = write_mapping(tmp_path / "m.yaml")
    ckpt = f"s3://{bucket}/checkpoints/"
    cmd = _cmd(
        f"s3://{bucket}/exports/usage/",
        mapping,
        ckpt,
        moto=moto_firehose,
        firehose=strict_firehose,
        stream=firehose_stream,
    )
    env = dict(os.environ, PREFECT_API_URL=prefect_api)
    strict_firehose.configure(latency_s=0.25)
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()

    first = subprocess.Popen(cmd, cwd=dirs[0], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(strict_firehose.records(firehose_stream)) < 1_000:
        assert first.poll() is None and time.monotonic() < deadline, "first run did not start"
        time.sleep(0.05)

    second = subprocess.run(
        cmd, cwd=dirs[1], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert second.returncode == 2, second.stderr[-2000:]
    assert "already running" in second.stderr
    assert first.poll() is None, "the first run should still be sending"

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    if first.stderr is not None:
        first.stderr.close()
    delivered_before = set(strict_firehose.transaction_ids(firehose_stream))
    assert 0 < len(delivered_before) < rows
    lease = s3.get_object(Bucket=bucket, Key="checkpoints/s3-e2e/lease.json")["Body"].read()
    assert b"expires_at" in lease  # the crashed run's lease is still there ...
    time.sleep(LEASE_S + 0.5)  # ... until it expires

    strict_firehose.configure(latency_s=0.0)
    third = subprocess.run(
        cmd, cwd=dirs[2], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, rows)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/")["Contents"]}
    assert "checkpoints/s3-e2e/state.json" in keys
    assert "checkpoints/s3-e2e/lease.json" not in keys  # released at the end
    for d in dirs:  # nothing was kept on the local disk of any run
        assert not (d / ".moesif-backfill" / "checkpoints").exists()
