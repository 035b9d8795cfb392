"""Shards on a Dask cluster, end to end: the CLI as a subprocess, a real `prefect server start`,
a local Dask cluster of 2 worker processes, the strict Firehose stand-in.

* --dask-address delivers exactly the set of transaction_ids a run in one process delivers
  (three files; a multi-row-group Parquet file cut into 3 shards), each shard with its own
  checkpoint; a rerun sends nothing and counts every row as skipped;
* a worker process SIGKILLed mid-run, then the CLI rerun: every expected transaction_id is
  delivered, duplicates at most the chunks in flight;
* --workers 2 without PREFECT_API_URL: the workers run no Prefect (exactly one temporary Prefect
  server is started, the driver's), and the run delivers everything;
* --workers with --dry-run: exit 2 before anything starts; --dask-address of no scheduler: exit 2
  saying so.

Runtime: about 3 minutes on a 2-core machine (a LocalCluster and a Prefect server start once;
each CLI run on Dask takes 15-30 s, mostly process start-up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import expected_ids, write_mapping, write_payments
from tests.runner import run_plain, strict_settings
from tests.standins.prefect_server import PrefectServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CLI = [sys.executable, "-m", "moesif_backfill.cli"]
CHUNK = 500  # Parquet shards of at least 20 chunks: 10,000 rows, two 5,000-row groups


def _args(tmp_path: Path, sources: list[Path], stream: str, endpoint: str, n: int) -> list[str]:
    return [
        *CLI,
        "run",
        *[str(s) for s in sources],
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
        "dask",
        "--chunk-rows",
        str(CHUNK),
        "--summary-json",
        str(tmp_path / f"summary-{n}.json"),
        "--quiet",
    ]


def _cli(
    args: list[str], env: dict[str, str], timeout: float = 280
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to the end (a run on the cluster takes well under `timeout` seconds)."""
    return subprocess.run(args, env=env, capture_output=True, timeout=timeout, check=False)


def _summary(tmp_path: Path, n: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / f"summary-{n}.json").read_text())
    return data


def _inputs(tmp_path: Path) -> list[Path]:
    write_mapping(tmp_path / "m.yaml")
    return [
        write_payments(tmp_path / "in" / "a.parquet", 1, 30_000),  # 6 row groups: 3 shards
        write_payments(tmp_path / "in" / "b.parquet", 30_001, 3_000),
        write_payments(tmp_path / "in" / "c.csv", 40_001, 2_000),
    ]


def _new_stream(server: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    server.create_stream(name)
    return name


def test_cluster_delivers_the_single_process_set(
    tmp_path: Path,
    prefect_server: PrefectServer,
    dask_cluster: Any,
    strict_firehose: Any,
    firehose_stream: str,
) -> None:
    sources = _inputs(tmp_path)
    reference = _new_stream(strict_firehose)
    (tmp_path / "one").mkdir()
    one = strict_settings(tmp_path / "one", sources, strict_firehose, reference, chunk_rows=CHUNK)
    summary, error = run_plain(one)
    assert error is None and summary.actions_sent == 35_000

    address = dask_cluster.scheduler.address
    args = _args(tmp_path, sources, firehose_stream, strict_firehose.endpoint_url, 1)
    done = _cli([*args, "--dask-address", address], prefect_server.env())
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert sorted(delivered) == sorted(strict_firehose.transaction_ids(reference))
    assert set(delivered) == expected_ids(1, 30_000) | expected_ids(30_001, 3_000) | expected_ids(
        40_001, 2_000
    )
    first = _summary(tmp_path, 1)
    assert first["accounted"] and first["status"] == "complete"
    assert first["actions_sent"] == 35_000 and first["rows_skipped"] == 0
    assert first["firehose_calls"] >= 70 and first["files_complete"] == 3
    assert first["job_totals"] == {"rows_sent": 35_000, "rows_rejected": 0, "files_complete": 3}
    shard_dirs = sorted((tmp_path / "ckpt").glob("dask.shard-*"))
    assert len(shard_dirs) == 5  # a.parquet in 3 shards, one each for b.parquet and c.csv
    for d in shard_dirs:
        state = json.loads((d / "state.json").read_text())["body"]
        (prog,) = state["files"].values()
        assert prog["total_chunks"] and prog["done"] == [[0, prog["total_chunks"]]]

    args = _args(tmp_path, sources, firehose_stream, strict_firehose.endpoint_url, 2)
    again = _cli([*args, "--dask-address", address], prefect_server.env())
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    second = _summary(tmp_path, 2)
    assert second["actions_sent"] == 0 and second["rows_skipped"] == 35_000
    assert len(strict_firehose.transaction_ids(firehose_stream)) == 35_000


def test_killed_worker_then_rerun_loses_nothing(
    tmp_path: Path,
    prefect_server: PrefectServer,
    dask_cluster: Any,
    strict_firehose: Any,
    firehose_stream: str,
) -> None:
    write_mapping(tmp_path / "m.yaml")
    sources = [
        write_payments(tmp_path / "in" / "a.parquet", 1, 40_000),  # 4 shards
        write_payments(tmp_path / "in" / "b.csv", 40_001, 2_000),
    ]
    pids = list(dask_cluster.run(os.getpid).values())
    assert len(pids) == 2
    # One call at a time per shard, each slowed down: the run lasts long enough to be caught.
    strict_firehose.configure(latency_s=0.15)
    address = dask_cluster.scheduler.address
    args = _args(tmp_path, sources, firehose_stream, strict_firehose.endpoint_url, 1)
    proc = subprocess.Popen(
        [*args, "--dask-address", address, "--max-in-flight", "1"],
        env=prefect_server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    killed_at = None
    deadline = time.monotonic() + 200
    while proc.poll() is None and time.monotonic() < deadline:
        arrived = len(strict_firehose.records(firehose_stream))
        if arrived >= 4_000:
            os.kill(pids[0], signal.SIGKILL)
            killed_at = arrived
            break
        time.sleep(0.05)
    _out, err = proc.communicate(timeout=280)
    assert killed_at is not None and killed_at < 42_000, err.decode()[-3000:]
    assert proc.returncode in (0, 1), err.decode()[-3000:]  # Dask may rerun the shard itself
    strict_firehose.configure(latency_s=0.0)
    runs = [proc.returncode]
    for n in (2, 3):
        args = _args(tmp_path, sources, firehose_stream, strict_firehose.endpoint_url, n)
        rerun = _cli([*args, "--dask-address", address], prefect_server.env())
        runs.append(rerun.returncode)
        if rerun.returncode == 0:
            break
    assert runs[-1] == 0, runs
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == expected_ids(1, 40_000) | expected_ids(40_001, 2_000)
    # At most the chunks in flight in the killed worker's shard are sent twice.
    dupes = sum(c - 1 for c in Counter(delivered).values())
    assert dupes <= 4 * CHUNK, dupes
    final = _summary(tmp_path, len(runs))
    if os.environ.get("DASK_TEST_REPORT"):  # the figures docs/dask.md quotes
        report = {"killed_at": killed_at, "runs": runs, "dupes": dupes, "final": final}
        Path(os.environ["DASK_TEST_REPORT"]).write_text(json.dumps(report, indent=1))
    assert final["accounted"] and final["rows_read"] == 42_000
    assert final["job_totals"]["rows_sent"] == 42_000


def test_local_workers_need_no_prefect_server(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    sources = _inputs(tmp_path)
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_LOGGING_LEVEL="INFO")
    args = _args(tmp_path, sources, firehose_stream, strict_firehose.endpoint_url, 1)
    done = _cli([*args, "--workers", "2"], env)
    log = done.stderr.decode() + done.stdout.decode()
    assert done.returncode == 0, log[-3000:]
    # No Prefect API configured: the driver runs directly and the workers run no Prefect either
    # (one that started a temporary server would log this line: they inherit
    # PREFECT_LOGGING_LEVEL=INFO and this stderr), so no server and no Prefect database.
    assert "Starting temporary server on" not in log, log[-3000:]
    assert "(ran directly, without Prefect)" in log
    assert not list((tmp_path / "prefect-home").glob("*.db")), "a Prefect database was created"
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert len(delivered) == 35_000 and len(set(delivered)) == 35_000


def test_cluster_options_refused_before_anything_starts(tmp_path: Path) -> None:
    sources = _inputs(tmp_path)
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    dry = [*CLI, "run", str(sources[0]), "--mapping", str(tmp_path / "m.yaml"), "--dry-run"]
    done = _cli([*dry, "--out", str(tmp_path / "out"), "--workers", "2"], env, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr.decode()
    assert time.monotonic() - started < 60  # no Prefect API, no cluster was started
    assert not (tmp_path / "ckpt").exists()
    # No PREFECT_API_URL is needed; a scheduler that is not there is named.
    base = _args(tmp_path, sources, "s", "http://127.0.0.1:9", 1)
    done = _cli([*base, "--dask-address", "tcp://127.0.0.1:9"], env, timeout=120)
    assert done.returncode == 2, done.stderr.decode()[-3000:]
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr.decode()
