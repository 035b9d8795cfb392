"""Secrets never leak: sentinel credentials and a sentinel Moesif application id are set for
real CLI runs (success, rejects, config error, delivery failure), and none of them may appear in
stdout, stderr, any file the run wrote (checkpoint, rejects, summary, dry-run output), or in
Prefect's logs and artifacts. Files holding customer data are private to the owner."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import write_mapping, write_payments

pytestmark = pytest.mark.e2e

SENTINELS = {
    "AWS_SECRET_ACCESS_KEY": "SENTINEL-secret-7f3a9c",
    "AWS_SESSION_TOKEN": "SENTINEL-session-41d2e8",
    "MOESIF_APPLICATION_ID": "SENTINEL-moesif-app-b5c0aa",
}


def _cli(args: list[str], api: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_LOGGING_LEVEL="INFO", **SENTINELS)
    return subprocess.run(
        [sys.executable, "-m", "moesif_backfill.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def _prefect_text() -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
        runs = await client.read_flow_runs()
    parts = [log.message for log in logs]
    parts += [str(a.data) + str(a.description) for a in artifacts]
    parts += [str(r.parameters) for r in runs]
    return "\n".join(parts)


def test_no_secret_anywhere(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 3_000)
    bad = tmp_path / "bad.csv"
    bad.write_text("invoice_line_id,customer_id,user_id,created_at,amount,currency\n,c,u,x,1,USD\n")
    mapping = write_mapping(tmp_path / "m.yaml")
    common = [
        *("--mapping", str(mapping), "--endpoint-url", strict_firehose.endpoint_url),
        *("--region", "us-east-1", "--checkpoint", str(tmp_path / "ckpt"), "--quiet"),
    ]
    results = []
    # success with rejects (exit 3)
    results.append(
        _cli(
            [
                "run",
                str(src),
                str(bad),
                "--stream",
                firehose_stream,
                *common,
                "--summary-json",
                str(tmp_path / "s1.json"),
                "--allow-older-than-30-days",
            ],
            prefect_api,
        )
    )
    assert results[-1].returncode == 3, results[-1].stderr[-2000:]
    # dry run
    results.append(
        _cli(["run", str(src), "--dry-run", "--out", str(tmp_path / "out"), *common], prefect_api)
    )
    assert results[-1].returncode == 0, results[-1].stderr[-2000:]
    # configuration error: unknown stream (exit 2)
    results.append(_cli(["run", str(src), "--stream", "missing-stream", *common], prefect_api))
    assert results[-1].returncode == 2
    # delivery failure mid-run (exit 1)
    strict_firehose.configure(delete_stream_after_calls=2)
    results.append(
        _cli(
            [
                "run",
                str(src),
                "--stream",
                firehose_stream,
                *common,
                "--job",
                "other",
                "--reset",
                "--summary-json",
                str(tmp_path / "s4.json"),
            ],
            prefect_api,
        )
    )
    assert results[-1].returncode == 1, results[-1].stderr[-2000:]

    texts = [r.stdout + r.stderr for r in results]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "state.json" for p in written) and any(
        p.name == "rejects.ndjson" for p in written
    )
    texts += [p.read_bytes().decode("utf-8", "replace") for p in written]
    texts.append(asyncio.run(_prefect_text()))
    for name, value in SENTINELS.items():
        leaks = [t[:200] for t in texts if value in t]
        assert not leaks, f"{name} leaked: {leaks}"

    for p in written:
        if p.name == "rejects.ndjson" or p.name.endswith(".ndjson.gz") or p.suffix == ".json":
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o077 == 0, f"{p} is readable by others ({oct(mode)})"
