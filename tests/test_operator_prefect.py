"""Operating the tool in Prefect mode (issue 12, item 5), against a real `prefect server start`:
a `run` is a flow run named after its job with the tags job and mode, the core's INFO logs
are in the flow run's log in the API (while the CLI's stderr stays quiet), and the summary
artifact's numeric cells are numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import write_mapping, write_payments
from tests.standins.prefect_server import PrefectServer

CLI = [sys.executable, "-m", "moesif_backfill.cli"]
FLOW_RUN = re.compile(r"\(as Prefect flow run '([^']+)', id ([0-9a-f-]{36})\)")


@pytest.mark.e2e
def test_prefect_run_is_named_tagged_logged_and_typed(
    tmp_path: Path, prefect_server: PrefectServer, strict_firehose: Any, firehose_stream: str
) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    src = write_payments(tmp_path / "p.parquet", 1, 1_500)
    write_mapping(tmp_path / "m.yaml")
    job = f"named-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_API_URL=prefect_server.api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    args = [
        "run",
        str(src),
        *("--mapping", str(tmp_path / "m.yaml"), "--stream", firehose_stream),
        *("--endpoint-url", strict_firehose.endpoint_url, "--region", "us-east-1"),
        *("--checkpoint", str(tmp_path / "ckpt"), "--job", job, "--chunk-rows", "500"),
        "--quiet",
    ]
    done = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    found = FLOW_RUN.search(done.stderr.splitlines()[-1])
    assert found, done.stderr
    assert found.group(1) == job
    # the core's INFO lines go to the API, not to the CLI's stderr
    assert "INFO" not in done.stderr and "shard(s) of 1 file(s)" not in done.stderr
    assert "WARNING" not in done.stderr and "Warning" not in done.stderr, done.stderr

    run_id = uuid.UUID(found.group(2))
    with SyncPrefectClient(prefect_server.api_url) as client:
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        (summary,) = [
            a for a in client.read_artifacts() if a.flow_run_id == run_id and a.type == "table"
        ]
    assert flow_run.name == job
    assert {f"job:{job}", "mode:send"} <= set(flow_run.tags)
    messages = {(log.name, log.level, log.message) for log in logs}
    assert any(
        name == "pipeline.run" and level == 20 and "1 shard(s) of 1 file(s)" in msg
        for name, level, msg in messages
    ), sorted(messages)
    rows = summary.data if isinstance(summary.data, list) else json.loads(summary.data)
    table = {row["metric"]: row["value"] for row in rows}
    assert table["status"] == "complete"
    assert table["rows_read"] == 1_500 and table["sent"] == 1_500
    assert isinstance(table["duration_s"], float) and table["expected_send_s"] is None
    numeric = [v for k, v in table.items() if k != "status"]
    assert all(v is None or isinstance(v, int | float) for v in numeric), table


@pytest.mark.e2e
def test_prefect_range_flow_runs_are_named_after_the_job_and_days(
    tmp_path: Path, prefect_server: PrefectServer, strict_firehose: Any, firehose_stream: str
) -> None:
    import datetime as dt

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from tests.test_nightly import day_start, partition, recent_day, write_day

    days = [recent_day(5) + dt.timedelta(days=i) for i in range(2)]
    for i, day in enumerate(days):
        write_day(partition(tmp_path / "usage", day), day, day_start(i), 200)
    write_mapping(tmp_path / "mapping.yaml")
    job = f"wk-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=prefect_server.api_url)
    args = [
        *CLI,
        "range",
        str(tmp_path / "usage" / "dt={date:%Y-%m-%d}"),
        *("--mapping", str(tmp_path / "mapping.yaml"), "--job", job),
        *("--stream", firehose_stream, "--start", days[0].isoformat()),
        *("--end", days[1].isoformat(), "--checkpoint", str(tmp_path / "ckpt")),
        *("--endpoint-url", strict_firehose.endpoint_url, "--region", "us-east-1"),
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    with SyncPrefectClient(prefect_server.api_url) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job}"]))
        )
    by_name = {r.name: set(r.tags) for r in runs}
    parent = f"{job} range {days[0]}..{days[1]}"
    assert by_name[parent] == {f"job:{job}", "mode:range"}
    for day in days:
        assert by_name[f"{job}-{day}"] == {f"job:{job}", "mode:range", f"day:{day}"}
    assert len(by_name) == 3
