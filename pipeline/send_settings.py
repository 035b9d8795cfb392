"""What every sending command shares (`run`, and `redrive`): where actions go, how fast, the
checkpoint, the job's outputs. `pipeline.settings.RunSettings` adds the input side of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CHECKPOINT_DIR = ".moesif-backfill/checkpoints"


class SendSettings(BaseModel):
    """Where and how a job's actions are sent, and where its progress is kept. Holds no
    secret: credentials come from boto3's chain (or a Prefect block named here)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    streams: list[str] = Field(
        default_factory=list,
        description="Firehose streams; with several, an action goes to the stream picked by a "
        "hash of its transaction_id (always the same one)",
    )
    region: str | None = None
    endpoint_url: str | None = None
    checkpoint: str = Field(
        default=DEFAULT_CHECKPOINT_DIR, description="a local directory or s3://bucket/prefix/"
    )
    lease_seconds: float = Field(
        default=60.0, ge=2, le=3600, description="S3 checkpoint lease; a crashed run's expires"
    )
    aws_credentials_block: str | None = Field(
        default=None, min_length=1, description="a Prefect AwsCredentials block to use"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint override (sources and checkpoints)"
    )
    job: str | None = None
    rejects: Path | None = None
    summary_json: Path | None = None
    ledger: str | None = Field(
        default=None,
        min_length=1,
        description="write the ID ledger (one Parquet row per input row: transaction_id, "
        "status) under this directory or s3://bucket/prefix/, in a job=<job>/ folder",
    )
    allow_older_than_30_days: bool = False
    skip_older_than_30_days: bool = Field(
        default=False,
        description="send only the rows inside Moesif's 30-day window (from the run's start); "
        "the older ones stay pending in the checkpoint (rows_too_old) for a later run with "
        "--allow-older-than-30-days",
    )
    max_records_per_second: float | None = Field(
        default=None,
        gt=0,
        description="each stream's Firehose records/s quota (sends shaped to 98%)",
    )
    max_mib_per_second: float | None = Field(
        default=None, gt=0, description="each stream's Firehose MiB/s quota (sends shaped to 98%)"
    )
    adaptive_rate: bool = Field(
        default=True,
        description="on throttling, lower the send rate (multiplicative decrease) and raise it "
        "again slowly (additive increase)",
    )
    chunk_rows: int = Field(
        default=10_000, ge=1, le=1_000_000, description="rows per checkpointed chunk"
    )
    max_in_flight: int = Field(default=8, ge=1, le=64, description="PutRecordBatch calls at once")
    chunks_in_flight: int = Field(default=4, ge=1, le=64)
    retry_budget_s: float = Field(
        default=60.0,
        ge=0,
        description="seconds of backoff a run may spend in all on retrying shards that failed "
        "with a transient delivery error (0: no retries)",
    )
    retry_attempts: int = Field(
        default=10, ge=1, le=1000, description="PutRecordBatch attempts in a row without progress"
    )
    stall_timeout_s: float = Field(
        default=40.0,
        gt=0,
        description="the run fails (exit 1, nothing lost) when a stream acknowledges nothing for "
        "this long while calls fail (an endpoint lost: connections refused, dropped or never "
        "answered); with the read timeout, a lost endpoint ends the run within about "
        "stall_timeout_s + read_timeout_s (60 s by default)",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(
        default=20.0, gt=0, description="seconds a PutRecordBatch call may wait for an answer"
    )

    reset: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_stream(cls, data: Any) -> Any:
        """`stream="x"` (one stream, the common case) is short for `streams=["x"]`."""
        if isinstance(data, dict) and "stream" in data:
            data = dict(data)
            one = data.pop("stream")
            if one is not None:
                if data.get("streams"):
                    raise ValueError("give either stream or streams, not both")
                data["streams"] = [one]
        return data

    @field_validator("streams")
    @classmethod
    def _stream_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not 1 <= len(name) <= 64:
                raise ValueError(f"stream name {name!r} must have 1-64 characters")
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"stream {dup[0]!r} is given twice; give each stream once")
        return v

    @property
    def stream(self) -> str | None:
        """The first (usually the only) stream."""
        return self.streams[0] if self.streams else None

    @field_validator("checkpoint", "ledger", mode="before")
    @classmethod
    def _as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, Path) else v

    @property
    def ledger_is_s3(self) -> bool:
        return bool(self.ledger) and str(self.ledger).lower().startswith("s3://")

    @property
    def checkpoint_is_s3(self) -> bool:
        return self.checkpoint.lower().startswith("s3://")

    @model_validator(mode="after")
    def _thirty_days(self) -> Any:
        if self.allow_older_than_30_days and self.skip_older_than_30_days:
            raise ValueError(
                "give --allow-older-than-30-days (send rows older than 30 days) or "
                "--skip-older-than-30-days (leave them pending), not both"
            )
        return self


__all__ = ["DEFAULT_CHECKPOINT_DIR", "SendSettings"]
