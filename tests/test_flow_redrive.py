"""The `redrive-failed-deliveries` flow through the session's Prefect server: failed-delivery
objects on a moto server S3 re-sent to the strict Firehose stand-in; the flow run's name, tags,
state, summary artifact and warning; a failing redrive fails the flow run with its message."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from flows.redrive import redrive_failed_deliveries
from pipeline.redrive_settings import RedriveSettings
from tests.standins.moto_firehose import LocalFirehose
from tests.standins.strict_firehose import StrictFirehose
from tests.test_redrive import NOW, Scenario, fd_key, fd_line, good_actions

pytestmark = pytest.mark.integration


@pytest.fixture
def failed(moto_firehose: LocalFirehose) -> Scenario:
    """A clean object (actions 1-3) and one with a line that is not JSON (actions 4, 5)."""
    moto_firehose.ensure()
    s3 = moto_firehose.s3_client()
    sc = Scenario(f"fd-flow-{uuid.uuid4().hex[:10]}", s3)
    s3.create_bucket(Bucket=sc.bucket)
    t = NOW - dt.timedelta(hours=5)
    sc.put(
        "clean", fd_key("errors/", t), [fd_line(a, arrival=t) for a in good_actions(sc, 1, 2, 3)]
    )
    a4, a5 = good_actions(sc, 4, 5)
    lines = [
        fd_line(a4, arrival=t, code="Other"),
        b"not JSON",
        fd_line(a5, arrival=t, code="Other"),
    ]
    sc.put("rejects", fd_key("errors/", t, ".gz"), lines, gz=True)
    return sc


def _settings(
    tmp_path: Path, sc: Scenario, moto: LocalFirehose, strict: StrictFirehose, stream: str
) -> RedriveSettings:
    return RedriveSettings(
        location=f"s3://{sc.bucket}/errors/",
        stream=stream,
        endpoint_url=strict.endpoint_url,
        s3_endpoint_url=moto.endpoint_url,
        region="us-east-1",
        checkpoint=str(tmp_path / "ckpt"),
        job="fd-flow",
        delete_after=True,
        chunk_rows=2,
    )


def _read(flow_run_id: Any) -> tuple[Any, list[Any], list[str]]:
    """The flow run, its summary artifacts and its log messages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the flow run's logs reach the API in the background
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["fd-flow-redrive-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return run, list(artifacts), [str(log.message) for log in logs]


def test_redrive_flow_delivers_publishes_numbers_and_completes_with_a_warning(
    tmp_path: Path,
    prefect_api: str,
    failed: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    s = _settings(tmp_path, failed, moto_firehose, strict_firehose, firehose_stream)
    state = redrive_failed_deliveries(s, return_state=True)
    assert state.is_completed(), state.message
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(failed.expected)
    assert sorted(strict_firehose.records(firehose_stream)) == sorted(failed.expected.values())
    assert failed.listed() == {failed.keys["rejects"]}  # the clean object was deleted
    run, (artifact,), logs = _read(state.state_details.flow_run_id)
    assert run.name == "fd-flow redrive"
    assert {"job:fd-flow", "mode:redrive"} <= set(run.tags)
    assert artifact.type == "table"
    table = {row["metric"]: row["value"] for row in _rows(artifact.data)}
    assert table["status"] == "complete_with_rejects"
    expected = {
        "actions_read": 6,
        "actions_sent": 5,
        "actions_rejected": 1,
        "actions_skipped": 0,
        "lines_read": 6,
        "lines_rejected": 1,
        "objects_total": 2,
        "objects_deleted": 1,
        "by errorCode: HttpEndpoint.DestinationException": 3,
        "by errorCode: Other": 2,
        "by errorCode: (none)": 1,
    }
    assert {k: table[k] for k in expected} == expected
    assert all(type(table[k]) is int for k in expected)  # numbers, not their text
    assert any("1 actions and 1 lines rejected" in m for m in logs), logs
    # a rerun: everything was delivered or rejected already; nothing sent twice
    again = redrive_failed_deliveries(s, return_state=True)
    assert again.is_completed(), again.message
    assert len(strict_firehose.records(firehose_stream)) == 5


def _rows(data: Any) -> list[dict[str, Any]]:
    import json

    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def test_redrive_flow_fails_with_the_message_on_a_wrong_stream(
    tmp_path: Path,
    prefect_api: str,
    failed: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    s = _settings(tmp_path, failed, moto_firehose, strict_firehose, "no-such-stream-xyz")
    state = redrive_failed_deliveries(s, return_state=True)
    assert state.is_failed()
    assert "no-such-stream-xyz" in str(state.message)
    assert strict_firehose.transaction_ids(firehose_stream) == []
    assert failed.listed() == {failed.keys["clean"], failed.keys["rejects"]}
    run, (artifact,), _ = _read(state.state_details.flow_run_id)
    assert run.name == "fd-flow redrive" and run.state_type.value == "FAILED"
    assert {row["metric"]: row["value"] for row in _rows(artifact.data)}["status"] == "failed"
