"""The backfill flow run through Prefect: states, task runs and artifacts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flows.backfill import backfill
from moesif_backfill.errors import MappingError
from pipeline.settings import RunSettings
from tests.datasets import MAPPING, expected_ids, write_mapping, write_payments

pytestmark = pytest.mark.integration


async def _artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
        )


def test_flow_delivers_and_publishes_summary_artifact(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 3_000)
    settings = RunSettings(
        sources=[str(src)],
        mapping=write_mapping(tmp_path / "m.yaml"),
        stream=firehose_stream,
        endpoint_url=strict_firehose.endpoint_url,
        region="us-east-1",
        checkpoint=tmp_path / "ckpt",
        job="flow-test",
        chunk_rows=1_000,
    )
    result = backfill(settings)
    assert result["status"] == "complete" and result["actions_sent"] == 3_000
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 3_000)
    summary = asyncio.run(_artifacts("flow-test-summary"))
    assert summary and summary[0].type == "table"
    assert "actions_sent" in str(summary[0].data) or "sent" in str(summary[0].data)
    progress = asyncio.run(_artifacts("flow-test-progress"))
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
    # called without a name (as a deployment runs it), the flow run is named after its job
    assert asyncio.run(_flow_run_name(summary[0].flow_run_id)) == "flow-test"


async def _flow_run_name(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return str((await client.read_flow_run(flow_run_id)).name)


def test_flow_fails_loudly_on_config_error(
    tmp_path: Path, prefect_api: str, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10)
    bad = dict(MAPPING, company_id="no_such_column")
    settings = RunSettings(
        sources=[str(src)],
        mapping=write_mapping(tmp_path / "m.yaml", bad),
        stream=firehose_stream,
        endpoint_url=strict_firehose.endpoint_url,
        checkpoint=tmp_path / "ckpt",
    )
    with pytest.raises(MappingError, match=r"no_such_column.*Available columns: invoice_line_id"):
        backfill(settings)
    assert strict_firehose.transaction_ids(firehose_stream) == []


def test_credentials_from_a_prefect_aws_block(
    tmp_path: Path,
    prefect_api: str,
    moto_firehose: Any,
    strict_firehose: Any,
    firehose_stream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --aws-credentials-block, S3 sources, the S3 checkpoint and Firehose all use the
    block's credentials: the environment has none, so without the block this run would fail."""
    import uuid

    from prefect_aws import AwsCredentials

    s3 = moto_firehose.s3_client()
    bucket = f"block-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    src = write_payments(tmp_path / "p.parquet", 1, 1_200)
    s3.upload_file(str(src), bucket, "exports/p.parquet")
    AwsCredentials(
        aws_access_key_id="block-key-id",
        aws_secret_access_key="block-secret",
        region_name="us-east-1",
    ).save("moesif-test-creds", overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata service
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    settings = RunSettings(
        sources=[f"s3://{bucket}/exports/"],
        mapping=write_mapping(tmp_path / "m.yaml"),
        stream=firehose_stream,
        endpoint_url=strict_firehose.endpoint_url,
        s3_endpoint_url=moto_firehose.endpoint_url,
        region="us-east-1",
        checkpoint=f"s3://{bucket}/checkpoints/",
        job="block-test",
        aws_credentials_block="moesif-test-creds",
    )
    result = backfill(settings)
    assert result["status"] == "complete" and result["actions_sent"] == 1_200
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 1_200)
    head = s3.head_object(Bucket=bucket, Key="checkpoints/block-test/state.json")
    assert head["ContentLength"] > 0
